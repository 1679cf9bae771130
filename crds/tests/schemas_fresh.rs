//! The checked-in schemas under `crds/schemas/` must be exactly what the Rust types generate.

use std::path::Path;

use minicloud_crds::kinds::render_schema;
use minicloud_crds::Kind;

#[test]
fn checked_in_schemas_are_current() {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let mut stale = Vec::new();
    for kind in Kind::ALL {
        let path = directory.join(kind.schema_file_name());
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        if on_disk != render_schema(kind) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale schemas: {}\nregenerate them with: cargo run -p minicloud-crds --bin gen-schemas",
        stale.join(", ")
    );
    let files = std::fs::read_dir(&directory).expect("schemas directory").count();
    assert_eq!(files, Kind::ALL.len(), "crds/schemas/ holds one schema per kind and nothing else");
}

#[test]
fn schemas_are_draft_07_and_reject_unknown_fields() {
    for kind in Kind::ALL {
        let schema = kind.schema();
        assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#", "{kind}");
        assert_eq!(schema["additionalProperties"], false, "{kind}");
        assert_eq!(schema["properties"]["kind"]["enum"][0], kind.as_str());
    }
}
