//! Conntrack and NAT garbage collection: the datapath refreshes an entry's
//! lifetime on every packet and never deletes; the LRU maps would evict the
//! oldest entries only when full. Every `conntrackGCInterval` the agent
//! deletes the entries whose lifetime has passed, so that a closed connection's
//! tuple (and its NAT port) is free again soon after its timeout.

use std::time::Duration;

use aya::maps::{HashMap, MapData, MapError};
use ciliate_datapath::loader::Maps;
use ciliate_datapath::maps::{Ct4Entry, Ct4Key, Nat4Entry};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::error::is_not_found;

/// Entries deleted by one sweep, per map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub ct_tcp: usize,
    pub ct_any: usize,
    pub snat: usize,
}

/// The maps a sweep walks.
pub struct GcMaps {
    pub ct4_tcp: HashMap<MapData, Ct4Key, Ct4Entry>,
    pub ct4_any: HashMap<MapData, Ct4Key, Ct4Entry>,
    pub snat4: HashMap<MapData, Ct4Key, Nat4Entry>,
}

impl GcMaps {
    pub fn from_maps(maps: Maps) -> Self {
        Self {
            ct4_tcp: maps.ct4_tcp,
            ct4_any: maps.ct4_any,
            snat4: maps.snat4,
        }
    }
}

/// Deletes the entries of `map` whose lifetime is before `now`. Keys are
/// collected first: deleting while iterating a hash map restarts the walk.
fn sweep_map<V: aya::Pod>(
    map: &mut HashMap<MapData, Ct4Key, V>,
    now: u32,
    lifetime: impl Fn(&V) -> u32,
) -> Result<usize, MapError> {
    let mut expired = Vec::new();
    for item in map.iter() {
        match item {
            Ok((key, value)) if lifetime(&value) < now => expired.push(key),
            Ok(_) => {}
            // The datapath (or the LRU) removed it between two steps.
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
    }
    let mut deleted = 0;
    for key in expired {
        // A packet may have renewed it since the walk: the window between
        // this read and the delete is all that is left of that race.
        match map.get(&key, 0) {
            Ok(value) if lifetime(&value) >= now => continue,
            Ok(_) => {}
            Err(e) if is_not_found(&e) => continue,
            Err(e) => return Err(e),
        }
        match map.remove(&key) {
            Ok(()) => deleted += 1,
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// One sweep at CLOCK_MONOTONIC second `now`.
pub fn sweep(maps: &mut GcMaps, now: u32) -> Result<Swept, MapError> {
    Ok(Swept {
        ct_tcp: sweep_map(&mut maps.ct4_tcp, now, |e| e.lifetime)?,
        ct_any: sweep_map(&mut maps.ct4_any, now, |e| e.lifetime)?,
        snat: sweep_map(&mut maps.snat4, now, |e| e.lifetime)?,
    })
}

/// Sweeps every `interval` until `stopping` turns true.
pub async fn run(mut maps: GcMaps, interval: Duration, mut stopping: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stopping.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let now = ciliate_datapath::maps::monotonic_seconds();
        match tokio::task::block_in_place(|| sweep(&mut maps, now)) {
            Ok(swept) => debug!(
                ct_tcp = swept.ct_tcp,
                ct_any = swept.ct_any,
                snat = swept.snat,
                "conntrack garbage collection"
            ),
            Err(e) => warn!(error = %e, "conntrack garbage collection failed"),
        }
    }
}
