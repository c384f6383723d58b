//! The agent's state and operations. Every operation takes the one lock,
//! changes the kernel and the registry together, and persists the result, so
//! the disk, the maps and the devices never disagree for long.

use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Instant;

use ciliate_api::{
    add_lock, DatapathMode as EndpointKind, DatapathStatus, Endpoint, EndpointCreateRequest,
    EndpointState, IpMasqState, IpamAllocateRequest, IpamAllocation, IpamOrphansRequest, IpamOwner,
    IpamReleased, IpamStatus, KprDevice, KubeProxyReplacementStatus, MasqueradingStatus, Node,
    ProgramStatus, ServiceEntry, Status,
};
use ciliate_datapath::loader::{Datapath, Maps, HOST_ATTACH, NETDEV_ATTACH, OVERLAY_ATTACH};
use ciliate_datapath::maps::{DatapathConfig, EndpointKey};
use ciliate_datapath::netlink::Netlink;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::addressing::NodeAddressing;
use crate::config::{Config, IpamMode, MasqueradeMode};
use crate::endpoints::{self, EndpointRef, Registry};
use crate::error::AgentError;
use crate::ipam::{Allocation, Ipam};
use crate::kvstore::Cluster;
use crate::state::{self, State};

pub struct Daemon {
    pub config: Config,
    /// The PodCIDR, router IP and native device this node runs with.
    pub addressing: NodeAddressing,
    /// ifindex of the tunnel device (`ciliate_vxlan` or `ciliate_geneve`) in tunnel mode.
    tunnel_ifindex: Option<u32>,
    /// ifindex of `ciliate_host`.
    host_ifindex: u32,
    cluster: Cluster,
    /// The frontends the service manager programmed (`GET /v1/service`).
    services: watch::Sender<Vec<ServiceEntry>>,
    /// ip-masq-agent's list in force (`GET /v1/ipmasq`).
    ipmasq: watch::Sender<IpMasqState>,
    started: Instant,
    inner: Mutex<Inner>,
}

struct Inner {
    ipam: Ipam,
    registry: Registry,
    datapath: Datapath,
    maps: Maps,
    monitor_listeners: usize,
}

impl Daemon {
    /// Loads or adopts the datapath, attaches it to the node's devices and
    /// restores endpoints from disk. `host_ifindex` is `ciliate_host`'s
    /// (see [`crate::devices::ensure_host_devices`]).
    pub fn start(
        config: Config,
        addressing: NodeAddressing,
        host_ifindex: u32,
        cluster: Cluster,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        std::fs::create_dir_all(&config.state_dir)
            .with_context(|| format!("creating stateDir {}", config.state_dir.display()))?;
        let saved = state::load(&config.state_dir)?;

        // Loading means the kernel verifies every program: a second here, minutes
        // under an emulated CPU, so the log says when it starts and how long it took.
        info!(root = %config.bpf_root.display(), "opening the datapath");
        let opening = Instant::now();
        let datapath = Datapath::open(&config.bpf_root).with_context(|| {
            format!(
                "loading the datapath under bpf.root {}",
                config.bpf_root.display()
            )
        })?;
        info!(
            origin = datapath.origin().as_str(),
            root = %config.bpf_root.display(),
            took_ms = opening.elapsed().as_millis(),
            "datapath ready"
        );
        let mut datapath = datapath;
        let tunnel = crate::devices::ensure_tunnel_device(&Netlink::new()?, &config)
            .context("setting up the tunnel device")?;
        if let Some((device, _)) = tunnel {
            datapath
                .attach(device, OVERLAY_ATTACH)
                .with_context(|| format!("attaching from_overlay to the tunnel device {device}"))?;
        }
        let tunnel_ifindex = tunnel.map(|(_, index)| index);
        datapath
            .attach(crate::devices::HOST_DEVICE, HOST_ATTACH)
            .with_context(|| format!("attaching from_host to {}", crate::devices::HOST_DEVICE))?;
        if let Some(native) = &addressing.native {
            crate::devices::setup_native_device(native)
                .with_context(|| format!("setting up the native device {}", native.name))?;
            datapath
                .attach(&native.name, NETDEV_ATTACH)
                .with_context(|| {
                    format!("attaching from_netdev to the native device {}", native.name)
                })?;
        }
        // ipvlan pods' traffic arrives on their master: it needs from_netdev
        // (and to_netdev) as a native device does.
        if let Some(master) = ipvlan_master_name(&config, &addressing)
            .filter(|m| addressing.native.as_ref().is_none_or(|n| n.name != *m))
        {
            datapath.attach(&master, NETDEV_ATTACH).with_context(|| {
                format!("attaching from_netdev to the ipvlan master device {master}")
            })?;
        }
        let mut maps = Maps::open(&config.bpf_root)?;
        maps.config
            .set(
                0,
                datapath_config(&config, &addressing, tunnel_ifindex, false),
                0,
            )
            .context("writing the datapath configuration map")?;

        if let Some(old) = saved.pod_cidr.filter(|c| *c != addressing.pod.cidr) {
            warn!(old = %old, new = %addressing.pod.cidr, "the PodCIDR changed: endpoints and allocations of the old one are dropped");
        }
        let mut ipam = Ipam::new(addressing.pod.cidr);
        for (ip, alloc) in saved.allocations {
            if let Err(e) = ipam.restore(ip, alloc) {
                warn!(error = %e, "dropping a saved allocation");
            }
        }
        let daemon = Self {
            config,
            addressing,
            tunnel_ifindex,
            host_ifindex,
            cluster,
            services: watch::Sender::new(Vec::new()),
            ipmasq: watch::Sender::new(IpMasqState::default()),
            started: Instant::now(),
            inner: Mutex::new(Inner {
                ipam,
                registry: Registry::from_map(saved.endpoints),
                datapath,
                maps,
                monitor_listeners: 0,
            }),
        };
        daemon.restore_endpoints()?;
        // What an ADD left when it or the agent died mid-way: no endpoint
        // will come for it (a running ADD holds its lock and is spared).
        daemon.release_orphans(&IpamOrphansRequest::default())?;
        daemon.publish_local();
        Ok(daemon)
    }

    /// The channels this daemon shares with the store side (node list,
    /// registration, store status).
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The other nodes, as the node manager programmed them (never this one).
    /// The health prober subscribes here.
    pub fn nodes_watch(&self) -> watch::Receiver<Vec<Node>> {
        self.cluster.nodes.subscribe()
    }

    /// This node (`local: true`), as it registers.
    pub fn local_node(&self) -> Node {
        self.cluster.local.borrow().clone()
    }

    /// Every node: this one first, then the others by name (`GET /v1/node`).
    pub fn nodes(&self) -> Vec<Node> {
        let mut all = vec![self.local_node()];
        all.extend(self.cluster.nodes.borrow().iter().cloned());
        all
    }

    /// The node IP (InternalIP): the first IPv4 address of the native device.
    pub fn node_ip(&self) -> Option<std::net::Ipv4Addr> {
        self.addressing.node_ip()
    }

    /// Where the service manager publishes what it programmed.
    pub fn services_publisher(&self) -> watch::Sender<Vec<ServiceEntry>> {
        self.services.clone()
    }

    /// Every programmed frontend, by id (`GET /v1/service`).
    pub fn services(&self) -> Vec<ServiceEntry> {
        self.services.borrow().clone()
    }

    /// Where the masquerading manager publishes ip-masq-agent's state.
    pub fn ipmasq_publisher(&self) -> watch::Sender<IpMasqState> {
        self.ipmasq.clone()
    }

    /// ip-masq-agent's list in force (`GET /v1/ipmasq`).
    pub fn ipmasq(&self) -> IpMasqState {
        self.ipmasq.borrow().clone()
    }

    /// Whether the stack forwards pod traffic (iptables masquerading).
    fn stack_forwards(&self) -> bool {
        self.config.masquerade == MasqueradeMode::Iptables
    }

    /// `Masquerading:` of `ciliate status`.
    pub fn masquerading(&self) -> MasqueradingStatus {
        let mode = match self.config.masquerade {
            MasqueradeMode::Off => return MasqueradingStatus::default(),
            MasqueradeMode::Bpf => "BPF",
            MasqueradeMode::Iptables => "IPTables",
        };
        MasqueradingStatus {
            enabled: true,
            mode: mode.into(),
            devices: self
                .addressing
                .native
                .iter()
                .map(|n| KprDevice {
                    name: n.name.clone(),
                    ip: n.ip,
                })
                .collect(),
            snat_exclusion_cidr: Some(
                self.config
                    .native_routing_cidr
                    .unwrap_or(self.addressing.pod.cidr)
                    .to_string(),
            ),
            ip_masq_agent: self.config.ip_masq_agent.enabled,
        }
    }

    /// ifindex of `ciliate_host`.
    pub fn host_ifindex(&self) -> u32 {
        self.host_ifindex
    }

    /// Brings the registered view of this node up to date (its health IP).
    fn publish_local(&self) {
        let health_ip = self
            .lock()
            .registry
            .all()
            .values()
            .find(|e| e.health)
            .map(|e| e.ip);
        let pod = self.addressing.pod;
        let node_ip = self.addressing.node_ip();
        self.cluster.local.send_if_modified(|local| {
            let before = local.clone();
            local.internal_ip = node_ip;
            local.ciliate_internal_ip = Some(pod.router);
            local.pod_cidrs = vec![pod.cidr];
            local.health_ip = health_ip;
            *local != before
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent-enough state: every
        // step below is individually undone on error.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn persist(&self, inner: &Inner) -> Result<(), AgentError> {
        let snapshot = State {
            pod_cidr: Some(self.addressing.pod.cidr),
            allocations: inner.ipam.allocations().clone(),
            endpoints: inner.registry.all().clone(),
        };
        state::save(&self.config.state_dir, &snapshot)?;
        Ok(())
    }

    /// Brings the kernel in line with the saved endpoints: endpoints whose
    /// device is gone are removed; the rest get their links and map entries
    /// (links already pinned are kept as they are) and lose the /32 route of
    /// the layout before one attach per pod. Map entries and
    /// links that no endpoint owns are removed.
    fn restore_endpoints(&self) -> Result<(), AgentError> {
        let nl = Netlink::new()?;
        let mut guard = self.lock();
        let inner = &mut *guard;
        let saved: Vec<Endpoint> = inner.registry.all().values().cloned().collect();
        for ep in saved {
            let present = if ep.datapath_mode == EndpointKind::Ipvlan {
                crate::ipvlan::slave_exists(&ep)
            } else {
                nl.link_by_name(&ep.host_ifname)?
                    .is_some_and(|d| d.index == ep.host_ifindex)
            };
            if present {
                inner.registry.set_state(ep.id, EndpointState::Restoring);
                let restored = self.plumb(inner, &ep, &nl).and_then(|()| {
                    if ep.datapath_mode == EndpointKind::Ipvlan {
                        return Ok(());
                    }
                    endpoints::remove_legacy_plumbing(&ep, self.addressing.pod.router, &nl)
                });
                match restored {
                    Ok(()) => {
                        inner.registry.set_state(ep.id, EndpointState::Ready);
                        info!(id = ep.id, ip = %ep.ip, device = %ep.host_ifname, "restored endpoint");
                    }
                    Err(e) => {
                        inner.registry.set_state(ep.id, EndpointState::NotReady);
                        warn!(id = ep.id, error = %e.chain(), "cannot restore endpoint");
                    }
                }
            } else {
                info!(id = ep.id, ip = %ep.ip, device = %ep.host_ifname, "device gone: removing endpoint");
                let _ = self.unplumb(inner, &ep, &nl);
                inner.registry.remove(ep.id);
                let _ = inner.ipam.release(ep.ip);
            }
        }
        let mut owned: Vec<String> = inner
            .registry
            .all()
            .values()
            .map(|e| e.host_ifname.clone())
            .collect();
        // The node's own devices are the agent's, not an endpoint's.
        if self.tunnel_ifindex.is_some() {
            owned.push(
                crate::devices::tunnel_device(self.config.tunnel_protocol)
                    .name
                    .to_string(),
            );
        }
        owned.push(crate::devices::HOST_DEVICE.to_string());
        if let Some(native) = &self.addressing.native {
            owned.push(native.name.clone());
        }
        owned.extend(ipvlan_master_name(&self.config, &self.addressing));
        let ipvlan_owned: Vec<String> = inner
            .registry
            .all()
            .values()
            .filter(|e| e.datapath_mode == EndpointKind::Ipvlan)
            .map(crate::ipvlan::pin_name)
            .collect();
        for name in inner.datapath.ipvlan_endpoints() {
            if !ipvlan_owned.contains(&name) {
                info!(%name, "removing the ipvlan entry no endpoint owns");
                inner.datapath.detach_ipvlan(&name)?;
            }
        }
        for device in inner.datapath.attached_devices() {
            if !owned.contains(&device) {
                info!(%device, "removing links of a device no endpoint owns");
                inner.datapath.detach(&device)?;
            }
        }
        let entries = inner.maps.endpoint_entries()?;
        for (key, _) in entries {
            if inner.registry.by_ip(key.ip()).is_none() {
                info!(ip = %key.ip(), "removing a stale endpoint map entry");
                let _ = inner.maps.endpoints.remove(&key);
            }
        }
        self.persist(inner)
    }

    pub fn allocate(&self, req: &IpamAllocateRequest) -> Result<IpamAllocation, AgentError> {
        if req.owner.is_empty() {
            return Err(AgentError::BadRequest(
                "field owner: must not be empty".into(),
            ));
        }
        let mut inner = self.lock();
        let ip = inner.ipam.allocate(Allocation {
            owner: req.owner.clone(),
            container_id: req.container_id.clone(),
        })?;
        if let Err(e) = self.persist(&inner) {
            let _ = inner.ipam.release(ip);
            return Err(e);
        }
        info!(%ip, owner = %req.owner, "allocated");
        Ok(IpamAllocation {
            ip,
            cidr: inner.ipam.cidr(),
            router: inner.ipam.router(),
            mtu: crate::devices::pod_mtu(&self.config),
            owner: req.owner.clone(),
            datapath_mode: self.config.datapath_mode.api(),
            ipvlan_master: self.ipvlan_master(),
        })
    }

    /// In ipvlan mode, the device pods' slaves hang off.
    fn ipvlan_master(&self) -> Option<String> {
        ipvlan_master_name(&self.config, &self.addressing)
    }

    /// What the node contributes to an ipvlan endpoint.
    fn ipvlan_node(&self, nl: &Netlink) -> Result<crate::ipvlan::NodeSide, AgentError> {
        crate::ipvlan::NodeSide::new(
            nl,
            self.ipvlan_master().as_deref(),
            self.host_ifindex,
            self.node_ip().unwrap_or(self.addressing.pod.router),
        )
    }

    /// Programs the kernel for `ep`, as its kind needs. On error, undoes what it did.
    fn plumb(&self, inner: &mut Inner, ep: &Endpoint, nl: &Netlink) -> Result<(), AgentError> {
        match ep.datapath_mode {
            EndpointKind::Ipvlan => crate::ipvlan::plumb(
                ep,
                &self.ipvlan_node(nl)?,
                &mut inner.datapath,
                &mut inner.maps,
                nl,
            ),
            EndpointKind::Veth | EndpointKind::Netkit => endpoints::plumb(
                ep,
                &mut inner.datapath,
                &mut inner.maps,
                nl,
                self.stack_forwards(),
            ),
        }
    }

    /// Removes what `plumb` made.
    fn unplumb(&self, inner: &mut Inner, ep: &Endpoint, nl: &Netlink) -> Result<(), AgentError> {
        match ep.datapath_mode {
            EndpointKind::Ipvlan => crate::ipvlan::unplumb(
                ep,
                &self.ipvlan_node(nl)?,
                &inner.datapath,
                &mut inner.maps,
                nl,
            ),
            EndpointKind::Veth | EndpointKind::Netkit => {
                endpoints::unplumb(ep, &inner.datapath, &mut inner.maps)
            }
        }
    }

    /// Releases `ip`; with `container_id`, only while it is that container's
    /// (an ADD undoing its allocation must never release an address that was
    /// reclaimed meanwhile and handed to another container).
    pub fn release(&self, ip: Ipv4Addr, container_id: Option<&str>) -> Result<(), AgentError> {
        let mut inner = self.lock();
        if let Some(want) = container_id {
            let holder = inner.ipam.get(ip).and_then(|a| a.container_id.as_deref());
            if holder != Some(want) {
                return Err(AgentError::NotFound(format!(
                    "address {ip} is not allocated to container {want}"
                )));
            }
        }
        if let Some(ep) = inner.registry.by_ip(ip) {
            return Err(AgentError::Conflict(format!(
                "address {ip} is in use by endpoint {}: delete the endpoint instead",
                ep.id
            )));
        }
        inner.ipam.release(ip)?;
        info!(%ip, "released");
        self.persist(&inner)
    }

    /// Releases the addresses of CNI attachments that no endpoint uses and no
    /// ADD is still wiring up (`ciliate_api::add_lock`), of the containers
    /// `req` names: what a plugin or an agent that died mid-ADD left. Called
    /// by CNI DEL and GC and by the agent's start.
    pub fn release_orphans(
        &self,
        req: &IpamOrphansRequest,
    ) -> Result<Vec<IpamReleased>, AgentError> {
        let mut inner = self.lock();
        let orphans: Vec<IpamReleased> = inner
            .ipam
            .allocations()
            .iter()
            .filter(|(ip, _)| inner.registry.by_ip(**ip).is_none())
            .filter_map(|(ip, a)| {
                let id = a.container_id.as_ref()?;
                let named = req.container_id.as_ref().is_none_or(|c| c == id);
                // GC's list is the runtime's: the health endpoint is the
                // agent's own and never in it.
                let kept = req.keep_container_ids.as_ref().is_some_and(|keep| {
                    keep.contains(id) || a.owner == crate::health::HEALTH_OWNER
                });
                (named && !kept).then(|| IpamReleased {
                    ip: *ip,
                    owner: a.owner.clone(),
                    container_id: id.clone(),
                })
            })
            .filter(|o| !add_lock::in_flight(&self.config.socket_path, &o.container_id))
            .collect();
        if orphans.is_empty() {
            return Ok(orphans);
        }
        for o in &orphans {
            let _ = inner.ipam.release(o.ip);
            info!(ip = %o.ip, owner = %o.owner, container = %o.container_id, "released an address no endpoint uses");
        }
        self.persist(&inner)?;
        Ok(orphans)
    }

    pub fn create_endpoint(&self, req: &EndpointCreateRequest) -> Result<Endpoint, AgentError> {
        endpoints::validate_request(req)?;
        let started = Instant::now();
        let nl = Netlink::new()?;
        let mut guard = self.lock();
        let locked = started.elapsed();
        let inner = &mut *guard;

        match inner.ipam.get(req.ip) {
            None => {
                return Err(AgentError::BadRequest(format!(
                "field ip: address {} is not allocated by this node's IPAM ({}); allocate it first",
                req.ip,
                inner.ipam.cidr()
            )))
            }
            Some(Allocation {
                container_id: Some(owner),
                ..
            }) if owner != &req.container_id => {
                return Err(AgentError::Conflict(format!(
                    "address {} is allocated to container {owner}, not {}",
                    req.ip, req.container_id
                )))
            }
            Some(_) => {}
        }
        if let Some(existing) = inner
            .registry
            .find(&EndpointRef::ContainerId(req.container_id.clone()))
        {
            if existing.ip == req.ip
                && existing.host_ifindex == req.host_ifindex
                && existing.ifname == req.ifname
            {
                return Ok(existing.clone());
            }
            return Err(AgentError::Conflict(format!(
                "container {} already has endpoint {} ({} on {})",
                req.container_id, existing.id, existing.ip, existing.host_ifname
            )));
        }
        if let Some(existing) = inner.registry.by_ip(req.ip) {
            return Err(AgentError::Conflict(format!(
                "address {} is already used by endpoint {}",
                req.ip, existing.id
            )));
        }
        if req.datapath_mode == EndpointKind::Ipvlan {
            if self.ipvlan_master().is_none() {
                return Err(AgentError::BadRequest(format!(
                    "field datapathMode: value \"ipvlan\" is invalid: this agent runs datapathMode {}",
                    self.config.datapath_mode.api()
                )));
            }
        } else {
            match nl.link_by_name(&req.host_ifname)? {
                Some(link) if link.index == req.host_ifindex => {}
                Some(link) => {
                    return Err(AgentError::BadRequest(format!(
                        "field hostIfindex: device {} has ifindex {}, not {}",
                        req.host_ifname, link.index, req.host_ifindex
                    )))
                }
                None => {
                    return Err(AgentError::BadRequest(format!(
                    "field hostIfname: device {:?} does not exist in the agent's network namespace",
                    req.host_ifname
                )))
                }
            }
        }

        let ep = inner.registry.new_endpoint(req)?;
        if ep.datapath_mode == EndpointKind::Ipvlan && !crate::ipvlan::slave_exists(&ep) {
            return Err(AgentError::BadRequest(format!(
                "field ifname: {:?} in netns {:?} is not an ipvlan device",
                ep.ifname, ep.netns
            )));
        }
        let plumbing = Instant::now();
        self.plumb(inner, &ep, &nl)?;
        let plumbed = plumbing.elapsed();
        inner.registry.insert(ep.clone());
        let persisting = Instant::now();
        if let Err(e) = self.persist(inner) {
            inner.registry.remove(ep.id);
            let _ = self.unplumb(inner, &ep, &nl);
            return Err(e);
        }
        // Where an endpoint's creation spends its time, for profiles.
        info!(
            id = ep.id, ip = %ep.ip, device = %ep.host_ifname, label = %ep.label(),
            lock_us = locked.as_micros(), plumb_us = plumbed.as_micros(),
            persist_us = persisting.elapsed().as_micros(), took_us = started.elapsed().as_micros(),
            "endpoint created"
        );
        drop(guard);
        if ep.health {
            self.publish_local();
        }
        Ok(ep)
    }

    /// Deletes the endpoint and releases its address.
    pub fn delete_endpoint(&self, r: &EndpointRef) -> Result<Endpoint, AgentError> {
        let nl = Netlink::new()?;
        let mut guard = self.lock();
        let inner = &mut *guard;
        let ep =
            inner.registry.find(r).cloned().ok_or_else(|| {
                AgentError::NotFound(format!("endpoint {} not found", describe(r)))
            })?;
        inner
            .registry
            .set_state(ep.id, EndpointState::Disconnecting);
        if let Err(e) = self.unplumb(inner, &ep, &nl) {
            inner.registry.set_state(ep.id, ep.state);
            return Err(e);
        }
        inner.registry.remove(ep.id);
        let _ = inner.ipam.release(ep.ip);
        self.persist(inner)?;
        info!(id = ep.id, ip = %ep.ip, "endpoint deleted");
        drop(guard);
        if ep.health {
            self.publish_local();
        }
        Ok(ep)
    }

    pub fn endpoint(&self, r: &EndpointRef) -> Result<Endpoint, AgentError> {
        self.lock()
            .registry
            .find(r)
            .cloned()
            .ok_or_else(|| AgentError::NotFound(format!("endpoint {} not found", describe(r))))
    }

    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.lock().registry.all().values().cloned().collect()
    }

    /// Tells the datapath whether to emit trace events (drops always are).
    pub fn monitor_listeners(&self, delta: isize) {
        let mut inner = self.lock();
        inner.monitor_listeners = inner.monitor_listeners.saturating_add_signed(delta);
        let on = inner.monitor_listeners > 0;
        let config = datapath_config(&self.config, &self.addressing, self.tunnel_ifindex, on);
        if let Err(e) = inner.maps.config.set(0, config, 0) {
            warn!(error = %e, "cannot switch trace events");
        }
    }

    pub fn status(&self, verbose: bool) -> Status {
        let inner = self.lock();
        let allocations = if verbose {
            inner
                .ipam
                .allocations()
                .iter()
                .map(|(ip, a)| IpamOwner {
                    ip: *ip,
                    owner: a.owner.clone(),
                })
                .collect()
        } else {
            Vec::new()
        };
        let endpoints = inner.registry.all();
        Status {
            node_name: self.config.node_name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            kernel: kernel_release(),
            host_device: crate::devices::HOST_DEVICE.to_string(),
            router_ip: self.addressing.pod.router,
            mtu: crate::devices::pod_mtu(&self.config),
            ipam: IpamStatus {
                mode: match self.config.ipam_mode {
                    IpamMode::ClusterPool => "cluster-pool",
                    IpamMode::Kubernetes => "kubernetes",
                    IpamMode::MultiPool => "multi-pool",
                    IpamMode::HostScope => "host-scope",
                }
                .into(),
                cidr: inner.ipam.cidr(),
                router: inner.ipam.router(),
                allocated: inner.ipam.allocations().len(),
                capacity: inner.ipam.capacity(),
                allocations,
            },
            endpoints: endpoints.len(),
            endpoints_ready: endpoints
                .values()
                .filter(|e| e.state == EndpointState::Ready)
                .count(),
            datapath: DatapathStatus {
                bpf_root: self.config.bpf_root.display().to_string(),
                datapath_mode: self.config.datapath_mode.api().to_string(),
                routing_mode: match self.config.routing_mode {
                    crate::config::RoutingMode::Tunnel => format!(
                        "tunnel [{}]",
                        format!("{:?}", self.config.tunnel_protocol).to_lowercase()
                    ),
                    crate::config::RoutingMode::Native => "native".into(),
                },
                object: inner.datapath.origin().as_str().to_string(),
                programs: inner
                    .datapath
                    .program_ids()
                    .into_iter()
                    .map(|(name, id, tag)| ProgramStatus { name, id, tag })
                    .collect(),
                maps: ciliate_datapath::maps::ALL_MAPS
                    .iter()
                    .map(|m| (*m).to_string())
                    .collect(),
            },
            monitor_listeners: inner.monitor_listeners,
            uptime_seconds: self.started.elapsed().as_secs(),
            node_ip: self.addressing.node_ip(),
            kvstore: self.cluster.kvstore_status(),
            // Filled by the API from the health prober's state.
            cluster_health: None,
            kube_proxy_replacement: KubeProxyReplacementStatus {
                enabled: self.config.kube_proxy_replacement,
                devices: if self.config.kube_proxy_replacement {
                    self.addressing
                        .native
                        .iter()
                        .map(|n| KprDevice {
                            name: n.name.clone(),
                            ip: n.ip,
                        })
                        .collect()
                } else {
                    Vec::new()
                },
            },
            masquerading: self.masquerading(),
        }
    }

    /// Whether the endpoint map holds `ip` (for tests and checks).
    pub fn map_has(&self, ip: Ipv4Addr) -> bool {
        self.lock()
            .maps
            .endpoints
            .get(&EndpointKey::new(ip), 0)
            .is_ok()
    }
}

/// What the programs read from `ciliate_config`, derived from the agent's config.
fn datapath_config(
    config: &Config,
    addressing: &NodeAddressing,
    tunnel_ifindex: Option<u32>,
    trace: bool,
) -> DatapathConfig {
    DatapathConfig {
        tunnel_ifindex: tunnel_ifindex.unwrap_or(0),
        routing_mode: match config.routing_mode {
            crate::config::RoutingMode::Tunnel => ciliate_datapath::maps::ROUTING_TUNNEL,
            crate::config::RoutingMode::Native => ciliate_datapath::maps::ROUTING_NATIVE,
        },
        identity: crate::nodes::POD_IDENTITY,
        native_ifindex: addressing.native.as_ref().map_or(0, |n| n.ifindex),
        node_ip: addressing
            .node_ip()
            .map_or(0, ciliate_datapath::maps::be_addr),
        ct_timeout_tcp: config.ct_timeouts.tcp,
        ct_timeout_tcp_syn: config.ct_timeouts.tcp_syn,
        ct_timeout_tcp_fin: config.ct_timeouts.tcp_fin,
        ct_timeout_any: config.ct_timeouts.any,
        masquerade: masquerade_flags(config),
        native_routing_cidr: config
            .native_routing_cidr
            .map_or(0, |net| ciliate_datapath::maps::be_addr(net.network())),
        native_routing_prefixlen: config
            .native_routing_cidr
            .map_or(0, |net| u32::from(net.prefix_len())),
        ..DatapathConfig::new(addressing.pod.router, trace)
    }
}

/// `DatapathConfig::masquerade`: the mode, and whether ip-masq-agent's map counts.
pub fn masquerade_flags(config: &Config) -> u32 {
    use ciliate_datapath::maps::{MASQ_F_BPF, MASQ_F_IPTABLES, MASQ_F_IP_MASQ_AGENT};
    let mode = match config.masquerade {
        MasqueradeMode::Off => return 0,
        MasqueradeMode::Bpf => MASQ_F_BPF,
        MasqueradeMode::Iptables => MASQ_F_IPTABLES,
    };
    if config.ip_masq_agent.enabled {
        mode | MASQ_F_IP_MASQ_AGENT
    } else {
        mode
    }
}

/// In ipvlan mode, the device pods' slaves hang off: `ipvlan.masterDevice`,
/// else the native device.
fn ipvlan_master_name(config: &Config, addressing: &NodeAddressing) -> Option<String> {
    if config.datapath_mode != crate::config::DatapathMode::Ipvlan {
        return None;
    }
    config
        .ipvlan_master_device
        .clone()
        .or_else(|| addressing.native.as_ref().map(|n| n.name.clone()))
}

fn describe(r: &EndpointRef) -> String {
    match r {
        EndpointRef::Id(id) => id.to_string(),
        EndpointRef::ContainerId(c) => format!("container-id:{c}"),
    }
}

pub fn kernel_release() -> String {
    nix::sys::utsname::uname().map_or_else(
        |_| "unknown".into(),
        |u| u.release().to_string_lossy().into_owned(),
    )
}
