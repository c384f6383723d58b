//! The datapath of ipvlan endpoints (`datapathMode: ipvlan`): a pod's `eth0`
//! is an ipvlan L3 slave with no device of its own in the node's namespace,
//! so its program runs on the slave's tc egress inside the pod's namespace.
//!
//! Each endpoint gets `bpf/ipvlan.c`'s entry program, loaded for it alone
//! (its address is a constant of the load) with a one-entry prog array of its
//! own whose slot 0 holds the node's `from_container_ipvlan`. Both are pinned
//! under `bpf.root`:
//! - `ipvlan/<name>-calls`: the prog array; a new datapath object swaps slot 0
//!   ([`Datapath::open`] does), so upgrading never enters a pod's namespace
//!   (the entry itself, which only names the endpoint and tail-calls, stays
//!   as it was loaded);
//! - `ipvlan/<name>-entry`: the entry's TCX link on the slave.
//!
//! TCX rather than a clsact filter: the link is created from a thread inside
//! the pod's namespace (the device is resolved there) but pinned in the
//! node's bpffs like every other link, so the agent sees what is attached and
//! detaches it without entering the namespace; a clsact filter would live only
//! in the pod's namespace and could be listed or removed only from in there.
//! When the pod's namespace goes, the link is left detached and holds the
//! programs until its pin is removed: [`Datapath::detach_ipvlan`] removes both
//! pins.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::{MapData, ProgramArray};
use aya::programs::links::FdLink;
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};

use crate::loader::{Datapath, LoadError};
use crate::maps::be_addr;
use crate::netns;

/// The program every ipvlan endpoint's slot 0 holds (in `bpf/lxc.c`).
pub const FROM_CONTAINER_IPVLAN: &str = "from_container_ipvlan";
/// The entry program and its prog array, as named in `bpf/ipvlan.c`.
pub const ENTRY_PROGRAM: &str = "ipvlan_entry";
pub const CALLS_MAP: &str = "ciliate_ipvlan_calls";
/// The constant the entry is loaded with: the endpoint's address.
const ENDPOINT_IP_GLOBAL: &str = "ENDPOINT_IP";
/// Under `bpf.root`.
pub const IPVLAN_DIR: &str = "ipvlan";

/// An entry program loaded for one endpoint, its prog array filled, not yet
/// attached or pinned (`BPF_PROG_TEST_RUN` can run it as it is).
pub struct IpvlanEntry {
    ebpf: aya::Ebpf,
}

impl IpvlanEntry {
    /// The loaded entry program.
    pub fn program(&self) -> &SchedClassifier {
        self.ebpf
            .program(ENTRY_PROGRAM)
            .and_then(|p| <&SchedClassifier>::try_from(p).ok())
            .expect("loaded with the entry program")
    }

    fn program_mut(&mut self) -> &mut SchedClassifier {
        self.ebpf
            .program_mut(ENTRY_PROGRAM)
            .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
            .expect("loaded with the entry program")
    }

    /// Empties slot 0: the entry then drops everything, counted
    /// (`DROP_MISSED_TAIL_CALL`), as with a prog array nobody filled.
    pub fn clear_slot(&mut self) -> Result<(), LoadError> {
        self.calls_mut()?
            .clear_index(&0)
            .map_err(map_err(CALLS_MAP, "clearing slot 0"))
    }

    /// The entry's prog array.
    fn calls(&self) -> Result<&MapData, LoadError> {
        match self.ebpf.map(CALLS_MAP) {
            Some(aya::maps::Map::ProgramArray(data)) => Ok(data),
            _ => Err(missing_map(CALLS_MAP)),
        }
    }

    fn calls_mut(&mut self) -> Result<ProgramArray<&mut MapData>, LoadError> {
        let map = self
            .ebpf
            .map_mut(CALLS_MAP)
            .ok_or_else(|| missing_map(CALLS_MAP))?;
        ProgramArray::try_from(map).map_err(map_err(CALLS_MAP, "not a prog array"))
    }
}

fn missing_map(name: &str) -> LoadError {
    LoadError::Map {
        name: name.to_string(),
        action: "missing from the ipvlan object",
        source: Box::new(aya::maps::MapError::InvalidName {
            name: name.to_string(),
        }),
    }
}

fn prog_err(
    name: &str,
    action: &'static str,
) -> impl FnOnce(aya::programs::ProgramError) -> LoadError {
    let name = name.to_string();
    move |e| LoadError::Program {
        name,
        action,
        source: Box::new(e),
    }
}

fn map_err(name: &str, action: &'static str) -> impl FnOnce(aya::maps::MapError) -> LoadError {
    let name = name.to_string();
    move |e| LoadError::Map {
        name,
        action,
        source: Box::new(e),
    }
}

fn remove_pin(path: &Path) -> Result<(), LoadError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LoadError::Io {
            what: "removing",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Puts `program` in slot 0 of `calls`.
fn fill_slot<T: std::borrow::BorrowMut<MapData>>(
    calls: &mut ProgramArray<T>,
    program: &SchedClassifier,
) -> Result<(), LoadError> {
    let fd = program
        .fd()
        .map_err(prog_err(FROM_CONTAINER_IPVLAN, "getting its fd"))?;
    calls
        .set(0, fd, 0)
        .map_err(map_err(CALLS_MAP, "setting slot 0"))
}

impl Datapath {
    fn ipvlan_pin(&self, name: &str, what: &str) -> PathBuf {
        self.root().join(IPVLAN_DIR).join(format!("{name}-{what}"))
    }

    /// Loads the entry program for the endpoint at `ip`, with
    /// `from_container_ipvlan` in slot 0 of its prog array.
    pub fn ipvlan_entry(&self, ip: Ipv4Addr) -> Result<IpvlanEntry, LoadError> {
        let target = self
            .program(FROM_CONTAINER_IPVLAN)
            .ok_or_else(|| LoadError::Program {
                name: FROM_CONTAINER_IPVLAN.to_string(),
                action: "not loaded",
                source: Box::new(aya::programs::ProgramError::NotLoaded),
            })?;
        let addr = be_addr(ip);
        let mut ebpf = aya::EbpfLoader::new()
            .default_map_pin_directory(self.root().join("maps"))
            .override_global(ENDPOINT_IP_GLOBAL, &addr, true)
            .load(crate::IPVLAN_OBJECT)
            .map_err(|e| LoadError::Load(Box::new(e)))?;
        let prog: &mut SchedClassifier = ebpf
            .program_mut(ENTRY_PROGRAM)
            .ok_or_else(|| LoadError::Program {
                name: ENTRY_PROGRAM.to_string(),
                action: "missing from the object",
                source: Box::new(aya::programs::ProgramError::NotLoaded),
            })?
            .try_into()
            .map_err(prog_err(ENTRY_PROGRAM, "not a classifier"))?;
        prog.load().map_err(prog_err(ENTRY_PROGRAM, "loading"))?;
        let mut entry = IpvlanEntry { ebpf };
        fill_slot(&mut entry.calls_mut()?, target)?;
        Ok(entry)
    }

    /// Whether the endpoint `name` has its entry attached (its pins exist).
    pub fn is_ipvlan_attached(&self, name: &str) -> bool {
        self.ipvlan_pin(name, "entry").exists() && self.ipvlan_pin(name, "calls").exists()
    }

    /// Gives the endpoint `name` (address `ip`, device `ifname` in the
    /// namespace at `netns`) its entry program on the device's TCX egress,
    /// and pins the link and the prog array. Already attached: nothing to do.
    /// On failure nothing stays attached or pinned. The attach runs on a
    /// thread of its own inside the pod's namespace, so any caller (a tokio
    /// worker included) keeps its namespace.
    pub fn attach_ipvlan(
        &mut self,
        name: &str,
        ip: Ipv4Addr,
        netns: &Path,
        ifname: &str,
    ) -> Result<(), LoadError> {
        if self.is_ipvlan_attached(name) {
            return Ok(());
        }
        let dir = self.root().join(IPVLAN_DIR);
        std::fs::create_dir_all(&dir).map_err(|source| LoadError::Io {
            what: "creating",
            path: dir.clone(),
            source,
        })?;
        let (calls_pin, entry_pin) = (
            self.ipvlan_pin(name, "calls"),
            self.ipvlan_pin(name, "entry"),
        );
        let mut entry = self.ipvlan_entry(ip)?;
        let result = pin_and_attach(&mut entry, &calls_pin, &entry_pin, netns, ifname);
        if result.is_err() {
            let _ = remove_pin(&entry_pin);
            let _ = remove_pin(&calls_pin);
        }
        result
    }

    /// Removes the pins of the endpoint `name`, which detaches its entry
    /// (if its device still exists) and frees both. Missing pins are fine.
    pub fn detach_ipvlan(&self, name: &str) -> Result<(), LoadError> {
        remove_pin(&self.ipvlan_pin(name, "entry"))?;
        remove_pin(&self.ipvlan_pin(name, "calls"))
    }

    /// Names of the endpoints with ipvlan pins under this root.
    pub fn ipvlan_endpoints(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.root().join(IPVLAN_DIR))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let file = e.file_name().to_str()?.to_string();
                file.strip_suffix("-calls")
                    .or_else(|| file.strip_suffix("-entry"))
                    .map(str::to_string)
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Points slot 0 of every pinned ipvlan prog array at this datapath's
    /// `from_container_ipvlan` (after loading a new object).
    pub(crate) fn update_ipvlan_calls(&self) -> Result<(), LoadError> {
        let Some(target) = self.program(FROM_CONTAINER_IPVLAN) else {
            return Ok(());
        };
        for name in self.ipvlan_endpoints() {
            let path = self.ipvlan_pin(&name, "calls");
            if !path.exists() {
                continue;
            }
            let data = MapData::from_pin(&path).map_err(map_err(CALLS_MAP, "opening pin"))?;
            let map = aya::maps::Map::from_map_data(data)
                .map_err(map_err(CALLS_MAP, "recognising type"))?;
            let mut calls = ProgramArray::<MapData>::try_from(map)
                .map_err(map_err(CALLS_MAP, "not a prog array"))?;
            fill_slot(&mut calls, target)?;
        }
        Ok(())
    }
}

fn pin_and_attach(
    entry: &mut IpvlanEntry,
    calls_pin: &Path,
    entry_pin: &Path,
    netns: &Path,
    ifname: &str,
) -> Result<(), LoadError> {
    remove_pin(calls_pin)?;
    remove_pin(entry_pin)?;
    entry
        .calls()?
        .pin(calls_pin)
        .map_err(|source| LoadError::Pin {
            path: calls_pin.to_owned(),
            source,
        })?;
    let prog = entry.program_mut();
    let link = std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<FdLink, LoadError> {
                let guard = netns::enter(netns).map_err(|source| LoadError::Netns {
                    path: netns.to_owned(),
                    source: Box::new(source),
                })?;
                let attached = prog
                    .attach_with_options(
                        ifname,
                        TcAttachType::Egress,
                        aya::programs::tc::TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(prog_err(ENTRY_PROGRAM, "attaching in the pod's namespace"))
                    .and_then(|id| {
                        prog.take_link(id)
                            .map_err(prog_err(ENTRY_PROGRAM, "taking link"))
                    });
                guard.restore().map_err(|source| LoadError::Netns {
                    path: netns.to_owned(),
                    source: Box::new(source),
                })?;
                FdLink::try_from(attached?).map_err(|e| LoadError::Link {
                    path: entry_pin.to_owned(),
                    action: "converting",
                    source: Box::new(e),
                })
            })
            .join()
            .unwrap_or_else(|_| {
                Err(LoadError::Netns {
                    path: netns.to_owned(),
                    source: Box::new(netns::NetnsError::Thread),
                })
            })
    })?;
    // Dropping an unpinned link detaches it.
    link.pin(entry_pin).map_err(|source| LoadError::Pin {
        path: entry_pin.to_owned(),
        source,
    })?;
    Ok(())
}
