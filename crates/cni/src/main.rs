//! `ciliate-cni`: the CNI plugin (spec 1.1) a container runtime runs for each
//! pod. ADD creates the pod's veth or, in `datapathMode: netkit`, netkit pair
//! (`lxc<hash>` on the host, `CNI_IFNAME` in the pod), gets its address from
//! the agent and registers the endpoint; DEL undoes that; CHECK, STATUS, GC
//! and VERSION as the spec describes.
//!
//! Synchronous on purpose: no async runtime. stdout carries only the result
//! or the spec's error object; the log goes to the configuration's `logFile`
//! or stderr.

mod cmd_add;
mod cmd_check;
mod cmd_del;
mod cmd_gc;
mod cmd_status;
mod conf;
mod error;
mod fault;
mod ipvlan;
mod log;
mod netkit;
mod result;
mod veth;

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use serde_json::Value;

use crate::conf::{Command, Env, NetConf};
use crate::error::{code, CniError, CniResult};

fn main() -> ExitCode {
    let started = std::time::Instant::now();
    let mut stdin = Vec::new();
    let read = if std::io::stdin().is_terminal() {
        Ok(0)
    } else {
        std::io::stdin().read_to_end(&mut stdin)
    };
    let env = Env::from_lookup(|k| std::env::var(k).ok());
    let version = answer_version(&stdin);
    let outcome = match read {
        Err(e) => Err(CniError::from_error(
            code::IO,
            "reading the network configuration from stdin",
            &e,
        )),
        Ok(_) => env.and_then(|env| dispatch(&env, &stdin, started)),
    };
    let mut stdout = std::io::stdout().lock();
    match outcome {
        Ok(output) => {
            if let Some(value) = output {
                let _ = writeln!(stdout, "{value}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            warn!("{e}");
            let _ = writeln!(stdout, "{}", e.to_json(&version));
            ExitCode::FAILURE
        }
    }
}

fn dispatch(env: &Env, stdin: &[u8], started: std::time::Instant) -> CniResult<Option<Value>> {
    let command = env.command();
    if command == Command::Version {
        return Ok(Some(result::version_info()));
    }
    let conf = NetConf::parse(stdin)?;
    if let Some(path) = &conf.log_file {
        log::to_file(path);
    }
    let mut prefix = vec![command.as_str().to_string()];
    if let Some(c) = &env.container_id {
        prefix.push(format!("container={c}"));
    }
    if let Some(i) = &env.ifname {
        prefix.push(format!("ifname={i}"));
    }
    log::set_prefix(format!("{}: ", prefix.join(" ")));
    info!(
        "network {} cniVersion {}{}",
        conf.name,
        conf.cni_version,
        env.args
            .pod()
            .map(|p| format!(" pod {p}"))
            .unwrap_or_default()
    );
    let out = match command {
        Command::Add => cmd_add::run(env, &conf).map(Some),
        Command::Del => cmd_del::run(env, &conf).map(|()| None),
        Command::Check => cmd_check::run(env, &conf).map(|()| None),
        Command::Gc => cmd_gc::run(&conf).map(|()| None),
        Command::Status => cmd_status::run(&conf).map(|()| None),
        Command::Version => unreachable!("answered above"),
    }?;
    // `done in N us` is what `cargo xtask bench control-plane` reads to time
    // the plugin as a runtime (containerd) runs it.
    info!("done in {} us", started.elapsed().as_micros());
    Ok(out)
}

/// The version error objects are shaped for: the configuration's, when stdin
/// has a supported one, else the latest.
fn answer_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|v| result::is_supported(v))
        .unwrap_or_else(|| result::LATEST_VERSION.to_string())
}
