//! Output helpers: text cleaned of control characters for the terminal (every human-readable
//! line goes through [`clean`]), kubectl-style aligned tables, ages (`5m`, `3h`), and YAML
//! rendering of JSON values (quoted only where a plain scalar would read back differently).

pub use minicloud_model::columns::{age, age_until};
use std::borrow::Cow;

/// Text for a terminal: control characters (escape sequences that would clear the screen, retitle
/// the window or move the cursor), C1 controls, DEL and bidirectional overrides are shown as
/// escapes (`\x1b`, `\u{202e}`) instead of acting; newlines and tabs stay. Every
/// human-readable line the CLI prints goes through it ([`say!`] and its siblings); machine
/// output (`-o json`, `-o yaml`, a revealed value, container logs) is written as it is.
pub fn clean(text: &str) -> Cow<'_, str> {
    let acts = |c: char| {
        (c.is_control() && c != '\n' && c != '\t') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(acts) {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if !acts(c) => shown.push(c),
            c if (c as u32) < 0x100 => shown.push_str(&format!("\\x{:02x}", c as u32)),
            c => shown.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    Cow::Owned(shown)
}

/// Writes human-readable text (cleaned) to standard output or standard error.
pub fn write_clean(to_stderr: bool, text: &str) {
    use std::io::Write;
    let text = clean(text);
    // A closed pipe (`cloud get | head`) is not an error worth a panic.
    let _ = if to_stderr {
        std::io::stderr().lock().write_all(text.as_bytes())
    } else {
        std::io::stdout().lock().write_all(text.as_bytes())
    };
}

/// Writes machine output (JSON, YAML, a revealed value) to standard output as it is.
pub fn write_data(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Columns padded to their widest cell, separated by three spaces, like kubectl.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    table_with_widths(headers, rows, &mut Vec::new())
}

/// Like [`table`], with column widths that only grow: pass the same `widths` again to print
/// further rows aligned with an earlier table (as `get -w` does).
pub fn table_with_widths(headers: &[&str], rows: &[Vec<String>], widths: &mut Vec<usize>) -> String {
    widths.resize(headers.len(), 0);
    for (width, header) in widths.iter_mut().zip(headers) {
        *width = (*width).max(header.chars().count());
    }
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            if index < widths.len() {
                widths[index] = widths[index].max(cell.chars().count());
            }
        }
    }
    let mut text = String::new();
    let render = |cells: Vec<&str>, text: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (index, cell) in cells.iter().enumerate() {
            text.push_str(cell);
            if index < last {
                text.push_str(&" ".repeat(widths[index].saturating_sub(cell.chars().count()) + 3));
            }
        }
        text.push('\n');
    };
    render(headers.to_vec(), &mut text);
    for row in rows {
        render(row.iter().map(String::as_str).collect(), &mut text);
    }
    text
}

/// `kind/name` as the CLI names an object, with ` -n NAMESPACE` outside the default namespace.
pub fn object_label(kind: &str, name: &str, namespace: &str) -> String {
    if namespace == minicloud_crds::DEFAULT_NAMESPACE {
        format!("{}/{name}", kind.to_ascii_lowercase())
    } else {
        format!("{}/{name} -n {namespace}", kind.to_ascii_lowercase())
    }
}

pub use minicloud_model::yaml_out::yaml;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(clean("plain text\twith tab\n"), "plain text\twith tab\n");
        assert_eq!(clean("\u{1b}[2J\u{1b}]0;owned\u{7}"), "\\x1b[2J\\x1b]0;owned\\x07");
        assert_eq!(clean("a\rb\u{7f}\u{9b}c"), "a\\x0db\\x7f\\x9bc");
        assert_eq!(clean("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
    }

    /// The rule that keeps it so: outside this file, the CLI prints only through `say!` and
    /// its siblings (cleaned), or `write_data` (machine output); no raw print macro.
    #[test]
    fn the_cli_prints_nothing_raw() {
        // This crate's commands, and those the `cloud` binary runs itself (server, up).
        let directories = [concat!(env!("CARGO_MANIFEST_DIR"), "/src"), concat!(env!("CARGO_MANIFEST_DIR"), "/../src")];
        let mut raw = Vec::new();
        let entries = directories.iter().flat_map(|directory| std::fs::read_dir(directory).expect("source directory"));
        for entry in entries {
            let path = entry.expect("entry").path();
            if path.file_name().is_some_and(|name| name == "output.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("source");
            for (number, line) in text.lines().enumerate() {
                let code = line.trim_start();
                if code.starts_with("//") {
                    continue;
                }
                for raw_macro in ["println!(", "eprintln!(", "print!(", "eprint!("] {
                    let found = code
                        .match_indices(raw_macro)
                        .any(|(at, _)| at == 0 || !code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_'));
                    if found {
                        raw.push(format!("{}:{}: {code}", path.display(), number + 1));
                    }
                }
            }
        }
        assert!(raw.is_empty(), "print through say!/say_err!/show!/show_err! or write_data:\n{}", raw.join("\n"));
    }

    #[test]
    fn tables_align() {
        let text = table(&["NAME", "AGE"], &[vec!["a-long-name".into(), "5m".into()], vec!["b".into(), "1h".into()]]);
        assert_eq!(text, "NAME          AGE\na-long-name   5m\nb             1h\n");
    }
}
