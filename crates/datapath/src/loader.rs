//! Loading, pinning and re-adopting the BPF object.
