//! Builds on the host what the guest runs: the workspace's binaries (the
//! lab suites start them) and each suite's test executable, found in
//! cargo's JSON messages. Nothing is compiled inside the slow guest.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::kernel::missing_tool;

/// A test executable ready to run in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltSuite {
    /// `PACKAGE:TARGET`.
    pub name: String,
    /// The package's directory: the cwd and CARGO_MANIFEST_DIR of its tests.
    pub crate_dir: PathBuf,
    pub executable: PathBuf,
}

fn cargo(workspace: &Path) -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace);
    c
}

/// A suite's test target, known to exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub package: String,
    pub target: String,
    pub crate_dir: PathBuf,
}

/// Checks every suite names an existing test target (before anything
/// slow happens) and finds its crate's directory.
pub fn resolve(workspace: &Path, suites: &[(String, String)]) -> Result<Vec<Target>> {
    let metadata = cargo(workspace)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| missing_tool("cargo", &e))?;
    if !metadata.status.success() {
        bail!("cargo metadata failed in {}", workspace.display());
    }
    let metadata: Value =
        serde_json::from_slice(&metadata.stdout).context("parsing cargo metadata's output")?;
    suites
        .iter()
        .map(|(package, target)| {
            Ok(Target {
                package: package.clone(),
                target: target.clone(),
                crate_dir: check_target(&metadata, package, target)?,
            })
        })
        .collect()
}

/// Builds the binaries and the suites' test executables.
pub fn build(workspace: &Path, targets: &[Target]) -> Result<Vec<BuiltSuite>> {
    eprintln!("==> cargo build --workspace --bins");
    let st = cargo(workspace)
        .args(["build", "--workspace", "--bins"])
        .status()
        .map_err(|e| missing_tool("cargo", &e))?;
    if !st.success() {
        bail!("cargo build --workspace --bins failed ({st})");
    }

    let mut built = Vec::new();
    for Target {
        package,
        target,
        crate_dir,
    } in targets
    {
        eprintln!("==> cargo test --no-run -p {package} --test {target}");
        let out = cargo(workspace)
            .args([
                "test",
                "--no-run",
                "--message-format=json-render-diagnostics",
            ])
            .args(["-p", package, "--test", target])
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| missing_tool("cargo", &e))?;
        if !out.status.success() {
            bail!(
                "building test target {target} of {package} failed ({})",
                out.status
            );
        }
        let executable = test_executable(&String::from_utf8_lossy(&out.stdout), target)
            .with_context(|| format!("cargo built no test executable for {package}:{target}"))?;
        built.push(BuiltSuite {
            name: format!("{package}:{target}"),
            crate_dir: crate_dir.clone(),
            executable,
        });
    }
    Ok(built)
}

/// The directory of `package`, after checking it has a test target
/// `target`; the error lists what it has instead.
pub fn check_target(metadata: &Value, package: &str, target: &str) -> Result<PathBuf> {
    let packages = metadata["packages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let name = |v: &Value| v["name"].as_str().unwrap_or_default().to_string();
    let Some(pkg) = packages.iter().find(|p| p["name"] == package) else {
        bail!(
            "VM suite {package}:{target}: the workspace has no package {package} (it has: {})",
            packages.iter().map(name).collect::<Vec<_>>().join(", ")
        );
    };
    let tests: Vec<String> = pkg["targets"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "test"))
        })
        .map(name)
        .collect();
    if !tests.iter().any(|t| t == target) {
        bail!(
            "VM suite {package}:{target}: package {package} has no test target {target} \
             (its test targets: {}); a VM suite is tests/{target}.rs declared in the \
             package's Cargo.toml as [[test]] name = \"{target}\" test = false",
            tests.join(", ")
        );
    }
    let manifest = pkg["manifest_path"].as_str().unwrap_or_default();
    Path::new(manifest)
        .parent()
        .map(Path::to_path_buf)
        .with_context(|| format!("cargo metadata gave package {package} no manifest path"))
}

/// The executable of test target `target` in `cargo test --no-run
/// --message-format=json` output.
pub fn test_executable(json_lines: &str, target: &str) -> Option<PathBuf> {
    json_lines
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| m["target"]["name"] == target && m["profile"]["test"] == true)
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "test"))
        })
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/crates/datapath#ciliate-datapath@0.1.0","manifest_path":"/w/crates/datapath/Cargo.toml","target":{"kind":["lib"],"crate_types":["lib"],"name":"ciliate_datapath","src_path":"/w/crates/datapath/src/lib.rs","edition":"2021","doc":true,"doctest":true,"test":true},"profile":{"opt_level":"0","debuginfo":1,"debug_assertions":true,"overflow_checks":true,"test":false},"features":[],"filenames":["/w/target/debug/deps/libciliate_datapath-1.rlib"],"executable":null,"fresh":true}
{"reason":"compiler-artifact","package_id":"path+file:///w/crates/lab#ciliate-lab@0.1.0","manifest_path":"/w/crates/lab/Cargo.toml","target":{"kind":["bin"],"crate_types":["bin"],"name":"programs","src_path":"/w/crates/lab/src/main.rs","edition":"2021","doc":true,"doctest":false,"test":true},"profile":{"opt_level":"0","debuginfo":1,"debug_assertions":true,"overflow_checks":true,"test":false},"features":[],"filenames":["/w/target/debug/programs"],"executable":"/w/target/debug/programs","fresh":true}
{"reason":"compiler-artifact","package_id":"path+file:///w/crates/datapath#ciliate-datapath@0.1.0","manifest_path":"/w/crates/datapath/Cargo.toml","target":{"kind":["test"],"crate_types":["bin"],"name":"programs","src_path":"/w/crates/datapath/tests/programs.rs","edition":"2021","doc":false,"doctest":false,"test":true},"profile":{"opt_level":"0","debuginfo":1,"debug_assertions":true,"overflow_checks":true,"test":true},"features":[],"filenames":["/w/target/debug/deps/programs-0e3b"],"executable":"/w/target/debug/deps/programs-0e3b","fresh":false}
{"reason":"build-finished","success":true}
"#;

    #[test]
    fn finds_the_test_executable_not_a_same_named_bin() {
        assert_eq!(
            test_executable(OUTPUT, "programs"),
            Some(PathBuf::from("/w/target/debug/deps/programs-0e3b"))
        );
        assert_eq!(test_executable(OUTPUT, "vm_smoke"), None);
        assert_eq!(test_executable("not json\n", "programs"), None);
    }

    fn metadata() -> Value {
        serde_json::json!({"packages": [
            {"name": "ciliate-lab", "manifest_path": "/w/crates/lab/Cargo.toml", "targets": [
                {"name": "ciliate_lab", "kind": ["lib"]},
                {"name": "lab", "kind": ["test"]},
                {"name": "vm_smoke", "kind": ["test"]}]},
            {"name": "xtask", "manifest_path": "/w/xtask/Cargo.toml", "targets": []}
        ]})
    }

    #[test]
    fn a_listed_target_resolves_to_its_crate_dir() {
        let dir = check_target(&metadata(), "ciliate-lab", "vm_smoke").unwrap();
        assert_eq!(dir, Path::new("/w/crates/lab"));
    }

    #[test]
    fn a_missing_target_or_package_is_named_with_what_exists() {
        let err = check_target(&metadata(), "ciliate-lab", "vm_modes")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no test target vm_modes") && err.contains("lab, vm_smoke"),
            "{err}"
        );
        assert!(err.contains("test = false"), "{err}");
        let err = check_target(&metadata(), "ciliate-cni", "vm_x")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no package ciliate-cni") && err.contains("ciliate-lab, xtask"),
            "{err}"
        );
        // A library target of that name is not a test target.
        let err = check_target(&metadata(), "ciliate-lab", "ciliate_lab")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no test target ciliate_lab"), "{err}");
    }
}
