//! Output helpers: kubectl-style aligned tables, ages (`5m`, `3h`), and YAML rendering of
//! JSON values (quoted only where a plain scalar would read back differently).

pub use crate::columns::{age, age_until};
use serde_json::Value;

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

/// A JSON value as YAML, indented by `indent` spaces.
pub fn yaml(value: &Value, indent: usize) -> String {
    let mut text = String::new();
    write_yaml(value, indent, &mut text);
    text
}

fn write_yaml(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, item) in map {
                out.push_str(&pad);
                out.push_str(&scalar_text(&Value::String(key.clone())));
                out.push(':');
                write_child(item, indent, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                out.push_str(&pad);
                out.push('-');
                match item {
                    Value::Object(map) if !map.is_empty() => {
                        // The first key goes on the dash's line.
                        let nested = yaml(item, indent + 2);
                        out.push(' ');
                        out.push_str(nested.trim_start());
                    }
                    _ => write_child(item, indent, out),
                }
            }
        }
        other => {
            out.push_str(&pad);
            out.push_str(&scalar_text(other));
            out.push('\n');
        }
    }
}

fn write_child(item: &Value, indent: usize, out: &mut String) {
    match item {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            write_yaml(item, indent + 2, out);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            write_yaml(item, indent + 2, out);
        }
        _ => {
            out.push(' ');
            out.push_str(&scalar_text(item));
            out.push('\n');
        }
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(flag) => flag.to_string(),
        Value::Number(number) => number.to_string(),
        Value::String(text) if needs_quotes(text) => Value::String(text.clone()).to_string(),
        Value::String(text) => text.clone(),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

/// Whether a string must be quoted to read back as the same string.
fn needs_quotes(text: &str) -> bool {
    const RESERVED: [&str; 12] =
        ["", "~", "null", "Null", "NULL", "true", "True", "TRUE", "false", "False", "FALSE", "-"];
    RESERVED.contains(&text)
        || text.parse::<f64>().is_ok()
        || text.starts_with("0x")
        || text.starts_with("0o")
        || text.starts_with(|c: char| " -?:,[]{}#&*!|>'\"%@`".contains(c))
        || text.ends_with([' ', ':'])
        || text.contains(": ")
        || text.contains(" #")
        || text.chars().any(|c| c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_reads_back_as_the_same_value() {
        let value = json!({
            "name": "web", "version": "15", "flag": "true", "empty": "", "list": [{"a": 1, "b": [1, 2]}, "x"],
            "nested": {"deep": {"deeper": null}}, "colon": "a: b", "multi": "line\nbreak", "nothing": {}, "none": []
        });
        let text = yaml(&value, 0);
        let documents = crate::manifest::yaml::parse_documents(&text).expect("valid YAML");
        assert_eq!(documents[0].value, value, "{text}");
    }

    #[test]
    fn tables_align() {
        let text = table(&["NAME", "AGE"], &[vec!["a-long-name".into(), "5m".into()], vec!["b".into(), "1h".into()]]);
        assert_eq!(text, "NAME          AGE\na-long-name   5m\nb             1h\n");
    }
}
