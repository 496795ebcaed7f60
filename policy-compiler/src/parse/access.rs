//! TOML access: one `[[section]]` table and typed getters that report, located, what was
//! found and what would be valid.

use super::doc::{Table, Val};

use super::{Sp, Span, V};
use crate::diag::Sink;

/// One `[[section]]` table.
pub(super) struct Tbl<'a, 'i> {
    pub(super) t: &'a Table<'i>,
    pub(super) header: Span,
    pub(super) section: &'static str,
}

pub(super) fn type_name(v: &Val<'_>) -> &'static str {
    match v {
        Val::String(_) => "a string",
        Val::Integer(_) => "an integer",
        Val::Float => "a float",
        Val::Boolean(_) => "a boolean",
        Val::Datetime(_) => "a datetime",
        Val::Array(_) => "an array",
        Val::Table(_) => "a table",
    }
}

impl<'a, 'i> Tbl<'a, 'i> {
    pub(super) fn get(&self, key: &str) -> Option<&'a V<'i>> {
        self.t.get(key)
    }

    pub(super) fn check_keys(&self, sink: &mut Sink<'_>, allowed: &[&str]) {
        for (k, _) in self.t.iter() {
            if !allowed.contains(&k.get_ref()) {
                sink.error(
                    &k.span(),
                    format!("unknown key `{}` in [[{}]]", k.get_ref(), self.section),
                    format!("valid keys are: {}", allowed.join(", ")),
                );
            }
        }
    }

    fn missing(&self, sink: &mut Sink<'_>, key: &str, example: &str) {
        sink.error(
            &self.header,
            format!("missing key `{key}` in [[{}]]", self.section),
            format!("add `{key} = {example}`"),
        );
    }

    pub(super) fn string(
        &self,
        sink: &mut Sink<'_>,
        key: &str,
        example: &str,
    ) -> Option<Sp<&'a str>> {
        match self.get(key) {
            None => {
                self.missing(sink, key, example);
                None
            }
            Some(v) => as_string(sink, key, v, example),
        }
    }

    pub(super) fn opt_string(
        &self,
        sink: &mut Sink<'_>,
        key: &str,
        example: &str,
    ) -> Option<Sp<&'a str>> {
        self.get(key).and_then(|v| as_string(sink, key, v, example))
    }

    /// A list of strings (`required`: missing is an error; otherwise empty).
    pub(super) fn strings(
        &self,
        sink: &mut Sink<'_>,
        key: &str,
        required: bool,
        example: &str,
    ) -> Option<Vec<Sp<&'a str>>> {
        let Some(v) = self.get(key) else {
            if required {
                self.missing(sink, key, example);
                return None;
            }
            return Some(Vec::new());
        };
        let Some(arr) = v.get_ref().as_array() else {
            sink.error(
                &v.span(),
                format!(
                    "`{key}` must be a list of strings, found {}",
                    type_name(v.get_ref())
                ),
                format!("write `{key} = {example}`"),
            );
            return None;
        };
        let mut out = Vec::with_capacity(arr.len());
        let mut ok = true;
        for item in arr.iter() {
            match item.get_ref().as_str() {
                Some(s) => out.push((s, item.span())),
                None => {
                    sink.error(
                        &item.span(),
                        format!(
                            "`{key}` must be a list of strings, found {} in it",
                            type_name(item.get_ref())
                        ),
                        format!("write `{key} = {example}`"),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    pub(super) fn opt_bool(&self, sink: &mut Sink<'_>, key: &str) -> Option<Sp<bool>> {
        let v = self.get(key)?;
        match v.get_ref() {
            Val::Boolean(b) => Some((*b, v.span())),
            other => {
                sink.error(
                    &v.span(),
                    format!("`{key}` must be true or false, found {}", type_name(other)),
                    format!("write `{key} = true` or `{key} = false`"),
                );
                None
            }
        }
    }
}

fn as_string<'a>(
    sink: &mut Sink<'_>,
    key: &str,
    v: &'a V<'_>,
    example: &str,
) -> Option<Sp<&'a str>> {
    match v.get_ref() {
        Val::String(s) => Some((s, v.span())),
        other => {
            sink.error(
                &v.span(),
                format!("`{key}` must be a string, found {}", type_name(other)),
                format!("write `{key} = {example}`"),
            );
            None
        }
    }
}
