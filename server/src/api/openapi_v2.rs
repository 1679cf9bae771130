//! `/openapi/v2`: the kinds' schemas as a Swagger 2.0 document, in JSON or in the protocol
//! buffer encoding (gnostic's `openapi.v2.Document`) that older kubectl (before OpenAPI v3,
//! such as Debian's 1.20) reads for `kubectl explain` and for its client-side validation.
//!
//! Only what those readers use is there: `definitions`, each kind's carrying
//! `x-kubernetes-group-version-kind`, and each kind's PATCH operation with the query
//! parameters kubectl checks for (it sends `dryRun` only where the document lists it). Schemas are rewritten into the one-type-per-schema
//! dialect Kubernetes' readers accept: `[T, "null"]` becomes `T`, `allOf`/`anyOf` around one
//! reference become the reference, other unions become "any value".

use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use minicloud_crds::{Kind, API_GROUP};
use serde_json::{json, Map, Value};

/// The media type the protocol buffer encoding is answered with: kubectl asks for
/// `application/com.github.proto-openapi.spec.v2@v1.0+protobuf`, a name Go's media type parser
/// refuses in a Content-Type, so (as Kubernetes does) the answer says octet-stream.
const PROTOBUF_ANSWER: &str = "application/octet-stream";

/// `GET /openapi/v2`: protocol buffers when asked for them, JSON otherwise.
pub async fn serve(headers: HeaderMap) -> Response {
    let wants_protobuf = headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|accept| accept.to_str().is_ok_and(|accept| accept.contains("protobuf")));
    let document = document();
    if wants_protobuf {
        ([(header::CONTENT_TYPE, PROTOBUF_ANSWER)], encode_document(&document)).into_response()
    } else {
        axum::Json(document).into_response()
    }
}

/// The Swagger 2.0 document (definitions only; the paths are in the OpenAPI v3 document).
pub fn document() -> Value {
    let mut definitions = Map::new();
    let mut paths = Map::new();
    for kind in Kind::ALL {
        // The PATCH operation, with the parameters kubectl looks for before it sends them
        // (`dryRun`, `fieldManager`).
        paths.insert(
            format!("/apis/{}/namespaces/{{namespace}}/{}/{{name}}", minicloud_crds::API_VERSION, kind.plural()),
            json!({"patch": {
                "operationId": format!("patch{}", kind.as_str()),
                "x-kubernetes-group-version-kind": {"group": API_GROUP, "version": "v1", "kind": kind.as_str()},
                "parameters": [
                    {"name": "dryRun", "in": "query", "type": "string"},
                    {"name": "fieldManager", "in": "query", "type": "string"},
                ],
                "responses": {"200": {"description": "OK"}},
            }}),
        );
        let mut schema = kind.schema();
        if let Some(object) = schema.as_object_mut() {
            object.remove("$schema");
            object.remove("$id");
            if let Some(Value::Object(shared)) = object.remove("definitions") {
                for (name, definition) in shared {
                    definitions.insert(name, simplify(&definition));
                }
            }
        }
        let mut schema = simplify(&schema);
        schema["x-kubernetes-group-version-kind"] =
            json!([{"group": API_GROUP, "version": "v1", "kind": kind.as_str()}]);
        definitions.insert(kind.as_str().to_owned(), schema);
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "minicloud", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "definitions": definitions,
    })
}

/// A draft-07 schema in the dialect Kubernetes' OpenAPI v2 readers accept.
fn simplify(schema: &Value) -> Value {
    let Value::Object(source) = schema else {
        // `true` (anything) or `false`: an unconstrained schema.
        return json!({});
    };
    // One reference wrapped in allOf / anyOf (with "null" for optional ones): the reference.
    for union in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(members)) = source.get(union) {
            let named: Vec<&Value> =
                members.iter().filter(|member| member.get("type") != Some(&json!("null"))).collect();
            let mut result = Map::new();
            if let [single] = named.as_slice() {
                if let Value::Object(inner) = simplify(single) {
                    result = inner;
                }
            }
            if let Some(description) = source.get("description") {
                result.insert("description".into(), description.clone());
            }
            return Value::Object(result);
        }
    }
    let mut result = Map::new();
    for (key, value) in source {
        match key.as_str() {
            "$ref" => {
                let name = value.as_str().unwrap_or("").rsplit('/').next().unwrap_or("");
                result.insert(key.clone(), json!(format!("#/definitions/{name}")));
            }
            "type" => match value {
                Value::Array(types) => {
                    let named: Vec<&Value> = types.iter().filter(|t| t.as_str() != Some("null")).collect();
                    if let [single] = named.as_slice() {
                        result.insert(key.clone(), (*single).clone());
                    }
                }
                other => {
                    result.insert(key.clone(), other.clone());
                }
            },
            "const" => {
                result.insert("enum".into(), json!([value]));
            }
            "properties" => {
                let properties: Map<String, Value> = value
                    .as_object()
                    .map(|map| map.iter().map(|(name, property)| (name.clone(), simplify(property))).collect())
                    .unwrap_or_default();
                result.insert(key.clone(), Value::Object(properties));
            }
            "items" => {
                result.insert(key.clone(), simplify(value));
            }
            "additionalProperties" if value != &Value::Bool(false) => {
                result.insert(key.clone(), simplify(value));
            }
            "description" | "format" | "default" | "enum" | "required" | "minimum" | "maximum" | "minLength"
            | "maxLength" | "minItems" | "maxItems" | "pattern" | "title" => {
                result.insert(key.clone(), value.clone());
            }
            _ => {}
        }
    }
    // An object without properties is a map: say what its values are (anything).
    if result.get("type") == Some(&json!("object"))
        && !result.contains_key("properties")
        && !result.contains_key("additionalProperties")
    {
        result.insert("additionalProperties".into(), json!({}));
    }
    Value::Object(result)
}

/// A protocol buffer message being written.
#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.0.push((value as u8) | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
    }

    fn key(&mut self, field: u32, wire_type: u8) {
        self.varint((u64::from(field) << 3) | u64::from(wire_type));
    }

    fn bytes(&mut self, field: u32, bytes: &[u8]) {
        self.key(field, 2);
        self.varint(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
    }

    fn string(&mut self, field: u32, text: &str) {
        if !text.is_empty() {
            self.bytes(field, text.as_bytes());
        }
    }

    fn message(&mut self, field: u32, message: Message) {
        self.bytes(field, &message.0);
    }

    fn double(&mut self, field: u32, value: f64) {
        self.key(field, 1);
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn int64(&mut self, field: u32, value: i64) {
        self.key(field, 0);
        self.varint(value as u64);
    }

    fn boolean(&mut self, field: u32, value: bool) {
        self.key(field, 0);
        self.varint(u64::from(value));
    }
}

/// `openapi.v2.Any` holding a value as YAML (JSON is YAML).
fn any(value: &Value) -> Message {
    let mut message = Message::default();
    message.string(2, &value.to_string());
    message
}

/// `openapi.v2.Document`: swagger (1), info (2), paths (8), definitions (9).
fn encode_document(document: &Value) -> Vec<u8> {
    let mut out = Message::default();
    out.string(1, document["swagger"].as_str().unwrap_or("2.0"));
    let mut info = Message::default();
    info.string(1, document["info"]["title"].as_str().unwrap_or(""));
    info.string(2, document["info"]["version"].as_str().unwrap_or(""));
    out.message(2, info);
    let mut paths = Message::default();
    for (name, item) in document["paths"].as_object().into_iter().flatten() {
        let mut named = Message::default();
        named.string(1, name);
        named.message(2, path_item(item));
        paths.message(2, named);
    }
    out.message(8, paths);
    let mut definitions = Message::default();
    for (name, schema) in document["definitions"].as_object().into_iter().flatten() {
        definitions.message(1, named_schema(name, schema));
    }
    out.message(9, definitions);
    out.0
}

/// `openapi.v2.PathItem` with its `patch` (8) operation: operation id (5), query parameters
/// (8, each a `ParametersItem` → `Parameter` → `NonBodyParameter` → `QueryParameterSubSchema`:
/// in (2), name (4), type (6)), responses (9) and vendor extensions (13).
fn path_item(item: &Value) -> Message {
    let operation = &item["patch"];
    let mut patch = Message::default();
    patch.string(5, operation["operationId"].as_str().unwrap_or(""));
    for parameter in operation["parameters"].as_array().into_iter().flatten() {
        let mut query = Message::default();
        query.string(2, "query");
        query.string(4, parameter["name"].as_str().unwrap_or(""));
        query.string(6, parameter["type"].as_str().unwrap_or("string"));
        let mut non_body = Message::default();
        non_body.message(3, query);
        let mut parameter = Message::default();
        parameter.message(2, non_body);
        let mut item = Message::default();
        item.message(1, parameter);
        patch.message(8, item);
    }
    let mut response = Message::default();
    response.string(1, "OK");
    let mut value = Message::default();
    value.message(1, response);
    let mut ok = Message::default();
    ok.string(1, "200");
    ok.message(2, value);
    let mut responses = Message::default();
    responses.message(1, ok);
    patch.message(9, responses);
    for (name, value) in operation.as_object().into_iter().flatten().filter(|(name, _)| name.starts_with("x-")) {
        let mut extension = Message::default();
        extension.string(1, name);
        extension.message(2, any(value));
        patch.message(13, extension);
    }
    let mut out = Message::default();
    out.message(8, patch);
    out
}

/// `openapi.v2.NamedSchema`: name (1), value (2).
fn named_schema(name: &str, schema: &Value) -> Message {
    let mut message = Message::default();
    message.string(1, name);
    message.message(2, encode_schema(schema));
    message
}

/// `openapi.v2.Schema`, the fields Kubernetes' readers use.
fn encode_schema(schema: &Value) -> Message {
    let mut out = Message::default();
    let text = |key: &str| schema.get(key).and_then(Value::as_str).unwrap_or("");
    out.string(1, text("$ref"));
    out.string(2, text("format"));
    out.string(3, text("title"));
    out.string(4, text("description"));
    if let Some(default) = schema.get("default") {
        out.message(5, any(default));
    }
    if let Some(maximum) = schema.get("maximum").and_then(Value::as_f64) {
        out.double(7, maximum);
    }
    if let Some(minimum) = schema.get("minimum").and_then(Value::as_f64) {
        out.double(9, minimum);
    }
    for (field, key) in [(11, "maxLength"), (12, "minLength"), (14, "maxItems"), (15, "minItems")] {
        if let Some(value) = schema.get(key).and_then(Value::as_i64) {
            out.int64(field, value);
        }
    }
    out.string(13, text("pattern"));
    for required in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
        out.string(19, required.as_str().unwrap_or(""));
    }
    for value in schema.get("enum").and_then(Value::as_array).into_iter().flatten() {
        out.message(20, any(value));
    }
    match schema.get("additionalProperties") {
        Some(Value::Bool(allowed)) => {
            let mut item = Message::default();
            item.boolean(2, *allowed);
            out.message(21, item);
        }
        Some(additional) => {
            let mut item = Message::default();
            item.message(1, encode_schema(additional));
            out.message(21, item);
        }
        None => {}
    }
    if let Some(kind) = schema.get("type").and_then(Value::as_str) {
        let mut types = Message::default();
        types.string(1, kind);
        out.message(22, types);
    }
    if let Some(items) = schema.get("items") {
        let mut item = Message::default();
        item.message(1, encode_schema(items));
        out.message(23, item);
    }
    if let Some(Value::Object(properties)) = schema.get("properties") {
        let mut list = Message::default();
        for (name, property) in properties {
            list.message(1, named_schema(name, property));
        }
        out.message(25, list);
    }
    for (name, value) in schema.as_object().into_iter().flatten().filter(|(name, _)| name.starts_with("x-")) {
        let mut extension = Message::default();
        extension.string(1, name);
        extension.message(2, any(value));
        out.message(31, extension);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_become_one_type_each() {
        let simplified = simplify(&json!({
            "type": "object",
            "properties": {
                "a": {"type": ["string", "null"], "description": "A"},
                "b": {"allOf": [{"$ref": "#/definitions/B"}], "description": "B"},
                "c": {"anyOf": [{"$ref": "#/definitions/C"}, {"type": "null"}]},
                "d": {"oneOf": [{"type": "string"}, {"type": "object"}]},
                "e": {"const": "x"},
                "f": {"type": "object"},
                "g": true,
            },
            "additionalProperties": false,
        }));
        assert_eq!(simplified["properties"]["a"], json!({"type": "string", "description": "A"}));
        assert_eq!(simplified["properties"]["b"], json!({"$ref": "#/definitions/B", "description": "B"}));
        assert_eq!(simplified["properties"]["c"], json!({"$ref": "#/definitions/C"}));
        assert_eq!(simplified["properties"]["d"], json!({}));
        assert_eq!(simplified["properties"]["e"], json!({"enum": ["x"]}));
        assert_eq!(simplified["properties"]["f"], json!({"type": "object", "additionalProperties": {}}));
        assert_eq!(simplified["properties"]["g"], json!({}));
        assert!(simplified.get("additionalProperties").is_none());
    }

    #[test]
    fn every_kind_is_defined_with_its_group_version_kind() {
        let document = document();
        for kind in Kind::ALL {
            let schema = &document["definitions"][kind.as_str()];
            assert_eq!(schema["x-kubernetes-group-version-kind"][0]["kind"], kind.as_str());
        }
        // Every reference resolves, and no schema has more than one type.
        let text = document.to_string();
        for reference in text.split("\"#/definitions/").skip(1) {
            let name = reference.split('"').next().unwrap();
            assert!(document["definitions"].get(name).is_some(), "dangling reference to {name}");
        }
        assert!(!text.contains("\"type\":["), "a schema with several types");
    }

    #[test]
    fn protocol_buffers_are_encoded_field_by_field() {
        let mut message = Message::default();
        message.string(1, "2.0");
        message.int64(11, 300);
        assert_eq!(message.0, [0x0a, 3, b'2', b'.', b'0', 0x58, 0xac, 0x02]);
        let encoded = encode_document(&document());
        assert!(encoded.starts_with(&[0x0a, 3, b'2', b'.', b'0']));
        assert!(encoded.windows(8).any(|window| window == b"Instance"));
    }
}
