//! Names that end up on other people's screens (object names, hosts, agents' host
//! names): no control characters (NUL, newline, ESC, DEL, C1), no bidirectional
//! overrides or isolates, no zero-width or other invisible formatting characters —
//! a name must look like what it is — and bounded in length.

use crate::{Error, shown};

/// The longest object name (an e-mail address may have 254 characters).
pub const MAX_NAME: usize = 254;

/// Whether `c` is an invisible formatting character: bidirectional marks, embeddings,
/// overrides and isolates, zero-width characters, the soft hyphen, word joiners and
/// invisible operators, the BOM, interlinear annotation controls, tag characters.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFB}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// Why `name` is not acceptable, if it is not.
pub fn problem(name: &str, max: usize) -> Option<String> {
    if name.is_empty() {
        return Some("it is empty".into());
    }
    let n = name.chars().count();
    if n > max {
        return Some(format!("it has {n} characters (at most {max})"));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Some(format!(
            "it contains the control character {}",
            c.escape_unicode()
        ));
    }
    if let Some(c) = name.chars().find(|&c| is_invisible(c)) {
        return Some(format!(
            "it contains the invisible or bidirectional formatting character {}",
            c.escape_unicode()
        ));
    }
    if name.trim() != name {
        return Some("it starts or ends with white space".into());
    }
    None
}

/// Checks a name (see the module docs); INVALID_ARGUMENT naming `what` otherwise.
pub fn check(what: &str, name: &str, max: usize) -> Result<(), Error> {
    match problem(name, max) {
        None => Ok(()),
        Some(why) => Err(Error::InvalidArgument(format!(
            "invalid {what} `{}`: {why}",
            shown(name)
        ))),
    }
}

/// Checks a host (`connector:NAME` / `device:NAME`) and parses it.
pub fn host(s: &str) -> Result<policy_compiler::Host, Error> {
    check("host", s, MAX_NAME + 10)?;
    gateway_proto::parse_host(s).map_err(|_| {
        Error::InvalidArgument(format!(
            "invalid host `{}` (expected `connector:NAME` or `device:NAME`)",
            shown(s)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_look_like_what_they_are() {
        for ok in ["prod-db", "alice@example.com", "Zürich office", "東京"] {
            assert_eq!(problem(ok, MAX_NAME), None, "{ok}");
        }
        for bad in [
            "",
            "a\0b",
            "a\nb",
            "a\u{1b}[31mb",
            "a\u{7f}",
            "a\u{85}b",
            "admin\u{202E}moc.evil",
            "ad\u{200B}min",
            "\u{2066}x\u{2069}",
            "x\u{FEFF}",
            " padded",
        ] {
            assert!(problem(bad, MAX_NAME).is_some(), "{bad:?}");
        }
        assert!(problem(&"x".repeat(MAX_NAME + 1), MAX_NAME).is_some());
        let e = check("name", &"y".repeat(100_000), MAX_NAME)
            .unwrap_err()
            .to_string();
        assert!(e.len() < 300, "the message does not echo the field: {e}");
        assert!(host("connector:a").is_ok());
        assert!(host("connector:a\nb").is_err());
        assert!(host(&format!("device:{}", "d".repeat(5000))).is_err());
        assert!(host("laptop").is_err());
    }
}
