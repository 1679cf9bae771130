//! Writes the JSON Schema of every kind to `crds/schemas/` (run from the workspace root:
//! `cargo run -p minicloud-crds --bin gen-schemas`). A test fails when the checked-in files
//! differ from what this would write.

use std::path::Path;

use minicloud_crds::Kind;

fn main() -> std::io::Result<()> {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    std::fs::create_dir_all(&directory)?;
    for kind in Kind::ALL {
        let path = directory.join(kind.schema_file_name());
        std::fs::write(&path, minicloud_crds::kinds::render_schema(kind))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
