//! JSON values written as YAML (what `cloud get -o yaml`, `cloud describe` and the console's
//! spec, status and editor show): block style, keys in the value's order, strings quoted only
//! where plain text would read back as something else — [`crate::yaml`] reads it back as the
//! same value.

use serde_json::Value;

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
        let documents = crate::yaml::parse_documents(&text).expect("valid YAML");
        assert_eq!(documents[0].value, value, "{text}");
    }
}
