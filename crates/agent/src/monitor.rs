//! Reads datapath events from the ring buffer, decodes them, and fans them out
//! to every `ciliate monitor` connected to the API.

use std::net::Ipv4Addr;

use ciliate_api::MonitorEvent;
use ciliate_datapath::maps::{TraceEvent, EVENT_DROP, METRIC_INGRESS};
use ciliate_datapath::reasons::{drop_reason_name, trace_point_name};
use tokio::io::unix::AsyncFd;
use tokio::sync::broadcast;
use tracing::{debug, warn};

/// Events buffered per slow listener before it starts missing some.
pub const LISTENER_BUFFER: usize = 4096;

pub fn decode(ev: &TraceEvent) -> MonitorEvent {
    let ip = |raw: u32| Ipv4Addr::from(raw.to_ne_bytes()).to_string();
    let l3 = match u16::from_be(ev.eth_proto) {
        0x0800 => "IPv4".to_string(),
        0x0806 => "ARP".to_string(),
        0x86dd => "IPv6".to_string(),
        other => format!("0x{other:04x}"),
    };
    let protocol = match ev.proto {
        1 => "ICMP".to_string(),
        6 => "TCP".to_string(),
        17 => "UDP".to_string(),
        other => other.to_string(),
    };
    let drop = ev.kind == EVENT_DROP;
    MonitorEvent {
        kind: if drop { "drop" } else { "trace" }.to_string(),
        code: ev.reason,
        reason: if drop {
            drop_reason_name(ev.reason)
        } else {
            trace_point_name(ev.reason)
        },
        direction: if ev.dir == METRIC_INGRESS {
            "ingress"
        } else {
            "egress"
        }
        .to_string(),
        ifindex: ev.ifindex,
        dst_ifindex: ev.dst_ifindex,
        src_endpoint: ev.src_ep,
        dst_endpoint: ev.dst_ep,
        l3,
        src: ip(ev.src_ip),
        dst: ip(ev.dst_ip),
        protocol,
        src_port: u16::from_be(ev.sport),
        dst_port: u16::from_be(ev.dport),
        length: ev.len,
        ktime_ns: ev.ktime_ns,
        nat: (ev.nat_addr != 0).then(|| match u16::from_be(ev.nat_port) {
            0 => ip(ev.nat_addr),
            port => format!("{}:{port}", ip(ev.nat_addr)),
        }),
    }
}

/// Drains the ring buffer forever, publishing every event. Drops are also
/// logged at debug level so that they show in the agent's log.
pub async fn run(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    tx: broadcast::Sender<MonitorEvent>,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its fd and moves into the AsyncFd, so the fd
    // stays open for as long as it is registered.
    let mut fd = unsafe { AsyncFd::register(ring) }
        .map_err(|e| std::io::Error::other(format!("registering the ring buffer: {e}")))?;
    loop {
        let mut guard = fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            let Some(ev) = TraceEvent::from_bytes(&item) else {
                warn!(len = item.len(), "short event in the ring buffer");
                continue;
            };
            let event = decode(&ev);
            if event.kind == "drop" {
                debug!(%event, "datapath drop");
            }
            // No listener is fine: the event is counted in the metrics map anyway.
            let _ = tx.send(event);
        }
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ciliate_datapath::maps::{EVENT_TRACE, METRIC_EGRESS};
    use ciliate_datapath::reasons::{DROP_INVALID_SIP, TRACE_TO_ENDPOINT};

    #[test]
    fn decodes_a_drop() {
        let ev = TraceEvent {
            kind: EVENT_DROP,
            reason: DROP_INVALID_SIP,
            dir: METRIC_EGRESS,
            proto: 6,
            ifindex: 7,
            src_ip: u32::from_ne_bytes([10, 0, 0, 9]),
            dst_ip: u32::from_ne_bytes([10, 0, 0, 2]),
            sport: 1234u16.to_be(),
            dport: 80u16.to_be(),
            eth_proto: 0x0800u16.to_be(),
            len: 60,
            ..TraceEvent::default()
        };
        let m = decode(&ev);
        assert_eq!(m.kind, "drop");
        assert_eq!(m.reason, "Invalid source ip");
        assert_eq!(m.src, "10.0.0.9");
        assert_eq!(m.dst_port, 80);
        assert_eq!(m.protocol, "TCP");
        let line = m.to_string();
        assert!(line.starts_with("xx drop (Invalid source ip)"), "{line}");
        assert!(line.contains("10.0.0.9:1234 -> 10.0.0.2:80 TCP"), "{line}");
    }

    #[test]
    fn decodes_a_trace() {
        let ev = TraceEvent {
            kind: EVENT_TRACE,
            reason: TRACE_TO_ENDPOINT,
            dir: METRIC_EGRESS,
            proto: 1,
            eth_proto: 0x0800u16.to_be(),
            ..TraceEvent::default()
        };
        let m = decode(&ev);
        assert_eq!(
            (m.kind.as_str(), m.reason.as_str(), m.protocol.as_str()),
            ("trace", "to-endpoint", "ICMP")
        );
    }
}
