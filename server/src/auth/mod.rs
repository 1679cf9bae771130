//! Who may do what: API tokens ([`tokens`]), the roles they carry and the permissions those
//! roles grant per namespace (this module), the per-token rate limits ([`rate`]) and the
//! authenticator the API server asks ([`authenticator`]). HTTP lives in `api::access`; SQL in
//! `store::access`. Everything here is decision logic, unit-tested without a server.
//!
//! The model is Kubernetes' RBAC cut down to three fixed roles, each granted on one namespace
//! or on all of them; there are no wildcard grants beyond "every namespace" of a cluster-wide
//! token:
//!
//! | role  | may                                                                      |
//! |-------|--------------------------------------------------------------------------|
//! | view  | get, list, watch (objects, events, logs, discovery, metrics, console)    |
//! | edit  | view + create, update, patch, delete, apply (so also scale and backup)   |
//! | admin | edit + tokens, policies, the audit log, secret reveal, key rotation      |

pub mod access;
pub mod audit;
pub mod audit_log;
pub mod authenticator;
pub mod rate;
pub mod tokens;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use access::{AccessError, AccessStore};
pub use audit::{AuditEntry, AuditQuery, AuditRecord};
pub use audit_log::AuditLog;
pub use authenticator::{AuthError, AuthSettings, Authenticator};
pub use rate::Rate;
pub use tokens::{NewToken, TokenRecord};

/// A role a token carries; each includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    View,
    Edit,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::View, Role::Edit, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::View => "view",
            Role::Edit => "edit",
            Role::Admin => "admin",
        }
    }

    /// Parses `view`, `edit` or `admin`.
    pub fn parse(text: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| format!("unknown role {text:?}: use view, edit or admin"))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// What a request does, in the words of a permission.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    /// Create-or-update a batch (`cloud apply`).
    Apply,
    /// Read a Secret's value back.
    Reveal,
    /// Re-encrypt every Secret under a new key.
    Rotate,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::Apply => "apply",
            Verb::Reveal => "reveal",
            Verb::Rotate => "rotate",
        }
    }

    /// Whether the verb only reads.
    pub fn is_read(self) -> bool {
        matches!(self, Verb::Get | Verb::List | Verb::Watch)
    }
}

/// Resources whose every use is an administrator's: who may do anything, what is refused, and
/// what was done.
pub const ADMIN_RESOURCES: &[&str] = &["tokens", "policies", "audit", "secretkeys"];

/// One permission: a verb on a resource (a plural such as `instances`, or `metrics`,
/// `discovery`, `console`), in one namespace or in all of them (`None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permission {
    pub verb: Verb,
    pub resource: String,
    pub namespace: Option<String>,
}

impl Permission {
    pub fn new(verb: Verb, resource: &str, namespace: Option<&str>) -> Permission {
        Permission { verb, resource: resource.to_owned(), namespace: namespace.map(str::to_owned) }
    }

    /// The least role that grants this permission.
    pub fn required_role(&self) -> Role {
        if ADMIN_RESOURCES.contains(&self.resource.as_str()) && !(self.verb.is_read() && self.resource == "policies") {
            return Role::Admin;
        }
        match self.verb {
            Verb::Get | Verb::List | Verb::Watch => Role::View,
            Verb::Create | Verb::Update | Verb::Patch | Verb::Delete | Verb::Apply => Role::Edit,
            Verb::Reveal | Verb::Rotate => Role::Admin,
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} {}", self.verb.as_str(), self.resource)?;
        match &self.namespace {
            Some(namespace) => write!(formatter, " in namespace {namespace:?}"),
            None => write!(formatter, " in every namespace"),
        }
    }
}

/// Who a request comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's name (`anonymous` when authentication is off).
    pub name: String,
    pub role: Role,
    /// The one namespace the token is good for; `None`: every namespace.
    pub namespace: Option<String>,
    /// The server's own identity (`--sync`), told apart by how it authenticated, never by its
    /// name: its requests are not limited by the per-token rate and watch limits.
    pub internal: bool,
}

/// The principal of every request when authentication is off.
pub const ANONYMOUS: &str = "anonymous";

/// The name of the server's own identity (`cloud server --sync`).
pub const INTERNAL: &str = "system-internal";

/// Whether a token name is kept for minicloud's own identities: `anonymous`, and every name
/// beginning with `system-` (a user's token named like the server's own would share its name
/// in the audit log).
pub fn reserved_name(name: &str) -> bool {
    name == ANONYMOUS || name.starts_with("system-")
}

impl Principal {
    /// A token's principal.
    pub fn token(name: &str, role: Role, namespace: Option<String>) -> Principal {
        Principal { name: name.to_owned(), role, namespace, internal: false }
    }

    /// Everything allowed: a server without authentication.
    pub fn anonymous() -> Principal {
        Principal::token(ANONYMOUS, Role::Admin, None)
    }

    /// Whether this is the principal of a server without authentication (the name is
    /// reserved: no token can carry it).
    pub fn is_anonymous(&self) -> bool {
        self.name == ANONYMOUS
    }

    /// Whether the principal holds `permission`.
    pub fn allows(&self, permission: &Permission) -> bool {
        let in_scope = match (&self.namespace, &permission.namespace) {
            (None, _) => true,
            (Some(mine), Some(theirs)) => mine == theirs,
            (Some(_), None) => false,
        };
        in_scope && self.role >= permission.required_role()
    }

    /// `Ok` when the principal holds `permission`; otherwise the reason, naming the missing
    /// permission and what would grant it.
    pub fn check(&self, permission: &Permission) -> Result<(), Denial> {
        if self.allows(permission) {
            return Ok(());
        }
        Err(Denial { principal: self.clone(), permission: permission.clone() })
    }

    /// How the principal's grant reads in messages: `role edit in namespace "dev"`.
    pub fn grant(&self) -> String {
        match &self.namespace {
            Some(namespace) => format!("role {} in namespace {namespace:?}", self.role),
            None => format!("role {} in every namespace", self.role),
        }
    }
}

/// A refused permission (a 403).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct Denial {
    pub principal: Principal,
    pub permission: Permission,
}

impl Denial {
    fn message(&self) -> String {
        let needed = self.permission.required_role();
        let scope = match &self.permission.namespace {
            Some(namespace) => format!("in namespace {namespace:?}"),
            None => "in every namespace".to_owned(),
        };
        let why = if self.principal.role < needed {
            format!("that needs role {needed}")
        } else {
            match &self.principal.namespace {
                Some(namespace) => format!("the token is good for namespace {namespace:?} only"),
                None => format!("that needs role {needed}"),
            }
        };
        format!(
            "token {:?} ({}) lacks the permission \"{} {}\" {scope}: {why}",
            self.principal.name,
            self.principal.grant(),
            self.permission.verb.as_str(),
            self.permission.resource,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(role: Role, namespace: Option<&str>) -> Principal {
        Principal::token("t", role, namespace.map(str::to_owned))
    }

    #[test]
    fn minicloud_keeps_its_own_names() {
        for name in ["anonymous", "system-internal", "system-sync"] {
            assert!(reserved_name(name), "{name}");
        }
        assert!(!reserved_name("ci") && !reserved_name("systemd"));
    }

    #[test]
    fn roles_include_the_ones_below() {
        let read = Permission::new(Verb::List, "instances", Some("dev"));
        let write = Permission::new(Verb::Apply, "instances", Some("dev"));
        let reveal = Permission::new(Verb::Reveal, "secrets", Some("dev"));
        for (role, expected) in
            [(Role::View, [true, false, false]), (Role::Edit, [true, true, false]), (Role::Admin, [true; 3])]
        {
            let who = principal(role, None);
            assert_eq!([who.allows(&read), who.allows(&write), who.allows(&reveal)], expected, "{role}");
        }
    }

    #[test]
    fn a_namespaced_token_reaches_its_namespace_only() {
        let who = principal(Role::Admin, Some("dev"));
        assert!(who.allows(&Permission::new(Verb::Delete, "instances", Some("dev"))));
        assert!(!who.allows(&Permission::new(Verb::Get, "instances", Some("prod"))));
        assert!(!who.allows(&Permission::new(Verb::List, "instances", None)), "every namespace is not its one");
    }

    #[test]
    fn governance_resources_need_admin_and_policies_can_be_read() {
        for resource in ["tokens", "audit", "secretkeys"] {
            assert_eq!(Permission::new(Verb::List, resource, None).required_role(), Role::Admin, "{resource}");
        }
        assert_eq!(Permission::new(Verb::Get, "policies", Some("a")).required_role(), Role::View);
        assert_eq!(Permission::new(Verb::Apply, "policies", Some("a")).required_role(), Role::Admin);
        assert_eq!(Permission::new(Verb::Patch, "scalinggroups", Some("a")).required_role(), Role::Edit);
    }

    #[test]
    fn a_denial_names_the_missing_permission_and_the_grant() {
        let denial = principal(Role::View, Some("dev"))
            .check(&Permission::new(Verb::Create, "instances", Some("prod")))
            .expect_err("denied");
        let message = denial.to_string();
        assert!(message.contains("\"create instances\" in namespace \"prod\""), "{message}");
        assert!(message.contains("needs role edit"), "{message}");
        assert!(message.contains("role view in namespace \"dev\""), "{message}");
        let denial = principal(Role::Edit, Some("dev"))
            .check(&Permission::new(Verb::Get, "instances", Some("prod")))
            .expect_err("denied");
        assert!(denial.to_string().ends_with("the token is good for namespace \"dev\" only"), "{denial}");
    }

    #[test]
    fn roles_parse_and_refuse_others() {
        assert_eq!(Role::parse("edit"), Ok(Role::Edit));
        assert!(Role::parse("root").unwrap_err().contains("view, edit or admin"));
    }
}
