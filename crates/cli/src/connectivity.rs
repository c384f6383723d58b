//! `ciliate connectivity test`: Cilium's connectivity check over a lab (see
//! `ciliate_lab::connectivity`).

use anyhow::Context;
use ciliate_lab::connectivity::{self, Options, SCENARIOS};
use ciliate_lab::Lab;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum ConnectivityCommand {
    /// Create test pods and services in namespace ciliate-test and check
    /// pod-to-pod (same and other node: ICMP, TCP, UDP, a full-size transfer),
    /// pod-to-host, host-to-pod, pod-to-remote-host, pod-to-service,
    /// pod-to-local-nodeport, pod-to-remote-nodeport, outside-to-nodeport (from
    /// the router through every node), pod-to-itself-via-service, pod-to-world
    /// and to-cidr (the router's networks, checking the source it saw against
    /// the masquerading config), cluster health and drop counters.
    /// Exit code 1 when a test fails; a test asked for with --test that
    /// cannot run fails too.
    Test(TestArgs),
}

#[derive(clap::Args)]
pub struct TestArgs {
    /// The lab to test.
    #[arg(long, default_value = ciliate_lab::names::DEFAULT_LAB, env = "CILIATE_LAB")]
    name: String,
    /// Run only the tests whose name contains this (repeatable). A test asked
    /// for this way that cannot run (pod-to-pod-other-node on one node) fails.
    #[arg(long = "test", value_name = "NAME", long_help = test_help())]
    tests: Vec<String>,
    /// Delete the test pods and services afterwards (by default they stay and a rerun reuses them).
    #[arg(long)]
    cleanup: bool,
    /// MiB sent (and echoed back) by the full-size TCP transfer (1 to 1024).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    transfer_mib: u16,
    /// Health checking is turned off on purpose: do not fail the health test for it.
    #[arg(long)]
    health_disabled: bool,
    /// Seconds the health test waits for every node to be reachable.
    #[arg(long, default_value_t = 60)]
    health_timeout: u64,
    /// Print every action, not only failed ones.
    #[arg(short, long)]
    verbose: bool,
    /// Seconds one request may take (curl's --max-time, the UDP echo's wait, ping's -W).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    request_timeout: u64,
    /// Times a failed action is tried again before the test fails (drops on
    /// the way still fail no-unexpected-drops).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=20))]
    retry: u32,
    /// Seconds between tries of a failed action.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=60))]
    retry_delay: u64,
}

fn test_help() -> String {
    format!(
        "Run only the tests whose name contains this (repeatable). A test asked for \
         this way that cannot run (pod-to-pod-other-node on a one-node lab) fails. Tests: {}",
        SCENARIOS.join(", ")
    )
}

pub fn run(cmd: ConnectivityCommand) -> anyhow::Result<i32> {
    let ConnectivityCommand::Test(args) = cmd;
    let mut lab = Lab::open(&args.name)?;
    let options = Options {
        tests: args.tests,
        cleanup: args.cleanup,
        transfer_bytes: usize::from(args.transfer_mib) << 20,
        expect_health: !args.health_disabled,
        health_timeout: std::time::Duration::from_secs(args.health_timeout),
        verbose: args.verbose,
        request_timeout: std::time::Duration::from_secs(args.request_timeout),
        retries: args.retry,
        retry_delay: std::time::Duration::from_secs(args.retry_delay),
    };
    let report = connectivity::run(&mut lab, &options, &mut std::io::stdout())
        .with_context(|| format!("testing connectivity in lab {}", args.name))?;
    Ok(i32::from(!report.passed()))
}
