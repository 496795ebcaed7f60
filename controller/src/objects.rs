//! Policy objects: one `[[section]]` table of the policy file each, kept in the policy's
//! order; splitting a policy text into objects and rendering objects back into a policy.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use toml::{Table, Value};

use crate::Error;

/// The kind of a policy object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    RemoteNetwork,
    Resource,
    User,
    Device,
    ServiceAccount,
    Group,
    /// `[[allow]]` and `[[deny]]` (one sequence: their order decides rule ids).
    Grant,
    Test,
    /// `[[connector]]`: a connector's WireGuard key and endpoint.
    Connector,
}

/// Kinds in the order the policy text lists them.
pub const KINDS: [Kind; 9] = [
    Kind::RemoteNetwork,
    Kind::Resource,
    Kind::User,
    Kind::Device,
    Kind::ServiceAccount,
    Kind::Group,
    Kind::Grant,
    Kind::Test,
    Kind::Connector,
];

impl Kind {
    /// The name used in storage, audit targets and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::RemoteNetwork => "remote_network",
            Kind::Resource => "resource",
            Kind::User => "user",
            Kind::Device => "device",
            Kind::ServiceAccount => "service_account",
            Kind::Group => "group",
            Kind::Grant => "grant",
            Kind::Test => "test",
            Kind::Connector => "connector",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        KINDS.into_iter().find(|k| k.as_str() == s)
    }

    /// The key naming an object of this kind.
    pub fn name_key(self) -> &'static str {
        if self == Kind::User { "email" } else { "name" }
    }

    fn of_section(s: &str) -> Option<Kind> {
        match s {
            "allow" | "deny" => Some(Kind::Grant),
            other => Kind::parse(other),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One policy object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    pub kind: Kind,
    pub name: String,
    /// The table in the policy syntax, header included (canonical TOML rendering).
    pub toml: String,
}

impl Object {
    pub fn key(&self) -> (Kind, String) {
        (self.kind, self.name.clone())
    }
}

/// The objects of a policy, in policy order (kinds in [`KINDS`] order, then position).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Objects {
    pub list: Vec<Object>,
}

impl Objects {
    pub fn get(&self, kind: Kind, name: &str) -> Option<&Object> {
        self.list.iter().find(|o| o.kind == kind && o.name == name)
    }

    pub fn position(&self, kind: Kind, name: &str) -> Option<usize> {
        self.list
            .iter()
            .position(|o| o.kind == kind && o.name == name)
    }

    /// Inserts at the end of its kind.
    pub fn insert(&mut self, o: Object) {
        let at = self
            .list
            .iter()
            .rposition(|x| x.kind <= o.kind)
            .map_or(0, |i| i + 1);
        self.list.insert(at, o);
    }

    /// The policy text: every object's table, in order.
    pub fn render(&self) -> String {
        self.render_with(None).0
    }

    /// The policy text, with object `replace` (index) rendered from the given text
    /// instead; returns the text and the first line (1-based) of that object's block.
    pub fn render_with(&self, replace: Option<(usize, &str)>) -> (String, u32) {
        let (s, starts) = self.render_lines(replace);
        let line = replace
            .and_then(|(r, _)| starts.get(r).copied())
            .unwrap_or(0);
        (s, line)
    }

    /// The policy text as [`Objects::render_with`], and the first line (1-based) of
    /// every object's block in it.
    pub fn render_lines(&self, replace: Option<(usize, &str)>) -> (String, Vec<u32>) {
        let mut s = String::new();
        let mut starts = Vec::with_capacity(self.list.len());
        let mut lines = 0u32;
        for (i, o) in self.list.iter().enumerate() {
            if !s.is_empty() {
                s.push('\n');
                lines += 1;
            }
            starts.push(lines + 1);
            let text = match replace {
                Some((r, t)) if r == i => t,
                _ => o.toml.as_str(),
            };
            s.push_str(text);
            if !s.ends_with('\n') {
                s.push('\n');
            }
            lines += text.matches('\n').count() as u32 + u32::from(!text.ends_with('\n'));
        }
        (s, starts)
    }

    /// The index of the object whose block holds `line` of [`Objects::render_lines`].
    pub fn at_line(starts: &[u32], line: u32) -> Option<usize> {
        starts.iter().rposition(|&s| s <= line)
    }

    pub fn by_key(&self) -> BTreeMap<(Kind, String), &Object> {
        self.list.iter().map(|o| (o.key(), o)).collect()
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn toml_error(file: &str, text: &str, e: &toml::de::Error) -> Error {
    let (l, c) = e.span().map_or((1, 1), |s| line_col(text, s.start));
    Error::InvalidArgument(format!(
        "{file}:{l}:{c}: error: TOML syntax: {}",
        e.message().trim()
    ))
}

/// Renders one table as a block of `section`.
pub fn render_block(section: &str, table: &Table) -> String {
    let mut doc = Table::new();
    doc.insert(
        section.to_string(),
        Value::Array(vec![Value::Table(table.clone())]),
    );
    toml::to_string(&doc).unwrap_or_default()
}

fn name_of(kind: Kind, t: &Table, file: &str) -> Result<String, Error> {
    match t.get(kind.name_key()) {
        Some(Value::String(s)) => {
            if let Some(why) = crate::names::problem(s, crate::names::MAX_NAME) {
                return Err(Error::InvalidArgument(format!(
                    "{file}: invalid {kind} {} `{}`: {why}",
                    kind.name_key(),
                    crate::shown(s)
                )));
            }
            Ok(s.clone())
        }
        _ => Err(Error::InvalidArgument(format!(
            "{file}: a [[{kind}]] table has no string `{}`; every object needs one",
            kind.name_key()
        ))),
    }
}

/// Splits a (valid) policy text into objects, in policy order; grants keep their file
/// order across `[[allow]]` and `[[deny]]`; unnamed tests are named `test-N`.
pub fn split(text: &str, file: &str) -> Result<Objects, Error> {
    let doc: Table = text.parse().map_err(|e| toml_error(file, text, &e))?;
    // File order of grants: span starts of the allow and deny tables.
    let de = toml::de::DeTable::parse(text).map_err(|e| toml_error(file, text, &e))?;
    let mut grant_order: Vec<(usize, &str, usize)> = Vec::new();
    for sec in ["allow", "deny"] {
        if let Some(v) = de.get_ref().get(sec)
            && let Some(arr) = v.get_ref().as_array()
        {
            for (i, item) in arr.iter().enumerate() {
                grant_order.push((item.span().start, sec, i));
            }
        }
    }
    grant_order.sort_unstable();
    let mut out = Objects::default();
    let mut seen: HashSet<(Kind, String)> = HashSet::new();
    let mut push = |out: &mut Objects, kind: Kind, section: &str, t: &Table| {
        let name = name_of(kind, t, file)?;
        if !seen.insert((kind, name.clone())) {
            return Err(Error::InvalidArgument(format!(
                "{file}: duplicate {kind} `{name}`"
            )));
        }
        out.list.push(Object {
            kind,
            name,
            toml: render_block(section, t),
        });
        Ok(())
    };
    let tables = |sec: &str| -> Vec<Table> {
        match doc.get(sec) {
            Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_table().cloned()).collect(),
            _ => Vec::new(),
        }
    };
    for kind in KINDS {
        match kind {
            Kind::Grant => {
                let (allow, deny) = (tables("allow"), tables("deny"));
                for &(_, sec, i) in &grant_order {
                    let t = if sec == "allow" { &allow[i] } else { &deny[i] };
                    push(&mut out, kind, sec, t)?;
                }
            }
            Kind::Test => {
                for (i, mut t) in tables("test").into_iter().enumerate() {
                    if !t.contains_key("name") {
                        t.insert("name".into(), Value::String(format!("test-{}", i + 1)));
                    }
                    push(&mut out, kind, "test", &t)?;
                }
            }
            _ => {
                for t in tables(kind.as_str()) {
                    push(&mut out, kind, kind.as_str(), &t)?;
                }
            }
        }
    }
    Ok(out)
}

/// The sections (`[[name]]` / `[name]`) of a parsed text other than `section`, for
/// messages.
fn other_sections(doc: &Table, section: &str) -> String {
    doc.keys()
        .filter(|k| k.as_str() != section)
        .map(|k| format!("`{}`", crate::shown(k)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses the TOML of one object (header optional, except for grants) into the object
/// and the text to locate its diagnostics with (the given text, with its header when it
/// had one; the number of lines prepended). `file` names the object in diagnostics.
///
/// The text must be exactly one table of the kind and nothing else: a headless text is
/// read under the kind's header, and anything that text would put outside that one table
/// (another `[[section]]`, a `[table]`) is refused. The object keeps the table rendered
/// canonically, and that rendering is what the policy is validated and stored with.
pub fn parse_object(kind: Kind, text: &str, file: &str) -> Result<(Object, String, u32), Error> {
    let doc: Table = text.parse().map_err(|e| toml_error(file, text, &e))?;
    let headed = doc.len() == 1
        && doc.keys().all(|k| Kind::of_section(k).is_some())
        && doc
            .values()
            .all(|v| matches!(v, Value::Array(a) if a.iter().all(Value::is_table)));
    let (section, table, validate_text, line_shift) = if headed {
        let Some((sec, Value::Array(a))) = doc.iter().next() else {
            unreachable!("checked above")
        };
        if a.len() != 1 {
            return Err(Error::InvalidArgument(format!(
                "{file}: expected exactly one [[{sec}]] table, found {}",
                a.len()
            )));
        }
        if Kind::of_section(sec) != Some(kind) {
            return Err(Error::InvalidArgument(format!(
                "{file}: a [[{sec}]] table is not a {kind} object"
            )));
        }
        let t = a[0].as_table().cloned().unwrap_or_default();
        (sec.clone(), t, text.to_string(), 0)
    } else {
        if kind == Kind::Grant {
            return Err(Error::InvalidArgument(format!(
                "{file}: a grant needs its header, `[[allow]]` or `[[deny]]`, on the first line"
            )));
        }
        let sec = kind.as_str().to_string();
        let validate_text = format!("[[{sec}]]\n{text}");
        let whole: Table = validate_text
            .parse()
            .map_err(|e| toml_error(file, text, &e))?;
        let table = match whole.get(&sec) {
            Some(Value::Array(a)) if whole.len() == 1 && a.len() == 1 => {
                a[0].as_table().cloned().unwrap_or_default()
            }
            _ => {
                let others = other_sections(&whole, &sec);
                let also = if others.is_empty() {
                    format!("it holds several [[{sec}]] tables")
                } else {
                    format!("it also holds {others}")
                };
                return Err(Error::InvalidArgument(format!(
                    "{file}: the text of a {kind} object must be one [[{sec}]] table and \
                     nothing else; {also} (create other objects separately)"
                )));
            }
        };
        (sec, table, validate_text, 1)
    };
    let name = name_of(kind, &table, file)?;
    Ok((
        Object {
            kind,
            name,
            toml: render_block(&section, &table),
        },
        validate_text,
        line_shift,
    ))
}
