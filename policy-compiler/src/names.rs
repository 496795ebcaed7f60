//! DNS names of resources: `db.prod.internal`, `*.corp.example.com` (exactly one more
//! label), `**.corp.example.com` (one or more labels).
//!
//! A name is case-insensitive and kept lower-case, without a trailing dot. Labels are 1 to
//! 63 letters, digits, `-` (not first or last) and `_`; the whole name at most 253
//! characters; the last label is not all digits (it would read as an address), and at most
//! one label is (`198.18.1.x` is an address with a mistake, refused). A wildcard
//! is the whole first label, `*` or `**`, followed by at least one label.
//!
//! When several resources' patterns match a query name, the **most specific** pattern
//! decides ([`NamePattern::specificity`]): an exact name beats any wildcard; among
//! wildcards, the longer suffix (more labels); at the same suffix, `*.` beats `**.`. Only
//! the resources whose pattern is that one pattern cover the name: a wildcard granted to
//! everyone does not open a name that has a resource of its own.

use std::fmt;

/// A resource's DNS name or wildcard.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NamePattern {
    /// One name.
    Exact(String),
    /// `*.SUFFIX`: one label before SUFFIX.
    OneLabel(String),
    /// `**.SUFFIX`: one or more labels before SUFFIX.
    AnyDepth(String),
}

/// Why a string is not a name or pattern (the message, then a hint).
pub type NameError = (String, String);

const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

/// Checks one label; `Err` says why.
fn label_ok(l: &str) -> Result<(), String> {
    if l.is_empty() {
        return Err("an empty label (two dots in a row, or a dot at the start)".into());
    }
    if l.len() > MAX_LABEL {
        return Err(format!(
            "the label `{l}` has {} characters; at most {MAX_LABEL}",
            l.len()
        ));
    }
    if let Some(c) = l
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "the label `{l}` has `{c}`: labels are letters, digits, `-` and `_`"
        ));
    }
    if l.starts_with('-') || l.ends_with('-') {
        return Err(format!("the label `{l}` starts or ends with `-`"));
    }
    Ok(())
}

/// A lower-cased name without its trailing dot, checked.
pub fn parse_name(s: &str) -> Result<String, NameError> {
    let hint = || "write a DNS name such as \"db.prod.internal\"".to_string();
    let n = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    if n.is_empty() {
        return Err(("an empty name".into(), hint()));
    }
    if n.len() > MAX_NAME {
        return Err((
            format!("the name has {} characters; at most {MAX_NAME}", n.len()),
            hint(),
        ));
    }
    for l in n.split('.') {
        label_ok(l).map_err(|m| (m, hint()))?;
    }
    // Two or more all-digit labels: an IP address with a mistake (`198.18.1.x`,
    // `10.0.0.1o`) far more often than a name; refused rather than read as a name.
    let numeric = n
        .split('.')
        .filter(|l| l.chars().all(|c| c.is_ascii_digit()))
        .count();
    if numeric >= 2 {
        return Err((
            format!("`{s}` looks like an IP address with a mistake, not a DNS name"),
            "write the address as digits and dots (\"198.18.0.10\"), or a name with at most \
             one all-digit label"
                .into(),
        ));
    }
    let last = n.rsplit('.').next().unwrap_or_default();
    if last.chars().all(|c| c.is_ascii_digit()) {
        return Err((
            format!("`{s}` ends in an all-digit label, which reads as an address"),
            "write an IP address or CIDR as it is (198.18.0.10, 198.18.0.0/24), or a name \
             whose last label has a letter"
                .into(),
        ));
    }
    Ok(n)
}

impl NamePattern {
    /// Parses a name or wildcard (see the module docs).
    pub fn parse(s: &str) -> Result<NamePattern, NameError> {
        let t = s.trim();
        if t != s {
            return Err((
                format!("`{s}` has spaces around it"),
                "remove the spaces".into(),
            ));
        }
        if let Some(rest) = s.strip_prefix("**.") {
            return Ok(NamePattern::AnyDepth(Self::suffix(s, rest)?));
        }
        if let Some(rest) = s.strip_prefix("*.") {
            return Ok(NamePattern::OneLabel(Self::suffix(s, rest)?));
        }
        if s.contains('*') {
            return Err((
                format!("`{s}` has `*` that is not the whole first label"),
                "a wildcard is `*.corp.example.com` (one label) or `**.corp.example.com` (any \
                 depth); other uses of `*` are not patterns"
                    .into(),
            ));
        }
        parse_name(s).map(NamePattern::Exact)
    }

    fn suffix(whole: &str, rest: &str) -> Result<String, NameError> {
        if rest.contains('*') {
            return Err((
                format!("`{whole}` has a second `*`"),
                "only the first label may be a wildcard".into(),
            ));
        }
        let n = parse_name(rest)?;
        if n.len() + 2 > MAX_NAME {
            return Err((
                format!("`{whole}` leaves no room for a label under {MAX_NAME} characters"),
                "shorten the suffix".into(),
            ));
        }
        Ok(n)
    }

    /// Whether `name` (lower-case, no trailing dot: see [`parse_name`]) matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            NamePattern::Exact(n) => n == name,
            NamePattern::OneLabel(s) => name
                .strip_suffix(s.as_str())
                .and_then(|h| h.strip_suffix('.'))
                .is_some_and(|h| !h.is_empty() && !h.contains('.')),
            NamePattern::AnyDepth(s) => name
                .strip_suffix(s.as_str())
                .and_then(|h| h.strip_suffix('.'))
                .is_some_and(|h| !h.is_empty() && !h.starts_with('.') && !h.ends_with('.')),
        }
    }

    /// How specific the pattern is: higher wins among patterns matching one name.
    pub fn specificity(&self) -> (u8, usize, u8) {
        match self {
            NamePattern::Exact(n) => (1, n.split('.').count(), 0),
            NamePattern::OneLabel(s) => (0, s.split('.').count(), 1),
            NamePattern::AnyDepth(s) => (0, s.split('.').count(), 0),
        }
    }

    /// The suffix of a wildcard, the name itself for an exact one.
    pub fn base(&self) -> &str {
        match self {
            NamePattern::Exact(s) | NamePattern::OneLabel(s) | NamePattern::AnyDepth(s) => s,
        }
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NamePattern::Exact(n) => f.write_str(n),
            NamePattern::OneLabel(s) => write!(f, "*.{s}"),
            NamePattern::AnyDepth(s) => write!(f, "**.{s}"),
        }
    }
}

/// Of `patterns` (with their owners), those matching `name` at the highest specificity
/// (all of them when several resources share that one pattern).
pub fn most_specific<'a, T>(
    name: &str,
    patterns: impl IntoIterator<Item = (&'a NamePattern, T)>,
) -> Vec<T> {
    let mut best: Option<(u8, usize, u8)> = None;
    let mut out = Vec::new();
    for (p, owner) in patterns {
        if !p.matches(name) {
            continue;
        }
        let s = p.specificity();
        match best {
            Some(b) if s < b => {}
            Some(b) if s == b => out.push(owner),
            _ => {
                best = Some(s);
                out.clear();
                out.push(owner);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> NamePattern {
        NamePattern::parse(s).unwrap()
    }

    #[test]
    fn names_and_patterns_parse_and_print_back() {
        for s in [
            "db.prod.internal",
            "*.corp.example.com",
            "**.corp.example.com",
            "intranet",
            "_ldap._tcp.corp.test",
            "a-b.c1.test",
        ] {
            assert_eq!(p(s).to_string(), s);
        }
        assert_eq!(p("DB.Prod.Internal.").to_string(), "db.prod.internal");
        for bad in [
            "",
            ".",
            "a..b",
            ".a",
            "-a.test",
            "a-.test",
            "a b.test",
            "a.test ",
            "*",
            "**",
            "*.",
            "a.*.test",
            "*a.test",
            "*.*.test",
            "***.test",
            "1.2.3",
            "198.18.0.10",
            "198.18.1.x",
            "10.0.0.1o",
            "10.x.0.1",
            "a.123",
            "é.test",
            &format!("{}.test", "a".repeat(64)),
            &format!("{}test", "a.".repeat(126)),
        ] {
            assert!(NamePattern::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn wildcards_match_the_depth_they_say() {
        let one = p("*.corp.test");
        let any = p("**.corp.test");
        assert!(one.matches("a.corp.test") && one.matches("b.corp.test"));
        assert!(!one.matches("corp.test") && !one.matches("x.a.corp.test"));
        assert!(!one.matches("acorp.test") && !one.matches("a.corp.test.evil"));
        assert!(any.matches("a.corp.test") && any.matches("x.a.corp.test"));
        assert!(!any.matches("corp.test") && !any.matches("xcorp.test"));
        assert!(p("app.corp.test").matches("app.corp.test"));
        assert!(!p("app.corp.test").matches("x.app.corp.test"));
    }

    #[test]
    fn the_most_specific_pattern_decides() {
        let pats = [
            (p("**.test"), 0),
            (p("**.corp.test"), 1),
            (p("*.corp.test"), 2),
            (p("admin.corp.test"), 3),
            (p("*.corp.test"), 4),
        ];
        let of = |n: &str| most_specific(n, pats.iter().map(|(p, i)| (p, *i)));
        assert_eq!(of("admin.corp.test"), [3]);
        assert_eq!(of("app.corp.test"), [2, 4]);
        assert_eq!(of("x.app.corp.test"), [1]);
        assert_eq!(of("other.test"), [0]);
        assert!(of("elsewhere.example").is_empty());
    }
}
