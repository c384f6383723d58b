//! Compiles the C datapath in `bpf/` with clang for the BPF target and generates
//! the Rust table of drop reasons and trace points from `ciliate_reasons.h`.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const OBJECTS: &[&str] = &["lxc", "overlay", "host", "ipvlan", "layout"];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let bpf = manifest
        .join("../../bpf")
        .canonicalize()
        .expect("bpf/ directory");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed={}", bpf.display());
    println!("cargo:rerun-if-env-changed=CLANG");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang-19".to_string());

    for name in OBJECTS {
        let src = bpf.join(format!("{name}.c"));
        let obj = out.join(format!("{name}.o"));
        let status = Command::new(&clang)
            .args([
                "-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror",
            ])
            .arg("-I")
            .arg(bpf.join("include"))
            .arg("-I")
            .arg(&bpf)
            .args(["-I", "/usr/include/x86_64-linux-gnu"])
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .status()
            .unwrap_or_else(|e| {
                panic!("running {clang} (install Debian's clang-19, or set CLANG): {e}")
            });
        assert!(
            status.success(),
            "{clang} failed to compile {}",
            src.display()
        );
    }

    let reasons = bpf.join("include/ciliate_reasons.h");
    std::fs::write(out.join("reasons.rs"), reasons_table(&reasons)).unwrap();
}

/// Turns `#define DROP_X 132 // Name` lines into Rust constants and lookup tables.
fn reasons_table(header: &Path) -> String {
    let text = std::fs::read_to_string(header).expect("reading ciliate_reasons.h");
    let mut consts = String::new();
    let mut drops = String::new();
    let mut traces = String::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("#define ") else {
            continue;
        };
        let Some((def, comment)) = rest.split_once("//") else {
            continue;
        };
        let mut parts = def.split_whitespace();
        let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(value) = value.parse::<u8>() else {
            continue;
        };
        let human = comment.trim();
        writeln!(consts, "pub const {name}: u8 = {value};").unwrap();
        let entry = format!("    ({value}, \"{name}\", \"{human}\"),\n");
        if name.starts_with("TRACE_") {
            traces.push_str(&entry);
        } else {
            drops.push_str(&entry);
        }
    }
    format!(
        "{consts}\n/// (code, C name, human name) of every drop reason, `REASON_FORWARDED` included.\n\
         pub const DROP_REASONS: &[(u8, &str, &str)] = &[\n{drops}];\n\
         /// (code, C name, human name) of every trace observation point.\n\
         pub const TRACE_POINTS: &[(u8, &str, &str)] = &[\n{traces}];\n"
    )
}
