//! Errors of an object-level change (create, update, delete), told in terms of objects:
//! the policy being validated is the objects' rendering, a file the admin never saw, so
//! each diagnostic is located in the object holding it (`grant:dana-ssh:3:14: ...`), and
//! deleting an object others still use says who uses it.

use policy_compiler::Diagnostic;

use crate::Error;
use crate::objects::{Kind, Object, Objects};

/// How many located diagnostics an error lists at most (the first line counts them all).
const MAX_LISTED: usize = 20;

/// The file name diagnostics of the rendered policy carry.
pub(super) const RENDERED: &str = "policy.toml";

/// `diags` of the policy `new` rendered with `replace` (an object's own text, see
/// [`Objects::render_lines`]): those still located in the rendered text are moved into
/// the object holding them (`KIND:NAME`, lines counted from its header). When the change
/// deleted `deleted`, the objects whose errors name it are reported as its users first.
pub(super) fn in_objects(
    new: &Objects,
    replace: Option<(usize, &str)>,
    diags: Vec<Diagnostic>,
    deleted: Option<&Object>,
) -> Error {
    let (_, starts) = new.render_lines(replace);
    let mut errors: Vec<(Option<usize>, Diagnostic)> = Vec::new();
    for mut d in diags.into_iter().filter(Diagnostic::is_error) {
        let mut holder = None;
        if d.file == RENDERED
            && let Some(i) = Objects::at_line(&starts, d.line)
        {
            let o = &new.list[i];
            d.file = format!("{}:{}", o.kind, o.name);
            d.line = d.line - starts[i] + 1;
            holder = Some(i);
        }
        errors.push((holder, d));
    }
    let mut lines: Vec<String> = Vec::new();
    if let Some(del) = deleted {
        let quoted = format!("`{}`", del.name);
        let mut users: Vec<usize> = Vec::new();
        for (h, d) in &errors {
            if let Some(i) = *h
                && d.message.contains(&quoted)
                && !users.contains(&i)
            {
                users.push(i);
            }
        }
        if let Some(&first) = users.first() {
            let u = &new.list[first];
            let more = match users.len() - 1 {
                0 => String::new(),
                n => format!(" (and {n} more)"),
            };
            lines.push(format!(
                "{} {} is used by {} {}{more}: change or delete those first",
                what(del.kind),
                crate::shown(&del.name),
                what(u.kind),
                crate::shown(&u.name),
            ));
        }
    }
    let total = errors.len();
    for (_, d) in errors.iter().take(MAX_LISTED) {
        lines.push(d.to_string());
    }
    if total > MAX_LISTED {
        lines.push(format!("... and {} more errors", total - MAX_LISTED));
    }
    Error::InvalidArgument(lines.join("\n"))
}

/// A kind as words in a sentence.
fn what(k: Kind) -> &'static str {
    match k {
        Kind::RemoteNetwork => "remote network",
        Kind::ServiceAccount => "service account",
        other => other.as_str(),
    }
}
