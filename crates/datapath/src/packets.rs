//! Synthetic Ethernet/IPv4 frames for `BPF_PROG_TEST_RUN`: the datapath
//! tests build their packets with these, and so does the per-packet
//! benchmark (`cargo xtask bench per-packet`), so both run the same bytes.

/// An Ethernet frame around `payload`.
pub fn eth(dst: [u8; 6], src: [u8; 6], proto: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&dst);
    p.extend_from_slice(&src);
    p.extend_from_slice(&proto.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// The Internet checksum (RFC 1071) of `bytes`.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 header (no options, valid checksum) followed by `payload`.
pub fn ipv4(src: [u8; 4], dst: [u8; 4], ttl: u8, proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut h = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0x12,
        0x34,
        0x40,
        0,
        ttl,
        proto,
        0,
        0,
    ];
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// The one's complement sum the TCP/UDP checksum covers: pseudo header
/// (addresses, protocol, length) and the L4 bytes.
pub fn l4_checksum(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> u16 {
    let mut bytes = Vec::with_capacity(12 + l4.len());
    bytes.extend_from_slice(&src);
    bytes.extend_from_slice(&dst);
    bytes.push(0);
    bytes.push(proto);
    bytes.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    bytes.extend_from_slice(l4);
    checksum(&bytes)
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// An Ethernet/IPv4/TCP frame with valid checksums and a small payload.
pub fn tcp_frame(
    macs: ([u8; 6], [u8; 6]),
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    flags: u8,
) -> Vec<u8> {
    let mut t = vec![0; 20];
    t[0..2].copy_from_slice(&src.1.to_be_bytes());
    t[2..4].copy_from_slice(&dst.1.to_be_bytes());
    t[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    t[12] = 0x50;
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t.extend_from_slice(b"hello service");
    let c = l4_checksum(src.0, dst.0, 6, &t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    eth(macs.0, macs.1, 0x0800, &ipv4(src.0, dst.0, 64, 6, &t))
}
