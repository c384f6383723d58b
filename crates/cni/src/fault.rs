//! Test hooks: crash or pause the plugin at a named point, to prove that a
//! runtime's retry, GC and the agent's restart leave nothing behind. Off
//! unless `CILIATE_CNI_FAULTS` names a directory; a file there named after a
//! point says what to do when the plugin reaches it:
//! - `abort`: die at once, as if killed (no undo runs);
//! - `pause`: create `<point>.reached`, then wait until the point's file is
//!   removed (at most 60 s) and go on.
//!
//! Points: `add-after-allocate` (the agent allocated the address),
//! `add-after-device` (the pod's interface exists, no endpoint yet), `del`
//! (DEL starts).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::warn;

pub const ENV: &str = "CILIATE_CNI_FAULTS";
const PAUSE_LIMIT: Duration = Duration::from_mins(1);

pub fn at(point: &str) {
    let Some(dir) = std::env::var_os(ENV) else {
        return;
    };
    let file = Path::new(&dir).join(point);
    let Ok(action) = std::fs::read_to_string(&file) else {
        return;
    };
    match action.trim() {
        "abort" => {
            warn!("fault hook: aborting at {point}");
            std::process::abort();
        }
        "pause" => {
            warn!("fault hook: pausing at {point}");
            let _ = std::fs::write(Path::new(&dir).join(format!("{point}.reached")), b"");
            let deadline = Instant::now() + PAUSE_LIMIT;
            while file.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            warn!("fault hook: going on from {point}");
        }
        other => warn!("fault hook: unknown action {other:?} at {point}, ignored"),
    }
}
