//! `cloud validate -f PATH...`: validates manifests offline and prints every problem as
//! `file:line:col: field.path: message`.

use std::path::PathBuf;

use minicloud_model::manifest::{self, ManifestError};

/// Validates the manifests at `paths`; prints one line per valid object, or every problem.
pub fn run(paths: &[PathBuf], recursive: bool) -> anyhow::Result<()> {
    match manifest::load(paths, recursive) {
        Ok(manifests) => {
            for manifest in &manifests {
                say!("{} valid ({}:{})", manifest.key(), manifest.file, manifest.position.line);
            }
            say!("{} object(s) valid", manifests.len());
            Ok(())
        }
        Err(ManifestError::Invalid(problems)) => {
            for problem in &problems {
                say_err!("{problem}");
            }
            anyhow::bail!("{} problem(s) found; nothing was changed", problems.len())
        }
    }
}
