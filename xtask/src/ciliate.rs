//! ciliate's datapath on the benchmark's node, loaded the way the datapath
//! tests load it: a private bpffs, `from_container` on both lxc devices,
//! the pods in the endpoint map, and services written straight into the
//! pinned maps (what the agent would write for a ClusterIP service
//! with one endpoint, in the agent's order: backend, slots, slot 0).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ciliate_datapath::loader::{Datapath, Maps, LXC_ATTACH};
use ciliate_datapath::maps::{
    DatapathConfig, EndpointInfo, EndpointKey, Lb4Backend, Lb4Key, Lb4ReverseNat, Lb4Service,
    BE_STATE_ACTIVE, IPPROTO_TCP, LB_SCOPE_EXTERNAL, SVC_F_CLUSTER_IP,
};
use ciliate_datapath::netns;

use crate::catalog::{Service, CLIENT_IP, ROUTER_IP, SERVER_IP};
use crate::topology::{Topology, CLIENT_LXC, SERVER_LXC};

/// The one backend every service points at (ids are per (ip, port, proto)).
const BACKEND_ID: u32 = 1;

/// A bpffs mounted on a fresh temporary directory, unmounted on drop.
pub(crate) struct Bpffs {
    dir: tempfile::TempDir,
}

impl Bpffs {
    pub(crate) fn mount() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ciliate-bench-bpffs-")
            .tempdir()
            .context("creating a directory for the bench's bpffs")?;
        nix::mount::mount(
            Some("bpf"),
            dir.path(),
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mounting a bpffs on {}", dir.path().display()))?;
        Ok(Self { dir })
    }

    pub(crate) fn root(&self) -> PathBuf {
        self.dir.path().join("node")
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        // The pinned links go with the mount; the devices go with their namespace.
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The loaded datapath and its maps. Map handles drop before the bpffs.
pub struct Node {
    pub maps: Maps,
    programmed: Vec<Service>,
    bpffs: Bpffs,
}

impl Node {
    /// Loads the datapath for `topo` (a `Kind::Ciliate` topology) and attaches it.
    pub fn load(topo: &Topology) -> Result<Self> {
        let bpffs = Bpffs::mount()?;
        let root = bpffs.root();
        let thread_root = root.clone();
        netns::run_in(&topo.node.path(), move || {
            Datapath::open(&thread_root).map(drop)
        })?
        .context("loading ciliate's datapath")?;
        let mut maps = Maps::open(&root).context("opening the pinned maps")?;
        // Tracing off: the benchmark measures forwarding, not the event ring.
        maps.config
            .set(0, DatapathConfig::new(ROUTER_IP, false), 0)
            .context("writing the datapath config")?;
        for (ip, veth, lxc_id) in [
            (CLIENT_IP, &topo.client_veth, 1),
            (SERVER_IP, &topo.server_veth, 2),
        ] {
            let endpoint = EndpointInfo {
                ifindex: veth.host.index,
                lxc_id,
                flags: 0,
                mac: veth.pod.mac.context("pod device without a MAC")?,
                node_mac: veth.host.mac.context("lxc device without a MAC")?,
                sec_identity: 0,
            };
            maps.endpoints
                .insert(EndpointKey::new(ip), endpoint, 0)
                .with_context(|| format!("adding endpoint {ip}"))?;
        }
        let thread_root = root.clone();
        netns::run_in(&topo.node.path(), move || -> Result<()> {
            let mut datapath = Datapath::open(&thread_root).context("adopting the datapath")?;
            for lxc in [CLIENT_LXC, SERVER_LXC] {
                datapath
                    .attach(lxc, LXC_ATTACH)
                    .with_context(|| format!("attaching to {lxc}"))?;
            }
            Ok(())
        })??;
        Ok(Self {
            maps,
            programmed: Vec::new(),
            bpffs,
        })
    }

    /// The bpffs directory the datapath is pinned under.
    pub fn root(&self) -> PathBuf {
        self.bpffs.root()
    }

    /// Replaces the programmed services with `services`; the returned time
    /// covers only writing the new ones into emptied maps.
    pub fn program(&mut self, services: &[Service]) -> Result<Duration> {
        self.remove_programmed()?;
        let start = Instant::now();
        let backend = Lb4Backend::new(
            SERVER_IP,
            crate::catalog::TARGET_PORT,
            IPPROTO_TCP,
            BE_STATE_ACTIVE,
        );
        self.maps
            .lb4_backends
            .insert(BACKEND_ID, backend, 0)
            .context("writing the backend")?;
        for svc in services {
            let rev_nat_index = svc.index as u32 + 1;
            let key = |slot| Lb4Key::new(svc.vip, svc.port, IPPROTO_TCP, LB_SCOPE_EXTERNAL, slot);
            let frontend = svc.frontend();
            self.maps
                .lb4_reverse_nat
                .insert(rev_nat_index, Lb4ReverseNat::new(svc.vip, svc.port), 0)
                .with_context(|| format!("writing the reverse NAT of {frontend}"))?;
            let slot = Lb4Service {
                backend_id: BACKEND_ID,
                ..Lb4Service::default()
            };
            self.maps
                .lb4_services
                .insert(key(1), slot, 0)
                .with_context(|| format!("writing slot 1 of {frontend}"))?;
            let entry = Lb4Service {
                backend_id: 0,
                rev_nat_index,
                count: 1,
                flags: SVC_F_CLUSTER_IP,
                affinity_timeout: 0,
            };
            self.maps
                .lb4_services
                .insert(key(0), entry, 0)
                .with_context(|| format!("writing slot 0 of {frontend}"))?;
            self.programmed.push(svc.clone());
        }
        Ok(start.elapsed())
    }

    fn remove_programmed(&mut self) -> Result<()> {
        for svc in self.programmed.drain(..) {
            for slot in [0, 1] {
                let key = Lb4Key::new(svc.vip, svc.port, IPPROTO_TCP, LB_SCOPE_EXTERNAL, slot);
                self.maps
                    .lb4_services
                    .remove(&key)
                    .with_context(|| format!("removing slot {slot} of {}", svc.frontend()))?;
            }
            self.maps
                .lb4_reverse_nat
                .remove(&(svc.index as u32 + 1))
                .with_context(|| format!("removing the reverse NAT of {}", svc.frontend()))?;
        }
        Ok(())
    }

    /// How many TCP conntrack entries the datapath holds.
    pub fn conntrack_entries(&self) -> usize {
        self.maps.ct4_tcp.keys().count()
    }

    /// Empties the TCP conntrack map (as `flush_conntrack` does for the
    /// kernel's), so every measurement starts from the same state.
    pub fn flush_conntrack(&mut self) -> Result<usize> {
        let keys: Vec<_> = self
            .maps
            .ct4_tcp
            .keys()
            .collect::<Result<_, _>>()
            .context("listing conntrack entries")?;
        for key in &keys {
            // An entry may expire or be replaced under us: not an error.
            let _ = self.maps.ct4_tcp.remove(key);
        }
        Ok(keys.len())
    }
}
