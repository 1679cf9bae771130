//! The checked-in OpenAPI document must be what the server serves.

#[test]
fn checked_in_openapi_document_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    let on_disk = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        on_disk == minicloud_model::openapi::render(),
        "docs/openapi.json is stale; regenerate it with: cargo run -q -- openapi > docs/openapi.json"
    );
}

#[test]
fn every_kind_has_its_paths_and_schema() {
    let document = minicloud_model::openapi::document();
    assert_eq!(document["openapi"], "3.1.0");
    for kind in minicloud_crds::Kind::ALL {
        let collection = format!("/apis/minicloud.dev/v1/namespaces/{{namespace}}/{}", kind.plural());
        assert!(document["paths"][&collection]["post"].is_object(), "{collection}");
        assert!(document["components"]["schemas"][kind.as_str()].is_object(), "{kind}");
    }
    let text = document.to_string();
    assert!(!text.contains("#/definitions/"), "every reference points into components/schemas");
}
