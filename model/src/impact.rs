//! What an update does to what runs, from the fields it changes (`cloud diff` and the
//! console's plan say it next to each object): replaces a container, rolls a group's members,
//! reloads a load balancer in place, …

use minicloud_crds::Kind;

/// What an update does to what runs.
pub fn impact(kind: Kind, changes: &[String]) -> &'static str {
    let spec = |prefix: &str| changes.iter().any(|path| path.starts_with(prefix));
    match kind {
        Kind::Instance if spec("spec") => "replaces its container",
        Kind::ScalingGroup if spec("spec.template") => "rolling update: replaces its members",
        Kind::LoadBalancer
            if spec("spec.network")
                || changes
                    .iter()
                    .any(|p| p.starts_with("spec.listeners") && (p.ends_with(".port") || p.ends_with(".name"))) =>
        {
            "replaces the HAProxy container"
        }
        Kind::LoadBalancer if spec("spec") => "in place: a validated HAProxy reload, no request lost",
        Kind::ManagedDatabase if spec("spec.engine") || spec("spec.version") || spec("spec.network") => {
            "replaces its container; the data stays on its volume"
        }
        Kind::Secret if spec("spec") => "in place; Instances that read it are replaced",
        Kind::Stack if spec("spec") => "updates the stack's resources",
        _ => "in place",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impacts_name_what_is_replaced() {
        assert_eq!(impact(Kind::Instance, &["spec.image".into()]), "replaces its container");
        assert_eq!(impact(Kind::Instance, &["metadata.labels.tier".into()]), "in place");
        assert_eq!(impact(Kind::ScalingGroup, &["spec.desiredReplicas".into()]), "in place");
        assert!(impact(Kind::ScalingGroup, &["spec.template.spec.image".into()]).starts_with("rolling update"));
        assert_eq!(impact(Kind::LoadBalancer, &["spec.listeners[0].port".into()]), "replaces the HAProxy container");
        assert!(impact(Kind::LoadBalancer, &["spec.algorithm".into()]).starts_with("in place"));
    }
}
