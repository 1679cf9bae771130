//! A container's CPU use from the engine's stats stream, computed as `docker stats` computes it:
//! the container's CPU time over the host's CPU time between two samples, times the number of
//! CPUs. The engine reports the CPUs as `online_cpus` (cgroup v2, and v1 on recent engines) or
//! only as one `percpu_usage` entry per CPU (cgroup v1 on older engines); both are read.

use bollard::models::{ContainerCpuStats, ContainerStatsResponse};

/// CPU use between the previous sample and this one, in cores (1.0 = one core fully busy).
/// `None` for a sample that has no previous one (the first of a stream) or no figures (a
/// container that stopped).
pub(crate) fn cores_used(sample: &ContainerStatsResponse) -> Option<f64> {
    let now = sample.cpu_stats.as_ref()?;
    let before = sample.precpu_stats.as_ref()?;
    let (container_now, system_now) = counters(now)?;
    let (container_before, system_before) = counters(before)?;
    if system_before == 0 || system_now <= system_before {
        return None;
    }
    let container = container_now.saturating_sub(container_before) as f64;
    let system = (system_now - system_before) as f64;
    let cpus = match now.online_cpus.filter(|cpus| *cpus > 0) {
        Some(cpus) => f64::from(cpus),
        None => now.cpu_usage.as_ref()?.percpu_usage.as_ref().map(Vec::len).filter(|cpus| *cpus > 0)? as f64,
    };
    Some(container / system * cpus)
}

/// A container's use at one moment: CPU in cores, memory in bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    pub cores: f64,
    pub memory_bytes: u64,
}

/// CPU (see [`cores_used`]) and memory as `docker stats` shows it: the usage less the
/// reclaimable page cache (`inactive_file` on cgroup v2, `total_inactive_file` on v1).
pub fn usage(sample: &ContainerStatsResponse) -> Option<Usage> {
    let memory = sample.memory_stats.as_ref()?;
    let used = memory.usage?;
    let cache = memory
        .stats
        .as_ref()
        .and_then(|stats| stats.get("inactive_file").or_else(|| stats.get("total_inactive_file")).copied())
        .unwrap_or(0);
    Some(Usage { cores: cores_used(sample).unwrap_or(0.0), memory_bytes: used.saturating_sub(cache) })
}

fn counters(stats: &ContainerCpuStats) -> Option<(u64, u64)> {
    Some((stats.cpu_usage.as_ref()?.total_usage?, stats.system_cpu_usage?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample(value: serde_json::Value) -> ContainerStatsResponse {
        serde_json::from_value(value).expect("stats")
    }

    #[test]
    fn cgroup_v2_uses_online_cpus() {
        // 0.5 s of container CPU while the host's two CPUs spent 2 s: a quarter of the host's
        // time, times 2 CPUs = half a core.
        let stats = sample(json!({
            "cpu_stats": {"cpu_usage": {"total_usage": 1_500_000_000u64}, "system_cpu_usage": 12_000_000_000u64, "online_cpus": 2},
            "precpu_stats": {"cpu_usage": {"total_usage": 1_000_000_000u64}, "system_cpu_usage": 10_000_000_000u64, "online_cpus": 2}
        }));
        let cores = cores_used(&stats).expect("figures");
        assert!((cores - 0.5).abs() < 1e-9, "{cores}");
    }

    #[test]
    fn cgroup_v1_counts_per_cpu_entries() {
        let stats = sample(json!({
            "cpu_stats": {"cpu_usage": {"total_usage": 3_000_000_000u64, "percpu_usage": [1, 2, 3, 4]}, "system_cpu_usage": 14_000_000_000u64},
            "precpu_stats": {"cpu_usage": {"total_usage": 1_000_000_000u64, "percpu_usage": [1, 1, 1, 1]}, "system_cpu_usage": 10_000_000_000u64}
        }));
        let cores = cores_used(&stats).expect("figures");
        assert!((cores - 2.0).abs() < 1e-9, "2 s over 4 s of host time on 4 CPUs: {cores}");
    }

    #[test]
    fn memory_leaves_out_the_page_cache() {
        let v2 = sample(json!({
            "cpu_stats": {"cpu_usage": {"total_usage": 1_500_000_000u64}, "system_cpu_usage": 12_000_000_000u64, "online_cpus": 2},
            "precpu_stats": {"cpu_usage": {"total_usage": 1_000_000_000u64}, "system_cpu_usage": 10_000_000_000u64},
            "memory_stats": {"usage": 10_000u64, "stats": {"inactive_file": 4_000u64}}
        }));
        assert_eq!(usage(&v2), Some(Usage { cores: 0.5, memory_bytes: 6_000 }));
        let v1 = sample(json!({"memory_stats": {"usage": 10_000u64, "stats": {"total_inactive_file": 1_000u64}}}));
        assert_eq!(usage(&v1), Some(Usage { cores: 0.0, memory_bytes: 9_000 }));
        assert_eq!(usage(&sample(json!({"memory_stats": {}}))), None, "a stopped container has no figures");
    }

    #[test]
    fn first_and_empty_samples_have_no_figure() {
        let first = sample(json!({
            "cpu_stats": {"cpu_usage": {"total_usage": 5u64}, "system_cpu_usage": 100u64, "online_cpus": 2},
            "precpu_stats": {"cpu_usage": {"total_usage": 0u64}, "system_cpu_usage": 0u64}
        }));
        assert_eq!(cores_used(&first), None, "no previous sample");
        let stopped = sample(json!({"cpu_stats": {"cpu_usage": {"total_usage": 0u64}}, "precpu_stats": {}}));
        assert_eq!(cores_used(&stopped), None);
        let still = sample(json!({
            "cpu_stats": {"cpu_usage": {"total_usage": 5u64}, "system_cpu_usage": 100u64, "online_cpus": 2},
            "precpu_stats": {"cpu_usage": {"total_usage": 5u64}, "system_cpu_usage": 100u64}
        }));
        assert_eq!(cores_used(&still), None, "no host time passed");
        let no_cpus = sample(json!({
            "cpu_stats": {"cpu_usage": {"total_usage": 9u64}, "system_cpu_usage": 200u64, "online_cpus": 0},
            "precpu_stats": {"cpu_usage": {"total_usage": 5u64}, "system_cpu_usage": 100u64}
        }));
        assert_eq!(cores_used(&no_cpus), None, "neither online_cpus nor percpu_usage");
    }
}
