//! What things are called and where they are: the files in a LoadBalancer's directory (as
//! mounted in its HAProxy container), the container ports its listeners bind, and the names of
//! HAProxy's frontends and backends. A leaf: the configuration, the layout and the HTTP rules
//! all name things through it.

/// Where the LoadBalancer's directory is mounted inside the HAProxy container.
pub const MOUNT: &str = "/etc/minicloud-lb";
/// The configuration HAProxy runs, relative to the directory.
pub const CONFIG_FILE: &str = "haproxy.cfg";
/// A configuration being validated, relative to the directory.
pub const CANDIDATE_FILE: &str = "candidate.cfg";
/// The Runtime API socket, relative to the directory.
pub const SOCKET_FILE: &str = "admin.sock";
/// Server states saved just before a reload, so that DOWN, DRAIN and MAINT survive it.
pub const STATE_FILE: &str = "servers.state";
/// The ACME HTTP-01 answers (token, key authorization), relative to the directory.
pub const ACME_MAP_FILE: &str = "acme.map";
/// The directory of the certificate files (key and chain, PEM), relative to the directory.
pub const CERTS_DIR: &str = "certs";
/// The first container port; listener `i` (in declared order) binds `FIRST_PORT + i`.
pub const FIRST_PORT: u16 = 8000;

/// The frontend of a listener.
pub fn frontend(listener: &str) -> String {
    format!("fe-{listener}")
}

/// The backend of a listener's own targets.
pub fn backend(listener: &str) -> String {
    format!("be-{listener}")
}

/// The container port listener number `index` binds.
pub fn container_port(index: usize) -> u16 {
    FIRST_PORT.saturating_add(u16::try_from(index).unwrap_or(u16::MAX - FIRST_PORT))
}

/// The crt-list file of an HTTPS listener, relative to the directory.
pub fn crt_list_file(listener: &str) -> String {
    format!("{listener}.crtlist")
}
