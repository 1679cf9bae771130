//! Admission of what controllers write on a user's behalf. A Stack's resources are the user's
//! own content, rendered by the Stack controller with values only known at run time (another
//! resource's field, a generated value): they must meet the same `Policy` rules as a user's
//! own writes, at the moment they are written. The rules live with the API (`api::admission`);
//! controllers see them through this trait, which the composition root implements.

use async_trait::async_trait;
use minicloud_crds::Object;

/// Why objects may not be written (now).
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// A `Deny` policy refuses them: which policy, which rule, why.
    #[error("{0}")]
    Denied(String),
    /// The policies could not be read; try again.
    #[error("the policies cannot be read: {0}")]
    Unavailable(String),
}

/// Judges objects a controller is about to write.
#[async_trait]
pub trait Admission: Send + Sync {
    /// `Ok(warnings)` when the objects may be written (what `Warn` policies found).
    async fn admit(&self, objects: &[Object]) -> Result<Vec<String>, AdmissionError>;
}
