//! Plain-text tables for the client commands and `dev`: left-aligned columns under upper-case
//! headers, as kubectl prints them. Cells are sanitised so that a value cannot move the cursor
//! or break a row.

/// Spaces between columns.
const GAP: usize = 3;
/// Longest cell shown for user data (values, errors); `-w json` has the full text.
pub const MAX_CELL_CHARS: usize = 60;

/// Renders `rows` under `headers`, one line each, without trailing spaces.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|header| header.chars().count()).collect();
    for row in rows {
        for (column, cell) in row.iter().enumerate() {
            let width = cell.chars().count();
            match widths.get_mut(column) {
                Some(current) => *current = (*current).max(width),
                None => widths.push(width),
            }
        }
    }
    let mut out = String::new();
    let header_cells: Vec<String> = headers.iter().map(|header| header.to_string()).collect();
    for cells in std::iter::once(&header_cells).chain(rows) {
        let mut line = String::new();
        for (column, cell) in cells.iter().enumerate() {
            line.push_str(cell);
            if column + 1 < cells.len() {
                let pad = widths[column] - cell.chars().count() + GAP;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Bytes as a table cell: text when printable UTF-8 (shortened), otherwise their size.
pub fn bytes_cell(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.chars().any(char::is_control) => shorten(text, MAX_CELL_CHARS),
        _ => format!("<{} bytes>", bytes.len()),
    }
}

/// Text as a table cell: control characters replaced, shortened.
pub fn text_cell(text: &str) -> String {
    shorten(&clean_cell(text), MAX_CELL_CHARS)
}

/// Text as a table cell at full length (for a last column, where length hurts no alignment).
pub fn clean_cell(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// "-" for an empty cell, so columns stay readable.
pub fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_string()
    } else {
        text_cell(text)
    }
}

fn shorten(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{bytes_cell, render, text_cell};

    #[test]
    fn columns_align_to_the_widest_cell() {
        let rows = vec![vec!["a".to_string(), "1".to_string()], vec!["longer".to_string(), "22".to_string()]];
        assert_eq!(render(&["NAME", "N"], &rows), "NAME     N\na        1\nlonger   22\n");
    }

    #[test]
    fn binary_and_control_characters_never_reach_the_terminal() {
        assert_eq!(bytes_cell(b"hello"), "hello");
        assert_eq!(bytes_cell(&[0xff, 0x00]), "<2 bytes>");
        assert_eq!(bytes_cell(b"a\x1b[2Jb"), "<6 bytes>");
        assert_eq!(text_cell("line\nbreak"), "line break");
        assert_eq!(bytes_cell("x".repeat(100).as_bytes()), format!("{}...", "x".repeat(60)));
    }
}
