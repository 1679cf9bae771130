//! The ScalingGroup controller: keeps a group's Instances (its members) at the desired count,
//! autoscales that count on CPU, and replaces members when the template changes without a
//! load balancer in front ever losing a request.
//!
//! The decisions it makes, and where they are:
//!
//! | decision | where |
//! |---|---|
//! | the desired count (spec, `cloud scale`, or the autoscaler) | [`ScalingGroupController::desired_count`], [`autoscale::Autoscaler::decide`] |
//! | which members to create, mark draining, delete; rolling update and Recreate | [`plan::plan`] |
//! | whether a member is UP in the load balancers in front | [`ScalingGroupController::balancers`] |
//! | what status and events say | `summarise`, [`ScalingGroupController::report_steps`] |
//!
//! - Members are Instances owned by the group (`ownerReferences`), named `GROUP-xxxxx`, with
//!   the template's labels plus [`GROUP_LABEL`] and [`TEMPLATE_HASH_LABEL`]; load balancers
//!   pick them by selector or by `scalingGroupRef` with no extra step. They are found again
//!   from the store on every reconcile, so a control plane killed at any point converges with
//!   no member too many.
//! - The desired count: `spec.desiredReplicas` (default `minReplicas`) without autoscaling; with
//!   it, the autoscaler's count ([`autoscale`]) from the members' CPU use ([`cpu`]), persisted in
//!   `status.desiredReplicas`, and reset by a change of `spec.desiredReplicas` (`cloud scale`).
//! - Each reconcile plans the next steps ([`plan`]): create, mark as draining (load balancers
//!   stop sending new requests; [`DRAINING_ANNOTATION`]), delete once drained. Status carries
//!   the counts, the CPU figure, the last scaling decision and the conditions `Ready`,
//!   `Progressing` and `Autoscaling`; every decision that changes the count is an event and is
//!   counted in `/metrics`.
//! - Deleting the group deletes its members (owner references cascade in the store).

pub mod autoscale;
pub mod cpu;
pub mod plan;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use minicloud_crds::instance::InstancePhase;
use minicloud_crds::kinds::{Instance, LoadBalancer, ScalingGroup};
use minicloud_crds::meta::{ConditionStatus, ObjectMeta};
use minicloud_crds::quantity::parse_cpu_millis;
use minicloud_crds::scalinggroup::{ScalingGroupSpec, ScalingGroupStatus, ScalingRecord, UpdateStrategyType};
use minicloud_crds::{Kind, Object, ObjectKey, API_VERSION};
use minicloud_store::{EventType, Query, Store, StoreError};

use self::autoscale::{Autoscaler, Change, Observation, Policy};
use self::cpu::CpuMonitor;
use self::plan::{Member, Plan, Strategy};
use crate::docker::labels::spec_hash;
use crate::docker::names;
use crate::docker::ContainerDriver;
use crate::meta::{owner_reference, DRAINING_ANNOTATION};
use crate::metrics::Metrics;
use crate::reconciler::{record_event, Action, Cleanup, Context, Controller, ReconcileError};
use minicloud_crds::conditions::set_condition;

/// The label naming a member's group.
pub const GROUP_LABEL: &str = "minicloud.dev/scaling-group";
/// The label carrying the hash of the template a member was made from.
pub(crate) const TEMPLATE_HASH_LABEL: &str = "minicloud.dev/template-hash";
/// How often an autoscaled group is evaluated.
const EVALUATION_PERIOD: Duration = Duration::from_secs(1);
/// How soon to come back while members are draining.
const SOON: Duration = Duration::from_millis(500);
/// Status writes that only move the CPU figure are made at most this often.
const FIGURES_REFRESH: Duration = Duration::from_secs(5);
/// Characters of a member's random suffix (no vowels: no words; as Kubernetes does).
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// Most members created in one round (one store transaction); the next round follows at once.
const MAX_CREATE_PER_ROUND: u32 = 50;
/// Longest group-name prefix of a member name (a name is at most 63 characters).
const MAX_PREFIX: usize = 57;

/// A member as found in the store.
struct Found {
    object: Object,
    instance: Instance,
}

/// The load balancers of the group's namespace, as far as the group is concerned.
#[derive(Default)]
struct Balancers {
    /// Some running load balancer picks the members.
    in_front: bool,
    /// Per load balancer that picks the members: target name → state.
    picking: Vec<HashMap<String, String>>,
    /// Every target name any load balancer lists.
    listed: std::collections::HashSet<String>,
}

/// Reconciles ScalingGroups.
pub struct ScalingGroupController {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    cpu: CpuMonitor,
    /// Per group: recent recommendations (the scale-in stabilisation window).
    autoscalers: Mutex<HashMap<ObjectKey, Autoscaler>>,
    /// Per group: when its status was last written.
    written: Mutex<HashMap<ObjectKey, Instant>>,
}

impl ScalingGroupController {
    pub fn new(store: Arc<dyn Store>, driver: Arc<dyn ContainerDriver>, metrics: Arc<Metrics>) -> Self {
        ScalingGroupController {
            store,
            metrics,
            cpu: CpuMonitor::new(driver),
            autoscalers: Mutex::default(),
            written: Mutex::default(),
        }
    }

    fn forget(&self, key: &ObjectKey) {
        self.cpu.forget(key);
        self.metrics.set_stats_streams(self.cpu.streams());
        self.autoscalers.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
        self.written.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
    }

    /// The group's members: Instances of its namespace it owns.
    async fn members(&self, group: &Object) -> Result<Vec<Found>, ReconcileError> {
        let uid = group.metadata.uid.as_deref().unwrap_or_default();
        let instances = self.store.list(&Query::namespaced(Kind::Instance, group.namespace())).await?;
        let mut members = Vec::new();
        for object in instances.items {
            let owned = object
                .metadata
                .owner_references
                .iter()
                .any(|owner| owner.kind == Kind::ScalingGroup.as_str() && owner.uid == uid);
            if !owned || object.metadata.deletion_timestamp.is_some() {
                continue;
            }
            match serde_json::to_value(&object).and_then(serde_json::from_value::<Instance>) {
                Ok(instance) => members.push(Found { object, instance }),
                Err(error) => tracing::warn!(member = %object.metadata.name, %error, "a member does not decode"),
            }
        }
        Ok(members)
    }

    /// The load balancers that pick members made from `labels` on `network`, and every target
    /// any load balancer lists.
    async fn balancers(
        &self,
        group: &Object,
        labels: &BTreeMap<String, String>,
        network: &str,
    ) -> Result<Balancers, ReconcileError> {
        let listed = self.store.list(&Query::namespaced(Kind::LoadBalancer, group.namespace())).await?;
        let owners = [owner_reference(group)];
        let mut balancers = Balancers::default();
        for object in listed.items {
            let Ok(lb) = serde_json::to_value(&object).and_then(serde_json::from_value::<LoadBalancer>) else {
                continue;
            };
            let status = lb.status.unwrap_or_default();
            let targets: HashMap<String, String> =
                status.targets.into_iter().map(|target| (target.name, target.state)).collect();
            balancers.listed.extend(targets.keys().cloned());
            let running =
                status.conditions.iter().any(|c| c.type_ == "ContainerRunning" && c.status == ConditionStatus::True);
            let same_network = lb.spec.network.as_deref().unwrap_or("default") == network;
            if running && same_network && object.metadata.deletion_timestamp.is_none() && lb.spec.picks(labels, &owners)
            {
                balancers.in_front = true;
                balancers.picking.push(targets);
            }
        }
        Ok(balancers)
    }

    /// Creates `count` members of the current template in one store transaction.
    async fn create_members(
        &self,
        group: &Object,
        sg: &ScalingGroup,
        labels: &BTreeMap<String, String>,
        count: u32,
    ) -> Result<Vec<String>, ReconcileError> {
        let spec = serde_json::to_value(&sg.spec.template.spec).map_err(|e| ReconcileError::Failed(e.to_string()))?;
        let objects: Vec<Object> = (0..count)
            .map(|_| Object {
                api_version: API_VERSION.to_owned(),
                kind: Kind::Instance.as_str().to_owned(),
                metadata: ObjectMeta {
                    name: member_name(&group.metadata.name),
                    namespace: Some(group.namespace().to_owned()),
                    labels: labels.clone(),
                    owner_references: vec![owner_reference(group)],
                    ..ObjectMeta::default()
                },
                spec: spec.clone(),
                status: serde_json::Value::Null,
            })
            .collect();
        let names = objects.iter().map(|o| o.metadata.name.clone()).collect();
        match self.store.create_all(objects).await {
            Ok(_) => Ok(names),
            // A random name taken: the next round draws new ones.
            Err(StoreError::AlreadyExists(_)) => Ok(Vec::new()),
            Err(error) => Err(error.into()),
        }
    }

    /// Marks members as draining.
    async fn mark_draining(&self, members: &[&Found], now: DateTime<Utc>) -> Result<(), ReconcileError> {
        for member in members {
            let mut object = member.object.clone();
            object.metadata.annotations.insert(DRAINING_ANNOTATION.to_owned(), now.to_rfc3339());
            match self.store.update(object).await {
                Ok(_) | Err(StoreError::NotFound(_)) | Err(StoreError::Conflict { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    async fn delete_members(&self, members: &[&Found]) -> Result<(), ReconcileError> {
        for member in members {
            let Some(key) = member.object.key() else { continue };
            match self.store.delete(&key, None).await {
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    async fn converge(&self, ctx: &mut Context<'_>, sg: ScalingGroup) -> Result<Action, ReconcileError> {
        let key = &ctx.key().clone();
        let group = ctx.object().clone();
        let namespace = group.namespace().to_owned();
        let spec = &sg.spec;
        let previous = sg.status.clone().unwrap_or_default();
        let mut status = previous.clone();
        let template_hash = spec_hash(&group.spec["template"]);
        let mut labels = spec.template.labels.clone();
        labels.insert(GROUP_LABEL.to_owned(), group.metadata.name.clone());
        labels.insert(TEMPLATE_HASH_LABEL.to_owned(), template_hash.clone());
        let network = spec.template.spec.network.clone().unwrap_or_else(|| "default".to_owned());

        let found = self.members(&group).await?;
        let balancers = self.balancers(&group, &labels, &network).await?;
        let members: Vec<Member> = found.iter().map(|f| observe(f, &template_hash, &balancers)).collect();
        let active: Vec<&Member> = members.iter().filter(|m| m.draining.is_none() && !m.failed).collect();
        // Stats streams only for the members of autoscaled groups.
        let containers: Vec<String> = match spec.autoscaling {
            Some(_) => {
                active.iter().map(|m| names::instance_container(self.store.cluster_id(), &namespace, &m.name)).collect()
            }
            None => Vec::new(),
        };
        self.cpu.follow(key, &containers);
        self.metrics.set_stats_streams(self.cpu.streams());

        let round = Round {
            key,
            group: &group,
            spec,
            namespace: &namespace,
            generation: group.metadata.generation.unwrap_or(1),
            now: Utc::now(),
        };
        let desired = self.desired_count(&round, &previous, &mut status, &active).await;
        status.desired_replicas = desired;
        status.template_hash = Some(template_hash);
        status.observed_generation = Some(round.generation);

        // The next steps, and doing them.
        let strategy = match spec.update_strategy.type_ {
            UpdateStrategyType::Recreate => Strategy::Recreate,
            UpdateStrategyType::RollingUpdate => {
                let (max_surge, max_unavailable) = spec.update_strategy.limits();
                Strategy::Rolling { max_surge, max_unavailable }
            }
        };
        let plan = plan::plan(desired, &members, strategy, balancers.in_front, round.now);
        let picked = |names: &[String]| -> Vec<&Found> {
            found.iter().filter(|f| names.contains(&f.object.metadata.name)).collect()
        };
        self.delete_members(&picked(&plan.delete)).await?;
        self.mark_draining(&picked(&plan.drain), round.now).await?;
        let created = self.create_members(&group, &sg, &labels, plan.create.min(MAX_CREATE_PER_ROUND)).await?;
        self.report_steps(&group, &plan, &created, &members).await;

        let failure = member_failure(&found);
        let busy = summarise(&mut status, &round, &members, &plan, failure);
        self.write(ctx, &previous, &status).await?;
        Ok(match (busy, spec.autoscaling.is_some()) {
            (true, _) => Action::RequeueAfter(SOON),
            (false, true) => Action::RequeueAfter(EVALUATION_PERIOD),
            (false, false) => Action::AwaitChange,
        })
    }

    /// The count to drive toward: the spec's (also when it just changed: a manual scaling), or
    /// with autoscaling the autoscaler's decision from the last count. Changes are recorded.
    async fn desired_count(
        &self,
        round: &Round<'_>,
        previous: &ScalingGroupStatus,
        status: &mut ScalingGroupStatus,
        active: &[&Member],
    ) -> u32 {
        let spec = round.spec;
        let (min, max) = (spec.min_replicas, spec.max_replicas.max(spec.min_replicas));
        let from_spec = spec.desired_replicas.unwrap_or(min).clamp(min, max);
        let first = previous.observed_generation.is_none();
        let manual = !first && previous.spec_desired_replicas != spec.desired_replicas;
        let desired = if spec.autoscaling.is_none() || first || manual { from_spec } else { previous.desired_replicas };
        status.spec_desired_replicas = spec.desired_replicas;
        if !first && desired != previous.desired_replicas {
            let reason = if manual || spec.autoscaling.is_none() { "Manual" } else { "Bounds" };
            let message = format!("desiredReplicas {} → {desired} (spec)", previous.desired_replicas);
            self.scaled(round, status, reason, previous.desired_replicas, desired, message).await;
        }
        status.current_cpu_utilization_percent = None;
        let Some(autoscaling) = &spec.autoscaling else {
            status.conditions.retain(|condition| condition.type_ != "Autoscaling");
            return desired;
        };
        let policy = Policy {
            target_percent: f64::from(autoscaling.target_cpu_utilization_percent),
            window: Duration::from_secs(u64::from(autoscaling.window())),
            scale_out_cooldown: Duration::from_secs(u64::from(autoscaling.scale_out_cooldown())),
            scale_in_cooldown: Duration::from_secs(u64::from(autoscaling.scale_in_cooldown())),
            scale_in_stabilization: Duration::from_secs(u64::from(autoscaling.scale_in_stabilization())),
            min,
            max,
        };
        // Each member's use in percent of its CPU limit (of one core without a limit).
        let limit = spec
            .template
            .spec
            .resources
            .as_ref()
            .and_then(|r| r.cpu.as_deref())
            .and_then(|cpu| parse_cpu_millis(cpu).ok())
            .filter(|millis| *millis > 0)
            .map_or(1.0, |millis| millis as f64 / 1000.0);
        let usage = active
            .iter()
            .map(|member| {
                let container = names::instance_container(self.store.cluster_id(), round.namespace, &member.name);
                let cores = self.cpu.average(&container, policy.window)?;
                member.ready.then_some(cores / limit * 100.0)
            })
            .collect();
        let observation = Observation {
            now: round.now,
            current: desired,
            usage,
            last_scale_out: status.last_scale_out_time,
            last_scale_in: status.last_scale_in_time,
        };
        let decision = self
            .autoscalers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(round.key.clone())
            .or_default()
            .decide(&policy, &observation);
        status.current_cpu_utilization_percent = decision.cpu_percent.map(|cpu| cpu.round().max(0.0) as u32);
        let reason = match decision.change {
            Change::Hold => "Holding",
            Change::ScaleOut => "ScaledOut",
            Change::ScaleIn => "ScaledIn",
            Change::Bounds => "Bounds",
        };
        let state = if decision.cpu_percent.is_some() { ConditionStatus::True } else { ConditionStatus::False };
        let reason = if decision.cpu_percent.is_some() { reason } else { "NoMetrics" };
        set_condition(
            &mut status.conditions,
            "Autoscaling",
            state,
            reason,
            &decision.message,
            round.generation,
            round.now,
        );
        if decision.desired != desired {
            let reason = if decision.change == Change::Hold { "Bounds" } else { reason };
            self.scaled(round, status, reason, desired, decision.desired, decision.message).await;
        }
        decision.desired
    }

    /// Records a change of the desired count: status, event, metric.
    async fn scaled(
        &self,
        round: &Round<'_>,
        status: &mut ScalingGroupStatus,
        reason: &str,
        from: u32,
        to: u32,
        message: String,
    ) {
        let direction = match reason {
            "ScaledOut" => {
                status.last_scale_out_time = Some(round.now);
                "out"
            }
            "ScaledIn" => {
                status.last_scale_in_time = Some(round.now);
                "in"
            }
            "Manual" => "manual",
            _ => "bounds",
        };
        let group = round.group;
        self.metrics.record_scaling(group.namespace(), &group.metadata.name, direction);
        record_event(self.store.as_ref(), group, EventType::Normal, reason, message.clone()).await;
        status.last_scaling = Some(ScalingRecord {
            time: round.now,
            reason: reason.to_owned(),
            from_replicas: from,
            to_replicas: to,
            message,
        });
    }

    /// Events for what a round did to the members.
    async fn report_steps(&self, group: &Object, plan: &Plan, created: &[String], members: &[Member]) {
        if !created.is_empty() {
            record_event(
                self.store.as_ref(),
                group,
                EventType::Normal,
                "MembersCreated",
                format!("created {}", created.join(", ")),
            )
            .await;
        }
        let why = |name: &String| match members.iter().find(|m| &m.name == name) {
            Some(member) if member.failed => "stopped for good",
            Some(member) if !member.current => "old template",
            _ => "scale-in",
        };
        for name in &plan.drain {
            let message = format!("draining {name} ({}): load balancers finish its requests", why(name));
            record_event(self.store.as_ref(), group, EventType::Normal, "MemberDraining", message).await;
        }
        for name in &plan.delete {
            let message = match members.iter().find(|m| &m.name == name) {
                Some(member) if member.failed => format!("deleted {name}: it stopped for good and is replaced"),
                Some(member) if member.draining.is_some() && member.in_load_balancer => format!(
                    "deleted {name}: a load balancer still lists it after {}s of draining",
                    plan::DRAIN_TIMEOUT.as_secs()
                ),
                Some(member) if member.draining.is_some() => format!("deleted {name}: drained"),
                _ => format!("deleted {name} ({})", why(name)),
            };
            record_event(self.store.as_ref(), group, EventType::Normal, "MemberDeleted", message).await;
        }
    }

    /// Writes the status, except when only the CPU figure or the autoscaler's message moved and
    /// the last write is recent (an autoscaled group is evaluated every second).
    async fn write(
        &self,
        ctx: &mut Context<'_>,
        previous: &ScalingGroupStatus,
        status: &ScalingGroupStatus,
    ) -> Result<(), ReconcileError> {
        let recent = self
            .written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(ctx.key())
            .is_some_and(|at| at.elapsed() < FIGURES_REFRESH);
        if recent && without_figures(previous) == without_figures(status) {
            return Ok(());
        }
        if previous != status {
            ctx.write_status(status).await?;
            self.written.lock().unwrap_or_else(PoisonError::into_inner).insert(ctx.key().clone(), Instant::now());
        }
        Ok(())
    }
}

/// What one reconcile of a group works with.
struct Round<'a> {
    key: &'a ObjectKey,
    group: &'a Object,
    spec: &'a ScalingGroupSpec,
    namespace: &'a str,
    generation: i64,
    now: DateTime<Utc>,
}

/// Fills the counts and the `Ready` and `Progressing` conditions from the members as observed
/// at the start of the round and the plan made for it. True while work is in progress.
fn summarise(
    status: &mut ScalingGroupStatus,
    round: &Round<'_>,
    members: &[Member],
    plan: &Plan,
    failure: Option<(String, String)>,
) -> bool {
    let desired = status.desired_replicas;
    let active: Vec<&Member> = members.iter().filter(|m| m.draining.is_none() && !m.failed).collect();
    let draining = members.iter().filter(|m| m.draining.is_some()).count();
    status.replicas = count(members.iter());
    status.ready_replicas = count(active.iter().filter(|m| m.ready).copied());
    status.updated_replicas = count(active.iter().filter(|m| m.current).copied());
    let (ready, reason, message) = if desired == 0 {
        (ConditionStatus::True, "ScaledToZero", "the group has no members".to_owned())
    } else if status.ready_replicas >= desired {
        (ConditionStatus::True, "MembersReady", format!("{} of {desired} members ready", status.ready_replicas))
    } else {
        (ConditionStatus::False, "MembersNotReady", format!("{} of {desired} members ready", status.ready_replicas))
    };
    // A member that cannot start (its image is missing, a Secret it reads is not there) says
    // why the group is not Ready.
    let (reason, message) = match (&failure, ready) {
        (Some((failed, why)), ConditionStatus::False) => {
            (failed.as_str(), format!("{} of {desired} members ready; {why}", status.ready_replicas))
        }
        _ => (reason, message),
    };
    set_condition(&mut status.conditions, "Ready", ready, reason, message, round.generation, round.now);
    let old = active.iter().filter(|m| !m.current).count();
    let serving = active.iter().filter(|m| m.serving).count();
    let settled = plan.is_empty() && draining == 0 && old == 0 && active.len() == desired as usize;
    let (progressing, reason, message) = if settled {
        (ConditionStatus::False, "Stable", format!("{desired} members of the current template"))
    } else if old > 0 {
        let message = format!(
            "{:?}: {} of {desired} members updated, {old} of the old template left, {serving} serving",
            round.spec.update_strategy.type_, status.updated_replicas
        );
        (ConditionStatus::True, "Updating", message)
    } else if active.len() < desired as usize {
        (ConditionStatus::True, "ScalingOut", format!("{} of {desired} members exist", active.len()))
    } else {
        let excess = active.len().saturating_sub(desired as usize);
        (ConditionStatus::True, "ScalingIn", format!("{draining} member(s) draining, {excess} to remove"))
    };
    set_condition(&mut status.conditions, "Progressing", progressing, reason, message, round.generation, round.now);
    !plan.is_empty() || draining > 0
}

/// Reasons of a member's `Ready=False` that mean it cannot start until something is fixed.
const MEMBER_FAILURES: [&str; 2] = ["ImagePullFailed", "SecretNotFound"];

/// The first member that cannot start: its reason and `member NAME: message`.
fn member_failure(found: &[Found]) -> Option<(String, String)> {
    found.iter().find_map(|member| {
        let ready = member.instance.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready")?;
        (ready.status == ConditionStatus::False && MEMBER_FAILURES.contains(&ready.reason.as_str()))
            .then(|| (ready.reason.clone(), format!("member {}: {}", member.object.metadata.name, ready.message)))
    })
}

/// A status with the figures that move every second blanked (CPU, the autoscaler's message).
fn without_figures(status: &ScalingGroupStatus) -> ScalingGroupStatus {
    let mut status = status.clone();
    status.current_cpu_utilization_percent = None;
    for condition in &mut status.conditions {
        if condition.type_ == "Autoscaling" {
            condition.message.clear();
        }
    }
    status
}

fn count<'a>(members: impl Iterator<Item = &'a Member>) -> u32 {
    u32::try_from(members.count()).unwrap_or(u32::MAX)
}

/// How the plan sees a member.
fn observe(found: &Found, template_hash: &str, balancers: &Balancers) -> Member {
    let meta = &found.object.metadata;
    let status = found.instance.status.clone().unwrap_or_default();
    let ready = status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == ConditionStatus::True);
    let serving =
        ready && balancers.picking.iter().all(|targets| targets.get(&meta.name).is_some_and(|state| state == "UP"));
    let failed = matches!(status.phase, InstancePhase::Failed | InstancePhase::Stopped);
    Member {
        name: meta.name.clone(),
        created: meta.creation_timestamp.unwrap_or_default(),
        current: meta.labels.get(TEMPLATE_HASH_LABEL).map(String::as_str) == Some(template_hash),
        ready,
        serving,
        failed,
        draining: meta.annotations.get(DRAINING_ANNOTATION).map(|since| {
            DateTime::parse_from_rfc3339(since).map_or(DateTime::<Utc>::MIN_UTC, |t| t.with_timezone(&Utc))
        }),
        in_load_balancer: balancers.listed.contains(&meta.name),
    }
}

/// `GROUP-xxxxx`: the group's name (shortened to fit) and five random characters.
fn member_name(group: &str) -> String {
    let prefix: String = group.chars().take(MAX_PREFIX).collect();
    let prefix = prefix.trim_end_matches('-');
    let suffix: String =
        (0..5).map(|_| char::from(SUFFIX_ALPHABET[rand::random_range(0..SUFFIX_ALPHABET.len())])).collect();
    format!("{prefix}-{suffix}")
}

#[async_trait]
impl Controller for ScalingGroupController {
    type Resource = ScalingGroup;
    const KIND: Kind = Kind::ScalingGroup;
    /// None: the store deletes the members with the group.
    const FINALIZER: Option<&'static str> = None;

    fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    fn child_kinds(&self) -> Vec<Kind> {
        vec![Kind::Instance]
    }

    fn watched_kinds(&self) -> Vec<Kind> {
        vec![Kind::LoadBalancer]
    }

    async fn apply(&self, ctx: &mut Context<'_>, sg: ScalingGroup) -> Result<Action, ReconcileError> {
        self.converge(ctx, sg).await
    }

    async fn cleanup(&self, ctx: &mut Context<'_>, _: ScalingGroup) -> Result<Cleanup, ReconcileError> {
        self.forget(ctx.key());
        Ok(Cleanup::Done)
    }

    async fn gone(&self, key: &ObjectKey) -> Result<(), ReconcileError> {
        self.forget(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Reconcile decisions against the in-memory store (Instances and load balancers are
    //! written by the tests as their controllers would). `tests/it/scalinggroups.rs` proves the
    //! same with real Docker and HAProxy.

    use serde_json::{json, Value};

    use super::*;
    use crate::docker::fake::FakeDriver;
    use crate::reconciler::Reconciler;
    use minicloud_store::MemoryStore;

    struct Fixture {
        store: Arc<MemoryStore>,
        controller: ScalingGroupController,
    }

    fn fixture() -> Fixture {
        let store = Arc::new(MemoryStore::new());
        let controller =
            ScalingGroupController::new(store.clone(), Arc::new(FakeDriver::default()), Arc::new(Metrics::default()));
        Fixture { store, controller }
    }

    fn key() -> ObjectKey {
        ObjectKey::new(Kind::ScalingGroup, "default", "web")
    }

    fn spec(desired: u32, extra: Value) -> Value {
        let mut spec = json!({
            "minReplicas": 1, "maxReplicas": 5, "desiredReplicas": desired,
            "template": {"labels": {"app": "web"}, "spec": {"image": "web:1"}}
        });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        spec
    }

    fn object(kind: &str, name: &str, spec: Value) -> Object {
        serde_json::from_value(json!({
            "apiVersion": "minicloud.dev/v1", "kind": kind, "metadata": {"name": name}, "spec": spec
        }))
        .expect("object")
    }

    async fn reconcile(fixture: &Fixture) {
        fixture.controller.reconcile(&key()).await.expect("reconcile");
    }

    async fn group(fixture: &Fixture) -> (Object, ScalingGroupStatus) {
        let group = fixture.store.get(&key()).await.expect("group");
        let status = serde_json::from_value(group.status.clone()).expect("status");
        (group, status)
    }

    /// The group's members, oldest first.
    async fn members(fixture: &Fixture) -> Vec<Object> {
        let mut members: Vec<Object> = fixture
            .store
            .list(&Query::namespaced(Kind::Instance, "default"))
            .await
            .expect("list")
            .items
            .into_iter()
            .filter(|o| o.metadata.deletion_timestamp.is_none())
            .collect();
        members.sort_by_key(|m| m.metadata.creation_timestamp);
        members
    }

    /// Writes Instance status as the Instance controller would: Ready, or stopped for good.
    async fn report(fixture: &Fixture, member: &Object, ready: bool) {
        let mut object = fixture.store.get(&member.key().expect("key")).await.expect("member");
        let (phase, state) = if ready { ("Running", "True") } else { ("Failed", "False") };
        object.status = json!({
            "phase": phase,
            "conditions": [{"type": "Ready", "status": state, "reason": "Test", "message": "",
                            "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]
        });
        fixture.store.update_status(object).await.expect("status");
    }

    fn condition(status: &ScalingGroupStatus, type_: &str) -> (ConditionStatus, String) {
        let found = status.conditions.iter().find(|c| c.type_ == type_).expect("condition");
        (found.status, found.reason.clone())
    }

    #[tokio::test]
    async fn creates_the_desired_members_owned_and_labelled() {
        let fixture = fixture();
        let created = fixture.store.create(object("ScalingGroup", "web", spec(3, json!({})))).await.expect("group");
        reconcile(&fixture).await;
        // The members' creation wakes the group, which then observes them.
        reconcile(&fixture).await;
        let found = members(&fixture).await;
        let (_, status) = group(&fixture).await;
        assert_eq!(found.len(), 3);
        let hash = status.template_hash.clone().expect("template hash");
        for member in &found {
            assert!(member.metadata.name.starts_with("web-") && member.metadata.name.len() == 9);
            assert_eq!(member.metadata.owner_references[0].uid, created.metadata.uid.clone().unwrap_or_default());
            assert_eq!(member.metadata.labels.get("app").map(String::as_str), Some("web"));
            assert_eq!(member.metadata.labels.get(GROUP_LABEL).map(String::as_str), Some("web"));
            assert_eq!(member.metadata.labels.get(TEMPLATE_HASH_LABEL), Some(&hash));
            assert_eq!(member.spec["image"], "web:1");
        }
        assert_eq!((status.replicas, status.ready_replicas, status.desired_replicas), (3, 0, 3));
        assert_eq!(condition(&status, "Ready"), (ConditionStatus::False, "MembersNotReady".into()));
        for member in &found {
            report(&fixture, member, true).await;
        }
        reconcile(&fixture).await;
        let (_, status) = group(&fixture).await;
        assert_eq!(condition(&status, "Ready"), (ConditionStatus::True, "MembersReady".into()));
        assert_eq!(condition(&status, "Progressing"), (ConditionStatus::False, "Stable".into()));
        assert_eq!(members(&fixture).await.len(), 3, "nothing more is created");
    }

    #[tokio::test]
    async fn a_changed_desired_count_in_the_spec_overrides_the_autoscaled_one() {
        let fixture = fixture();
        let autoscaling = json!({"autoscaling": {"targetCpuUtilizationPercent": 60}});
        fixture.store.create(object("ScalingGroup", "web", spec(2, autoscaling.clone()))).await.expect("group");
        reconcile(&fixture).await;
        // The autoscaler had taken the group to 4 (as persisted in status).
        let (mut stored, mut status) = group(&fixture).await;
        status.desired_replicas = 4;
        stored.status = serde_json::to_value(&status).expect("status");
        fixture.store.update_status(stored).await.expect("status");
        reconcile(&fixture).await;
        assert_eq!(group(&fixture).await.1.desired_replicas, 4, "no figures: the autoscaled count holds");
        assert_eq!(members(&fixture).await.len(), 4);
        // `cloud scale` writes spec.desiredReplicas: it wins.
        let mut stored = fixture.store.get(&key()).await.expect("group");
        stored.spec = spec(3, autoscaling);
        fixture.store.update(stored).await.expect("update");
        reconcile(&fixture).await;
        let (stored, status) = group(&fixture).await;
        assert_eq!((status.desired_replicas, status.spec_desired_replicas), (3, Some(3)));
        let last = status.last_scaling.expect("last scaling");
        assert_eq!((last.reason.as_str(), last.from_replicas, last.to_replicas), ("Manual", 4, 3));
        let events = fixture.store.events(Some("default"), stored.key().as_ref()).await.expect("events");
        assert!(events.iter().any(|e| e.reason == "Manual" && e.message == "desiredReplicas 4 → 3 (spec)"));
    }

    #[tokio::test]
    async fn behind_a_load_balancer_a_member_drains_before_it_is_deleted() {
        let fixture = fixture();
        fixture.store.create(object("ScalingGroup", "web", spec(2, json!({})))).await.expect("group");
        reconcile(&fixture).await;
        let found = members(&fixture).await;
        for member in &found {
            report(&fixture, member, true).await;
        }
        // A running load balancer lists both members as UP.
        let lb_spec = json!({"listeners": [{"name": "http", "targetPort": 8080}], "targets": {"scalingGroupRef": {"name": "web"}}});
        let lb = fixture.store.create(object("LoadBalancer", "web", lb_spec)).await.expect("lb");
        let listing = |names: &[&Object]| {
            let targets: Vec<Value> = names
                .iter()
                .map(|m| json!({"name": m.metadata.name, "address": "172.30.0.2:8080", "healthy": true, "state": "UP"}))
                .collect();
            json!({"targets": targets, "conditions": [{"type": "ContainerRunning", "status": "True", "reason": "Running",
                "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]})
        };
        let mut with_status = lb.clone();
        with_status.status = listing(&found.iter().collect::<Vec<_>>());
        let lb = fixture.store.update_status(with_status).await.expect("lb status");
        reconcile(&fixture).await;
        assert_eq!(condition(&group(&fixture).await.1, "Ready").0, ConditionStatus::True);

        // Scale in: the newest member is marked, not deleted, while the load balancer lists it.
        let mut stored = fixture.store.get(&key()).await.expect("group");
        stored.spec = spec(1, json!({}));
        fixture.store.update(stored).await.expect("update");
        reconcile(&fixture).await;
        reconcile(&fixture).await;
        let now = members(&fixture).await;
        assert_eq!(now.len(), 2, "still draining");
        let (leaving, staying): (Vec<&Object>, Vec<&Object>) =
            now.iter().partition(|m| m.metadata.annotations.contains_key(DRAINING_ANNOTATION));
        assert_eq!((leaving.len(), staying.len()), (1, 1), "one member is marked");
        let (leaving, staying) = (leaving[0], staying[0]);

        // The load balancer drained it; once it is out (and the mark is a second old), it goes.
        let mut drained = lb;
        drained.status = listing(&[staying]);
        fixture.store.update_status(drained).await.expect("lb status");
        let mut marked = leaving.clone();
        let earlier = (Utc::now() - chrono::Duration::seconds(2)).to_rfc3339();
        marked.metadata.annotations.insert(DRAINING_ANNOTATION.to_owned(), earlier);
        fixture.store.update(marked).await.expect("mark");
        reconcile(&fixture).await;
        let left: Vec<String> = members(&fixture).await.iter().map(|m| m.metadata.name.clone()).collect();
        assert_eq!(left, std::slice::from_ref(&staying.metadata.name));
        let events = fixture.store.events(Some("default"), Some(&key())).await.expect("events");
        let deleted = format!("deleted {}: drained", leaving.metadata.name);
        assert!(events.iter().any(|e| e.reason == "MemberDeleted" && e.message == deleted), "{events:?}");
    }

    #[tokio::test]
    async fn a_member_stopped_for_good_is_replaced() {
        let fixture = fixture();
        fixture.store.create(object("ScalingGroup", "web", spec(2, json!({})))).await.expect("group");
        reconcile(&fixture).await;
        let found = members(&fixture).await;
        report(&fixture, &found[0], false).await;
        report(&fixture, &found[1], true).await;
        reconcile(&fixture).await;
        let now = members(&fixture).await;
        assert_eq!(now.len(), 2);
        assert!(!now.iter().any(|m| m.metadata.name == found[0].metadata.name), "the failed member is gone");
    }

    #[test]
    fn member_names_fit_a_dns_label() {
        let name = member_name("web");
        assert!(name.starts_with("web-") && name.len() == 9, "{name}");
        let long = "a".repeat(62) + "b";
        let name = member_name(&long);
        assert!(name.len() <= 63, "{name}");
        assert!(minicloud_crds::validation::check_dns_label(&name).is_ok(), "{name}");
        let dashed = format!("{}-{}", "a".repeat(56), "b".repeat(6));
        let name = member_name(&dashed);
        assert!(!name.contains("--") && name.len() <= 63, "{name}");
    }
}
