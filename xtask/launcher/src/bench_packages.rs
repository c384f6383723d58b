/// The binaries the bench's labs run. `cargo xtask bench` builds them with
/// xtask in one cargo invocation, and xtask's own build before a lab asks
/// for exactly these again, so that cargo resolves the same features and
/// finds everything fresh. Both include this file.
pub const BENCH_PACKAGES: &[&str] = &["ciliate-agent", "ciliate-cni", "ciliate-operator"];
