//! What changed inside a changed object, field by field: computed from the objects'
//! tables (not from their text), so reordering or reformatting shows nothing, and a list
//! of plain values shows the elements added and removed.

use toml::{Table, Value};

use crate::model::FieldChange;

/// The section (`resource`, `allow`, ...) and table of an object's canonical TOML.
fn section_table(toml_text: &str) -> Option<(String, Table)> {
    let doc: Table = toml_text.parse().ok()?;
    let (section, v) = doc.into_iter().next()?;
    match v {
        Value::Array(a) => match a.into_iter().next()? {
            Value::Table(t) => Some((section, t)),
            _ => None,
        },
        _ => None,
    }
}

/// A value as TOML (inline): `"443"`, `["22", "443"]`, `true`.
pub fn value_text(v: &Value) -> String {
    v.to_string()
}

fn is_plain_list(v: &Value) -> bool {
    matches!(v, Value::Array(a) if a.iter().all(|x| !matches!(x, Value::Table(_) | Value::Array(_))))
}

/// The field changes from the table `before` to the table `after` (both an object's
/// canonical TOML, header included). Fields in the order of the new table, then those
/// removed; a grant's header as the field `action`.
pub fn field_changes(before: &str, after: &str) -> Vec<FieldChange> {
    let (Some((bs, bt)), Some((as_, at))) = (section_table(before), section_table(after)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if bs != as_ {
        out.push(FieldChange {
            field: "action".into(),
            before: value_text(&Value::String(bs)),
            after: value_text(&Value::String(as_)),
            element: false,
        });
    }
    let removed_keys = bt.keys().filter(|k| !at.contains_key(*k));
    let keys: Vec<&String> = at.keys().chain(removed_keys).collect();
    for k in keys {
        let (b, a) = (bt.get(k), at.get(k));
        if b == a {
            continue;
        }
        match (b, a) {
            (Some(bv @ Value::Array(bl)), Some(av @ Value::Array(al)))
                if is_plain_list(bv) && is_plain_list(av) =>
            {
                for x in bl.iter().filter(|x| !al.contains(x)) {
                    out.push(FieldChange {
                        field: k.clone(),
                        before: value_text(x),
                        after: String::new(),
                        element: true,
                    });
                }
                for x in al.iter().filter(|x| !bl.contains(x)) {
                    out.push(FieldChange {
                        field: k.clone(),
                        before: String::new(),
                        after: value_text(x),
                        element: true,
                    });
                }
                if out.last().is_none_or(|f| &f.field != k) {
                    // Same elements, another order.
                    out.push(FieldChange {
                        field: k.clone(),
                        before: value_text(&Value::Array(bl.clone())),
                        after: value_text(&Value::Array(al.clone())),
                        element: false,
                    });
                }
            }
            _ => out.push(FieldChange {
                field: k.clone(),
                before: b.map(value_text).unwrap_or_default(),
                after: a.map(value_text).unwrap_or_default(),
                element: false,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(field: &str, before: &str, after: &str, element: bool) -> FieldChange {
        FieldChange {
            field: field.into(),
            before: before.into(),
            after: after.into(),
            element,
        }
    }

    #[test]
    fn scalars_lists_and_headers() {
        let b = "[[resource]]\nname = \"wiki\"\nnetwork = \"corp\"\ntcp = \"443\"\nicmp = true\n";
        let a = "[[resource]]\nname = \"wiki\"\nnetwork = \"corp\"\ntcp = \"443, 8443\"\nmode = \"audit\"\n";
        assert_eq!(
            field_changes(b, a),
            [
                f("mode", "", "\"audit\"", false),
                f("tcp", "\"443\"", "\"443, 8443\"", false),
                f("icmp", "true", "", false),
            ]
        );
        let b = "[[group]]\nname = \"eng\"\nmembers = [\"alice\", \"bob\"]\n";
        let a = "[[group]]\nname = \"eng\"\nmembers = [\"alice\", \"carol\"]\n";
        assert_eq!(
            field_changes(b, a),
            [
                f("members", "\"bob\"", "", true),
                f("members", "", "\"carol\"", true)
            ]
        );
        let a2 = "[[group]]\nname = \"eng\"\nmembers = [\"bob\", \"alice\"]\n";
        assert_eq!(
            field_changes(b, a2),
            [f(
                "members",
                "[\"alice\", \"bob\"]",
                "[\"bob\", \"alice\"]",
                false
            )]
        );
        let b = "[[allow]]\nname = \"g\"\nprincipals = [\"eng\"]\n";
        let a = "[[deny]]\nname = \"g\"\nprincipals = [\"eng\"]\n";
        assert_eq!(
            field_changes(b, a),
            [f("action", "\"allow\"", "\"deny\"", false)]
        );
        assert!(field_changes(b, b).is_empty());
    }
}
