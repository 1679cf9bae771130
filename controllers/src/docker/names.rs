//! The names of the Docker objects minicloud creates, and the names earlier versions used.
//!
//! Every name is injective: it is made of DNS-1123 labels (namespace, object name, network
//! name, volume name: none can hold a `.`) joined by `.`, after a prefix that says what the
//! object is for, and it ends with the cluster tag (8 characters of the control plane's id). So
//! two namespaces whose names concatenate to the same text (`a` + `b-web`, `a-b` + `web`), two
//! kinds, or two control planes on one engine never share a container, network or volume name.
//! Names stay readable in `docker ps`: `mc.default.web.3f2a1c9b` is Instance `web` of
//! namespace `default`.
//!
//! A name alone never decides ownership: before anything is adopted, changed or removed, its
//! labels are checked ([`super::labels::Identity`]).

/// The part of every name that tells control planes apart: 8 characters of the cluster id.
pub(crate) fn cluster_tag(cluster: &str) -> String {
    let tag: String = cluster.chars().filter(char::is_ascii_alphanumeric).take(8).collect();
    if tag.is_empty() {
        "0".to_owned()
    } else {
        tag.to_ascii_lowercase()
    }
}

/// The container of an Instance.
pub fn instance_container(cluster: &str, namespace: &str, name: &str) -> String {
    format!("mc.{namespace}.{name}.{}", cluster_tag(cluster))
}

/// The HAProxy container of a LoadBalancer.
pub(crate) fn loadbalancer_container(cluster: &str, namespace: &str, name: &str) -> String {
    format!("mclb.{namespace}.{name}.{}", cluster_tag(cluster))
}

/// The network a LoadBalancer's container publishes its ports from. Docker hands a container's
/// published ports (and its default route) to the attached network whose name sorts first;
/// `mc0lb.` sorts before every namespace network (`mcnet.`), so joining the networks of its
/// targets and route backends never moves the load balancer's ports.
pub fn loadbalancer_network(cluster: &str, namespace: &str, name: &str) -> String {
    format!("mc0lb.{namespace}.{name}.{}", cluster_tag(cluster))
}

/// The container of a ManagedDatabase.
pub fn database_container(cluster: &str, namespace: &str, name: &str) -> String {
    format!("mcdb.{namespace}.{name}.{}", cluster_tag(cluster))
}

/// The data volume of a ManagedDatabase.
pub fn database_volume(cluster: &str, namespace: &str, name: &str) -> String {
    format!("mcdb.{namespace}.{name}.data.{}", cluster_tag(cluster))
}

/// The Docker volume behind an Instance's named volume.
pub fn instance_volume(cluster: &str, namespace: &str, instance: &str, volume: &str) -> String {
    format!("mc.{namespace}.{instance}.{volume}.{}", cluster_tag(cluster))
}

/// The Docker network of a minicloud network name (`default` when none) in a namespace.
pub fn network(cluster: &str, namespace: &str, network: Option<&str>) -> String {
    format!("mcnet.{namespace}.{}.{}", network.unwrap_or("default"), cluster_tag(cluster))
}

/// The namespace and minicloud network name of a namespace network's Docker name
/// ([`network`]), when it is one of this cluster's.
pub fn parse_network(cluster: &str, name: &str) -> Option<(String, String)> {
    let mut parts = name.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("mcnet"), Some(namespace), Some(network), Some(tag), None) if tag == cluster_tag(cluster) => {
            Some((namespace.to_owned(), network.to_owned()))
        }
        _ => None,
    }
}

/// The names minicloud used before names were injective (`mc-NAMESPACE-NAME`, ...). They are
/// read only to migrate what an earlier version created: a container under such a name is
/// taken over only when its labels name this cluster and this very object (uid), and a volume
/// only when that container mounts it.
pub mod legacy {
    /// An Instance's container.
    pub fn instance_container(namespace: &str, name: &str) -> String {
        format!("mc-{namespace}-{name}")
    }

    /// A LoadBalancer's container.
    pub(crate) fn loadbalancer_container(namespace: &str, name: &str) -> String {
        format!("mclb-{namespace}-{name}")
    }

    /// A ManagedDatabase's container.
    pub fn database_container(namespace: &str, name: &str) -> String {
        format!("mcdb-{namespace}-{name}")
    }

    /// A ManagedDatabase's data volume.
    pub fn database_volume(namespace: &str, name: &str) -> String {
        format!("mcdb-{namespace}-{name}-data")
    }

    /// An Instance's named volume.
    pub fn instance_volume(namespace: &str, instance: &str, volume: &str) -> String {
        format!("mc-{namespace}-{instance}-{volume}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = "3f2a1c9b00000000000000000000abcd";

    #[test]
    fn names_that_concatenate_alike_stay_apart() {
        // Namespace `a` with `b-web`, namespace `a-b` with `web`: one name before.
        assert_eq!(legacy::instance_container("a", "b-web"), legacy::instance_container("a-b", "web"));
        assert_ne!(instance_container(CLUSTER, "a", "b-web"), instance_container(CLUSTER, "a-b", "web"));
        assert_ne!(network(CLUSTER, "sec-q7", Some("v-default")), network(CLUSTER, "sec-q7-v", None));
        assert_ne!(
            instance_volume(CLUSTER, "sec-q7", "web", "data"),
            instance_volume(CLUSTER, "sec-q7-v", "web", "data")
        );
        assert_ne!(database_volume(CLUSTER, "sec-q7", "w-db"), database_volume(CLUSTER, "sec-q7-w", "db"));
        // An Instance named like a database's data volume part cannot meet it either.
        assert_ne!(instance_volume(CLUSTER, "x", "db", "data"), database_volume(CLUSTER, "x", "db"));
    }

    #[test]
    fn a_load_balancers_own_network_sorts_before_every_namespace_network() {
        // Docker gives published ports to the attached network that sorts first.
        for namespace in ["0", "a", "a-b", "zzz", "edge"] {
            for other in ["0", "-", "a", "blog", "zzz"] {
                assert!(
                    loadbalancer_network(CLUSTER, namespace, "edge") < network(CLUSTER, other, None),
                    "{namespace} {other}"
                );
                assert!(
                    loadbalancer_network(CLUSTER, namespace, "edge") < network(CLUSTER, other, Some("a")),
                    "{namespace} {other}"
                );
            }
        }
        assert_ne!(loadbalancer_network(CLUSTER, "a-b", "c"), loadbalancer_network(CLUSTER, "a", "b-c"));
        assert_eq!(parse_network(CLUSTER, &network(CLUSTER, "a-b", Some("web"))), Some(("a-b".into(), "web".into())));
        assert_eq!(parse_network("77aa1c9b00000000", &network(CLUSTER, "a", None)), None, "another cluster's");
        assert_eq!(parse_network(CLUSTER, &loadbalancer_network(CLUSTER, "a", "b")), None);
    }

    #[test]
    fn control_planes_and_kinds_stay_apart() {
        let other = "77aa1c9b00000000000000000000abcd";
        assert_ne!(instance_container(CLUSTER, "x", "same"), instance_container(other, "x", "same"));
        assert_ne!(instance_container(CLUSTER, "x", "same"), loadbalancer_container(CLUSTER, "x", "same"));
        assert_ne!(instance_container(CLUSTER, "x", "same"), database_container(CLUSTER, "x", "same"));
        assert_eq!(instance_container(CLUSTER, "default", "web"), "mc.default.web.3f2a1c9b");
    }

    #[test]
    fn names_are_valid_docker_names() {
        let valid = |name: &str| {
            name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        };
        let long = "a".repeat(63);
        for name in [
            instance_container(CLUSTER, &long, &long),
            database_volume(CLUSTER, &long, &long),
            instance_volume(CLUSTER, &long, &long, &long),
            network(CLUSTER, &long, Some(&long)),
            instance_container("", "x", "y"),
        ] {
            assert!(valid(&name), "{name}");
        }
    }
}
