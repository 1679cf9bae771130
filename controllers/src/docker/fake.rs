//! A container engine in memory, for unit tests of reconcile decisions: containers run as soon
//! as they are created, nothing is pulled, nothing is executed. The integration tests prove the
//! same decisions against the real engine.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream;

use super::{
    CommandOutput, ContainerDriver, ContainerInfo, ContainerSpec, CpuStream, DriverError, EventStream, Identity,
    InputSource, LogStream, OutputSink,
};

/// A running container named `name` with these labels and nothing else, as tests place one.
pub(crate) fn running_container(name: &str, labels: HashMap<String, String>) -> ContainerInfo {
    ContainerInfo {
        id: format!("id-{name}"),
        name: name.to_owned(),
        labels,
        running: true,
        health: None,
        exit_code: None,
        started_at: None,
        ports: Vec::new(),
        addresses: BTreeMap::new(),
        volumes: Vec::new(),
    }
}

/// A container engine in memory: containers run as soon as they are created.
#[derive(Default)]
pub(crate) struct FakeDriver {
    pub containers: Mutex<HashMap<String, ContainerInfo>>,
    pub missing_images: Vec<String>,
    pub unreachable: bool,
    pub next_port: Mutex<u16>,
    pub created: Mutex<Vec<ContainerSpec>>,
    /// Removals that are still in progress when the next call comes (as Docker's can be).
    pub slow_removals: Mutex<u32>,
    /// Volumes by name, with their labels.
    pub volumes: Mutex<HashMap<String, HashMap<String, String>>>,
    /// Host ports someone else publishes.
    pub taken_ports: Mutex<Vec<u16>>,
}

impl FakeDriver {
    fn check(&self) -> Result<(), DriverError> {
        if self.unreachable {
            return Err(DriverError::Unreachable("connection refused".into()));
        }
        Ok(())
    }

    pub fn set(&self, name: &str, change: impl FnOnce(&mut ContainerInfo)) {
        if let Some(container) = self.containers.lock().expect("lock").get_mut(name) {
            change(container);
        }
    }

    pub fn get(&self, name: &str) -> Option<ContainerInfo> {
        self.containers.lock().expect("lock").get(name).cloned()
    }
}

#[async_trait]
impl ContainerDriver for FakeDriver {
    async fn ping(&self) -> Result<(), DriverError> {
        self.check()
    }
    async fn list_managed(&self) -> Result<Vec<ContainerInfo>, DriverError> {
        self.check()?;
        Ok(self.containers.lock().expect("lock").values().cloned().collect())
    }
    async fn inspect(&self, id_or_name: &str) -> Result<Option<ContainerInfo>, DriverError> {
        self.check()?;
        let containers = self.containers.lock().expect("lock");
        Ok(containers.values().find(|c| c.id == id_or_name || c.name == id_or_name).cloned())
    }
    async fn ensure_image(&self, image: &str, _: &(dyn Fn(String) + Send + Sync)) -> Result<(), DriverError> {
        self.check()?;
        if self.missing_images.iter().any(|missing| missing == image) {
            return Err(DriverError::ImageUnavailable { image: image.into(), reason: "no registry".into() });
        }
        Ok(())
    }
    async fn ensure_network(
        &self,
        name: &str,
        _: &Identity,
        _: &HashMap<String, String>,
    ) -> Result<String, DriverError> {
        self.check()?;
        Ok(format!("id-{name}"))
    }
    async fn connect_network(&self, _: &str, _: &str) -> Result<(), DriverError> {
        self.check()
    }
    async fn disconnect_network(&self, _: &str, _: &str) -> Result<(), DriverError> {
        self.check()
    }
    async fn ensure_volume(
        &self,
        name: &str,
        identity: &Identity,
        extra: &HashMap<String, String>,
    ) -> Result<bool, DriverError> {
        self.check()?;
        let mut volumes = self.volumes.lock().expect("lock");
        match volumes.get(name) {
            Some(labels) => match identity.mismatch(labels) {
                None => Ok(false),
                Some(owner) => Err(DriverError::not_ours("volume", name, owner)),
            },
            None => {
                volumes.insert(name.to_owned(), identity.labels(extra));
                Ok(true)
            }
        }
    }
    async fn inspect_volume(&self, name: &str) -> Result<Option<HashMap<String, String>>, DriverError> {
        self.check()?;
        Ok(self.volumes.lock().expect("lock").get(name).cloned())
    }
    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<String, DriverError> {
        self.check()?;
        let mut containers = self.containers.lock().expect("lock");
        if containers.contains_key(&spec.name) {
            return Err(DriverError::NameTaken(spec.name.clone()));
        }
        let taken = self.taken_ports.lock().expect("lock");
        if let Some(port) = spec.ports.iter().filter_map(|port| port.host_port).find(|port| taken.contains(port)) {
            return Err(DriverError::PortTaken { port });
        }
        let ports = spec
            .ports
            .iter()
            .map(|port| {
                let host_port = port.host_port.unwrap_or_else(|| {
                    let mut next = self.next_port.lock().expect("lock");
                    *next += 1;
                    40_000 + *next
                });
                (port.container_port, port.protocol.clone(), port.host_ip.clone(), host_port)
            })
            .collect();
        let id = format!("{:0>12}", self.created.lock().expect("lock").len() + 1);
        containers.insert(
            spec.name.clone(),
            ContainerInfo {
                id: id.clone(),
                name: spec.name.clone(),
                labels: spec.labels.clone(),
                running: true,
                health: spec.health.as_ref().map(|_| "starting".to_owned()),
                exit_code: None,
                started_at: Some("2026-01-01T00:00:00Z".into()),
                ports,
                addresses: BTreeMap::from([(spec.network.trim_start_matches("id-").to_owned(), "172.30.0.2".into())]),
                volumes: spec.volumes.iter().map(|volume| volume.volume.clone()).collect(),
            },
        );
        self.created.lock().expect("lock").push(spec.clone());
        Ok(id)
    }
    async fn remove(&self, id_or_name: &str) -> Result<(), DriverError> {
        self.check()?;
        let mut slow = self.slow_removals.lock().expect("lock");
        if *slow > 0 {
            *slow -= 1;
            return Ok(());
        }
        self.containers.lock().expect("lock").retain(|name, c| c.id != id_or_name && name != id_or_name);
        Ok(())
    }
    async fn remove_volume(&self, name: &str, identity: &Identity) -> Result<(), DriverError> {
        self.check()?;
        let mut volumes = self.volumes.lock().expect("lock");
        if let Some(owner) = volumes.get(name).and_then(|labels| identity.mismatch(labels)) {
            return Err(DriverError::not_ours("volume", name, owner));
        }
        volumes.remove(name);
        Ok(())
    }
    async fn exec(&self, _: &str, _: &[String], _: Duration) -> Result<CommandOutput, DriverError> {
        Err(DriverError::Refused("the fake engine runs no commands".into()))
    }
    async fn exec_streaming(
        &self,
        _: &str,
        _: &[String],
        _: &[String],
        _: Option<InputSource<'_>>,
        _: Option<OutputSink<'_>>,
        _: Duration,
    ) -> Result<CommandOutput, DriverError> {
        Err(DriverError::Refused("the fake engine runs no commands".into()))
    }
    async fn run_once(&self, _: &ContainerSpec, _: Duration) -> Result<CommandOutput, DriverError> {
        Err(DriverError::Refused("the fake engine runs no commands".into()))
    }
    async fn signal(&self, _: &str, _: &str) -> Result<(), DriverError> {
        self.check()
    }
    async fn stop(&self, id_or_name: &str, _: Duration) -> Result<(), DriverError> {
        self.check()?;
        for container in self.containers.lock().expect("lock").values_mut() {
            if container.id == id_or_name || container.name == id_or_name {
                container.running = false;
                container.exit_code = Some(0);
            }
        }
        Ok(())
    }
    async fn remove_network_if_unused(&self, _: &str, _: &Identity) -> Result<(), DriverError> {
        self.check()
    }
    fn events(&self) -> EventStream {
        Box::pin(stream::empty())
    }
    async fn logs(&self, _: &str, _: bool, _: Option<u32>) -> Result<LogStream, DriverError> {
        Ok(Box::pin(stream::empty()))
    }
    async fn usage(&self, _: &str) -> Result<Option<super::stats::Usage>, DriverError> {
        Ok(None)
    }

    async fn cpu_usage(&self, _: &str) -> Result<CpuStream, DriverError> {
        Ok(Box::pin(stream::empty()))
    }
}
