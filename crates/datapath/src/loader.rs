//! Loading the BPF object once, pinning it under the node's `bpf.root`, and
//! re-adopting what is pinned when an agent restarts.
//!
//! Layout of `bpf.root`:
//! - `maps/<name>`: every map (pinned by name from the C definitions)
//! - `progs/<hash>/<name>`: every program, under the sha256 (first 16 hex
//!   digits) of the object it came from (bpffs holds only BPF objects, so the
//!   directory name is where the hash is kept)
//! - `links/<device>-<program>`: one TCX link per attached program, or for
//!   a netkit device one netkit link per program (bpffs refuses names with dots)
//! - `ipvlan/<endpoint>-calls`, `ipvlan/<endpoint>-entry`: the prog array and
//!   the entry's TCX link of each ipvlan endpoint (see `crate::ipvlan`)
//!
//! Pinned links keep traffic flowing while no agent runs. A restarted agent
//! whose embedded object has the same hash loads nothing; with a new object
//! it loads it, keeps the pinned maps, and swaps the program under every
//! pinned link atomically (`bpf_link_update`).

use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use sha2::{Digest, Sha256};

use crate::maps::{
    Ct4Entry, Ct4Key, DatapathConfig, EndpointInfo, EndpointKey, Lb4AffinityKey, Lb4AffinityValue,
    Lb4Backend, Lb4Key, Lb4ReverseNat, Lb4Service, MetricsValue, Nat4Entry, CONFIG_MAP,
    CT4_ANY_MAP, CT4_TCP_MAP, ENDPOINTS_MAP, LB4_AFFINITY_MAP, LB4_BACKENDS_MAP,
    LB4_REVERSE_NAT_MAP, LB4_SERVICES_MAP, METRICS_MAP, SNAT4_MAP,
};
use crate::netkit::{self, NetkitAttach};

/// Every object and the programs it holds.
pub const OBJECTS: &[(&str, &[u8], &[&str])] = &[
    (
        "lxc",
        crate::LXC_OBJECT,
        &["from_container", "from_container_ipvlan"],
    ),
    ("overlay", crate::OVERLAY_OBJECT, &["from_overlay"]),
    (
        "host",
        crate::HOST_OBJECT,
        &["from_host", "from_netdev", "to_netdev"],
    ),
];

/// What goes on a pod's lxc device, and where: only what the pod sends.
/// Every TCX attach waits for an RCU grace period under RTNL, so each
/// program here is paid for by every CNI ADD; what the node's stack sends to
/// a pod is routed through `ciliate_host` instead (`from_host`).
pub const LXC_ATTACH: &[(&str, TcAttachType)] = &[("from_container", TcAttachType::Ingress)];

/// What polices a netkit pod's pair, named by its primary (`lxc...`): the
/// peer's program runs on what the pod sends (see [`crate::netkit`]); the
/// primary keeps its default policy, as the lxc device of a veth has nothing
/// at egress.
pub const NETKIT_ATTACH: &[(&str, NetkitAttach)] = &[("from_container", NetkitAttach::Peer)];

/// What goes on the node's tunnel device.
pub const OVERLAY_ATTACH: &[(&str, TcAttachType)] = &[("from_overlay", TcAttachType::Ingress)];

/// What goes on `ciliate_host`: what the node sends towards pod addresses.
pub const HOST_ATTACH: &[(&str, TcAttachType)] = &[("from_host", TcAttachType::Egress)];

/// What goes on each native device (`devices`): what arrives from other nodes.
pub const NETDEV_ATTACH: &[(&str, TcAttachType)] = &[
    ("from_netdev", TcAttachType::Ingress),
    ("to_netdev", TcAttachType::Egress),
];

fn program_names() -> impl Iterator<Item = &'static str> {
    OBJECTS
        .iter()
        .flat_map(|(_, _, programs)| programs.iter().copied())
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("bpf.root {path} is not on a BPF filesystem (mount one: mount -t bpf bpf {path})")]
    NotBpffs { path: PathBuf },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the BPF object")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("program {name}: {action}")]
    Program {
        name: String,
        action: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("pinning {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("map {name}: {action}")]
    Map {
        name: String,
        action: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("network namespace {path}")]
    Netns {
        path: PathBuf,
        #[source]
        source: Box<crate::netns::NetnsError>,
    },
    #[error("netkit link {path}: {action}")]
    Netkit {
        path: PathBuf,
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error("link {path}: {action}")]
    Link {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: Box<aya::programs::links::LinkError>,
    },
}

/// How the programs came to be in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Nothing was pinned: this process loaded the object.
    Loaded,
    /// The pinned programs came from the same object: nothing was loaded.
    Adopted,
    /// Pinned programs came from another object: the new one replaced them.
    Replaced,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Loaded => "loaded",
            Self::Adopted => "adopted",
            Self::Replaced => "replaced",
        }
    }
}

/// The node's datapath: programs and maps, loaded or adopted from pins.
pub struct Datapath {
    root: PathBuf,
    programs: Vec<(String, SchedClassifier)>,
    origin: Origin,
}

/// Loads the object with its maps pinned by name under `maps_dir` (existing
/// pins are reused, so map contents survive) and pins every program in `progs_dir`.
fn load_and_pin(
    progs_dir: &Path,
    maps_dir: &Path,
    object: &[u8],
    programs: &[&str],
) -> Result<(), LoadError> {
    let mut ebpf = aya::EbpfLoader::new()
        .default_map_pin_directory(maps_dir)
        .load(object)
        .map_err(|e| LoadError::Load(Box::new(e)))?;
    for name in programs {
        let prog_err = |action: &'static str| {
            let name = (*name).to_string();
            move |e: aya::programs::ProgramError| LoadError::Program {
                name,
                action,
                source: Box::new(e),
            }
        };
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or_else(|| LoadError::Program {
                name: (*name).to_string(),
                action: "missing from the object",
                source: Box::new(aya::programs::ProgramError::NotLoaded),
            })?
            .try_into()
            .map_err(prog_err("not a classifier"))?;
        prog.load().map_err(prog_err("loading"))?;
        let path = progs_dir.join(name);
        let _ = std::fs::remove_file(&path);
        prog.pin(&path).map_err(|source| LoadError::Pin {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Hex sha256 of the embedded object, the identity of "what is loaded".
pub fn object_hash(object: &[u8]) -> String {
    use std::fmt::Write as _;
    Sha256::digest(object)
        .iter()
        .fold(String::new(), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LoadError + 'a {
    move |source| LoadError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Fails unless `path` (or its closest existing ancestor) is on a bpffs.
pub fn check_bpffs(path: &Path) -> Result<(), LoadError> {
    let mut probe = path;
    while !probe.exists() {
        probe = probe.parent().unwrap_or(Path::new("/"));
    }
    let stat = nix::sys::statfs::statfs(probe).map_err(|e| LoadError::Io {
        what: "statfs",
        path: probe.to_owned(),
        source: e.into(),
    })?;
    if stat.filesystem_type().0 as i64 == BPF_FS_MAGIC {
        Ok(())
    } else {
        Err(LoadError::NotBpffs {
            path: path.to_owned(),
        })
    }
}

impl Datapath {
    /// Loads every object under `root`, or adopts the programs pinned there.
    pub fn open(root: &Path) -> Result<Self, LoadError> {
        check_bpffs(root)?;
        for sub in ["maps", "progs", "links", crate::ipvlan::IPVLAN_DIR] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        }
        let all: Vec<u8> = OBJECTS
            .iter()
            .flat_map(|(_, bytes, _)| bytes.iter().copied())
            .collect();
        let hash = object_hash(&all)[..16].to_string();
        let progs = root.join("progs");
        let current = progs.join(&hash);
        let pinned_in = |dir: &Path| program_names().all(|name| dir.join(name).exists());
        let others: Vec<PathBuf> = std::fs::read_dir(&progs)
            .map_err(io("reading", &progs))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| *p != current)
            .collect();

        let origin = if pinned_in(&current) {
            Origin::Adopted
        } else {
            std::fs::create_dir_all(&current).map_err(io("creating", &current))?;
            for (_, bytes, programs) in OBJECTS {
                load_and_pin(&current, &root.join("maps"), bytes, programs)?;
            }
            if others.iter().any(|d| pinned_in(d)) {
                Origin::Replaced
            } else {
                Origin::Loaded
            }
        };

        // Loaded or adopted, the programs are used through their pins.
        let mut programs = Vec::new();
        for name in program_names() {
            let path = current.join(name);
            let prog = SchedClassifier::from_pin(&path).map_err(|e| LoadError::Program {
                name: name.to_string(),
                action: "opening pin",
                source: Box::new(e),
            })?;
            programs.push((name.to_string(), prog));
        }
        let mut datapath = Self {
            root: root.to_owned(),
            programs,
            origin,
        };
        datapath.remove_links_of_unknown_programs()?;
        if origin == Origin::Replaced {
            datapath.update_pinned_links()?;
        }
        // ipvlan endpoints reach from_container_ipvlan through their prog
        // arrays: a freshly loaded one goes into every slot.
        if origin != Origin::Adopted {
            datapath.update_ipvlan_calls()?;
        }
        // Programs of older objects are no longer referenced by any link.
        for dir in others {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Ok(datapath)
    }

    /// A loaded program by name, e.g. for `BPF_PROG_TEST_RUN`.
    pub fn program(&self, name: &str) -> Option<&SchedClassifier> {
        self.programs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p)
    }

    pub fn origin(&self) -> Origin {
        self.origin
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// (name, kernel id, tag) of every program.
    pub fn program_ids(&self) -> Vec<(String, u32, String)> {
        self.programs
            .iter()
            .filter_map(|(name, prog)| {
                let info = prog.info().ok()?;
                Some((name.clone(), info.id(), format!("{:016x}", info.tag())))
            })
            .collect()
    }

    fn link_path(&self, device: &str, program: &str) -> PathBuf {
        self.root.join("links").join(format!("{device}-{program}"))
    }

    /// Whether every program of `set` has a pinned link on `device`.
    pub fn is_attached(&self, device: &str, set: &[(&str, TcAttachType)]) -> bool {
        set.iter()
            .all(|(name, _)| self.link_path(device, name).exists())
    }

    /// Attaches the programs of `set` to `device` with TCX and pins the links.
    /// Already-pinned links are kept as they are. On failure nothing stays attached.
    pub fn attach(&mut self, device: &str, set: &[(&str, TcAttachType)]) -> Result<(), LoadError> {
        let mut made = Vec::new();
        let result = self.attach_inner(device, set, &mut made);
        unpin_on_error(result, made)
    }

    fn attach_inner(
        &mut self,
        device: &str,
        set: &[(&str, TcAttachType)],
        made: &mut Vec<PathBuf>,
    ) -> Result<(), LoadError> {
        for (name, attach) in set {
            let path = self.link_path(device, name);
            if path.exists() {
                continue;
            }
            let prog_err = |action: &'static str| {
                let name = (*name).to_string();
                move |e: aya::programs::ProgramError| LoadError::Program {
                    name,
                    action,
                    source: Box::new(e),
                }
            };
            let prog = self
                .programs
                .iter_mut()
                .find(|(n, _)| n == name)
                .map(|(_, p)| p)
                .ok_or_else(|| LoadError::Program {
                    name: (*name).to_string(),
                    action: "not loaded",
                    source: Box::new(aya::programs::ProgramError::NotLoaded),
                })?;
            let id = prog
                .attach_with_options(
                    device,
                    *attach,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(prog_err("attaching"))?;
            let link: FdLink = prog
                .take_link(id)
                .map_err(prog_err("taking link"))?
                .try_into()
                .map_err(|e: aya::programs::links::LinkError| LoadError::Link {
                    path: path.clone(),
                    action: "converting",
                    source: Box::new(e),
                })?;
            link.pin(&path).map_err(|source| LoadError::Pin {
                path: path.clone(),
                source,
            })?;
            made.push(path);
        }
        Ok(())
    }

    /// Attaches the programs of `set` as the policy of the netkit pair whose
    /// primary is `device` and pins the links where [`Self::attach`] pins TCX
    /// links, so [`Self::detach`], [`Self::is_attached`] and a restarted
    /// agent treat both alike. A pin that already holds a live link of the
    /// same end of this device is kept; a stale one (its device deleted, or
    /// another device under the same name) is replaced. On failure nothing
    /// made here stays attached.
    pub fn attach_netkit(
        &mut self,
        device: &str,
        set: &[(&str, NetkitAttach)],
    ) -> Result<(), LoadError> {
        let mut made = Vec::new();
        let result = self.attach_netkit_inner(device, set, &mut made);
        unpin_on_error(result, made)
    }

    fn attach_netkit_inner(
        &mut self,
        device: &str,
        set: &[(&str, NetkitAttach)],
        made: &mut Vec<PathBuf>,
    ) -> Result<(), LoadError> {
        let ifindex = netkit::ifindex_of(device).map_err(|source| LoadError::Netkit {
            path: self.link_path(device, "*"),
            action: format!("looking up device {device}"),
            source,
        })?;
        for (name, end) in set {
            let path = self.link_path(device, name);
            let netkit_err = |action: String| {
                let path = path.clone();
                move |source| LoadError::Netkit {
                    path,
                    action,
                    source,
                }
            };
            if path.exists() {
                if netkit::pinned_link_is_live(&path, ifindex, *end) {
                    continue;
                }
                std::fs::remove_file(&path).map_err(io("removing a stale link pin", &path))?;
            }
            let prog = self.program(name).ok_or_else(|| LoadError::Program {
                name: (*name).to_string(),
                action: "not loaded",
                source: Box::new(aya::programs::ProgramError::NotLoaded),
            })?;
            let prog_fd = prog.fd().map_err(|e| LoadError::Program {
                name: (*name).to_string(),
                action: "no file descriptor",
                source: Box::new(e),
            })?;
            let link = netkit::link_create(prog_fd.as_fd(), ifindex, *end).map_err(netkit_err(
                format!(
                "attaching {name} as the {} policy of netkit device {device} (ifindex {ifindex})",
                end.as_str()
            ),
            ))?;
            netkit::pin(link.as_fd(), &path).map_err(netkit_err("pinning".to_string()))?;
            made.push(path);
        }
        Ok(())
    }

    /// Removes every pinned link of `device`, which detaches the programs.
    /// (Links of programs an earlier object had went when this one opened.)
    pub fn detach(&self, device: &str) -> Result<(), LoadError> {
        for name in program_names() {
            let path = self.link_path(device, name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(LoadError::Io {
                        what: "removing",
                        path,
                        source: e,
                    })
                }
            }
        }
        Ok(())
    }

    /// (device, program) of every pinned link under this root, programs of
    /// earlier objects included (program names have no `-`; device names may).
    fn pinned_links(&self) -> Vec<(String, String)> {
        std::fs::read_dir(self.root.join("links"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let file = e.file_name().to_str()?.to_string();
                let (device, program) = file.rsplit_once('-')?;
                Some((device.to_string(), program.to_string()))
            })
            .collect()
    }

    /// Devices that have pinned links under this root.
    pub fn attached_devices(&self) -> Vec<String> {
        let mut devices: Vec<String> = self.pinned_links().into_iter().map(|(d, _)| d).collect();
        devices.sort();
        devices.dedup();
        devices
    }

    /// Removes the pinned links of programs this object does not have
    /// (`to_container` of the layout before one attach per pod), whose old
    /// programs would otherwise keep running. On every open, not only when
    /// a new object loads: an upgrade interrupted after pinning the new
    /// programs is adopted next time.
    fn remove_links_of_unknown_programs(&self) -> Result<(), LoadError> {
        for (device, program) in self.pinned_links() {
            if program_names().any(|name| name == program) {
                continue;
            }
            let path = self.link_path(&device, &program);
            std::fs::remove_file(&path)
                .map_err(io("removing the link of a program no object has", &path))?;
        }
        Ok(())
    }

    /// Points every pinned link at the freshly loaded program of the same name.
    fn update_pinned_links(&mut self) -> Result<(), LoadError> {
        for (device, program) in self.pinned_links() {
            let path = self.link_path(&device, &program);
            let Some((_, prog)) = self.programs.iter_mut().find(|(n, _)| *n == program) else {
                continue;
            };
            let netkit_link =
                netkit::open_pinned_netkit(&path).map_err(|source| LoadError::Netkit {
                    path: path.clone(),
                    action: "opening pin".to_string(),
                    source,
                })?;
            if let Some(link) = netkit_link {
                let prog = prog.fd().map_err(|e| LoadError::Program {
                    name: program.clone(),
                    action: "no file descriptor",
                    source: Box::new(e),
                })?;
                netkit::link_update(link.as_fd(), prog.as_fd()).map_err(|source| {
                    LoadError::Netkit {
                        path: path.clone(),
                        action: format!("updating {program} on {device}"),
                        source,
                    }
                })?;
                continue;
            }
            let pinned = PinnedLink::from_pin(&path).map_err(|e| LoadError::Link {
                path: path.clone(),
                action: "opening pin",
                source: Box::new(e),
            })?;
            let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| {
                LoadError::Link {
                    path: path.clone(),
                    action: "not a tc link",
                    source: Box::new(e),
                }
            })?;
            // The program keeps the link's fd; dropping it later only closes
            // the fd, the pin keeps the link (now with the new program).
            prog.attach_to_link(link).map_err(|e| LoadError::Program {
                name: format!("{program} on {device}"),
                action: "updating link",
                source: Box::new(e),
            })?;
        }
        Ok(())
    }
}

/// After a failed attach, removes the link pins it made (which detaches
/// their programs), so nothing stays half-attached.
fn unpin_on_error(result: Result<(), LoadError>, made: Vec<PathBuf>) -> Result<(), LoadError> {
    if result.is_err() {
        for path in made {
            let _ = std::fs::remove_file(path);
        }
    }
    result
}

/// Typed handles on the pinned maps, opened from their pins so that the agent,
/// the CLI and tests all see the same kernel objects.
pub struct Maps {
    pub endpoints: HashMap<MapData, EndpointKey, EndpointInfo>,
    pub ipcache: aya::maps::LpmTrie<MapData, u32, crate::maps::IpcacheValue>,
    pub config: aya::maps::Array<MapData, DatapathConfig>,
    pub metrics: PerCpuArray<MapData, MetricsValue>,
    pub lb4_services: HashMap<MapData, Lb4Key, Lb4Service>,
    pub lb4_backends: HashMap<MapData, u32, Lb4Backend>,
    pub lb4_reverse_nat: HashMap<MapData, u32, Lb4ReverseNat>,
    pub lb4_affinity: HashMap<MapData, Lb4AffinityKey, Lb4AffinityValue>,
    pub ct4_tcp: HashMap<MapData, Ct4Key, Ct4Entry>,
    pub ct4_any: HashMap<MapData, Ct4Key, Ct4Entry>,
    pub snat4: HashMap<MapData, Ct4Key, Nat4Entry>,
    pub ipmasq4: aya::maps::LpmTrie<MapData, u32, crate::maps::IpmasqValue>,
}

fn open_map(root: &Path, name: &str) -> Result<aya::maps::Map, LoadError> {
    let path = root.join("maps").join(name);
    let data = MapData::from_pin(&path).map_err(|e| LoadError::Map {
        name: name.to_string(),
        action: "opening pin (is the agent's bpf.root right, and has the agent run?)",
        source: Box::new(e),
    })?;
    aya::maps::Map::from_map_data(data).map_err(|e| LoadError::Map {
        name: name.to_string(),
        action: "recognising type",
        source: Box::new(e),
    })
}

fn typed<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    name: &str,
    map: aya::maps::Map,
) -> Result<T, LoadError> {
    T::try_from(map).map_err(|e| LoadError::Map {
        name: name.to_string(),
        action: "wrong type",
        source: Box::new(e),
    })
}

impl Maps {
    pub fn open(root: &Path) -> Result<Self, LoadError> {
        Ok(Self {
            endpoints: typed(ENDPOINTS_MAP, open_map(root, ENDPOINTS_MAP)?)?,
            ipcache: typed(
                crate::maps::IPCACHE_MAP,
                open_map(root, crate::maps::IPCACHE_MAP)?,
            )?,
            config: typed(CONFIG_MAP, open_map(root, CONFIG_MAP)?)?,
            metrics: typed(METRICS_MAP, open_map(root, METRICS_MAP)?)?,
            lb4_services: typed(LB4_SERVICES_MAP, open_map(root, LB4_SERVICES_MAP)?)?,
            lb4_backends: typed(LB4_BACKENDS_MAP, open_map(root, LB4_BACKENDS_MAP)?)?,
            lb4_reverse_nat: typed(LB4_REVERSE_NAT_MAP, open_map(root, LB4_REVERSE_NAT_MAP)?)?,
            lb4_affinity: typed(LB4_AFFINITY_MAP, open_map(root, LB4_AFFINITY_MAP)?)?,
            ct4_tcp: typed(CT4_TCP_MAP, open_map(root, CT4_TCP_MAP)?)?,
            ct4_any: typed(CT4_ANY_MAP, open_map(root, CT4_ANY_MAP)?)?,
            snat4: typed(SNAT4_MAP, open_map(root, SNAT4_MAP)?)?,
            ipmasq4: typed(
                crate::maps::IPMASQ4_MAP,
                open_map(root, crate::maps::IPMASQ4_MAP)?,
            )?,
        })
    }

    /// The ring buffer of events; only one reader should consume it.
    pub fn open_events(root: &Path) -> Result<aya::maps::RingBuf<MapData>, LoadError> {
        typed(
            crate::maps::EVENTS_MAP,
            open_map(root, crate::maps::EVENTS_MAP)?,
        )
    }

    /// Every endpoint map entry.
    pub fn endpoint_entries(&self) -> Result<Vec<(EndpointKey, EndpointInfo)>, LoadError> {
        self.endpoints
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| LoadError::Map {
                name: ENDPOINTS_MAP.to_string(),
                action: "iterating",
                source: Box::new(e),
            })
    }

    /// Non-zero counters summed over CPUs: (reason, direction, packets, bytes).
    pub fn metrics_totals(&self) -> Result<Vec<(u8, u8, u64, u64)>, LoadError> {
        let mut out = Vec::new();
        for index in 0..crate::maps::METRICS_MAP_SIZE {
            let values = self.metrics.get(&index, 0).map_err(|e| LoadError::Map {
                name: METRICS_MAP.to_string(),
                action: "reading",
                source: Box::new(e),
            })?;
            let (packets, bytes) = values
                .iter()
                .fold((0, 0), |(p, b), v| (p + v.packets, b + v.bytes));
            if packets > 0 {
                let (reason, dir) = crate::maps::metrics_key(index);
                out.push((reason, dir, packets, bytes));
            }
        }
        Ok(out)
    }
}
