//! Follows ip-masq-agent's sources (the store's ConfigMap, the file polled
//! every second) and the cluster's nodes, and keeps the masquerading of
//! this node in line: the `ciliate_ipmasq4` map in BPF mode, the
//! `CILIATE_POST_nat` chain in iptables mode (see [`Enforcer`]).
//!
//! A list is put in force only once the enforcer has applied it; then the
//! state served as `GET /v1/ipmasq` changes and its `generation` grows. A
//! source that cannot be used refuses the whole update: the previous list
//! stays and `lastError` says why.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aya::maps::{LpmTrie, MapData};
use ciliate_api::{IpMasqState, Node};
use ciliate_datapath::maps::{ipcache_key, IpmasqValue};
use ciliate_store::{Event, Store};
use futures_util::StreamExt as _;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::ConfigMap;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    configmap_text, effective, read_file, InForce, Inputs, CONFIGMAP_NAME, CONFIGMAP_NAMESPACE,
};
use crate::config::IpMasqAgentConfig;
use crate::error::is_not_found;

/// How often the file at `ipMasqAgent.configPath` is read, and a failed
/// enforcement retried.
pub const POLL: Duration = Duration::from_secs(1);
/// How long the first list waits for the store's ConfigMap list: a restarted
/// agent must not put the file's or the default list in force for a moment
/// when the store holds another one (the pinned map keeps the old list meanwhile).
pub const STORE_GRACE: Duration = Duration::from_secs(5);

/// What puts a list in force.
pub trait Enforcer: Send {
    /// Applies `non_masq` (empty without ip-masq-agent) with the cluster's
    /// other nodes; the error says what failed.
    fn enforce(&mut self, non_masq: &[Ipv4Net], nodes: &[Node]) -> Result<(), String>;
    /// The agent stops.
    fn shutdown(&mut self) {}
}

/// BPF mode: `ciliate_ipmasq4` holds exactly the list.
pub struct MapEnforcer {
    pub map: LpmTrie<MapData, u32, IpmasqValue>,
}

impl MapEnforcer {
    /// Every prefix in the map.
    pub fn entries(&self) -> Result<BTreeSet<Ipv4Net>, aya::maps::MapError> {
        let mut out = BTreeSet::new();
        for key in self.map.keys() {
            let key = key?;
            let ip = std::net::Ipv4Addr::from(key.data().to_ne_bytes());
            let prefix = u8::try_from(key.prefix_len()).unwrap_or(32).min(32);
            out.insert(Ipv4Net::new(ip, prefix).expect("prefix <= 32"));
        }
        Ok(out)
    }
}

impl Enforcer for MapEnforcer {
    fn enforce(&mut self, non_masq: &[Ipv4Net], _nodes: &[Node]) -> Result<(), String> {
        let current = self
            .entries()
            .map_err(|e| format!("reading ciliate_ipmasq4: {e}"))?;
        let want: BTreeSet<Ipv4Net> = non_masq.iter().copied().collect();
        // Adding before removing: a destination covered by both the old and
        // the new list is never masqueraded in between.
        for net in want.difference(&current) {
            self.map
                .insert(&ipcache_key(*net), IpmasqValue::default(), 0)
                .map_err(|e| format!("adding {net} to ciliate_ipmasq4: {e}"))?;
        }
        for net in current.difference(&want) {
            match self.map.remove(&ipcache_key(*net)) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(format!("removing {net} from ciliate_ipmasq4: {e}")),
            }
        }
        Ok(())
    }
}

/// What the manager follows.
#[derive(Clone, Debug)]
pub struct Settings {
    pub agent: IpMasqAgentConfig,
    /// Whether a store is configured (then the first list waits for its ConfigMap list).
    pub has_store: bool,
}

pub struct Manager<E: Enforcer> {
    settings: Settings,
    inputs: Inputs,
    /// The store's ConfigMaps were listed (or there is no store).
    configmap_synced: bool,
    started: Instant,
    /// The list put in force last; `None` before the first.
    in_force: Option<InForce>,
    /// What the enforcer applied last; `None` before the first time or after a failure.
    enforced: Option<(Vec<Ipv4Net>, Vec<Node>)>,
    nodes: Vec<Node>,
    enforcer: E,
    state: watch::Sender<IpMasqState>,
}

impl<E: Enforcer> Manager<E> {
    pub fn new(settings: Settings, enforcer: E, state: watch::Sender<IpMasqState>) -> Self {
        let inputs = Inputs {
            inline: settings.agent.non_masquerade_cidrs.clone(),
            inline_masq_link_local: settings.agent.masq_link_local,
            ..Inputs::default()
        };
        state.send_modify(|s| s.enabled = settings.agent.enabled);
        Self {
            configmap_synced: !(settings.has_store && settings.agent.enabled),
            settings,
            inputs,
            started: Instant::now(),
            in_force: None,
            enforced: None,
            nodes: Vec::new(),
            enforcer,
            state,
        }
    }

    pub fn enforcer(&self) -> &E {
        &self.enforcer
    }

    pub fn on_configmap(&mut self, event: Event<ConfigMap>) {
        let ours = |ns: Option<&str>, name: &str| {
            ns == Some(CONFIGMAP_NAMESPACE) && name == CONFIGMAP_NAME
        };
        match event {
            Event::Upsert(cm) => {
                if ours(
                    cm.metadata.namespace.as_deref(),
                    cm.metadata.name.as_deref().unwrap_or_default(),
                ) {
                    self.inputs.configmap = Some(configmap_text(&cm));
                }
            }
            Event::Delete {
                namespace, name, ..
            } => {
                if ours(namespace.as_deref(), &name) {
                    self.inputs.configmap = None;
                }
            }
            Event::Synced => self.configmap_synced = true,
        }
    }

    /// Reads the file at `ipMasqAgent.configPath`, if any.
    pub fn poll_file(&mut self) {
        if let Some(path) = &self.settings.agent.config_path {
            self.inputs.file = read_file(path);
        }
    }

    pub fn set_nodes(&mut self, nodes: Vec<Node>) {
        self.nodes = nodes;
    }

    fn config_path(&self) -> Option<PathBuf> {
        self.settings.agent.config_path.clone()
    }

    /// Whether the first list may be chosen yet.
    fn ready(&self) -> bool {
        self.configmap_synced || self.started.elapsed() >= STORE_GRACE
    }

    fn set_error(&self, error: Option<String>) {
        if let Some(e) = &error {
            if self.state.borrow().last_error.as_ref() != Some(e) {
                warn!(error = %e, "ip-masq-agent: update refused; the previous list stays in force");
            }
        }
        self.state.send_if_modified(|s| {
            if s.last_error == error {
                false
            } else {
                s.last_error = error;
                true
            }
        });
    }

    /// Chooses the list and has it enforced if anything changed.
    pub fn reconcile(&mut self) {
        if !self.ready() {
            return;
        }
        let candidate = if self.settings.agent.enabled {
            match effective(&self.inputs, self.config_path().as_deref()) {
                Ok(list) => {
                    self.set_error(None);
                    Some(list)
                }
                Err(e) => {
                    self.set_error(Some(e.to_string()));
                    self.in_force.clone()
                }
            }
        } else {
            None
        };
        if self.settings.agent.enabled && candidate.is_none() {
            // Refused before any list was in force: leave what is there.
            return;
        }
        let cidrs = candidate
            .as_ref()
            .map(|c| c.cidrs.clone())
            .unwrap_or_default();
        let want = (cidrs, self.nodes.clone());
        if self.enforced.as_ref() == Some(&want) && candidate == self.in_force {
            return;
        }
        match self.enforcer.enforce(&want.0, &want.1) {
            Ok(()) => self.enforced = Some(want),
            Err(e) => {
                self.enforced = None;
                self.set_error(Some(format!("ip-masq-agent: {e}")));
                return;
            }
        }
        if candidate != self.in_force || self.state.borrow().generation == 0 {
            if let Some(list) = &candidate {
                info!(source = %list.source, cidrs = ?list.cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(), "ip-masq-agent: list in force");
            }
            self.in_force = candidate;
            let list = self.in_force.clone();
            self.state.send_modify(|s| {
                s.generation += 1;
                if let Some(list) = &list {
                    s.source = list.source.to_string();
                    s.cidrs = list.cidrs.iter().map(ToString::to_string).collect();
                    s.masq_link_local = list.masq_link_local;
                } else {
                    s.source = String::new();
                    s.cidrs = Vec::new();
                    s.masq_link_local = false;
                }
            });
        }
    }

    pub fn shutdown(&mut self) {
        self.enforcer.shutdown();
    }
}

/// Runs the manager until `stopping` turns true; then lets the enforcer
/// clean up (iptables mode removes its chain).
pub async fn run<E: Enforcer>(
    mut manager: Manager<E>,
    store: Option<Store>,
    mut nodes: Option<watch::Receiver<Vec<Node>>>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut configmaps = match (&store, manager.settings.agent.enabled) {
        (Some(store), true) => store.watch::<ConfigMap>(),
        _ => futures_util::stream::pending().boxed(),
    };
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if let Some(rx) = &mut nodes {
        manager.set_nodes(rx.borrow_and_update().clone());
    }
    loop {
        let nodes_changed = async {
            match &mut nodes {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stopping.wait_for(|s| *s) => break,
            event = configmaps.next() => match event {
                Some(Ok(event)) => manager.on_configmap(event),
                Some(Err(e)) => warn!(error = %ciliate_store::report(&e), "watching ConfigMaps (skipped)"),
                None => configmaps = futures_util::stream::pending().boxed(),
            },
            _ = tick.tick() => tokio::task::block_in_place(|| manager.poll_file()),
            alive = nodes_changed => {
                if alive {
                    if let Some(rx) = &mut nodes {
                        manager.set_nodes(rx.borrow_and_update().clone());
                    }
                } else {
                    nodes = None;
                }
            }
        }
        // Map syscalls and iptables runs: off the async workers' queue.
        tokio::task::block_in_place(|| manager.reconcile());
    }
    tokio::task::block_in_place(|| manager.shutdown());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        applied: Vec<Vec<String>>,
        fail: bool,
    }

    impl Enforcer for Recorder {
        fn enforce(&mut self, non_masq: &[Ipv4Net], _nodes: &[Node]) -> Result<(), String> {
            if self.fail {
                return Err("iptables-restore failed".into());
            }
            self.applied
                .push(non_masq.iter().map(ToString::to_string).collect());
            Ok(())
        }
    }

    fn manager(agent: IpMasqAgentConfig) -> (Manager<Recorder>, watch::Receiver<IpMasqState>) {
        let (tx, rx) = watch::channel(IpMasqState::default());
        let settings = Settings {
            agent,
            has_store: true,
        };
        (Manager::new(settings, Recorder::default(), tx), rx)
    }

    fn cm(config: Option<&str>) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.namespace = Some("kube-system".into());
        cm.metadata.name = Some("ip-masq-agent".into());
        cm.data = config.map(|c| [("config".to_string(), c.to_string())].into());
        cm
    }

    fn enabled() -> IpMasqAgentConfig {
        IpMasqAgentConfig {
            enabled: true,
            non_masquerade_cidrs: Some(vec!["10.1.0.0/16".parse().unwrap()]),
            ..IpMasqAgentConfig::default()
        }
    }

    #[test]
    fn waits_for_the_store_then_follows_the_configmap() {
        let (mut m, rx) = manager(enabled());
        m.reconcile();
        assert!(
            m.enforcer().applied.is_empty(),
            "the store is not listed yet"
        );
        m.on_configmap(Event::Synced);
        m.reconcile();
        assert_eq!(m.enforcer().applied, [["10.1.0.0/16", "169.254.0.0/16"]]);
        assert_eq!(
            (rx.borrow().generation, rx.borrow().source.as_str()),
            (1, "config")
        );
        // Nothing new: nothing applied, the generation stays.
        m.reconcile();
        assert_eq!(m.enforcer().applied.len(), 1);

        m.on_configmap(Event::Upsert(cm(Some(
            r#"{"nonMasqueradeCIDRs":["10.10.1.0/24"],"masqLinkLocal":true}"#,
        ))));
        m.reconcile();
        assert_eq!(m.enforcer().applied[1], ["10.10.1.0/24"]);
        let state = rx.borrow().clone();
        assert_eq!(state.generation, 2);
        assert_eq!(state.source, "configmap kube-system/ip-masq-agent");
        assert!(state.masq_link_local && state.enabled);

        // A bad entry: refused, the previous list stays, the error names it.
        m.on_configmap(Event::Upsert(cm(Some(
            r#"{"nonMasqueradeCIDRs":["10.10.1.0/24","10.10.2.0/24","10.10.1.0/33"]}"#,
        ))));
        m.reconcile();
        assert_eq!(m.enforcer().applied.len(), 2);
        let state = rx.borrow().clone();
        assert_eq!(state.generation, 2);
        assert_eq!(state.cidrs, ["10.10.1.0/24"]);
        assert!(state
            .last_error
            .unwrap()
            .contains("nonMasqueradeCIDRs[2] \"10.10.1.0/33\""));

        // Another ConfigMap is not ours.
        let mut other = cm(Some("nonMasqueradeCIDRs: []"));
        other.metadata.name = Some("other".into());
        m.on_configmap(Event::Upsert(other));
        m.reconcile();
        assert_eq!(rx.borrow().generation, 2);

        // Deleted: back to the inline list, the error is gone.
        m.on_configmap(Event::Delete {
            namespace: Some("kube-system".into()),
            name: "ip-masq-agent".into(),
            last: None,
        });
        m.reconcile();
        let state = rx.borrow().clone();
        assert_eq!((state.generation, state.source.as_str()), (3, "config"));
        assert_eq!(state.last_error, None);
    }

    #[test]
    fn a_failed_enforcement_is_retried_and_reported() {
        let (mut m, rx) = manager(IpMasqAgentConfig::default());
        m.enforcer.fail = true;
        m.on_configmap(Event::Synced);
        m.reconcile();
        assert!(rx
            .borrow()
            .last_error
            .as_ref()
            .unwrap()
            .contains("iptables-restore"));
        assert_eq!(rx.borrow().generation, 0);
        m.enforcer.fail = false;
        m.reconcile();
        assert_eq!(m.enforcer().applied, [Vec::<String>::new()]);
        let state = rx.borrow().clone();
        assert_eq!((state.generation, state.enabled), (1, false));
    }

    #[test]
    fn nodes_changes_are_enforced() {
        let (mut m, _rx) = manager(IpMasqAgentConfig::default());
        m.on_configmap(Event::Synced);
        m.reconcile();
        m.set_nodes(vec![Node {
            name: "node1".into(),
            internal_ip: Some("192.168.10.101".parse().unwrap()),
            ciliate_internal_ip: None,
            health_ip: None,
            pod_cidrs: vec!["172.20.1.0/24".parse().unwrap()],
            local: false,
        }]);
        m.reconcile();
        assert_eq!(m.enforcer().applied.len(), 2);
    }
}
