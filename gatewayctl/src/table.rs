//! A small text table: left-aligned columns separated by two spaces, upper-case headers,
//! no trailing whitespace. Cells are sanitized (control characters escaped) because they
//! may hold text reported by agents.

/// A table of text cells.
#[derive(Clone, Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// Escapes control characters (newlines, terminal escapes) so one cell stays one line.
pub fn sanitize(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn width(s: &str) -> usize {
    s.chars().count()
}

impl Table {
    /// A table with these column headers (shown upper-case).
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_uppercase()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra cells are dropped.
    pub fn row<S: AsRef<str>>(&mut self, cells: &[S]) {
        let mut r: Vec<String> = cells
            .iter()
            .take(self.headers.len())
            .map(|c| sanitize(c.as_ref()))
            .collect();
        r.resize(self.headers.len(), String::new());
        self.rows.push(r);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Column widths: the widest cell of each column, header included.
    pub fn widths(&self) -> Vec<usize> {
        let mut w: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(width(c));
            }
        }
        w
    }

    /// One line of cells padded to `widths` (a longer cell pushes the rest right).
    pub fn line<S: AsRef<str>>(widths: &[usize], cells: &[S]) -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let c = sanitize(c.as_ref());
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(&c);
            if i + 1 < cells.len() {
                let w = widths.get(i).copied().unwrap_or(0);
                s.extend(std::iter::repeat_n(' ', w.saturating_sub(width(&c))));
            }
        }
        s.trim_end().to_string()
    }

    /// The header line (for streaming rows afterwards with [`Table::line`]).
    pub fn header_line(&self, widths: &[usize]) -> String {
        Table::line(widths, &self.headers)
    }

    /// The header and every row, each line ending in `\n`.
    pub fn render(&self) -> String {
        let w = self.widths();
        let mut out = self.header_line(&w);
        out.push('\n');
        for r in &self.rows {
            out.push_str(&Table::line(&w, r));
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_trimmed() {
        let mut t = Table::new(&["kind", "name", "details"]);
        t.row(&["resource", "web", "address=1.2.3.4"]);
        t.row(&["user", "alice@example.com", ""]);
        t.row(&["x"]);
        assert_eq!(
            t.render(),
            "KIND      NAME               DETAILS\n\
             resource  web                address=1.2.3.4\n\
             user      alice@example.com\n\
             x\n"
        );
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut t = Table::new(&["a"]);
        t.row(&["x\ny\u{1b}[31m"]);
        assert_eq!(t.render(), "A\nx\\ny\\u{1b}[31m\n");
    }
}
