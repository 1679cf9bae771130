//! A YAML loader that keeps positions. It turns a multi-document YAML stream into JSON values
//! and, for every key and value, the line and column it came from, so that an error found later
//! (by the schema, by serde, by a semantic rule) can point at the exact spot in the file.
//!
//! It is built on saphyr-parser's event stream rather than on a serde deserializer so that it
//! can enforce limits while it reads: nesting depth, and the number of values and of bytes a
//! document expands to (counting every alias expansion, which defuses "billion laughs" bombs,
//! including those built on one large string). An alias is checked before it is copied. Scalars
//! are resolved with the YAML 1.2 core schema; quoted scalars are always strings.

use std::collections::HashMap;

use minicloud_crds::FieldPath;
use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};
use serde_json::{Map, Number, Value};

/// Deepest nesting of mappings and sequences accepted.
pub(crate) const MAX_DEPTH: usize = 64;
/// Most values one document may expand to, aliases included.
pub(crate) const MAX_VALUES_PER_DOCUMENT: usize = 250_000;
/// Most bytes of keys and scalars one document may expand to, aliases included (a few aliases
/// of one huge string are as dangerous as many aliases of small ones).
pub(crate) const MAX_BYTES_PER_DOCUMENT: usize = 16 * 1024 * 1024;

/// A 1-based line and column in a source text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    fn of(span: &Span) -> Position {
        Position { line: span.start.line(), column: span.start.col() + 1 }
    }
}

/// Where the pieces of one document came from.
#[derive(Debug, Default)]
pub struct SpanIndex {
    values: HashMap<FieldPath, Position>,
    keys: HashMap<FieldPath, Position>,
}

impl SpanIndex {
    /// The position of the value at `path`, or of its nearest recorded ancestor.
    pub(crate) fn value_position(&self, path: &FieldPath) -> Option<Position> {
        self.nearest(path, false)
    }

    /// The position of the key that introduces `path` (falling back to the value, then to the
    /// nearest ancestor): the right place for "unknown field" and "missing field" errors.
    pub(crate) fn key_position(&self, path: &FieldPath) -> Option<Position> {
        self.nearest(path, true)
    }

    fn nearest(&self, path: &FieldPath, prefer_key: bool) -> Option<Position> {
        let mut segments = path.0.clone();
        loop {
            let candidate = FieldPath(segments.clone());
            if prefer_key {
                if let Some(position) = self.keys.get(&candidate) {
                    return Some(*position);
                }
            }
            if let Some(position) = self.values.get(&candidate) {
                return Some(*position);
            }
            segments.pop()?;
        }
    }
}

/// One document of a stream.
#[derive(Debug)]
pub struct Document {
    /// The document as JSON.
    pub value: Value,
    /// Positions of its keys and values.
    pub spans: SpanIndex,
    /// Where the document starts.
    pub position: Position,
}

/// A problem reading YAML, at a position.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{position:?}: {message}")]
pub struct YamlError {
    pub position: Position,
    pub message: String,
}

impl YamlError {
    fn at(position: Position, message: impl Into<String>) -> YamlError {
        YamlError { position, message: message.into() }
    }
}

/// How much of a document's budget a value used: values and bytes (keys and scalars).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Size {
    values: usize,
    bytes: usize,
}

enum Frame {
    Sequence {
        items: Vec<Value>,
        path: FieldPath,
        anchor: usize,
        size_at_start: Size,
    },
    Mapping {
        map: Map<String, Value>,
        path: FieldPath,
        anchor: usize,
        size_at_start: Size,
        pending_key: Option<(String, Position)>,
        /// Keys written explicitly (merge keys `<<` must not override them).
        explicit_keys: Vec<String>,
    },
}

/// Reads every document of `text`. Empty documents are skipped. The first syntax error or
/// exceeded limit ends the stream: YAML cannot be resynchronised after it.
pub fn parse_documents(text: &str) -> Result<Vec<Document>, YamlError> {
    let mut loader = Loader::default();
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|error| {
            let marker = error.marker();
            YamlError::at(
                Position { line: marker.line(), column: marker.col() + 1 },
                format!("invalid YAML: {}", error.info()),
            )
        })?;
        loader.handle(event, span)?;
    }
    Ok(loader.documents)
}

#[derive(Default)]
struct Loader {
    documents: Vec<Document>,
    stack: Vec<Frame>,
    spans: SpanIndex,
    anchors: HashMap<usize, (Value, Size)>,
    size: Size,
    root: Option<Value>,
    document_position: Position,
}

impl Loader {
    fn handle(&mut self, event: Event<'_>, span: Span) -> Result<(), YamlError> {
        let position = Position::of(&span);
        match event {
            Event::DocumentStart(_) => {
                self.spans = SpanIndex::default();
                self.anchors.clear();
                self.size = Size::default();
                self.root = None;
                self.document_position = position;
            }
            Event::DocumentEnd => {
                if let Some(value) = self.root.take() {
                    if !value.is_null() {
                        let position =
                            self.spans.values.get(&FieldPath::root()).copied().unwrap_or(self.document_position);
                        self.documents.push(Document { value, spans: std::mem::take(&mut self.spans), position });
                    }
                }
            }
            Event::Alias(anchor) => {
                let size = self
                    .anchors
                    .get(&anchor)
                    .map(|(_, size)| *size)
                    .ok_or_else(|| YamlError::at(position, "alias refers to an unknown anchor"))?;
                // Counted before the copy is made: a bomb stops here, not in the allocator.
                self.count(size, position)?;
                let value = self.anchors.get(&anchor).map(|(value, _)| value.clone()).unwrap_or_default();
                if self.expects_key() {
                    let Value::String(key) = value else {
                        return Err(YamlError::at(position, "only string aliases can be used as mapping keys"));
                    };
                    self.set_key(key, position)?;
                } else {
                    self.add_value(value, position)?;
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let size = Size { values: 1, bytes: text.len() };
                self.count(size, position)?;
                if self.expects_key() {
                    if anchor != 0 {
                        self.anchors.insert(anchor, (Value::String(text.to_string()), size));
                    }
                    self.set_key(text.into_owned(), position)?;
                } else {
                    let value = resolve_scalar(&text, style, tag.as_deref(), position)?;
                    if anchor != 0 {
                        self.anchors.insert(anchor, (value.clone(), size));
                    }
                    self.add_value(value, position)?;
                }
            }
            Event::SequenceStart(anchor, tag) => {
                check_collection_tag(tag.as_deref(), "!!seq", position)?;
                let path = self.child_path(position)?;
                self.spans.values.insert(path.clone(), position);
                self.push(Frame::Sequence { items: Vec::new(), path, anchor, size_at_start: self.size }, position)?;
            }
            Event::MappingStart(anchor, tag) => {
                check_collection_tag(tag.as_deref(), "!!map", position)?;
                let path = self.child_path(position)?;
                self.spans.values.insert(path.clone(), position);
                self.push(
                    Frame::Mapping {
                        map: Map::new(),
                        path,
                        anchor,
                        size_at_start: self.size,
                        pending_key: None,
                        explicit_keys: Vec::new(),
                    },
                    position,
                )?;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let frame = self.stack.pop().ok_or_else(|| YamlError::at(position, "unbalanced YAML structure"))?;
                let (value, anchor, size_at_start) = match frame {
                    Frame::Sequence { items, anchor, size_at_start, .. } => {
                        (Value::Array(items), anchor, size_at_start)
                    }
                    Frame::Mapping { map, anchor, size_at_start, .. } => (Value::Object(map), anchor, size_at_start),
                };
                self.count(Size { values: 1, bytes: 0 }, position)?;
                if anchor != 0 {
                    let size = Size {
                        values: self.size.values - size_at_start.values,
                        bytes: self.size.bytes - size_at_start.bytes,
                    };
                    self.anchors.insert(anchor, (value.clone(), size));
                }
                self.attach(value, position)?;
            }
            Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
        Ok(())
    }

    fn expects_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Mapping { pending_key: None, .. }))
    }

    /// Adds what a value (or an alias's copy of one) costs to the document's total.
    fn count(&mut self, size: Size, position: Position) -> Result<(), YamlError> {
        self.size.values = self.size.values.saturating_add(size.values);
        self.size.bytes = self.size.bytes.saturating_add(size.bytes);
        if self.size.values > MAX_VALUES_PER_DOCUMENT {
            return Err(YamlError::at(
                position,
                format!(
                    "document expands to more than {MAX_VALUES_PER_DOCUMENT} values (are aliases nested too deeply?); split it into smaller documents"
                ),
            ));
        }
        if self.size.bytes > MAX_BYTES_PER_DOCUMENT {
            return Err(YamlError::at(
                position,
                format!(
                    "document expands to more than {} MiB of text (are large values repeated through aliases?); split it into smaller documents",
                    MAX_BYTES_PER_DOCUMENT >> 20
                ),
            ));
        }
        Ok(())
    }

    fn push(&mut self, frame: Frame, position: Position) -> Result<(), YamlError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(YamlError::at(position, format!("nesting deeper than {MAX_DEPTH} levels is not supported")));
        }
        self.stack.push(frame);
        Ok(())
    }

    /// The path of the value about to start, which must not be in key position.
    fn child_path(&self, position: Position) -> Result<FieldPath, YamlError> {
        match self.stack.last() {
            None => Ok(FieldPath::root()),
            Some(Frame::Sequence { items, path, .. }) => Ok(path.index(items.len())),
            Some(Frame::Mapping { pending_key: Some((key, _)), path, .. }) => Ok(path.key(key)),
            Some(Frame::Mapping { pending_key: None, .. }) => Err(YamlError::at(
                position,
                "mappings and sequences cannot be used as mapping keys; use a plain string key",
            )),
        }
    }

    fn set_key(&mut self, key: String, position: Position) -> Result<(), YamlError> {
        if let Some(Frame::Mapping { map, path, pending_key, explicit_keys, .. }) = self.stack.last_mut() {
            if key != "<<" {
                if explicit_keys.contains(&key) {
                    return Err(YamlError::at(position, format!("duplicate key {key:?} in this mapping")));
                }
                // A key merged in earlier through `<<` is overridden by an explicit one.
                map.remove(&key);
                explicit_keys.push(key.clone());
            }
            self.spans.keys.insert(path.key(&key), position);
            *pending_key = Some((key, position));
        }
        Ok(())
    }

    fn add_value(&mut self, value: Value, position: Position) -> Result<(), YamlError> {
        let path = self.child_path(position)?;
        self.spans.values.insert(path, position);
        self.attach(value, position)
    }

    /// Attaches a finished value to its parent (or makes it the document root).
    fn attach(&mut self, value: Value, position: Position) -> Result<(), YamlError> {
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Sequence { items, path, .. }) => {
                self.spans.values.entry(path.index(items.len())).or_insert(position);
                items.push(value);
            }
            Some(Frame::Mapping { map, path, pending_key, explicit_keys, .. }) => {
                let Some((key, key_position)) = pending_key.take() else {
                    return Err(YamlError::at(position, "mappings and sequences cannot be used as mapping keys"));
                };
                let child = path.key(&key);
                self.spans.values.entry(child).or_insert(position);
                if key == "<<" {
                    merge_into(map, explicit_keys, value, key_position)?;
                } else {
                    map.insert(key, value);
                }
            }
        }
        Ok(())
    }
}

/// Applies a YAML merge key (`<<: *defaults`): keys of the merged mapping(s) fill in what the
/// mapping does not set itself.
fn merge_into(
    map: &mut Map<String, Value>,
    explicit: &[String],
    value: Value,
    position: Position,
) -> Result<(), YamlError> {
    let sources = match value {
        Value::Object(source) => vec![source],
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Object(source) => Ok(source),
                _ => Err(YamlError::at(position, "`<<` merges mappings only")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(YamlError::at(position, "`<<` merges mappings only")),
    };
    for source in sources {
        for (key, value) in source {
            if !explicit.contains(&key) && !map.contains_key(&key) {
                map.insert(key, value);
            }
        }
    }
    Ok(())
}

fn check_collection_tag(tag: Option<&Tag>, allowed: &str, position: Position) -> Result<(), YamlError> {
    match tag {
        None => Ok(()),
        Some(tag) if format!("{}{}", tag.handle, tag.suffix) == allowed || tag.suffix.ends_with(&allowed[2..]) => {
            Ok(())
        }
        Some(tag) => Err(YamlError::at(position, format!("unsupported YAML tag {}{}", tag.handle, tag.suffix))),
    }
}

/// Resolves a scalar with the YAML 1.2 core schema (quoted scalars are strings).
fn resolve_scalar(text: &str, style: ScalarStyle, tag: Option<&Tag>, position: Position) -> Result<Value, YamlError> {
    if let Some(tag) = tag {
        let core = tag.handle == "!!" || tag.handle == "tag:yaml.org,2002:";
        let name = if core { tag.suffix.as_str() } else { "" };
        return match name {
            "str" => Ok(Value::String(text.to_owned())),
            "null" => Ok(Value::Null),
            "bool" => match text {
                "true" | "True" | "TRUE" => Ok(Value::Bool(true)),
                "false" | "False" | "FALSE" => Ok(Value::Bool(false)),
                _ => Err(YamlError::at(position, format!("{text:?} is not a boolean"))),
            },
            "int" => parse_integer(text).ok_or_else(|| YamlError::at(position, format!("{text:?} is not an integer"))),
            "float" => parse_float(text).ok_or_else(|| YamlError::at(position, format!("{text:?} is not a number"))),
            _ => Err(YamlError::at(position, format!("unsupported YAML tag {}{}; remove it", tag.handle, tag.suffix))),
        };
    }
    if style != ScalarStyle::Plain {
        return Ok(Value::String(text.to_owned()));
    }
    Ok(match text {
        "" | "~" | "null" | "Null" | "NULL" => Value::Null,
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        _ => parse_integer(text).or_else(|| parse_float(text)).unwrap_or_else(|| Value::String(text.to_owned())),
    })
}

fn parse_integer(text: &str) -> Option<Value> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, digits) = if let Some(hex) = digits.strip_prefix("0x") {
        (16, hex)
    } else if let Some(octal) = digits.strip_prefix("0o") {
        (8, octal)
    } else {
        (10, digits)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = u64::from_str_radix(digits, radix).ok()?;
    if negative {
        let value = i64::try_from(magnitude).ok()?;
        Some(Value::Number(Number::from(-value)))
    } else {
        Some(Value::Number(Number::from(magnitude)))
    }
}

fn parse_float(text: &str) -> Option<Value> {
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    let looks_numeric = body.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && body.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        && body.chars().any(|c| c.is_ascii_digit());
    if !looks_numeric {
        return None;
    }
    let number: f64 = text.parse().ok()?;
    Number::from_f64(number).map(Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(text: &str) -> Document {
        let mut documents = parse_documents(text).expect("valid YAML");
        assert_eq!(documents.len(), 1);
        documents.remove(0)
    }

    #[test]
    fn scalars_follow_the_core_schema() {
        let document =
            one("a: 1\nb: -2\nc: 1.5\nd: true\ne: ~\nf: '1'\ng: 0x1f\nh: hello\ni: 1e3\nj: 99999999999999999999\n");
        assert_eq!(
            document.value,
            json!({"a": 1, "b": -2, "c": 1.5, "d": true, "e": null, "f": "1", "g": 31, "h": "hello", "i": 1000.0, "j": 1e20})
        );
    }

    #[test]
    fn positions_of_keys_and_values() {
        let document = one("spec:\n  ports:\n    - containerPort: 80\n      name: web\n");
        let port = FieldPath::parse("spec.ports[0].containerPort");
        assert_eq!(document.spans.key_position(&port), Some(Position { line: 3, column: 7 }));
        assert_eq!(document.spans.value_position(&port), Some(Position { line: 3, column: 22 }));
        let missing = FieldPath::parse("spec.ports[0].hostPort");
        assert_eq!(document.spans.key_position(&missing), Some(Position { line: 3, column: 7 }));
    }

    #[test]
    fn several_documents_and_empty_ones() {
        let documents = parse_documents("a: 1\n---\n# only a comment\n---\nb: 2\n").expect("valid");
        assert_eq!(documents.len(), 2);
        assert_eq!(documents[1].position.line, 5);
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let error = parse_documents("a: 1\nb: 2\na: 3\n").expect_err("duplicate");
        assert_eq!(error.position, Position { line: 3, column: 1 });
        assert!(error.message.contains("duplicate key"));
    }

    #[test]
    fn merge_keys_fill_in_defaults() {
        let document = one("base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  y: 3\n");
        assert_eq!(document.value["c"], json!({"x": 1, "y": 3}));
    }

    #[test]
    fn alias_bombs_are_bounded() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..10 {
            let previous = level - 1;
            text.push_str(&format!(
                "a{level}: &a{level} [*a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}]\n"
            ));
        }
        let error = parse_documents(&text).expect_err("bomb");
        assert!(error.message.contains("expands to more than"), "{}", error.message);
    }

    #[test]
    fn alias_bombs_of_one_large_string_are_bounded_in_bytes() {
        // 17 aliases of a 1 MiB string stay far below the value limit but above the byte limit.
        let mut text = format!("big: &big \"{}\"\ncopies: [", "x".repeat(1 << 20));
        text.push_str(&vec!["*big"; 100_000].join(", "));
        text.push_str("]\n");
        let error = parse_documents(&text).expect_err("bomb");
        assert!(error.message.contains("MiB of text"), "{}", error.message);
        // Aliases as keys are counted too.
        let keys = "  - ? *big\n    : 1\n".repeat(40);
        let text = format!("big: &big \"{}\"\nm:\n{keys}", "y".repeat(1 << 20));
        let error = parse_documents(&text).expect_err("key bomb");
        assert!(error.message.contains("MiB of text"), "{}", error.message);
        // A few copies of a modest string are fine.
        let text = format!("s: &s \"{}\"\nc: [*s, *s, *s]\n", "z".repeat(1000));
        assert_eq!(one(&text).value["c"][2].as_str().map(str::len), Some(1000));
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let text = format!("{}{}", "[".repeat(100), "]".repeat(100));
        let error = parse_documents(&text).expect_err("too deep");
        assert!(error.message.contains("nesting deeper"), "{}", error.message);
        // Far deeper input stops in the parser itself, with an error rather than a crash.
        let text = format!("{}{}", "[".repeat(1_000_000), "]".repeat(1_000_000));
        assert!(parse_documents(&text).is_err());
    }

    #[test]
    fn syntax_errors_have_positions() {
        let error = parse_documents("a: 1\nb: [1, 2\n").expect_err("unterminated");
        assert!(error.position.line >= 2, "{error:?}");
        let error = parse_documents("a: 1\n  b: 2\n").expect_err("bad indentation");
        assert_eq!(error.position.line, 2, "{error:?}");
    }

    #[test]
    fn unknown_tags_and_complex_keys_are_rejected() {
        assert!(parse_documents("a: !custom 1\n").is_err());
        assert!(parse_documents("? [a, b]\n: 1\n").is_err());
        assert_eq!(one("a: !!str 12\n").value, json!({"a": "12"}));
    }
}
