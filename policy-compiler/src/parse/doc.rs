//! The policy's TOML document as the sections read it: tables as small lists of entries
//! (the sections' tables have a handful of keys each), strings borrowed from the text
//! where TOML allows.
//!
//! [`fast`] builds it straight from the events of `toml_parser` (the parser the `toml`
//! crate uses underneath) for the forms policies are written in: `[[section]]` blocks of
//! `key = value` lines, values of any type, inline tables. Anything else (a syntax error,
//! dotted keys, `[table]` headers, a repeated key, a very wide table) makes it give up, and
//! the document is read by `toml`'s own parser instead ([`from_de`]), which reports the
//! errors. Both give the same document for the same valid text (tests below).

use std::borrow::Cow;

use toml::de::{DeTable, DeValue};
use toml::value::Datetime;
use toml_parser::decoder::{Encoding, ScalarKind};
use toml_parser::lexer::{Token, TokenKind};
use toml_parser::parser::{Event, EventKind, RecursionGuard, ValidateWhitespace};
use toml_parser::{ParseError, Source};

use super::Span;

/// A TOML value (the payload of floats is never read: only their type is reported).
#[derive(Debug, PartialEq)]
pub(super) enum Val<'i> {
    String(Cow<'i, str>),
    Integer(Int<'i>),
    Float,
    Boolean(bool),
    Datetime(Datetime),
    Array(Vec<Node<'i>>),
    Table(Table<'i>),
}

/// An integer as written (decoded digits and radix).
#[derive(Debug, PartialEq)]
pub(super) struct Int<'i> {
    digits: Cow<'i, str>,
    radix: u32,
}

impl Int<'_> {
    pub(super) fn as_str(&self) -> &str {
        &self.digits
    }

    pub(super) fn radix(&self) -> u32 {
        self.radix
    }
}

/// A value and where it was written (for a `[[section]]` block: its header).
#[derive(Debug, PartialEq)]
pub(super) struct Node<'i> {
    val: Val<'i>,
    span: Span,
}

impl<'i> Node<'i> {
    pub(super) fn get_ref(&self) -> &Val<'i> {
        &self.val
    }

    pub(super) fn span(&self) -> Span {
        self.span.clone()
    }
}

impl<'i> Val<'i> {
    pub(super) fn as_array(&self) -> Option<&[Node<'i>]> {
        match self {
            Val::Array(a) => Some(a),
            _ => None,
        }
    }

    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            Val::String(s) => Some(s),
            _ => None,
        }
    }
}

/// A key and where it was written.
#[derive(Debug, PartialEq)]
pub(super) struct Key<'i> {
    name: Cow<'i, str>,
    span: Span,
}

impl Key<'_> {
    pub(super) fn get_ref(&self) -> &str {
        &self.name
    }

    pub(super) fn span(&self) -> Span {
        self.span.clone()
    }
}

/// A table: its entries, each key once (in file order from [`fast`], in key order from
/// [`from_de`]; the sections never depend on the order).
#[derive(Debug, Default, PartialEq)]
pub(super) struct Table<'i> {
    entries: Vec<(Key<'i>, Node<'i>)>,
}

impl<'i> Table<'i> {
    pub(super) fn get(&self, key: &str) -> Option<&Node<'i>> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&Key<'i>, &Node<'i>)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

/// The most keys [`fast`] takes in one table (it checks for repeated keys by scanning);
/// a wider table is left to `toml`.
const MAX_FAST_KEYS: usize = 64;
/// Nesting limit of `toml`'s parser (arrays and inline tables), the same here.
const DEPTH_LIMIT: u32 = 80;

/// The document from `toml`'s parser, with its errors (none: the document is complete).
pub(super) fn from_de<'i>(text: &'i str) -> (Table<'i>, Vec<toml::de::Error>) {
    let (doc, errors) = DeTable::parse_recoverable(text);
    (table_from_de(doc.into_inner()), errors)
}

fn table_from_de(t: DeTable<'_>) -> Table<'_> {
    Table {
        entries: t
            .into_iter()
            .map(|(k, v)| {
                let span = k.span();
                (
                    Key {
                        name: k.into_inner(),
                        span,
                    },
                    node_from_de(v),
                )
            })
            .collect(),
    }
}

fn node_from_de(v: serde_spanned::Spanned<DeValue<'_>>) -> Node<'_> {
    let span = v.span();
    let val = match v.into_inner() {
        DeValue::String(s) => Val::String(s),
        DeValue::Integer(i) => Val::Integer(Int {
            digits: Cow::Owned(i.as_str().to_string()),
            radix: i.radix(),
        }),
        DeValue::Float(_) => Val::Float,
        DeValue::Boolean(b) => Val::Boolean(b),
        DeValue::Datetime(d) => Val::Datetime(d),
        DeValue::Array(a) => Val::Array(a.into_iter().map(node_from_de).collect()),
        DeValue::Table(t) => Val::Table(table_from_de(t)),
    };
    Node { val, span }
}

/// Tokens lexed and parsed at a time: the document is read in pieces that each start at a
/// top-level `[[section]]` header, so neither the tokens nor the parser's events of a large
/// policy are held whole (at 100k principals they were 220 + 120 MB; a piece is ~3 MB).
/// (The unit tests split at every header: every agreement test below reads in pieces.)
const PIECE_TOKENS: usize = if cfg!(test) { 1 } else { 64 * 1024 };

/// The document, when the text is valid TOML of the usual forms; `None` otherwise (then
/// [`from_de`] reads it and reports what is wrong).
pub(super) fn fast(text: &str) -> Option<Table<'_>> {
    let source = Source::new(text);
    let mut lexer = source.lex();
    let mut doc = DocState::default();
    let mut tokens: Vec<Token> = Vec::with_capacity(PIECE_TOKENS + 1024);
    let mut events: Vec<Event> = Vec::with_capacity(PIECE_TOKENS + 1024);
    // The token that starts the next piece, read while finding the end of this one.
    let mut carry: Option<Token> = None;
    // Brackets and braces open so far (a header can start only at depth 0), and whether
    // only whitespace came since the last newline.
    let mut depth: i64 = 0;
    let mut line_start = true;
    loop {
        tokens.clear();
        events.clear();
        let mut ended = true;
        for t in carry.take().into_iter().chain(lexer.by_ref()) {
            let kind = t.kind();
            if kind == TokenKind::LeftSquareBracket
                && depth == 0
                && line_start
                && tokens.len() >= PIECE_TOKENS
            {
                carry = Some(t);
                ended = false;
                break;
            }
            match kind {
                TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket => depth += 1,
                TokenKind::RightSquareBracket | TokenKind::RightCurlyBracket => depth -= 1,
                _ => {}
            }
            // A stray closing bracket: invalid; never split again (the parser reports it).
            if depth < 0 {
                depth = i64::MAX / 2;
            }
            line_start = match kind {
                TokenKind::Newline => true,
                TokenKind::Whitespace => line_start,
                _ => false,
            };
            tokens.push(t);
        }
        let mut error: Option<ParseError> = None;
        {
            let mut ws = ValidateWhitespace::new(&mut events, source);
            let mut guarded = RecursionGuard::new(&mut ws, DEPTH_LIMIT);
            toml_parser::parser::parse_document(&tokens, &mut guarded, &mut error);
        }
        if error.is_some() {
            return None;
        }
        let mut b = Builder {
            source,
            events: &events,
            at: 0,
        };
        b.document(&mut doc)?;
        if ended {
            return Some(doc.root);
        }
    }
}

/// What the document holds so far, carried from one piece to the next.
#[derive(Default)]
struct DocState<'i> {
    root: Table<'i>,
    /// Index in `root` of the section whose block is being read.
    current: Option<usize>,
}

struct Builder<'e, 'i> {
    source: Source<'i>,
    events: &'e [Event],
    at: usize,
}

impl<'i> Builder<'_, 'i> {
    fn next(&mut self) -> Option<Event> {
        let e = self.events.get(self.at).copied();
        self.at += 1;
        e
    }

    /// The next event that is not whitespace (or, `lines`, a comment or newline).
    fn next_solid(&mut self, lines: bool) -> Option<Event> {
        loop {
            let e = self.next()?;
            match e.kind() {
                EventKind::Whitespace => {}
                EventKind::Comment | EventKind::Newline if lines => {}
                _ => return Some(e),
            }
        }
    }

    fn key(&self, e: &Event) -> Option<Key<'i>> {
        let raw = self.source.get(e)?;
        // A bare key of letters, digits, `-` and `_` is itself (what decoding checks).
        let bare = raw.as_str();
        if e.encoding().is_none()
            && !bare.is_empty()
            && bare
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Some(Key {
                name: Cow::Borrowed(bare),
                span: e.span().start()..e.span().end(),
            });
        }
        let mut name = Cow::Borrowed("");
        let mut error: Option<ParseError> = None;
        raw.decode_key(&mut name, &mut error);
        error.is_none().then(|| Key {
            name,
            span: e.span().start()..e.span().end(),
        })
    }

    /// Reads one piece's events into `doc`; `None` when they are not of the usual forms.
    fn document(&mut self, doc: &mut DocState<'i>) -> Option<()> {
        let DocState { root, current } = doc;
        while let Some(e) = self.next_solid(true) {
            match e.kind() {
                EventKind::ArrayTableOpen => {
                    let k = self.next_solid(false)?;
                    if k.kind() != EventKind::SimpleKey {
                        return None;
                    }
                    let key = self.key(&k)?;
                    let close = self.next_solid(false)?;
                    if close.kind() != EventKind::ArrayTableClose {
                        return None; // a dotted header
                    }
                    let header = e.span().start()..close.span().end();
                    let block = Node {
                        val: Val::Table(Table::default()),
                        span: header.clone(),
                    };
                    let i = match root.entries.iter().position(|(k, _)| k.name == key.name) {
                        Some(i) => i,
                        None => {
                            if root.entries.len() >= MAX_FAST_KEYS {
                                return None;
                            }
                            root.entries.push((
                                key,
                                Node {
                                    val: Val::Array(Vec::new()),
                                    span: header,
                                },
                            ));
                            root.entries.len() - 1
                        }
                    };
                    let Val::Array(blocks) = &mut root.entries[i].1.val else {
                        return None;
                    };
                    blocks.push(block);
                    *current = Some(i);
                }
                EventKind::SimpleKey => {
                    let i = (*current)?;
                    let (key, value) = self.key_value(&e)?;
                    let Val::Array(blocks) = &mut root.entries[i].1.val else {
                        return None;
                    };
                    let Some(Node {
                        val: Val::Table(t), ..
                    }) = blocks.last_mut()
                    else {
                        return None;
                    };
                    insert(t, key, value)?;
                }
                _ => return None,
            }
        }
        Some(())
    }

    /// `key = value` from its key event (not a dotted key).
    fn key_value(&mut self, k: &Event) -> Option<(Key<'i>, Node<'i>)> {
        let key = self.key(k)?;
        let sep = self.next_solid(false)?;
        if sep.kind() != EventKind::KeyValSep {
            return None;
        }
        let v = self.next_solid(false)?;
        Some((key, self.value(&v)?))
    }

    fn value(&mut self, e: &Event) -> Option<Node<'i>> {
        let start = e.span().start();
        match e.kind() {
            EventKind::Scalar => {
                let raw = self.source.get(e)?;
                // A basic string without escapes is its text between the quotes (what
                // decoding checks: no control character, `"` or `\\` in it).
                if e.encoding() == Some(Encoding::BasicString)
                    && let Some(inner) = raw
                        .as_str()
                        .strip_prefix('"')
                        .and_then(|r| r.strip_suffix('"'))
                    && inner.bytes().all(
                        |b| matches!(b, b' ' | b'\t' | 0x21 | 0x23..=0x5B | 0x5D..=0x7E | 0x80..),
                    )
                {
                    return Some(Node {
                        val: Val::String(Cow::Borrowed(inner)),
                        span: start..e.span().end(),
                    });
                }
                let mut decoded = Cow::Borrowed("");
                let mut error: Option<ParseError> = None;
                let kind = raw.decode_scalar(&mut decoded, &mut error);
                if error.is_some() {
                    return None;
                }
                let val = match kind {
                    ScalarKind::String => Val::String(decoded),
                    ScalarKind::Boolean(b) => Val::Boolean(b),
                    ScalarKind::DateTime => Val::Datetime(decoded.parse().ok()?),
                    ScalarKind::Float => Val::Float,
                    ScalarKind::Integer(radix) => Val::Integer(Int {
                        digits: decoded,
                        radix: radix.value(),
                    }),
                };
                Some(Node {
                    val,
                    span: start..e.span().end(),
                })
            }
            EventKind::ArrayOpen => {
                let mut items = Vec::new();
                loop {
                    let e = self.next_solid(true)?;
                    match e.kind() {
                        EventKind::ValueSep => {}
                        EventKind::ArrayClose => {
                            return Some(Node {
                                val: Val::Array(items),
                                span: start..e.span().end(),
                            });
                        }
                        _ => items.push(self.value(&e)?),
                    }
                }
            }
            EventKind::InlineTableOpen => {
                let mut t = Table::default();
                loop {
                    let e = self.next_solid(true)?;
                    match e.kind() {
                        EventKind::ValueSep => {}
                        EventKind::InlineTableClose => {
                            return Some(Node {
                                val: Val::Table(t),
                                span: start..e.span().end(),
                            });
                        }
                        EventKind::SimpleKey => {
                            let (key, value) = self.key_value(&e)?;
                            insert(&mut t, key, value)?;
                        }
                        _ => return None,
                    }
                }
            }
            _ => None,
        }
    }
}

/// Adds an entry; `None` for a repeated key or a table too wide to check by scanning.
fn insert<'i>(t: &mut Table<'i>, key: Key<'i>, value: Node<'i>) -> Option<()> {
    if t.entries.len() >= MAX_FAST_KEYS || t.entries.iter().any(|(k, _)| k.name == key.name) {
        return None;
    }
    t.entries.push((key, value));
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::{Rng, Scale, gen_policy, scaled_policy};

    /// The document with every table's entries in key order (as `from_de` gives them).
    fn sorted(mut t: Table<'_>) -> Table<'_> {
        t.entries.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        t.entries = t
            .entries
            .into_iter()
            .map(|(k, v)| (k, sorted_node(v)))
            .collect();
        t
    }

    fn sorted_node(n: Node<'_>) -> Node<'_> {
        let val = match n.val {
            Val::Table(t) => Val::Table(sorted(t)),
            Val::Array(a) => Val::Array(a.into_iter().map(sorted_node).collect()),
            v => v,
        };
        Node { val, span: n.span }
    }

    /// `fast` gives `toml`'s document, or gives up where `toml` finds errors.
    fn agrees(text: &str) -> bool {
        let (slow, errors) = from_de(text);
        match fast(text) {
            Some(doc) => {
                assert!(errors.is_empty(), "fast path took an invalid text:\n{text}");
                assert_eq!(sorted(doc), slow, "documents differ for:\n{text}");
                true
            }
            None => false,
        }
    }

    /// The document is read in pieces split at top-level headers only: a `[` that starts a
    /// line inside a multi-line array, or one after `=`, is not a header. (Split there, the
    /// parser would refuse the piece and the fast path would give up on a valid text.)
    #[test]
    fn pieces_split_at_headers_only() {
        let text = "[[resource]]\nname = \"r\"\ntcp = [\n[1, 2],\n  [3]\n]\nudp = [\"53\"]\n\
                    [[resource]]\nname = \"s\"\nx = { a = [\n[1]] }\n  [[user]]\nemail = \"[x]\"\n";
        assert!(agrees(text), "the fast path must read:\n{text}");
        // Invalid texts stay invalid when read in pieces.
        for bad in [
            "[[resource]]\nname = [\n[[user]]\n",
            "[[resource]]\nname = \"r\"\n]\n[[user]]\nemail = \"a\"\n",
            "[[resource]]\nname = \"r\"\n[[resource]]\nname = \"r\"\nname = \"s\"\n",
        ] {
            assert!(!agrees(bad), "the fast path took an invalid text:\n{bad}");
        }
    }

    #[test]
    fn fast_document_is_tomls_on_random_policies() {
        let mut taken = 0;
        for seed in 0..200u64 {
            let text = gen_policy(&mut Rng(seed), 1_800_000_000);
            taken += usize::from(agrees(&text));
        }
        // The generated policies are all of the usual forms: the fast path reads them all.
        assert_eq!(taken, 200);
        for rules in [10, 200, 2_000] {
            let text = scaled_policy(
                &mut Rng(u64::from(rules)),
                &Scale::for_rules(rules),
                1_800_000_000,
            );
            assert!(agrees(&text), "scaled policy of {rules} rules");
        }
    }

    /// Every policy file of the repository (examples, fixtures, invalid fixtures), also
    /// with CRLF line ends and a byte-order mark.
    #[test]
    fn fast_document_is_tomls_on_the_repositorys_policies() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut dirs = vec![root.join("tests"), root.join("../examples")];
        let mut files = Vec::new();
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let path = e.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|x| x == "toml") {
                    files.push(path);
                }
            }
        }
        let mut taken = 0;
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            taken += usize::from(agrees(&text));
            agrees(&text.replace('\n', "\r\n"));
            agrees(&format!("\u{feff}{text}"));
        }
        assert!(
            files.len() >= 40 && taken >= 30,
            "{} files, {taken} taken",
            files.len()
        );
    }

    #[test]
    fn fast_document_gives_up_on_other_forms_and_errors() {
        let ok = "[[user]]\nemail = \"a@b\" # c\n\n[[ user ]]\n\"email\" = 'x@y'\n\
                  [[service_account]]\nname = \"ci\"\nkeys = [ { name = \"k\", n = 0x1f },\n  \
                  {}, ]\nat = 2030-01-01T00:00:00Z\nf = 1.5\nb = [true, [1, \"\\u00e9\"]]\n\
                  t = \"a\tb \u{e9} ~!#[]\"\nq = \"\"\nl = 'c:\\d'\n";
        assert!(agrees(ok));
        for other in [
            "name = \"x\"\n[[user]]\n",         // a key outside any block
            "[user]\nemail = \"a@b\"\n",        // a [table]
            "[[user.x]]\nemail = \"a@b\"\n",    // a dotted header
            "[[user]]\nemail.x = \"a@b\"\n",    // a dotted key
            "[[user]]\nk = { a.b = 1 }\n",      // a dotted key inline
            "[[user]]\nemail = 1\nemail = 2\n", // a repeated key
            "[[user]]\nk = { a = 1, a = 2 }\n", // a repeated key inline
            "[[user]]\nemail = \"a\n",          // a syntax error
            "[[user]]\nat = 2030-13-01\n",      // an invalid datetime
            "[[user]]\nemail = \"\\q\"\n",      // an invalid escape
            "[[user]]\nemail = \"a\u{7f}b\"\n", // a control character
            "[[user]]\nemail = \"a\u{1}b\"\n",  // a control character
        ] {
            assert!(!agrees(other), "fast path took:\n{other}");
        }
        let wide: String = (0..=MAX_FAST_KEYS).map(|i| format!("[[s{i}]]\n")).collect();
        assert!(!agrees(&wide));
    }
}
