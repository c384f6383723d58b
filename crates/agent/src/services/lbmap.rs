//! Writes the desired frontends into `ciliate_lb4_svc`, `ciliate_lb4_be` and
//! `ciliate_lb4_rev` so that traffic keeps flowing while they change:
//!
//! - a backend keeps its id for as long as some frontend has it (per address,
//!   port and protocol), and a frontend keeps its reverse-NAT index, so
//!   established connections (their conntrack entries name both) survive
//!   every update; ids are handed out counting up, never reused at once;
//! - order: backends, then the reverse-NAT entry, then each scope's slots
//!   from high to low and its slot 0 (which makes the new count visible) last,
//!   then the slots beyond the new count; a removed frontend loses its slot 0
//!   first, then its slots, then its reverse-NAT entry; backends no frontend
//!   names go last;
//! - a restarted agent reads all three maps back ([`LbSync::adopt`]) and
//!   keeps every id; what nothing wants any more is removed only when the
//!   caller says the store has been listed completely (`prune`).

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{HashMap, MapData, MapError};
use ciliate_api::{BackendEntry, ServiceEntry};
use ciliate_datapath::maps::{
    Lb4Backend, Lb4Key, Lb4ReverseNat, Lb4Service, BE_STATE_ACTIVE, BE_STATE_TERMINATING,
    LB_SCOPE_EXTERNAL, LB_SCOPE_INTERNAL,
};
use tracing::{debug, warn};

use super::model::{BackendState, Frontend, L4Addr};
use crate::error::is_not_found;

#[derive(Debug, thiserror::Error)]
#[error("{action} {map} entry {entry}")]
pub struct LbError {
    pub action: &'static str,
    pub map: &'static str,
    pub entry: String,
    #[source]
    pub source: Box<MapError>,
}

/// The three service maps, as [`LbSync`] uses them: the pinned maps in the
/// agent, plain collections in unit tests.
pub trait LbTables {
    fn services(&self) -> Result<Vec<(Lb4Key, Lb4Service)>, MapError>;
    fn backends(&self) -> Result<Vec<(u32, Lb4Backend)>, MapError>;
    fn reverse_nats(&self) -> Result<Vec<(u32, Lb4ReverseNat)>, MapError>;
    fn put_service(&mut self, key: Lb4Key, value: Lb4Service) -> Result<(), MapError>;
    /// Removing what is not there is not an error.
    fn remove_service(&mut self, key: &Lb4Key) -> Result<(), MapError>;
    fn put_backend(&mut self, id: u32, value: Lb4Backend) -> Result<(), MapError>;
    fn remove_backend(&mut self, id: u32) -> Result<(), MapError>;
    fn put_reverse_nat(&mut self, id: u32, value: Lb4ReverseNat) -> Result<(), MapError>;
    fn remove_reverse_nat(&mut self, id: u32) -> Result<(), MapError>;
}

/// The pinned maps.
pub struct PinnedTables {
    pub services: HashMap<MapData, Lb4Key, Lb4Service>,
    pub backends: HashMap<MapData, u32, Lb4Backend>,
    pub reverse_nat: HashMap<MapData, u32, Lb4ReverseNat>,
}

impl PinnedTables {
    pub fn from_maps(maps: ciliate_datapath::loader::Maps) -> Self {
        Self {
            services: maps.lb4_services,
            backends: maps.lb4_backends,
            reverse_nat: maps.lb4_reverse_nat,
        }
    }
}

fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(e) if is_not_found(&e) => Ok(()),
        other => other,
    }
}

impl LbTables for PinnedTables {
    fn services(&self) -> Result<Vec<(Lb4Key, Lb4Service)>, MapError> {
        self.services.iter().collect()
    }
    fn backends(&self) -> Result<Vec<(u32, Lb4Backend)>, MapError> {
        self.backends.iter().collect()
    }
    fn reverse_nats(&self) -> Result<Vec<(u32, Lb4ReverseNat)>, MapError> {
        self.reverse_nat.iter().collect()
    }
    fn put_service(&mut self, key: Lb4Key, value: Lb4Service) -> Result<(), MapError> {
        self.services.insert(key, value, 0)
    }
    fn remove_service(&mut self, key: &Lb4Key) -> Result<(), MapError> {
        ignore_missing(self.services.remove(key))
    }
    fn put_backend(&mut self, id: u32, value: Lb4Backend) -> Result<(), MapError> {
        self.backends.insert(id, value, 0)
    }
    fn remove_backend(&mut self, id: u32) -> Result<(), MapError> {
        ignore_missing(self.backends.remove(&id))
    }
    fn put_reverse_nat(&mut self, id: u32, value: Lb4ReverseNat) -> Result<(), MapError> {
        self.reverse_nat.insert(id, value, 0)
    }
    fn remove_reverse_nat(&mut self, id: u32) -> Result<(), MapError> {
        ignore_missing(self.reverse_nat.remove(&id))
    }
}

/// One scope of a frontend as the map holds it: slot 0 and the backend id
/// of slots 1..=count.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Scope {
    head: Lb4Service,
    slots: Vec<u32>,
}

/// A frontend as the maps hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Written {
    rev_nat_index: u32,
    rev_nat: Lb4ReverseNat,
    scopes: BTreeMap<u8, Scope>,
}

fn key(fe: L4Addr, scope: u8, slot: u16) -> Lb4Key {
    Lb4Key::new(fe.ip, fe.port, fe.proto, scope, slot)
}

fn slot_number(index: usize) -> u16 {
    // Slot counts are capped at MAX_BACKENDS by the model.
    u16::try_from(index + 1).unwrap_or(u16::MAX)
}

/// Keeps the service maps equal to the desired frontends.
pub struct LbSync<T: LbTables> {
    tables: T,
    /// Backend ids by address; `backends` has what each id's entry holds.
    backend_ids: BTreeMap<L4Addr, u32>,
    backends: BTreeMap<u32, Lb4Backend>,
    frontends: BTreeMap<L4Addr, Written>,
    /// Reverse-NAT indexes in use, by frontends or by entries left from an
    /// earlier run not yet pruned.
    rev_nat_used: BTreeSet<u32>,
    next_backend_id: u32,
    next_rev_nat: u32,
}

/// Counts what an [`LbSync::apply`] changed, for the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub frontends_written: usize,
    pub frontends_removed: usize,
    pub backends_written: usize,
    pub backends_removed: usize,
    pub errors: usize,
}

fn next_free(next: &mut u32, used: impl Fn(u32) -> bool) -> u32 {
    loop {
        let id = *next;
        *next = next.checked_add(1).unwrap_or(1);
        if id != 0 && !used(id) {
            return id;
        }
    }
}

impl<T: LbTables> LbSync<T> {
    /// Reads back what the maps hold (an earlier run's work) and keeps its ids.
    pub fn adopt(tables: T) -> Result<Self, LbError> {
        let read_err = |map: &'static str| {
            move |source| LbError {
                action: "reading",
                map,
                entry: "(all)".into(),
                source: Box::new(source),
            }
        };
        let mut backends = BTreeMap::new();
        let mut backend_ids = BTreeMap::new();
        for (id, value) in tables.backends().map_err(read_err("ciliate_lb4_be"))? {
            let addr = L4Addr::new(value.ip(), value.port(), value.proto);
            // Two ids for one address cannot come from this agent; keep the
            // first, the other goes with the next prune.
            backend_ids.entry(addr).or_insert(id);
            backends.insert(id, value);
        }
        let rev: BTreeMap<u32, Lb4ReverseNat> = tables
            .reverse_nats()
            .map_err(read_err("ciliate_lb4_rev"))?
            .into_iter()
            .collect();
        let mut frontends: BTreeMap<L4Addr, Written> = BTreeMap::new();
        let mut slots: BTreeMap<(L4Addr, u8), BTreeMap<u16, u32>> = BTreeMap::new();
        for (k, v) in tables.services().map_err(read_err("ciliate_lb4_svc"))? {
            let fe = L4Addr::new(k.ip(), k.port(), k.proto);
            if k.backend_slot == 0 {
                let written = frontends.entry(fe).or_insert_with(|| Written {
                    rev_nat_index: v.rev_nat_index,
                    rev_nat: rev.get(&v.rev_nat_index).copied().unwrap_or_default(),
                    scopes: BTreeMap::new(),
                });
                written.scopes.insert(
                    k.scope,
                    Scope {
                        head: v,
                        slots: Vec::new(),
                    },
                );
            } else {
                slots
                    .entry((fe, k.scope))
                    .or_default()
                    .insert(k.backend_slot, v.backend_id);
            }
        }
        let mut orphan_slots = Vec::new();
        for ((fe, scope), by_slot) in slots {
            match frontends
                .get_mut(&fe)
                .and_then(|w| w.scopes.get_mut(&scope))
            {
                // Slots are read as they are, gaps as id 0, so that the next
                // apply rewrites what differs and removes what is beyond.
                Some(s) => {
                    let top = by_slot.keys().max().copied().unwrap_or(0);
                    s.slots = (1..=top)
                        .map(|slot| by_slot.get(&slot).copied().unwrap_or(0))
                        .collect();
                }
                None => orphan_slots.extend(by_slot.keys().map(|slot| key(fe, scope, *slot))),
            }
        }
        let mut tables = tables;
        // Slots without a slot 0 can never be used: remove them now.
        for k in orphan_slots {
            let _ = tables.remove_service(&k);
        }
        let rev_nat_used: BTreeSet<u32> = rev
            .keys()
            .copied()
            .chain(frontends.values().map(|w| w.rev_nat_index))
            .collect();
        let next_backend_id = backends.keys().max().map_or(1, |m| m.saturating_add(1));
        let next_rev_nat = rev_nat_used.iter().max().map_or(1, |m| m.saturating_add(1));
        Ok(Self {
            tables,
            backend_ids,
            backends,
            frontends,
            rev_nat_used,
            next_backend_id,
            next_rev_nat,
        })
    }

    pub fn tables(&self) -> &T {
        &self.tables
    }

    /// The reverse-NAT index of a frontend, once written.
    pub fn rev_nat_index(&self, fe: &L4Addr) -> Option<u32> {
        self.frontends.get(fe).map(|w| w.rev_nat_index)
    }

    pub fn backend_id(&self, addr: &L4Addr) -> Option<u32> {
        self.backend_ids.get(addr).copied()
    }

    /// Brings the maps to `want`. With `prune`, also removes frontends and
    /// backends nothing wants (only once the store's list is complete).
    pub fn apply(&mut self, want: &BTreeMap<L4Addr, Frontend>, prune: bool) -> Changes {
        let mut changes = Changes::default();

        // 1. Backends: every one a frontend names, active if any says so.
        let mut wanted_backends: BTreeMap<L4Addr, BackendState> = BTreeMap::new();
        for fe in want.values() {
            for b in &fe.backends {
                wanted_backends
                    .entry(b.addr)
                    .and_modify(|s| *s = (*s).min(b.state))
                    .or_insert(b.state);
            }
        }
        for (addr, state) in &wanted_backends {
            let id = if let Some(id) = self.backend_ids.get(addr) {
                *id
            } else {
                let backends = &self.backends;
                let id = next_free(&mut self.next_backend_id, |id| backends.contains_key(&id));
                self.backend_ids.insert(*addr, id);
                id
            };
            let value = Lb4Backend::new(
                addr.ip,
                addr.port,
                addr.proto,
                match state {
                    BackendState::Active => BE_STATE_ACTIVE,
                    BackendState::Terminating => BE_STATE_TERMINATING,
                },
            );
            if self.backends.get(&id) == Some(&value) {
                continue;
            }
            match self.tables.put_backend(id, value) {
                Ok(()) => {
                    self.backends.insert(id, value);
                    changes.backends_written += 1;
                }
                Err(e) => {
                    changes.errors += 1;
                    warn!(backend = %addr, id, error = %e, "cannot write the backend");
                }
            }
        }

        // 2. Frontends.
        for fe in want.values() {
            match self.write_frontend(fe) {
                Ok(true) => changes.frontends_written += 1,
                Ok(false) => {}
                Err(e) => {
                    changes.errors += 1;
                    warn!(frontend = %fe.addr, service = %fe.service, error = %crate::services::chain(&e), "cannot write the frontend");
                }
            }
        }

        if !prune {
            return changes;
        }
        // 3. Frontends nothing wants.
        let stale: Vec<L4Addr> = self
            .frontends
            .keys()
            .filter(|fe| !want.contains_key(fe))
            .copied()
            .collect();
        for fe in stale {
            match self.remove_frontend(fe) {
                Ok(()) => changes.frontends_removed += 1,
                Err(e) => {
                    changes.errors += 1;
                    warn!(frontend = %fe, error = %crate::services::chain(&e), "cannot remove the frontend");
                }
            }
        }
        // Reverse-NAT entries of no frontend (left by an earlier run).
        let in_use: BTreeSet<u32> = self.frontends.values().map(|w| w.rev_nat_index).collect();
        let orphans: Vec<u32> = self.rev_nat_used.difference(&in_use).copied().collect();
        for id in orphans {
            match self.tables.remove_reverse_nat(id) {
                Ok(()) => {
                    self.rev_nat_used.remove(&id);
                }
                Err(e) => {
                    changes.errors += 1;
                    warn!(id, error = %e, "cannot remove a stale reverse-NAT entry");
                }
            }
        }
        // 4. Backends nothing names, last: no slot points at them any more.
        let stale: Vec<(L4Addr, u32)> = self
            .backend_ids
            .iter()
            .filter(|(addr, _)| !wanted_backends.contains_key(addr))
            .map(|(a, id)| (*a, *id))
            .collect();
        let kept: BTreeSet<u32> = self
            .backend_ids
            .iter()
            .filter(|(addr, _)| wanted_backends.contains_key(addr))
            .map(|(_, id)| *id)
            .collect();
        for (addr, _) in &stale {
            self.backend_ids.remove(addr);
        }
        let ids: Vec<u32> = self
            .backends
            .keys()
            .filter(|id| !kept.contains(id))
            .copied()
            .collect();
        for id in ids {
            match self.tables.remove_backend(id) {
                Ok(()) => {
                    self.backends.remove(&id);
                    changes.backends_removed += 1;
                }
                Err(e) => {
                    changes.errors += 1;
                    warn!(id, error = %e, "cannot remove the backend");
                }
            }
        }
        changes
    }

    /// Writes one frontend if the maps do not hold it as wanted; true if it wrote.
    fn write_frontend(&mut self, fe: &Frontend) -> Result<bool, LbError> {
        let rev_nat_index = if let Some(w) = self.frontends.get(&fe.addr) {
            w.rev_nat_index
        } else {
            let used = &self.rev_nat_used;
            let id = next_free(&mut self.next_rev_nat, |id| used.contains(&id));
            self.rev_nat_used.insert(id);
            id
        };
        let ids = |slots: &[L4Addr]| -> Vec<u32> {
            slots
                .iter()
                .filter_map(|a| self.backend_ids.get(a).copied())
                .collect()
        };
        let head = |count: usize| Lb4Service {
            backend_id: 0,
            rev_nat_index,
            count: u16::try_from(count).unwrap_or(u16::MAX),
            flags: fe.flags,
            affinity_timeout: fe.affinity_timeout,
        };
        let mut scopes = BTreeMap::new();
        let external = ids(&fe.external);
        scopes.insert(
            LB_SCOPE_EXTERNAL,
            Scope {
                head: head(external.len()),
                slots: external,
            },
        );
        if let Some(internal) = &fe.internal {
            let internal = ids(internal);
            scopes.insert(
                LB_SCOPE_INTERNAL,
                Scope {
                    head: head(internal.len()),
                    slots: internal,
                },
            );
        }
        let target = Written {
            rev_nat_index,
            rev_nat: Lb4ReverseNat::new(fe.addr.ip, fe.addr.port),
            scopes,
        };
        let old = self.frontends.get(&fe.addr).cloned();
        if old.as_ref() == Some(&target) {
            return Ok(false);
        }
        let err = |action: &'static str, map: &'static str, entry: String| {
            move |source| LbError {
                action,
                map,
                entry,
                source: Box::new(source),
            }
        };
        if old.as_ref().map(|o| o.rev_nat) != Some(target.rev_nat) {
            self.tables
                .put_reverse_nat(rev_nat_index, target.rev_nat)
                .map_err(err("writing", "ciliate_lb4_rev", rev_nat_index.to_string()))?;
        }
        let empty = BTreeMap::new();
        let old_scopes = old.as_ref().map_or(&empty, |o| &o.scopes);
        for (scope, s) in &target.scopes {
            let before = old_scopes.get(scope);
            for (i, id) in s.slots.iter().enumerate().rev() {
                if before.and_then(|b| b.slots.get(i)) == Some(id) {
                    continue;
                }
                let slot = slot_number(i);
                let value = Lb4Service {
                    backend_id: *id,
                    ..Lb4Service::default()
                };
                self.tables
                    .put_service(key(fe.addr, *scope, slot), value)
                    .map_err(err(
                        "writing",
                        "ciliate_lb4_svc",
                        format!("{} scope {scope} slot {slot}", fe.addr),
                    ))?;
            }
            if before.map(|b| b.head) != Some(s.head) {
                self.tables
                    .put_service(key(fe.addr, *scope, 0), s.head)
                    .map_err(err(
                        "writing",
                        "ciliate_lb4_svc",
                        format!("{} scope {scope} slot 0", fe.addr),
                    ))?;
            }
            if let Some(before) = before {
                for i in (s.slots.len()..before.slots.len()).rev() {
                    let slot = slot_number(i);
                    self.tables
                        .remove_service(&key(fe.addr, *scope, slot))
                        .map_err(err(
                            "removing",
                            "ciliate_lb4_svc",
                            format!("{} scope {scope} slot {slot}", fe.addr),
                        ))?;
                }
            }
        }
        for (scope, before) in old_scopes {
            if !target.scopes.contains_key(scope) {
                self.remove_scope(fe.addr, *scope, before)?;
            }
        }
        debug!(frontend = %fe.addr, service = %fe.service, rev_nat_index, "frontend written");
        self.frontends.insert(fe.addr, target);
        Ok(true)
    }

    fn remove_scope(&mut self, fe: L4Addr, scope: u8, s: &Scope) -> Result<(), LbError> {
        let err = |slot: u16| {
            move |source| LbError {
                action: "removing",
                map: "ciliate_lb4_svc",
                entry: format!("{fe} scope {scope} slot {slot}"),
                source: Box::new(source),
            }
        };
        self.tables
            .remove_service(&key(fe, scope, 0))
            .map_err(err(0))?;
        for i in (0..s.slots.len()).rev() {
            let slot = slot_number(i);
            self.tables
                .remove_service(&key(fe, scope, slot))
                .map_err(err(slot))?;
        }
        Ok(())
    }

    fn remove_frontend(&mut self, fe: L4Addr) -> Result<(), LbError> {
        let Some(w) = self.frontends.get(&fe).cloned() else {
            return Ok(());
        };
        for (scope, s) in &w.scopes {
            self.remove_scope(fe, *scope, s)?;
        }
        self.tables
            .remove_reverse_nat(w.rev_nat_index)
            .map_err(|source| LbError {
                action: "removing",
                map: "ciliate_lb4_rev",
                entry: w.rev_nat_index.to_string(),
                source: Box::new(source),
            })?;
        self.rev_nat_used.remove(&w.rev_nat_index);
        self.frontends.remove(&fe);
        debug!(frontend = %fe, "frontend removed");
        Ok(())
    }

    /// `GET /v1/service`: the wanted frontends that are in the maps, by id.
    pub fn entries(&self, want: &BTreeMap<L4Addr, Frontend>) -> Vec<ServiceEntry> {
        let mut out: Vec<ServiceEntry> = want
            .values()
            .filter_map(|fe| {
                let id = self.rev_nat_index(&fe.addr)?;
                Some(ServiceEntry {
                    id,
                    frontend: fe.addr.to_string(),
                    kind: fe.kind.as_str().to_string(),
                    service: fe.service.clone(),
                    traffic_policy: fe.traffic_policy.to_string(),
                    session_affinity: fe.affinity_timeout > 0,
                    backends: fe
                        .backends
                        .iter()
                        .filter_map(|b| {
                            Some(BackendEntry {
                                id: self.backend_id(&b.addr)?,
                                address: b.addr.to_string(),
                                state: b.state.as_str().to_string(),
                                node_name: b.node_name.clone(),
                            })
                        })
                        .collect(),
                })
            })
            .collect();
        out.sort_by_key(|e| e.id);
        out
    }
}

#[cfg(test)]
pub mod fake {
    //! The three maps as collections, with a log of every write in order.
    use super::*;

    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Op {
        PutService(Lb4Key),
        RemoveService(Lb4Key),
        PutBackend(u32),
        RemoveBackend(u32),
        PutRevNat(u32),
        RemoveRevNat(u32),
    }

    #[derive(Clone, Debug, Default)]
    pub struct FakeTables {
        pub services: BTreeMap<Lb4Key, Lb4Service>,
        pub backends: BTreeMap<u32, Lb4Backend>,
        pub rev: BTreeMap<u32, Lb4ReverseNat>,
        pub ops: Vec<Op>,
    }

    impl LbTables for FakeTables {
        fn services(&self) -> Result<Vec<(Lb4Key, Lb4Service)>, MapError> {
            Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn backends(&self) -> Result<Vec<(u32, Lb4Backend)>, MapError> {
            Ok(self.backends.iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn reverse_nats(&self) -> Result<Vec<(u32, Lb4ReverseNat)>, MapError> {
            Ok(self.rev.iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn put_service(&mut self, key: Lb4Key, value: Lb4Service) -> Result<(), MapError> {
            self.ops.push(Op::PutService(key));
            self.services.insert(key, value);
            Ok(())
        }
        fn remove_service(&mut self, key: &Lb4Key) -> Result<(), MapError> {
            self.ops.push(Op::RemoveService(*key));
            self.services.remove(key);
            Ok(())
        }
        fn put_backend(&mut self, id: u32, value: Lb4Backend) -> Result<(), MapError> {
            self.ops.push(Op::PutBackend(id));
            self.backends.insert(id, value);
            Ok(())
        }
        fn remove_backend(&mut self, id: u32) -> Result<(), MapError> {
            self.ops.push(Op::RemoveBackend(id));
            self.backends.remove(&id);
            Ok(())
        }
        fn put_reverse_nat(&mut self, id: u32, value: Lb4ReverseNat) -> Result<(), MapError> {
            self.ops.push(Op::PutRevNat(id));
            self.rev.insert(id, value);
            Ok(())
        }
        fn remove_reverse_nat(&mut self, id: u32) -> Result<(), MapError> {
            self.ops.push(Op::RemoveRevNat(id));
            self.rev.remove(&id);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{FakeTables, Op};
    use super::*;
    use crate::services::model::{Backend, FrontendKind};
    use ciliate_datapath::maps::{IPPROTO_TCP, SVC_F_CLUSTER_IP, SVC_F_NODEPORT, SVC_F_TWO_SCOPES};
    use std::net::Ipv4Addr;

    fn a(text: &str) -> L4Addr {
        let (ip, port) = text.split_once(':').unwrap();
        L4Addr::new(ip.parse().unwrap(), port.parse().unwrap(), IPPROTO_TCP)
    }

    fn frontend(fe: &str, active: &[&str], terminating: &[&str]) -> Frontend {
        let mut backends: Vec<Backend> = active
            .iter()
            .map(|b| Backend {
                addr: a(b),
                state: BackendState::Active,
                node_name: None,
            })
            .chain(terminating.iter().map(|b| Backend {
                addr: a(b),
                state: BackendState::Terminating,
                node_name: None,
            }))
            .collect();
        backends.sort_by_key(|b| b.addr);
        Frontend {
            addr: a(fe),
            kind: FrontendKind::ClusterIp,
            service: "d/web".into(),
            flags: SVC_F_CLUSTER_IP,
            affinity_timeout: 0,
            traffic_policy: "Cluster",
            backends,
            external: active.iter().map(|b| a(b)).collect(),
            internal: None,
        }
    }

    fn want(fes: &[Frontend]) -> BTreeMap<L4Addr, Frontend> {
        fes.iter().map(|f| (f.addr, f.clone())).collect()
    }

    /// Backend addresses of a scope's slots, in slot order, from the map.
    fn slots(t: &FakeTables, fe: &str, scope: u8) -> Vec<String> {
        let fe = a(fe);
        let head = t.services[&key(fe, scope, 0)];
        (1..=head.count)
            .map(|slot| {
                let id = t.services[&key(fe, scope, slot)].backend_id;
                let b = t.backends[&id];
                format!("{}:{}", b.ip(), b.port())
            })
            .collect()
    }

    #[test]
    fn writes_backends_then_slots_high_to_low_then_slot_zero() {
        let mut sync = LbSync::adopt(FakeTables::default()).unwrap();
        let fe = frontend("10.96.0.10:80", &["10.0.0.1:8080", "10.0.0.2:8080"], &[]);
        let c = sync.apply(&want(&[fe]), false);
        assert_eq!(
            (c.frontends_written, c.backends_written, c.errors),
            (1, 2, 0)
        );
        let t = sync.tables();
        let f = a("10.96.0.10:80");
        assert_eq!(
            t.ops,
            vec![
                Op::PutBackend(1),
                Op::PutBackend(2),
                Op::PutRevNat(1),
                Op::PutService(key(f, 0, 2)),
                Op::PutService(key(f, 0, 1)),
                Op::PutService(key(f, 0, 0)),
            ]
        );
        let head = t.services[&key(f, 0, 0)];
        assert_eq!(
            (head.count, head.rev_nat_index, head.flags),
            (2, 1, SVC_F_CLUSTER_IP)
        );
        assert_eq!(t.rev[&1], Lb4ReverseNat::new(f.ip, 80));
        assert_eq!(
            slots(t, "10.96.0.10:80", 0),
            ["10.0.0.1:8080", "10.0.0.2:8080"]
        );
        // Nothing changed: nothing written.
        let before = sync.tables().ops.len();
        assert_eq!(
            sync.apply(
                &want(&[frontend(
                    "10.96.0.10:80",
                    &["10.0.0.1:8080", "10.0.0.2:8080"],
                    &[]
                )]),
                true
            ),
            Changes::default()
        );
        assert_eq!(sync.tables().ops.len(), before);
    }

    #[test]
    fn updates_keep_ids_and_shrink_safely() {
        let mut sync = LbSync::adopt(FakeTables::default()).unwrap();
        let f = a("10.96.0.10:80");
        sync.apply(
            &want(&[frontend(
                "10.96.0.10:80",
                &["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"],
                &[],
            )]),
            true,
        );
        let id2 = sync.backend_id(&a("10.0.0.2:8080")).unwrap();
        let id3 = sync.backend_id(&a("10.0.0.3:8080")).unwrap();
        // 10.0.0.1 goes away, 10.0.0.2 terminates, 10.0.0.4 arrives.
        let start = sync.tables().ops.len();
        sync.apply(
            &want(&[frontend(
                "10.96.0.10:80",
                &["10.0.0.3:8080", "10.0.0.4:8080"],
                &["10.0.0.2:8080"],
            )]),
            true,
        );
        assert_eq!(sync.rev_nat_index(&f), Some(1));
        assert_eq!(sync.backend_id(&a("10.0.0.2:8080")), Some(id2));
        assert_eq!(sync.backend_id(&a("10.0.0.3:8080")), Some(id3));
        assert_eq!(
            sync.backend_id(&a("10.0.0.4:8080")),
            Some(4),
            "a new id, not 1 again"
        );
        assert_eq!(sync.backend_id(&a("10.0.0.1:8080")), None);
        let t = sync.tables();
        assert_eq!(
            slots(t, "10.96.0.10:80", 0),
            ["10.0.0.3:8080", "10.0.0.4:8080"]
        );
        assert_eq!(t.backends[&id2].state, BE_STATE_TERMINATING);
        assert!(!t.backends.contains_key(&1));
        assert!(!t.services.contains_key(&key(f, 0, 3)));
        // Order: new backend and state change, slots, slot 0, slot 3 gone, backend 1 gone.
        let ops = &t.ops[start..];
        let pos = |op: &Op| {
            ops.iter()
                .position(|o| o == op)
                .unwrap_or_else(|| panic!("{op:?} in {ops:?}"))
        };
        assert!(pos(&Op::PutBackend(4)) < pos(&Op::PutService(key(f, 0, 2))));
        assert!(pos(&Op::PutBackend(id2)) < pos(&Op::PutService(key(f, 0, 0))));
        assert!(pos(&Op::PutService(key(f, 0, 2))) < pos(&Op::PutService(key(f, 0, 1))));
        assert!(pos(&Op::PutService(key(f, 0, 1))) < pos(&Op::PutService(key(f, 0, 0))));
        assert!(pos(&Op::PutService(key(f, 0, 0))) < pos(&Op::RemoveService(key(f, 0, 3))));
        assert!(pos(&Op::RemoveService(key(f, 0, 3))) < pos(&Op::RemoveBackend(1)));
    }

    #[test]
    fn removal_waits_for_prune_and_goes_head_first() {
        let mut sync = LbSync::adopt(FakeTables::default()).unwrap();
        let f = a("10.96.0.10:80");
        sync.apply(
            &want(&[frontend("10.96.0.10:80", &["10.0.0.1:8080"], &[])]),
            true,
        );
        let c = sync.apply(&BTreeMap::new(), false);
        assert_eq!(c, Changes::default());
        assert!(sync.tables().services.contains_key(&key(f, 0, 0)));
        let start = sync.tables().ops.len();
        let c = sync.apply(&BTreeMap::new(), true);
        assert_eq!((c.frontends_removed, c.backends_removed), (1, 1));
        let t = sync.tables();
        assert_eq!(
            t.ops[start..],
            [
                Op::RemoveService(key(f, 0, 0)),
                Op::RemoveService(key(f, 0, 1)),
                Op::RemoveRevNat(1),
                Op::RemoveBackend(1),
            ]
        );
        assert!(t.services.is_empty() && t.backends.is_empty() && t.rev.is_empty());
    }

    #[test]
    fn a_restart_adopts_every_id() {
        let mut sync = LbSync::adopt(FakeTables::default()).unwrap();
        let mut np = frontend("0.0.0.0:30080", &["10.0.0.1:8080", "10.0.0.2:8080"], &[]);
        np.kind = FrontendKind::NodePort;
        np.flags = SVC_F_NODEPORT | SVC_F_TWO_SCOPES;
        np.external = vec![a("10.0.0.2:8080")];
        np.internal = Some(vec![a("10.0.0.1:8080"), a("10.0.0.2:8080")]);
        let fes = want(&[
            frontend("10.96.0.10:80", &["10.0.0.1:8080", "10.0.0.2:8080"], &[]),
            frontend("10.96.0.11:80", &["10.0.0.3:8080"], &[]),
            np,
        ]);
        sync.apply(&fes, true);
        let ids: Vec<(Option<u32>, Option<u32>)> = fes
            .values()
            .flat_map(|f| {
                f.backends
                    .iter()
                    .map(|b| (sync.rev_nat_index(&f.addr), sync.backend_id(&b.addr)))
            })
            .collect();
        let tables = sync.tables().clone();
        assert_eq!(
            slots(&tables, "0.0.0.0:30080", LB_SCOPE_EXTERNAL),
            ["10.0.0.2:8080"]
        );
        assert_eq!(slots(&tables, "0.0.0.0:30080", LB_SCOPE_INTERNAL).len(), 2);

        // The next run finds the maps as they are and writes nothing.
        let mut again = LbSync::adopt(FakeTables {
            ops: Vec::new(),
            ..tables.clone()
        })
        .unwrap();
        assert_eq!(again.apply(&fes, true), Changes::default());
        assert!(again.tables().ops.is_empty(), "{:?}", again.tables().ops);
        let ids_again: Vec<(Option<u32>, Option<u32>)> = fes
            .values()
            .flat_map(|f| {
                f.backends
                    .iter()
                    .map(|b| (again.rev_nat_index(&f.addr), again.backend_id(&b.addr)))
            })
            .collect();
        assert_eq!(ids, ids_again);
        // New ids continue after the adopted ones.
        let mut more = fes.clone();
        let extra = frontend("10.96.0.12:80", &["10.0.0.9:8080"], &[]);
        more.insert(extra.addr, extra);
        again.apply(&more, true);
        assert_eq!(again.rev_nat_index(&a("10.96.0.12:80")), Some(4));
        assert_eq!(again.backend_id(&a("10.0.0.9:8080")), Some(4));
    }

    #[test]
    fn leftovers_of_an_earlier_run_go_only_with_prune() {
        let mut t = FakeTables::default();
        let old = a("10.96.9.9:80");
        t.rev.insert(7, Lb4ReverseNat::new(old.ip, 80));
        t.rev
            .insert(9, Lb4ReverseNat::new(Ipv4Addr::new(1, 2, 3, 4), 1)); // orphan
        t.backends.insert(
            5,
            Lb4Backend::new(Ipv4Addr::new(10, 0, 0, 5), 80, IPPROTO_TCP, 0),
        );
        t.services.insert(
            key(old, 0, 0),
            Lb4Service {
                rev_nat_index: 7,
                count: 1,
                flags: SVC_F_CLUSTER_IP,
                ..Default::default()
            },
        );
        t.services.insert(
            key(old, 0, 1),
            Lb4Service {
                backend_id: 5,
                ..Default::default()
            },
        );
        // A slot with no slot 0 can never be used: removed at once.
        t.services.insert(
            key(a("10.96.9.8:80"), 0, 1),
            Lb4Service {
                backend_id: 5,
                ..Default::default()
            },
        );
        let mut sync = LbSync::adopt(t).unwrap();
        assert_eq!(sync.tables().services.len(), 2);
        let fe = frontend("10.96.0.10:80", &["10.0.0.1:8080"], &[]);
        sync.apply(&want(std::slice::from_ref(&fe)), false);
        assert_eq!(
            sync.rev_nat_index(&fe.addr),
            Some(10),
            "ids in use are not handed out"
        );
        assert!(sync.tables().services.contains_key(&key(old, 0, 0)));
        sync.apply(&want(&[fe]), true);
        let t = sync.tables();
        assert!(
            !t.services.contains_key(&key(old, 0, 0)) && !t.services.contains_key(&key(old, 0, 1))
        );
        assert_eq!(t.rev.keys().copied().collect::<Vec<_>>(), [10]);
        assert_eq!(t.backends.len(), 1);
    }

    #[test]
    fn a_scope_that_goes_away_is_removed_head_first() {
        let mut sync = LbSync::adopt(FakeTables::default()).unwrap();
        let mut np = frontend("0.0.0.0:30080", &["10.0.0.1:8080"], &[]);
        np.flags = SVC_F_NODEPORT | SVC_F_TWO_SCOPES;
        np.internal = Some(vec![a("10.0.0.1:8080")]);
        sync.apply(&want(&[np.clone()]), true);
        let f = np.addr;
        assert!(sync
            .tables()
            .services
            .contains_key(&key(f, LB_SCOPE_INTERNAL, 1)));
        np.flags = SVC_F_NODEPORT;
        np.internal = None;
        let start = sync.tables().ops.len();
        sync.apply(&want(&[np]), true);
        let t = sync.tables();
        assert_eq!(t.services[&key(f, 0, 0)].flags, SVC_F_NODEPORT);
        assert_eq!(
            t.ops[start..],
            [
                Op::PutService(key(f, 0, 0)),
                Op::RemoveService(key(f, LB_SCOPE_INTERNAL, 0)),
                Op::RemoveService(key(f, LB_SCOPE_INTERNAL, 1)),
            ]
        );
    }
}
