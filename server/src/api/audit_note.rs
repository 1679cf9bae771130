//! What a handler adds to the audit entry of its request: a note left on the response (what an
//! apply did, a token's grant, an error's message), which the authorization layer
//! ([`super::access`]) writes into the entry.

/// A message a handler leaves on its response for the audit log.
#[derive(Clone, Debug)]
pub struct AuditNote(pub String);
