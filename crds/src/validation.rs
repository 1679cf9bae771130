//! Semantic validation: the rules a JSON Schema cannot express (name formats, uniqueness,
//! "exactly one of", min ≤ desired ≤ max, parseable quantities, cron schedules, parameter
//! types). Every rule reports a [`FieldError`] with the path of the offending field, and all
//! problems are collected rather than stopping at the first.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

use serde_json::Value;

use crate::database::ManagedDatabaseSpec;
use crate::instance::{HealthCheck, InstanceSpec};
use crate::kinds::{Kind, TypedObject};
use crate::loadbalancer::{FromNamespaces, Listener, ListenerProtocol, LoadBalancerSpec, NAMESPACE_NAME_LABEL};
use crate::meta::{ObjectMeta, API_VERSION};
use crate::quantity::{parse_bytes, parse_cpu_millis};
use crate::scalinggroup::ScalingGroupSpec;
use crate::secret::SecretSpec;
use crate::stack::{ParameterSpec, ParameterType, StackSpec};
use crate::{FieldError, FieldPath};

pub use crate::rules::{check_dns_label, check_http_path, check_label_key, check_label_value, Errors};

fn check_labels(labels: &BTreeMap<String, String>, path: &FieldPath, errors: &mut Errors) {
    for (key, value) in labels {
        if let Err(message) = check_label_key(key) {
            errors.add(path.key(key), message);
        }
        if let Err(message) = check_label_value(value) {
            errors.add(path.key(key), message);
        }
    }
}

/// Validates the metadata of an object of any kind (also usable when its spec is broken).
pub fn validate_metadata(meta: &ObjectMeta) -> Vec<FieldError> {
    let mut errors = Errors::default();
    check_metadata(meta, &mut errors);
    errors.0
}

fn check_metadata(meta: &ObjectMeta, errors: &mut Errors) {
    let path = FieldPath::root().key("metadata");
    if let Err(message) = check_dns_label(&meta.name) {
        errors.add(path.key("name"), message);
    }
    if let Some(namespace) = &meta.namespace {
        if let Err(message) = check_dns_label(namespace) {
            errors.add(path.key("namespace"), message);
        }
    }
    check_labels(&meta.labels, &path.key("labels"), errors);
    for key in meta.annotations.keys() {
        if let Err(message) = check_label_key(key) {
            errors.add(path.key("annotations").key(key), message);
        }
    }
    for (index, finalizer) in meta.finalizers.iter().enumerate() {
        if finalizer.trim().is_empty() {
            errors.add(path.key("finalizers").index(index), "finalizer names must not be empty");
        }
    }
    for (index, owner) in meta.owner_references.iter().enumerate() {
        let owner_path = path.key("ownerReferences").index(index);
        if Kind::from_kind_name(&owner.kind).is_none() {
            errors.add(owner_path.key("kind"), format!("unknown kind {:?}", owner.kind));
        }
        if owner.uid.is_empty() {
            errors.add(owner_path.key("uid"), "the owner's uid is required");
        }
    }
}

fn check_api_version(api_version: &str, errors: &mut Errors) {
    if api_version != API_VERSION {
        errors.add(
            FieldPath::root().key("apiVersion"),
            format!("unsupported apiVersion {api_version:?}: use {API_VERSION:?}"),
        );
    }
}

/// Validates one object: metadata, then its kind's spec rules.
pub fn validate_object(object: &TypedObject) -> Vec<FieldError> {
    let mut errors = Errors::default();
    let spec = FieldPath::root().key("spec");
    match object {
        TypedObject::Instance(o) => {
            check_api_version(&o.api_version, &mut errors);
            check_instance_spec(&o.spec, &spec, &mut errors);
        }
        TypedObject::LoadBalancer(o) => {
            check_api_version(&o.api_version, &mut errors);
            check_load_balancer_spec(&o.spec, &spec, &mut errors);
        }
        TypedObject::ScalingGroup(o) => {
            check_api_version(&o.api_version, &mut errors);
            check_scaling_group_spec(&o.spec, &spec, &mut errors);
        }
        TypedObject::ManagedDatabase(o) => {
            check_api_version(&o.api_version, &mut errors);
            check_database_spec(&o.spec, &spec, &mut errors);
        }
        TypedObject::Stack(o) => {
            check_api_version(&o.api_version, &mut errors);
            check_stack_spec(&o.spec.with_stack_name(&o.metadata.name), &spec, &mut errors);
        }
        TypedObject::Secret(o) => {
            check_api_version(&o.api_version, &mut errors);
            check_secret_spec(&o.spec, &spec, &mut errors);
        }
        TypedObject::ApplySet(o) => {
            check_api_version(&o.api_version, &mut errors);
            for (index, member) in o.spec.members.iter().enumerate() {
                let at = spec.key("members").index(index);
                if Kind::from_kind_name(&member.kind).is_none() {
                    errors.add(at.key("kind"), format!("unknown kind {:?}", member.kind));
                }
                for (field, value) in [("namespace", &member.namespace), ("name", &member.name)] {
                    if let Err(message) = check_dns_label(value) {
                        errors.add(at.key(field), message);
                    }
                }
            }
        }
        TypedObject::Policy(o) => {
            check_api_version(&o.api_version, &mut errors);
            check_policy_spec(&o.spec, &spec, &mut errors);
        }
        TypedObject::Route(o) => {
            check_api_version(&o.api_version, &mut errors);
            crate::route::check_route_spec(&o.spec, &spec, &mut errors);
        }
        TypedObject::Certificate(o) => {
            check_api_version(&o.api_version, &mut errors);
            crate::certificate::check_certificate_spec(&o.spec, &spec, &mut errors);
        }
        TypedObject::Lease(o) => {
            check_api_version(&o.api_version, &mut errors);
            crate::lease::check_lease_spec(&o.spec, &spec, &mut errors);
        }
        TypedObject::Sync(o) => {
            check_api_version(&o.api_version, &mut errors);
            if o.spec.directory.trim().is_empty() {
                errors.add(spec.key("directory"), "name the directory to sync");
            }
            if let Some(set) = &o.spec.apply_set {
                if let Err(message) = check_dns_label(set) {
                    errors.add(spec.key("applySet"), message);
                }
            }
        }
    }
    check_metadata(object.metadata(), &mut errors);
    errors.0
}

fn check_optional_network(network: Option<&String>, path: &FieldPath, errors: &mut Errors) {
    if let Some(network) = network {
        if let Err(message) = check_dns_label(network) {
            errors.add(path.key("network"), message);
        }
    }
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.as_bytes()[0].is_ascii_digit()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Validates an Instance spec found at `path` (also used for ScalingGroup templates).
pub(crate) fn check_instance_spec(spec: &InstanceSpec, path: &FieldPath, errors: &mut Errors) {
    if spec.image.trim().is_empty() || spec.image.chars().any(char::is_whitespace) {
        errors
            .add(path.key("image"), "image must be a non-empty reference without spaces, e.g. \"minicloud/web:local\"");
    }
    let mut env_names = HashSet::new();
    for (index, var) in spec.env.iter().enumerate() {
        let var_path = path.key("env").index(index);
        if !is_env_name(&var.name) {
            errors.add(
                var_path.key("name"),
                format!(
                    "{:?} is not a valid variable name: use letters, digits and '_', not starting with a digit",
                    var.name
                ),
            );
        } else if !env_names.insert(var.name.as_str()) {
            errors.add(var_path.key("name"), format!("variable {:?} is set twice", var.name));
        }
        match (&var.value, &var.value_from) {
            (Some(_), Some(_)) => errors.add(var_path, "give either `value` or `valueFrom`, not both"),
            (None, None) => errors.add(var_path, "give `value` or `valueFrom.secretKeyRef`"),
            (None, Some(source)) => {
                if let Err(message) = check_dns_label(&source.secret_key_ref.name) {
                    errors.add(var_path.key("valueFrom").key("secretKeyRef").key("name"), message);
                }
            }
            (Some(_), None) => {}
        }
    }
    let mut port_names = HashSet::new();
    let mut container_ports = HashSet::new();
    let mut host_ports = HashSet::new();
    for (index, port) in spec.ports.iter().enumerate() {
        let port_path = path.key("ports").index(index);
        if let Some(name) = &port.name {
            if let Err(message) = check_dns_label(name) {
                errors.add(port_path.key("name"), message);
            } else if !port_names.insert(name.as_str()) {
                errors.add(port_path.key("name"), format!("port name {name:?} is used twice"));
            }
        }
        if port.container_port == 0 {
            errors.add(port_path.key("containerPort"), "must be between 1 and 65535");
        } else if !container_ports.insert((port.container_port, port.protocol)) {
            errors
                .add(port_path.key("containerPort"), format!("container port {} is listed twice", port.container_port));
        }
        if let Some(host_port) = port.host_port {
            if host_port == 0 {
                errors.add(port_path.key("hostPort"), "must be between 1 and 65535");
            } else if !host_ports.insert((host_port, port.protocol)) {
                errors.add(port_path.key("hostPort"), format!("host port {host_port} is published twice"));
            }
        }
        if let Some(ip) = &port.host_ip {
            if ip.parse::<IpAddr>().is_err() {
                errors.add(port_path.key("hostIP"), format!("{ip:?} is not an IP address; use e.g. \"127.0.0.1\""));
            }
        }
    }
    if let Some(resources) = &spec.resources {
        if let Some(cpu) = &resources.cpu {
            if let Err(message) = parse_cpu_millis(cpu) {
                errors.add(path.key("resources").key("cpu"), message);
            }
        }
        if let Some(memory) = &resources.memory {
            match parse_bytes(memory) {
                Err(message) => errors.add(path.key("resources").key("memory"), message),
                Ok(bytes) if bytes < 6 << 20 => errors.add(
                    path.key("resources").key("memory"),
                    format!("memory limit {memory:?} is below Docker's minimum of 6Mi"),
                ),
                Ok(_) => {}
            }
        }
    }
    if let Some(check) = &spec.health_check {
        check_health_check(check, &path.key("healthCheck"), errors);
    }
    check_optional_network(spec.network.as_ref(), path, errors);
    let mut volume_names = HashSet::new();
    let mut mount_paths = HashSet::new();
    for (index, volume) in spec.volumes.iter().enumerate() {
        let volume_path = path.key("volumes").index(index);
        if let Err(message) = check_dns_label(&volume.name) {
            errors.add(volume_path.key("name"), message);
        } else if !volume_names.insert(volume.name.as_str()) {
            errors.add(volume_path.key("name"), format!("volume {:?} is listed twice", volume.name));
        }
        if !volume.mount_path.starts_with('/') {
            errors.add(
                volume_path.key("mountPath"),
                format!("{:?} must be an absolute path, e.g. \"/data\"", volume.mount_path),
            );
        } else if !mount_paths.insert(volume.mount_path.as_str()) {
            errors.add(volume_path.key("mountPath"), format!("{:?} is mounted twice", volume.mount_path));
        }
    }
}

fn check_health_check(check: &HealthCheck, path: &FieldPath, errors: &mut Errors) {
    let probes = [check.http.is_some(), check.tcp.is_some(), check.exec.is_some()];
    if probes.iter().filter(|set| **set).count() != 1 {
        errors.add(path.clone(), "give exactly one of `http`, `tcp` or `exec`");
    }
    if let Some(http) = &check.http {
        if http.path.as_deref().is_some_and(|p| !p.starts_with('/')) {
            errors.add(path.key("http").key("path"), "the path must start with '/'");
        }
        if http.port == 0 {
            errors.add(path.key("http").key("port"), "must be between 1 and 65535");
        }
    }
    if check.tcp.as_ref().is_some_and(|tcp| tcp.port == 0) {
        errors.add(path.key("tcp").key("port"), "must be between 1 and 65535");
    }
    if check.exec.as_ref().is_some_and(|exec| exec.command.is_empty()) {
        errors.add(path.key("exec").key("command"), "give the command to run, e.g. [\"pg_isready\"]");
    }
}

fn check_load_balancer_spec(spec: &LoadBalancerSpec, path: &FieldPath, errors: &mut Errors) {
    if spec.listeners.is_empty() {
        errors.add(path.key("listeners"), "give at least one listener");
    }
    let mut names = HashSet::new();
    let mut binds = HashSet::new();
    for (index, listener) in spec.listeners.iter().enumerate() {
        let listener_path = path.key("listeners").index(index);
        if let Err(message) = check_dns_label(&listener.name) {
            errors.add(listener_path.key("name"), message);
        } else if !names.insert(listener.name.as_str()) {
            errors.add(listener_path.key("name"), format!("listener {:?} is listed twice", listener.name));
        }
        check_listener(spec, listener, &listener_path, errors);
        if let Some(port) = listener.port {
            // Two listeners may share a port on different addresses; an unspecified address
            // (0.0.0.0, ::) takes the port on every address.
            let address = listener.bind_address().parse::<IpAddr>().ok();
            let clash = binds.iter().any(|(other, other_port): &(Option<IpAddr>, u16)| {
                *other_port == port && binds_overlap(address, *other)
            });
            if clash {
                errors.add(listener_path.key("port"), format!("port {port} is used by two listeners"));
            }
            binds.insert((address, port));
        }
    }
    let targets = path.key("targets");
    match (&spec.targets.selector, &spec.targets.scaling_group_ref) {
        (Some(_), Some(_)) => errors.add(targets.clone(), "give at most one of `selector` or `scalingGroupRef`"),
        (None, None) => {
            if spec.listeners.iter().any(|listener| !listener.takes_routes()) {
                errors.add(targets.clone(), "a TCP listener needs targets: give `selector` or `scalingGroupRef`");
            }
        }
        (Some(selector), None) => {
            if selector.match_labels.is_empty() {
                errors.add(
                    targets.key("selector").key("matchLabels"),
                    "an empty selector would match every Instance; give at least one label",
                );
            }
            check_labels(&selector.match_labels, &targets.key("selector").key("matchLabels"), errors);
        }
        (None, Some(reference)) => {
            if let Err(message) = check_dns_label(&reference.name) {
                errors.add(targets.key("scalingGroupRef").key("name"), message);
            }
        }
    }
    if let Some(check) = &spec.health_check {
        if let Some(Err(message)) = check.path.as_deref().map(check_http_path) {
            errors.add(path.key("healthCheck").key("path"), message);
        }
    }
    check_optional_network(spec.network.as_ref(), path, errors);
}

/// Whether two bind addresses (`None`: unparsable, reported apart) can take the same port.
fn binds_overlap(a: Option<IpAddr>, b: Option<IpAddr>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b || a.is_unspecified() || b.is_unspecified(),
        _ => false,
    }
}

/// A listener's address, protocol, TLS, host name and route admission.
fn check_listener(spec: &LoadBalancerSpec, listener: &Listener, path: &FieldPath, errors: &mut Errors) {
    if let Some(address) = &listener.address {
        if address.parse::<IpAddr>().is_err() {
            errors.add(
                path.key("address"),
                format!("{address:?} is not an IP address; use 127.0.0.1 (this machine), 0.0.0.0 (every interface) or an interface's address"),
            );
        }
    }
    match (spec.targets.is_empty(), listener.target_port) {
        (false, None) => {
            errors.add(path.key("targetPort"), "the load balancer has targets: give the port they listen on")
        }
        (true, Some(_)) => {
            errors.add(path.key("targetPort"), "the load balancer has no targets; remove targetPort or give `targets`")
        }
        _ => {}
    }
    if let Some(hostname) = &listener.hostname {
        if !listener.takes_routes() {
            errors.add(path.key("hostname"), "a TCP listener does not see host names");
        } else if let Err(message) = crate::http::check_hostname(hostname, true) {
            errors.add(path.key("hostname"), message);
        }
    }
    match (listener.protocol, &listener.tls) {
        (ListenerProtocol::Https, None) => errors.add(path.key("tls"), "an HTTPS listener needs `tls.certificateRefs`"),
        (ListenerProtocol::Https, Some(tls)) => {
            if tls.certificate_refs.is_empty() {
                errors.add(path.key("tls").key("certificateRefs"), "name at least one Certificate");
            }
            for (index, reference) in tls.certificate_refs.iter().enumerate() {
                if let Err(message) = check_dns_label(&reference.name) {
                    errors.add(path.key("tls").key("certificateRefs").index(index).key("name"), message);
                }
            }
        }
        (_, Some(_)) => errors.add(path.key("tls"), "only an HTTPS listener has `tls`"),
        (_, None) => {}
    }
    if listener.proxy_protocol && listener.protocol != ListenerProtocol::Tcp {
        errors.add(path.key("proxyProtocol"), "the PROXY protocol is sent by TCP listeners only");
    }
    if let Some(allowed) = &listener.allowed_routes {
        let at = path.key("allowedRoutes").key("namespaces");
        if !listener.takes_routes() {
            errors.add(path.key("allowedRoutes"), "routes attach to HTTP and HTTPS listeners only");
        }
        match (allowed.namespaces.from, &allowed.namespaces.selector) {
            (FromNamespaces::Selector, None) => errors.add(at.key("selector"), "`from: Selector` needs a selector"),
            (FromNamespaces::Selector, Some(selector)) => {
                for key in selector.match_labels.keys() {
                    if key != NAMESPACE_NAME_LABEL {
                        errors.add(
                            at.key("selector").key("matchLabels").key(key),
                            format!("namespaces carry one label, {NAMESPACE_NAME_LABEL} (the namespace's name)"),
                        );
                    }
                }
                if selector.match_labels.is_empty() {
                    errors.add(at.key("selector").key("matchLabels"), "give the namespace to admit");
                }
            }
            (_, Some(_)) => errors.add(at.key("selector"), "a selector goes with `from: Selector`"),
            (_, None) => {}
        }
    }
}

fn check_scaling_group_spec(spec: &ScalingGroupSpec, path: &FieldPath, errors: &mut Errors) {
    if spec.min_replicas > spec.max_replicas {
        errors.add(
            path.key("minReplicas"),
            format!("minReplicas ({}) is greater than maxReplicas ({})", spec.min_replicas, spec.max_replicas),
        );
    }
    if let Some(desired) = spec.desired_replicas {
        if desired < spec.min_replicas || desired > spec.max_replicas {
            errors.add(
                path.key("desiredReplicas"),
                format!(
                    "desiredReplicas ({desired}) must lie between minReplicas ({}) and maxReplicas ({})",
                    spec.min_replicas, spec.max_replicas
                ),
            );
        }
    }
    let template = path.key("template");
    check_labels(&spec.template.labels, &template.key("labels"), errors);
    check_instance_spec(&spec.template.spec, &template.key("spec"), errors);
    if spec.max_replicas > 1 {
        for (index, port) in spec.template.spec.ports.iter().enumerate() {
            if port.host_port.is_some() {
                errors.add(
                    template.key("spec").key("ports").index(index).key("hostPort"),
                    "replicas cannot share a fixed host port; remove hostPort and put a LoadBalancer in front",
                );
            }
        }
    }
    if let Some(rolling) = &spec.update_strategy.rolling_update {
        if rolling.max_surge == Some(0) && rolling.max_unavailable.unwrap_or(0) == 0 {
            errors.add(
                path.key("updateStrategy").key("rollingUpdate"),
                "maxSurge and maxUnavailable cannot both be 0: the update could never progress",
            );
        }
    }
}

/// Checks a five-field cron schedule (minute hour day-of-month month day-of-week).
pub(crate) fn check_cron(schedule: &str) -> Result<(), String> {
    crate::cron::Schedule::parse(schedule).map(drop)
}

fn check_database_spec(spec: &ManagedDatabaseSpec, path: &FieldPath, errors: &mut Errors) {
    let versions = spec.engine.versions();
    if spec.version.trim().is_empty() {
        errors.add(path.key("version"), format!("give the engine version: {}", versions.join(", ")));
    } else if !versions.contains(&spec.version.as_str()) {
        errors.add(
            path.key("version"),
            format!(
                "{} {:?} is not available: this installation runs {} {} (write version: {:?})",
                spec.engine.as_str(),
                spec.version,
                spec.engine.as_str(),
                versions.join(" or "),
                versions[0]
            ),
        );
    }
    if let Some(size) = &spec.storage.size {
        match parse_bytes(size) {
            Err(message) => errors.add(path.key("storage").key("size"), message),
            Ok(bytes) if bytes < crate::database::MIN_STORAGE_BYTES => errors.add(
                path.key("storage").key("size"),
                format!("{size} is too small for a database: give at least 100Mi"),
            ),
            Ok(_) => {}
        }
    }
    if let Some(name) = &spec.database_name {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if !valid {
            errors.add(path.key("databaseName"), format!("{name:?} is not a valid database name: use lower-case letters, digits and '_', not starting with a digit"));
        }
    }
    if let Some(backup) = &spec.backup {
        if let Err(message) = check_cron(&backup.schedule) {
            errors.add(path.key("backup").key("schedule"), message);
        }
    }
    if let Some(restore) = &spec.restore_from {
        if restore.backup.trim().is_empty() {
            errors.add(path.key("restoreFrom").key("backup"), "give the backup's name");
        }
    }
    check_optional_network(spec.network.as_ref(), path, errors);
}

fn check_policy_spec(spec: &crate::policy::PolicySpec, path: &FieldPath, errors: &mut Errors) {
    for (index, namespace) in spec.namespaces.iter().enumerate() {
        if namespace != "*" {
            if let Err(message) = check_dns_label(namespace) {
                errors.add(path.key("namespaces").index(index), format!("{message}; or `*` for every namespace"));
            }
        }
    }
    if spec.rules.is_empty() {
        errors.add(path.key("rules"), "a policy needs at least one rule");
    }
    let mut names = std::collections::BTreeSet::new();
    for (index, rule) in spec.rules.iter().enumerate() {
        let at = path.key("rules").index(index);
        if let Err(message) = check_dns_label(&rule.name) {
            errors.add(at.key("name"), message);
        } else if !names.insert(rule.name.as_str()) {
            errors.add(at.key("name"), format!("another rule is named {:?}; names must be unique", rule.name));
        }
        match rule.constraints().as_slice() {
            [_] => {}
            [] => errors.add(
                at.clone(),
                "set one constraint: allowedImages, maxReplicas, maxCpu, maxMemory, forbidPrivilegedHostPorts, requiredLabels or allowedDatabaseEngines",
            ),
            several => errors.add(
                at.clone(),
                format!("set exactly one constraint per rule, not {}: split it into several rules", several.join(" and ")),
            ),
        }
        if let Some(images) = &rule.allowed_images {
            if images.is_empty() || images.iter().any(|prefix| prefix.trim().is_empty()) {
                errors.add(at.key("allowedImages"), "list at least one non-empty image prefix, e.g. `minicloud/`");
            }
        }
        if let Some(cpu) = &rule.max_cpu {
            if let Err(message) = crate::quantity::parse_cpu_millis(cpu) {
                errors.add(at.key("maxCpu"), message);
            }
        }
        if let Some(memory) = &rule.max_memory {
            if let Err(message) = crate::quantity::parse_bytes(memory) {
                errors.add(at.key("maxMemory"), message);
            }
        }
        if rule.forbid_privileged_host_ports == Some(false) {
            errors.add(
                at.key("forbidPrivilegedHostPorts"),
                "write `true` (a rule that allows everything forbids nothing), or remove the rule",
            );
        }
        if let Some(labels) = &rule.required_labels {
            if labels.is_empty() {
                errors.add(at.key("requiredLabels"), "list at least one label key");
            }
            for (position, key) in labels.iter().enumerate() {
                if let Err(message) = check_label_key(key) {
                    errors.add(at.key("requiredLabels").index(position), message);
                }
            }
        }
        if let Some(engines) = &rule.allowed_database_engines {
            if engines.is_empty() {
                errors.add(at.key("allowedDatabaseEngines"), "list at least one engine: postgres, mysql or redis");
            }
            for (position, engine) in engines.iter().enumerate() {
                if !["postgres", "mysql", "redis"].contains(&engine.as_str()) {
                    errors.add(
                        at.key("allowedDatabaseEngines").index(position),
                        format!("{engine:?} is not an engine: use postgres, mysql or redis"),
                    );
                }
            }
        }
    }
}

fn check_secret_spec(spec: &SecretSpec, path: &FieldPath, errors: &mut Errors) {
    for (key, value) in &spec.string_data {
        if value == crate::secret::REDACTED {
            errors.add(
                path.key("stringData").key(key),
                format!(
                    "{:?} is the placeholder `cloud get` shows instead of a value, not a value: write the value itself (`cloud secret reveal` prints the stored one)",
                    crate::secret::REDACTED
                ),
            );
        }
        let valid = !key.is_empty()
            && key.len() <= 253
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !valid {
            errors.add(
                path.key("stringData").key(key),
                format!("{key:?} is not a valid key: use letters, digits, '-', '_' and '.'"),
            );
        }
    }
}

/// Whether `value` fits the declared parameter (type, allowed values, bounds). Returns why not.
pub fn check_parameter_value(parameter: &ParameterSpec, value: &Value) -> Result<(), String> {
    let type_ok = match parameter.type_ {
        ParameterType::String => value.is_string(),
        ParameterType::Integer => value.is_i64() || value.is_u64(),
        ParameterType::Number => value.is_number(),
        ParameterType::Boolean => value.is_boolean(),
    };
    if !type_ok {
        return Err(format!("parameter {:?} expects a {:?}, got {value}", parameter.name, parameter.type_));
    }
    if !parameter.allowed_values.is_empty() && !parameter.allowed_values.contains(value) {
        let allowed: Vec<String> = parameter.allowed_values.iter().map(Value::to_string).collect();
        return Err(format!(
            "{value} is not allowed for parameter {:?}; choose one of {}",
            parameter.name,
            allowed.join(", ")
        ));
    }
    if let (Some(pattern), Some(text)) = (&parameter.pattern, value.as_str()) {
        let anchored = format!("^(?:{pattern})$");
        match regex::Regex::new(&anchored) {
            Ok(regex) if !regex.is_match(text) => {
                return Err(format!("{value} does not match the pattern of parameter {:?} ({pattern})", parameter.name))
            }
            Ok(_) => {}
            Err(error) => {
                return Err(format!(
                    "the pattern of parameter {:?} is not a regular expression: {error}",
                    parameter.name
                ))
            }
        }
    }
    if let Some(number) = value.as_f64() {
        if parameter.minimum.is_some_and(|min| number < min) || parameter.maximum.is_some_and(|max| number > max) {
            return Err(format!(
                "{value} is outside the range of parameter {:?} ({} to {})",
                parameter.name,
                parameter.minimum.map_or("-∞".into(), |m| m.to_string()),
                parameter.maximum.map_or("∞".into(), |m| m.to_string())
            ));
        }
    }
    Ok(())
}

/// The `${name}` placeholders in a string.
pub fn placeholders(text: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                found.push(&after[..end]);
                rest = &after[end + 1..];
            }
            None => break,
        }
    }
    found
}

fn collect_placeholders<'v>(value: &'v Value, path: FieldPath, out: &mut Vec<(FieldPath, &'v str)>) {
    match value {
        Value::String(text) => out.extend(placeholders(text).into_iter().map(|name| (path.clone(), name))),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                collect_placeholders(item, path.index(index), out);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                collect_placeholders(item, path.key(key), out);
            }
        }
        _ => {}
    }
}

fn check_stack_spec(spec: &StackSpec, path: &FieldPath, errors: &mut Errors) {
    let mut declared = BTreeMap::new();
    for (index, parameter) in spec.parameters.iter().enumerate() {
        let parameter_path = path.key("parameters").index(index);
        let valid_name = !parameter.name.is_empty()
            && parameter.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_name {
            errors.add(
                parameter_path.key("name"),
                format!("{:?} is not a valid parameter name: use letters, digits, '_' and '-'", parameter.name),
            );
        } else if declared.insert(parameter.name.as_str(), parameter).is_some() {
            errors.add(parameter_path.key("name"), format!("parameter {:?} is declared twice", parameter.name));
        }
        if let Some(default) = &parameter.default {
            if let Err(message) = check_parameter_value(parameter, default) {
                errors.add(parameter_path.key("default"), message);
            }
        }
        if let (Some(min), Some(max)) = (parameter.minimum, parameter.maximum) {
            if min > max {
                errors.add(parameter_path.key("minimum"), format!("minimum ({min}) is greater than maximum ({max})"));
            }
        }
        if let Some(pattern) = &parameter.pattern {
            if let Err(error) = regex::Regex::new(pattern) {
                errors.add(parameter_path.key("pattern"), format!("not a regular expression: {error}"));
            }
        }
        if parameter.secret && parameter.type_ != ParameterType::String {
            errors.add(parameter_path.key("secret"), "only String parameters can be secret");
        }
        if parameter.generate.is_some() {
            if parameter.type_ != ParameterType::String {
                errors.add(parameter_path.key("generate"), "only String parameters can be generated");
            }
            if parameter.default.is_some() {
                errors.add(
                    parameter_path.key("default"),
                    "a generated parameter has no default: leave it out, or drop generate",
                );
            }
        }
    }
    let from_template = spec.template_ref.is_some();
    for (name, value) in &spec.values {
        if value.as_str() == Some(crate::secret::REDACTED) {
            errors.add(
                path.key("values").key(name),
                "\"<redacted>\" is the placeholder `cloud get` shows instead of a secret value, not a value: write the value itself",
            );
            continue;
        }
        match declared.get(name.as_str()) {
            Some(parameter) => {
                if let Err(message) = check_parameter_value(parameter, value) {
                    errors.add(path.key("values").key(name), message);
                }
            }
            None if !from_template => errors.add(
                path.key("values").key(name),
                format!("no parameter {name:?} is declared; declare it under spec.parameters"),
            ),
            None => {}
        }
    }
    if !from_template {
        for (index, parameter) in spec.parameters.iter().enumerate() {
            let provided = parameter.default.is_some() || parameter.generate.is_some();
            if !provided && !spec.values.contains_key(&parameter.name) {
                errors.add(
                    path.key("parameters").index(index),
                    format!(
                        "parameter {:?} has no default and no value: set spec.values.{}",
                        parameter.name, parameter.name
                    ),
                );
            }
        }
        if spec.resources.is_empty() {
            errors.add(path.key("resources"), "a stack without templateRef needs at least one resource");
        }
    }
    let parameters = spec.parameter_values();
    let names: Vec<String> = spec.resources.iter().map(|resource| resource.rendered_name(&parameters)).collect();
    let mut resource_names = BTreeSet::new();
    for (index, resource) in spec.resources.iter().enumerate() {
        let resource_path = path.key("resources").index(index);
        if resource.api_version != API_VERSION {
            errors.add(
                resource_path.key("apiVersion"),
                format!("unsupported apiVersion {:?}: use {API_VERSION:?}", resource.api_version),
            );
        }
        match Kind::from_kind_name(&resource.kind) {
            None => errors.add(resource_path.key("kind"), format!("unknown kind {:?}", resource.kind)),
            Some(Kind::Stack) => errors.add(resource_path.key("kind"), "stacks cannot contain stacks"),
            Some(Kind::Policy) => errors.add(
                resource_path.key("kind"),
                "stacks cannot contain policies: apply a Policy directly (writing one needs role admin)",
            ),
            Some(_) => {
                // One name, one resource: `${resources.NAME...}` and `dependsOn` are unambiguous.
                if !resource_names.insert(names[index].clone()) {
                    errors.add(
                        resource_path.key("metadata").key("name"),
                        format!(
                            "another resource of this stack is named {:?}: give each resource its own name",
                            names[index]
                        ),
                    );
                }
            }
        }
        if placeholders(&resource.metadata.name).is_empty() {
            if let Err(message) = check_dns_label(&resource.metadata.name) {
                errors.add(resource_path.key("metadata").key("name"), message);
            }
        }
        let mut found = Vec::new();
        collect_placeholders(&resource.spec, resource_path.key("spec"), &mut found);
        found.extend(
            placeholders(&resource.metadata.name)
                .into_iter()
                .map(|name| (resource_path.key("metadata").key("name"), name)),
        );
        if !from_template {
            for (placeholder_path, reference) in found {
                check_reference(reference, &declared, spec, &names, placeholder_path, errors);
            }
        }
        if let Some(when) = &resource.when {
            for reference in placeholders(when) {
                if !matches!(crate::stack::Reference::parse(reference), crate::stack::Reference::Parameter(_)) {
                    errors.add(
                        resource_path.key("when"),
                        format!("${{{reference}}}: `when` may name parameters only (${{params.NAME}})"),
                    );
                }
            }
        }
        for (position, dependency) in resource.depends_on.iter().enumerate() {
            if !names.contains(dependency) {
                errors.add(
                    resource_path.key("dependsOn").index(position),
                    format!("{dependency:?} names no resource of this stack; its resources are: {}", names.join(", ")),
                );
            }
        }
    }
    // Secret values only where they stay secret (a template's stack is checked once expanded).
    if !from_template {
        for (index, at, reference) in spec.misplaced_secrets(&names, "STACK") {
            let field = FieldPath::parse(&format!("{}.{at}", path.key("resources").index(index).key("spec")));
            errors.add(
                field,
                format!(
                    "${{{reference}}} is a secret value: it may be the whole value of an env variable (the stack passes it as a reference to the Secret holding it, never as text) or a value in a Secret's stringData, nothing else"
                ),
            );
        }
    }
    // The dependency graph: unknown names are reported above, a cycle here.
    if let Ok(dependencies) = crate::stack::dependencies(spec, &names) {
        if let Err(error) = crate::stack::dependency_order(&dependencies, &names) {
            errors.add(path.key("resources"), error.to_string());
        }
    }
    let mut output_names = HashSet::new();
    for (index, output) in spec.outputs.iter().enumerate() {
        let output_path = path.key("outputs").index(index);
        if !output_names.insert(output.name.as_str()) {
            errors.add(output_path.key("name"), format!("output {:?} is listed twice", output.name));
        }
        if !from_template {
            for reference in placeholders(&output.value) {
                check_reference(reference, &declared, spec, &names, output_path.key("value"), errors);
            }
        }
    }
}

/// Checks one `${...}` reference of a stack: a declared parameter, or a field of one of its
/// resources.
fn check_reference(
    reference: &str,
    declared: &BTreeMap<&str, &ParameterSpec>,
    spec: &StackSpec,
    names: &[String],
    at: FieldPath,
    errors: &mut Errors,
) {
    use crate::stack::Reference;
    match Reference::parse(reference) {
        Reference::Parameter(name) => {
            if !declared.contains_key(name) {
                errors.add(at, format!("${{{reference}}} names no declared parameter"));
            }
        }
        Reference::Resource { name, path } => {
            if !names.iter().any(|known| known == name) {
                errors.add(
                    at,
                    format!(
                        "${{{reference}}}: {name:?} names no resource of this stack; its resources are: {}",
                        names.join(", ")
                    ),
                );
            } else if path.is_empty() {
                errors.add(at, format!("${{{reference}}} names a resource but no field of it, e.g. ${{resources.{name}.status.endpoint}}"));
            }
        }
        Reference::Legacy { kind, name, .. } => {
            let found =
                spec.resources.iter().zip(names).any(|(resource, known)| resource.kind == kind && known == name);
            if !found {
                errors.add(at, format!("${{{reference}}}: {kind}/{name} is no resource of this stack"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        assert!(check_dns_label("web-1").is_ok());
        assert!(check_dns_label("Web").is_err());
        assert!(check_dns_label("-web").is_err());
        assert!(check_dns_label("web-").is_err());
        assert!(check_dns_label("").is_err());
        assert!(check_dns_label(&"a".repeat(64)).is_err());
        assert!(check_dns_label("../etc").is_err());
    }

    #[test]
    fn label_keys_and_values() {
        assert!(check_label_key("app").is_ok());
        assert!(check_label_key("minicloud.dev/name").is_ok());
        assert!(check_label_key("bad key").is_err());
        assert!(check_label_key("/x").is_err());
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("v1.2_x").is_ok());
        assert!(check_label_value("-x").is_err());
    }

    #[test]
    fn cron_schedules() {
        assert!(check_cron("0 3 * * *").is_ok());
        assert!(check_cron("*/15 0-6 1,15 * 1-5").is_ok());
        assert!(check_cron("0 3 * *").is_err());
        assert!(check_cron("61 3 * * *").is_err());
        assert!(check_cron("*/0 3 * * *").is_err());
    }

    #[test]
    fn a_rolling_update_must_be_able_to_replace_a_member() {
        let spec = |rolling: serde_json::Value| -> ScalingGroupSpec {
            serde_json::from_value(serde_json::json!({
                "minReplicas": 1, "maxReplicas": 3,
                "template": {"spec": {"image": "web"}},
                "updateStrategy": {"rollingUpdate": rolling}
            }))
            .expect("spec")
        };
        let problems = |rolling| {
            let mut errors = Errors::default();
            check_scaling_group_spec(&spec(rolling), &FieldPath::root().key("spec"), &mut errors);
            errors.0.iter().map(|e| e.to_string()).collect::<Vec<_>>()
        };
        let refused = problems(serde_json::json!({"maxSurge": 0, "maxUnavailable": 0}));
        assert_eq!(refused, ["spec.updateStrategy.rollingUpdate: maxSurge and maxUnavailable cannot both be 0: the update could never progress"]);
        let refused = problems(serde_json::json!({"maxSurge": 0}));
        assert!(
            refused.iter().any(|p| p.contains("maxSurge and maxUnavailable")),
            "maxUnavailable defaults to 0: {refused:?}"
        );
        assert!(problems(serde_json::json!({"maxSurge": 0, "maxUnavailable": 1})).is_empty());
        assert!(problems(serde_json::json!({})).is_empty());
    }

    #[test]
    fn placeholders_are_found() {
        assert_eq!(placeholders("${a}-${b}"), vec!["a", "b"]);
        assert!(placeholders("${unterminated").is_empty());
    }
}
