//! The policy text handed out (GetPolicy, `gatewayctl export`): the objects in policy
//! order, each with the comments the admin wrote above it in the last applied file, and
//! its table as written there when it is unchanged since (edited objects get their
//! canonical table). Applying the text back plans no changes: a text that would not split
//! into exactly the live objects is never handed out (the canonical rendering is).

use std::collections::HashMap;

use toml::{Table, Value};

use crate::objects::{self, Kind, Objects, render_block};

/// One object's part of the applied text.
struct Part<'a> {
    /// The comment lines right above its header (blank lines between them kept).
    lead: &'a str,
    /// Its table as written (header to the next object's comments).
    body: &'a str,
    /// Its canonical table, to tell whether it changed since.
    canonical: String,
    /// An unnamed `[[test]]` (its name comes from its position: always re-rendered).
    unnamed: bool,
}

/// The applied text's objects by kind and name.
type Parts<'a> = HashMap<(Kind, String), Part<'a>>;

/// Whether a line holds only a comment or nothing.
fn is_comment_or_blank(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// Where the block of comment (and blank) lines ending at `end` starts, not before
/// `floor`; leading blank lines are left out of the block.
fn comment_block_start(text: &str, floor: usize, end: usize) -> usize {
    let mut start = end;
    while start > floor {
        let line_start = text[floor..start - 1]
            .rfind('\n')
            .map_or(floor, |i| floor + i + 1);
        if !is_comment_or_blank(&text[line_start..start]) {
            break;
        }
        start = line_start;
    }
    // Skip blank lines at the top of the block.
    while start < end {
        let line_end = text[start..end].find('\n').map_or(end, |i| start + i + 1);
        if !text[start..line_end].trim().is_empty() {
            break;
        }
        start = line_end;
    }
    start
}

/// The applied text's objects keyed by kind and name, and its trailing comments.
fn parts(text: &str) -> Option<(Parts<'_>, &str)> {
    let doc: Table = text.parse().ok()?;
    let de = toml::de::DeTable::parse(text).ok()?;
    // Every [[section]] item by the start of its header.
    let mut items: Vec<(usize, String, usize)> = Vec::new();
    for (k, v) in de.get_ref().iter() {
        let arr = v.get_ref().as_array()?;
        for (i, item) in arr.iter().enumerate() {
            items.push((item.span().start, k.get_ref().to_string(), i));
        }
    }
    items.sort_unstable();
    let trailer_start = comment_block_start(text, items.last().map_or(0, |l| l.0), text.len());
    let mut out = HashMap::new();
    let mut floor = 0;
    let mut lead_start = comment_block_start(text, 0, items.first()?.0);
    for (j, (start, section, i)) in items.iter().enumerate() {
        let (next_lead, end) = match items.get(j + 1) {
            Some(&(next, ..)) => {
                let l = comment_block_start(text, *start, next);
                (l, l)
            }
            None => (trailer_start, trailer_start),
        };
        let kind = match section.as_str() {
            "allow" | "deny" => Kind::Grant,
            s => Kind::parse(s)?,
        };
        let table = doc.get(section)?.as_array()?.get(*i)?.as_table()?.clone();
        let unnamed = kind == Kind::Test && !table.contains_key("name");
        let name = match table.get(kind.name_key()) {
            Some(Value::String(s)) => s.clone(),
            _ if unnamed => format!("test-{}", i + 1),
            _ => return None,
        };
        let mut canonical_table = table;
        if unnamed {
            canonical_table.insert("name".into(), Value::String(name.clone()));
        }
        let part = Part {
            lead: &text[lead_start.max(floor)..*start],
            body: &text[*start..end],
            canonical: render_block(section, &canonical_table),
            unnamed,
        };
        out.insert((kind, name), part);
        floor = end;
        lead_start = next_lead;
    }
    Some((out, &text[trailer_start..]))
}

/// The policy text of `objects`, with the comments and tables of `applied` (the text of
/// the last applied file) where they still hold; the canonical rendering without it.
pub(super) fn text(objects: &Objects, applied: Option<&str>) -> String {
    let canonical = objects.render();
    let Some((parts, trailer)) = applied.and_then(parts) else {
        return canonical;
    };
    let mut s = String::new();
    for o in &objects.list {
        if !s.is_empty() {
            s.push('\n');
        }
        let part = parts.get(&o.key());
        if let Some(p) = part {
            s.push_str(p.lead);
        }
        match part {
            Some(p) if !p.unnamed && p.canonical == o.toml => s.push_str(p.body.trim_end()),
            _ => s.push_str(o.toml.trim_end()),
        }
        s.push('\n');
    }
    if !trailer.trim().is_empty() {
        s.push('\n');
        s.push_str(trailer.trim_end());
        s.push('\n');
    }
    match objects::split(&s, "export") {
        Ok(back) if back == *objects => s,
        _ => canonical,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APPLIED: &str = "# Example policy\n# second header line\n\n\
        # ---- networks\n[[remote_network]]\nname = \"corp\" # the office\n\
        cidrs = [\"198.18.0.0/16\"]\nconnectors = [\"c1\"]\n\n\
        # ---- resources\n\n# the web front end\n[[resource]]\nname = \"web\"\n\
        network = \"corp\"\naddress = \"198.18.1.5\"\ntcp = [443]\n\n\
        [[resource]]\nname = \"db\"\nnetwork = \"corp\"\naddress = \"198.18.1.10\"\n\
        tcp = [\"5432\"] # postgres\n\n# the end\n";

    #[test]
    fn comments_of_unchanged_objects_stay_and_changed_ones_are_regenerated() {
        let objs = objects::split(APPLIED, "p").unwrap();
        // Unchanged: the applied text itself (modulo blank lines), and it splits back.
        let t = text(&objs, Some(APPLIED));
        assert_eq!(t, APPLIED, "{t}");
        assert_eq!(text(&objs, None), objs.render());

        // `web` edited: its comment above stays, its table is the canonical one.
        let mut edited = objs.clone();
        let i = edited.position(Kind::Resource, "web").unwrap();
        edited.list[i].toml = edited.list[i]
            .toml
            .replace("tcp = [443]", "tcp = [443, 8443]");
        let t = text(&edited, Some(APPLIED));
        assert!(
            t.contains("# the web front end\n[[resource]]\naddress = "),
            "{t}"
        );
        assert!(t.contains("tcp = [443, 8443]"), "{t}");
        assert!(t.contains("name = \"corp\" # the office"), "{t}");
        assert!(t.contains("tcp = [\"5432\"] # postgres"), "{t}");
        assert!(t.starts_with("# Example policy\n"), "{t}");
        assert!(t.ends_with("# the end\n"), "{t}");
        assert_eq!(objects::split(&t, "x").unwrap(), edited);

        // A deleted object takes its comments along; an added one has none.
        let mut fewer = objs.clone();
        fewer
            .list
            .remove(objs.position(Kind::Resource, "web").unwrap());
        let t = text(&fewer, Some(APPLIED));
        assert!(!t.contains("web front end"), "{t}");
        assert_eq!(objects::split(&t, "x").unwrap(), fewer);
    }

    #[test]
    fn texts_that_do_not_split_give_the_canonical_rendering() {
        let objs = objects::split(APPLIED, "p").unwrap();
        assert_eq!(text(&objs, Some("[[resource")), objs.render());
        assert_eq!(
            text(&objs, Some("resource = [{ name = \"web\" }]\n")),
            objs.render()
        );
    }
}
