//! Synchronous rtnetlink: links, addresses, routes. One socket per namespace.
//!
//! A [`Netlink`] handle owns one `NETLINK_ROUTE` socket. The kernel ties a
//! netlink socket to the network namespace of the thread that *creates* it,
//! for the socket's whole life. So create the handle inside the namespace you
//! want to work on: within [`crate::netns::run_in`], while a
//! [`crate::netns::enter`] guard is alive, or with [`Netlink::new_in`], which
//! enters, opens the socket and returns to where it was. The handle then keeps
//! talking to that namespace from whatever thread uses it.
//!
//! Every call sends one request and blocks until the kernel answers; there is
//! no async runtime here, so the CNI plugin can use it.
//!
//! Errors name the operation and the device ("adding address 10.0.0.5/32 to
//! eth0") and carry the kernel's errno as their [`std::error::Error::source`];
//! print the whole chain (`{:#}` with anyhow) to see both.

use std::cell::Cell;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NlaBuffer, NlasIterator, NLM_F_ACK,
    NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric,
    RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::netns::{self, NetnsError};

/// The main routing table (`RT_TABLE_MAIN`).
pub const MAIN_TABLE: u32 = 254;

const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening a netlink route socket")]
    Socket(#[source] io::Error),
    #[error("opening a netlink route socket in {}", path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: NetnsError,
    },
    /// The kernel refused a request, or the socket failed while sending it.
    #[error("{operation}{}", extack.as_ref().map(|m| format!(" (kernel: {m})")).unwrap_or_default())]
    Kernel {
        /// What was being done, device included: "adding address 10.0.0.5/32 to eth0".
        operation: String,
        /// The device the request was about, when there is one.
        device: Option<String>,
        /// The kernel's extended-ack message, when it gave one.
        extack: Option<String>,
        #[source]
        source: io::Error,
    },
    /// The kernel's answer could not be understood.
    #[error("{operation}: unexpected answer from the kernel: {detail}")]
    Protocol { operation: String, detail: String },
    #[error("invalid MAC address {value:?}: expected six hex pairs like aa:bb:cc:dd:ee:ff")]
    InvalidMac { value: String },
}

impl NetlinkError {
    /// The kernel's errno, if the kernel or the socket gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { source, .. } | Self::Socket(source) => source.raw_os_error(),
            _ => None,
        }
    }

    /// The object being created exists already (`EEXIST`).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// The object (device, address, route) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENODEV | libc::ESRCH | libc::ENOENT | libc::EADDRNOTAVAIL)
        )
    }

    /// The device the failed request was about, if any.
    pub fn device(&self) -> Option<&str> {
        match self {
            Self::Kernel { device, .. } => device.as_deref(),
            _ => None,
        }
    }
}

pub type Result<T, E = NetlinkError> = std::result::Result<T, E>;

/// A network device as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Hardware address, for Ethernet-like devices.
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Carrier up (`IFF_LOWER_UP`).
    pub lower_up: bool,
    /// Operationally up (`IFF_RUNNING`). The kernel sets it from its
    /// deferred link-watch work, which is also when it gives the device a real
    /// queue: until then the device drops what is sent through it, carrier or not.
    pub running: bool,
    /// `veth`, `bridge`, `vxlan` ...; `None` for devices without a driver kind (`lo`, physical NICs).
    pub kind: Option<String>,
    /// `IFLA_LINK`: for a veth, the peer's index (in the peer's namespace).
    pub link: Option<u32>,
}

/// An IPv4 route in the main table.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    pub dst: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    /// Output device index.
    pub oif: Option<u32>,
    /// `scope link` (directly reachable on `oif`) instead of `scope global`.
    pub scope_link: bool,
    /// Preferred source address (`src`).
    pub src: Option<Ipv4Addr>,
    /// `onlink`: the gateway is on the link even without a route to it.
    pub onlink: bool,
    /// `mtu`: path MTU for this destination (the pod MTU on overlay routes).
    pub mtu: Option<u32>,
}

impl Route {
    /// `dst dev oif scope link`.
    pub fn link_scope(dst: Ipv4Net, oif: u32) -> Self {
        Self {
            dst,
            gateway: None,
            oif: Some(oif),
            scope_link: true,
            src: None,
            onlink: false,
            mtu: None,
        }
    }

    /// `dst via gateway dev oif`.
    pub fn via(dst: Ipv4Net, gateway: Ipv4Addr, oif: u32) -> Self {
        Self {
            dst,
            gateway: Some(gateway),
            oif: Some(oif),
            scope_link: false,
            src: None,
            onlink: false,
            mtu: None,
        }
    }
}

impl std::fmt::Display for Route {
    /// In `ip route` syntax, the device by index (`dev #3`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.write(f, self.oif.map(|i| format!("#{i}")).as_deref())
    }
}

impl Route {
    fn write(&self, f: &mut impl std::fmt::Write, device: Option<&str>) -> std::fmt::Result {
        if self.dst.prefix_len() == 0 {
            f.write_str("default")?;
        } else {
            write!(f, "{}", self.dst)?;
        }
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(dev) = device {
            write!(f, " dev {dev}")?;
        }
        if self.scope_link {
            f.write_str(" scope link")?;
        }
        if let Some(src) = self.src {
            write!(f, " src {src}")?;
        }
        if self.onlink {
            f.write_str(" onlink")?;
        }
        if let Some(mtu) = self.mtu {
            write!(f, " mtu {mtu}")?;
        }
        Ok(())
    }
}

/// `aa:bb:cc:dd:ee:ff`, lower case.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (either case; `-` also accepted as separator).
pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let invalid = || NetlinkError::InvalidMac {
        value: text.to_string(),
    };
    let mut mac = [0u8; 6];
    let mut parts = text.split([':', '-']);
    for byte in &mut mac {
        let part = parts.next().ok_or_else(invalid)?;
        if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
    }
    if parts.next().is_some() {
        return Err(invalid());
    }
    Ok(mac)
}

/// What went wrong under a request, before it is given its context.
enum Failure {
    Errno {
        source: io::Error,
        extack: Option<String>,
    },
    Protocol(String),
}

/// One rtnetlink socket in the namespace that was current when it was made.
///
/// `Send` but not `Sync`: requests and answers on one socket must not
/// interleave, so share it between threads behind a lock, or open one per thread.
pub struct Netlink {
    socket: Socket,
    seq: Cell<u32>,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink")
            .field("fd", &self.socket.as_raw_fd())
            .finish_non_exhaustive()
    }
}

impl Netlink {
    /// Opens a socket in the calling thread's current network namespace.
    pub fn new() -> Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        socket.bind_auto().map_err(NetlinkError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Socket)?;
        // Best effort: a kernel without them still answers, just less helpfully.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Self {
            socket,
            seq: Cell::new(1),
        })
    }

    /// Opens a socket in the namespace at `path` (`/run/netns/NAME`,
    /// `/proc/PID/ns/net`); the calling thread is back where it was on return.
    pub fn new_in(path: &Path) -> Result<Self> {
        let netns_err = |source| NetlinkError::Netns {
            path: path.to_owned(),
            source,
        };
        let guard = netns::enter(path).map_err(netns_err)?;
        let made = Self::new();
        guard.restore().map_err(netns_err)?;
        made
    }

    // ---- links -------------------------------------------------------------

    /// The device called `name`, or `None`.
    pub fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(msg, || {
            (format!("looking up device {name}"), Some(name.to_string()))
        })
    }

    /// The device with index `index`, or `None`.
    pub fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link(msg, || (format!("looking up device index {index}"), None))
    }

    fn get_link(
        &self,
        msg: LinkMessage,
        what: impl Fn() -> (String, Option<String>),
    ) -> Result<Option<Link>> {
        match self.request(RouteNetlinkMessage::GetLink(msg), NLM_F_ACK) {
            Ok(answers) => Ok(answers.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(parse_link(&link)),
                _ => None,
            })),
            Err(Failure::Errno { source, .. }) if source.raw_os_error() == Some(libc::ENODEV) => {
                Ok(None)
            }
            Err(failure) => {
                let (operation, device) = what();
                Err(wrap(failure, operation, device))
            }
        }
    }

    /// Every device in the namespace.
    pub fn links(&self) -> Result<Vec<Link>> {
        let answers = self
            .request(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            )
            .map_err(|f| wrap(f, "listing devices".into(), None))?;
        Ok(answers
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(parse_link(link)),
                _ => None,
            })
            .collect())
    }

    /// Creates a veth pair with both ends in this namespace, both down.
    /// Returns the `name` end.
    pub fn create_veth(&self, name: &str, peer_name: &str, mtu: Option<u32>) -> Result<Link> {
        self.add_veth(name, peer_name, mtu, None)
    }

    /// Creates a veth pair whose `peer_name` end is born in the namespace
    /// `peer_netns` (an open namespace file), so it never appears here.
    /// Returns the `name` end, which stays in this namespace. Both are down.
    pub fn create_veth_with_peer_in(
        &self,
        name: &str,
        peer_name: &str,
        mtu: Option<u32>,
        peer_netns: BorrowedFd<'_>,
    ) -> Result<Link> {
        self.add_veth(name, peer_name, mtu, Some(peer_netns))
    }

    fn add_veth(
        &self,
        name: &str,
        peer_name: &str,
        mtu: Option<u32>,
        peer_netns: Option<BorrowedFd<'_>>,
    ) -> Result<Link> {
        let operation = || {
            let place = if peer_netns.is_some() {
                " in another namespace"
            } else {
                ""
            };
            format!("creating veth pair {name} / {peer_name}{place}")
        };
        let (mut msg, peer) = pair_messages(name, peer_name, mtu, peer_netns);
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.new_link(msg, name, &operation())
    }

    /// Sends a link creation (never replacing an existing device) and returns
    /// the device as the kernel then reports it.
    fn new_link(&self, msg: LinkMessage, name: &str, operation: &str) -> Result<Link> {
        self.request(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(|f| wrap(f, operation.to_string(), Some(name.to_string())))?;
        self.link_by_name(name)?
            .ok_or_else(|| NetlinkError::Protocol {
                operation: operation.to_string(),
                detail: format!("{name} does not exist right after it was created"),
            })
    }

    /// Creates an external (collect_md) VXLAN device on UDP `port`: one device
    /// for all remote nodes, whose tunnel endpoint each packet's metadata
    /// (set by BPF) chooses. Down on return.
    pub fn create_vxlan_external(&self, name: &str, port: u16, mtu: Option<u32>) -> Result<Link> {
        use netlink_packet_route::link::InfoVxlan;
        let operation = || format!("creating external vxlan device {name} on UDP port {port}");
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::CollectMetadata(true),
                InfoVxlan::Port(port),
                InfoVxlan::Learning(false),
            ])),
        ]));
        self.new_link(msg, name, &operation())
    }

    /// Creates an external (collect_md) Geneve device on UDP `port`: the
    /// datapath sets each packet's remote and VNI with the tunnel key.
    pub fn create_geneve_external(&self, name: &str, port: u16, mtu: Option<u32>) -> Result<Link> {
        use netlink_packet_route::link::InfoGeneve;
        let operation = || format!("creating external geneve device {name} on UDP port {port}");
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Geneve),
            LinkInfo::Data(InfoData::Geneve(vec![
                InfoGeneve::CollectMetadata,
                InfoGeneve::Port(port),
            ])),
        ]));
        self.new_link(msg, name, &operation())
    }

    /// Creates an ipvlan device in L3 mode on top of `master` (an ifindex in
    /// this namespace). It starts here, down; move it where it belongs.
    pub fn create_ipvlan_l3(&self, name: &str, master: u32, mtu: Option<u32>) -> Result<Link> {
        use netlink_packet_route::link::{InfoIpVlan, IpVlanMode};
        let operation = || format!("creating ipvlan L3 device {name} on ifindex {master}");
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::Link(master));
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::IpVlan),
            LinkInfo::Data(InfoData::IpVlan(vec![InfoIpVlan::Mode(IpVlanMode::L3)])),
        ]));
        self.new_link(msg, name, &operation())
    }

    /// Creates an L2 netkit pair: `name` is the primary and stays here,
    /// `peer_name` is born in `peer_netns` when given. Until a program is
    /// attached as its policy, what the peer sends is dropped (blackhole),
    /// so a pod never talks unfiltered; the primary's default is pass.
    pub fn create_netkit_pair(
        &self,
        name: &str,
        peer_name: &str,
        mtu: Option<u32>,
        peer_netns: Option<BorrowedFd<'_>>,
    ) -> Result<Link> {
        use netlink_packet_route::link::{InfoNetkit, NetkitMode, NetkitPolicy};
        let operation = || format!("creating netkit pair {name} / {peer_name}");
        let (mut msg, peer) = pair_messages(name, peer_name, mtu, peer_netns);
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Netkit),
            LinkInfo::Data(InfoData::Netkit(vec![
                InfoNetkit::Mode(NetkitMode::L2),
                InfoNetkit::Policy(NetkitPolicy::Pass),
                InfoNetkit::PeerPolicy(NetkitPolicy::Drop),
                InfoNetkit::Peer(peer),
            ])),
        ]));
        self.new_link(msg, name, &operation())
    }

    /// Moves a device into the namespace `netns` (an open namespace file).
    /// Moving takes it down; its index may change over there.
    pub fn set_netns(&self, index: u32, netns: BorrowedFd<'_>) -> Result<()> {
        self.set_link(
            index,
            |m| m.attributes.push(LinkAttribute::NetNsFd(netns.as_raw_fd())),
            |dev| format!("moving {dev} to another network namespace"),
        )
    }

    /// Renames a device (the kernel refuses while it is up).
    pub fn set_name(&self, index: u32, name: &str) -> Result<()> {
        self.set_link(
            index,
            |m| m.attributes.push(LinkAttribute::IfName(name.to_string())),
            |dev| format!("renaming {dev} to {name}"),
        )
    }

    pub fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.set_link(
            index,
            |m| m.attributes.push(LinkAttribute::Mtu(mtu)),
            |dev| format!("setting MTU {mtu} on {dev}"),
        )
    }

    pub fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<()> {
        self.set_link(
            index,
            |m| m.attributes.push(LinkAttribute::Address(mac.to_vec())),
            |dev| format!("setting MAC {} on {dev}", format_mac(mac)),
        )
    }

    pub fn set_up(&self, index: u32) -> Result<()> {
        self.set_link(
            index,
            |m| {
                m.header.flags = LinkFlags::Up;
                m.header.change_mask = LinkFlags::Up;
            },
            |dev| format!("setting {dev} up"),
        )
    }

    /// Turns ARP on or off (`ip link set DEV arp on|off`). Without ARP the kernel
    /// addresses frames to the device's own MAC and never asks a neighbour.
    pub fn set_arp(&self, index: u32, enabled: bool) -> Result<()> {
        self.set_link(
            index,
            |m| {
                m.header.flags = if enabled {
                    LinkFlags::empty()
                } else {
                    LinkFlags::Noarp
                };
                m.header.change_mask = LinkFlags::Noarp;
            },
            |dev| {
                format!(
                    "setting arp {} on {dev}",
                    if enabled { "on" } else { "off" }
                )
            },
        )
    }

    pub fn set_down(&self, index: u32) -> Result<()> {
        self.set_link(
            index,
            |m| {
                m.header.flags = LinkFlags::empty();
                m.header.change_mask = LinkFlags::Up;
            },
            |dev| format!("setting {dev} down"),
        )
    }

    fn set_link(
        &self,
        index: u32,
        fill: impl FnOnce(&mut LinkMessage),
        what: impl FnOnce(&str) -> String,
    ) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        fill(&mut msg);
        self.request(RouteNetlinkMessage::SetLink(msg), NLM_F_ACK)
            .map(drop)
            .map_err(|f| self.wrap_index(f, index, what))
    }

    /// Deletes a device (a veth takes its peer with it).
    pub fn del_link(&self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(msg), NLM_F_ACK)
            .map(drop)
            .map_err(|f| self.wrap_index(f, index, |dev| format!("deleting {dev}")))
    }

    /// Deletes the device called `name`; `false` if there was none.
    pub fn del_link_by_name(&self, name: &str) -> Result<bool> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::DelLink(msg), NLM_F_ACK) {
            Ok(_) => Ok(true),
            Err(Failure::Errno { source, .. }) if source.raw_os_error() == Some(libc::ENODEV) => {
                Ok(false)
            }
            Err(f) => Err(wrap(f, format!("deleting {name}"), Some(name.to_string()))),
        }
    }

    // ---- addresses ---------------------------------------------------------

    /// Adds `ip/prefix_len`; fails with [`NetlinkError::is_exists`] if present.
    pub fn add_address(&self, index: u32, ip: Ipv4Addr, prefix_len: u8) -> Result<()> {
        self.request(
            RouteNetlinkMessage::NewAddress(address_message(index, ip, prefix_len)),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
        .map_err(|f| {
            self.wrap_index(f, index, |dev| {
                format!("adding address {ip}/{prefix_len} to {dev}")
            })
        })
    }

    /// Adds `ip/prefix_len` unless the device has it already; `true` if it was added.
    pub fn ensure_address(&self, index: u32, ip: Ipv4Addr, prefix_len: u8) -> Result<bool> {
        match self.add_address(index, ip, prefix_len) {
            Ok(()) => Ok(true),
            Err(e) if e.is_exists() && self.addresses(index)?.contains(&(ip, prefix_len)) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    pub fn del_address(&self, index: u32, ip: Ipv4Addr, prefix_len: u8) -> Result<()> {
        self.request(
            RouteNetlinkMessage::DelAddress(address_message(index, ip, prefix_len)),
            NLM_F_ACK,
        )
        .map(drop)
        .map_err(|f| {
            self.wrap_index(f, index, |dev| {
                format!("removing address {ip}/{prefix_len} from {dev}")
            })
        })
    }

    /// The IPv4 addresses of a device, with prefix lengths.
    pub fn addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        let mut query = AddressMessage::default();
        query.header.family = AddressFamily::Inet;
        let answers = self
            .request(RouteNetlinkMessage::GetAddress(query), NLM_F_DUMP)
            .map_err(|f| self.wrap_index(f, index, |dev| format!("listing addresses of {dev}")))?;
        Ok(answers
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    let ip = a.attributes.iter().find_map(|attr| match attr {
                        AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                        _ => None,
                    });
                    let ip = ip.or_else(|| {
                        a.attributes.iter().find_map(|attr| match attr {
                            AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                            _ => None,
                        })
                    });
                    ip.map(|ip| (ip, a.header.prefix_len))
                }
                _ => None,
            })
            .collect())
    }

    // ---- routes ------------------------------------------------------------

    /// Adds a route to the main table; [`NetlinkError::is_exists`] if there is one for `dst`.
    pub fn add_route(&self, route: &Route) -> Result<()> {
        self.request(
            RouteNetlinkMessage::NewRoute(route_message(route, false)),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
        .map_err(|f| self.wrap_route(f, "adding", route))
    }

    /// Adds the route, or replaces the one with the same destination.
    pub fn replace_route(&self, route: &Route) -> Result<()> {
        self.request(
            RouteNetlinkMessage::NewRoute(route_message(route, false)),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
        .map_err(|f| self.wrap_route(f, "replacing", route))
    }

    /// Deletes the route matching `dst` and, where given, gateway, device and source.
    pub fn del_route(&self, route: &Route) -> Result<()> {
        self.request(
            RouteNetlinkMessage::DelRoute(route_message(route, true)),
            NLM_F_ACK,
        )
        .map(drop)
        .map_err(|f| self.wrap_route(f, "deleting", route))
    }

    /// The IPv4 unicast routes of the main table.
    pub fn routes(&self) -> Result<Vec<Route>> {
        let mut query = RouteMessage::default();
        query.header.address_family = AddressFamily::Inet;
        let answers = self
            .request(RouteNetlinkMessage::GetRoute(query), NLM_F_DUMP)
            .map_err(|f| wrap(f, "listing routes".into(), None))?;
        Ok(answers
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => parse_route(r),
                _ => None,
            })
            .collect())
    }

    // ---- plumbing ----------------------------------------------------------

    fn wrap_route(&self, failure: Failure, verb: &str, route: &Route) -> NetlinkError {
        let device = route.oif.map(|i| self.describe_index(i));
        let mut text = format!("{verb} route ");
        let _ = route.write(&mut text, device.as_deref());
        wrap(failure, text, device)
    }

    fn wrap_index(
        &self,
        failure: Failure,
        index: u32,
        what: impl FnOnce(&str) -> String,
    ) -> NetlinkError {
        let device = self.describe_index(index);
        wrap(failure, what(&device), Some(device))
    }

    /// A device's name for error messages, or `index N` when it cannot be found.
    fn describe_index(&self, index: u32) -> String {
        match self.link_by_index(index) {
            Ok(Some(link)) => link.name,
            _ => format!("device index {index}"),
        }
    }

    fn next_seq(&self) -> u32 {
        let seq = self.seq.get();
        self.seq.set(seq.wrapping_add(1).max(1));
        seq
    }

    /// Sends one request and collects the answers: for a dump, every message
    /// up to `NLMSG_DONE`; otherwise any reply and then the ACK.
    fn request(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, Failure> {
        let seq = self.next_seq();
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(|source| Failure::Errno {
            source,
            extack: None,
        })?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut answers = Vec::new();
        loop {
            let (data, _) = self
                .socket
                .recv_from_full()
                .map_err(|source| Failure::Errno {
                    source,
                    extack: None,
                })?;
            let mut offset = 0;
            while offset < data.len() {
                let bytes = &data[offset..];
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                    .map_err(|e| Failure::Protocol(format!("{e}")))?;
                let len = reply.header.length as usize;
                if len < 16 {
                    return Err(Failure::Protocol(format!("message of length {len}")));
                }
                offset += (len + 3) & !3;
                if reply.header.sequence_number != seq {
                    continue; // an answer to an earlier, abandoned request
                }
                match reply.payload {
                    NetlinkPayload::Done(done) => {
                        if done.code != 0 {
                            let extack = parse_tlv_message(&done.extended_ack);
                            return Err(Failure::Errno {
                                source: io::Error::from_raw_os_error(done.code.abs()),
                                extack,
                            });
                        }
                        return Ok(answers);
                    }
                    NetlinkPayload::Error(error) => match error.code {
                        None if !dump => return Ok(answers),
                        None => {}
                        Some(code) => {
                            return Err(Failure::Errno {
                                source: io::Error::from_raw_os_error(code.get().abs()),
                                extack: extack_message(reply.header.flags, &error.header),
                            })
                        }
                    },
                    NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                    _ => {}
                }
            }
        }
    }

    // ---- netkit ------------------------------------------------------------

    /// The netkit settings of device `index`, or `None` if it is not a netkit device.
    pub fn netkit_info(&self, index: u32) -> Result<Option<NetkitInfo>> {
        use netlink_packet_route::link::{InfoNetkit, NetkitMode};
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        let answers = self
            .request(RouteNetlinkMessage::GetLink(msg), NLM_F_ACK)
            .map_err(|f| {
                self.wrap_index(f, index, |dev| format!("reading netkit settings of {dev}"))
            })?;
        let infos = answers.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(link) => link.attributes.iter().find_map(|a| match a {
                LinkAttribute::LinkInfo(infos) => Some(infos.clone()),
                _ => None,
            }),
            _ => None,
        });
        let Some(infos) = infos else { return Ok(None) };
        let data = infos.iter().find_map(|i| match i {
            LinkInfo::Data(InfoData::Netkit(data)) => Some(data),
            _ => None,
        });
        Ok(data.map(|data| {
            let mut info = NetkitInfo::default();
            for attr in data {
                match attr {
                    InfoNetkit::Mode(mode) => info.l2 = *mode == NetkitMode::L2,
                    InfoNetkit::Policy(p) => info.policy = Some(u32::from(*p)),
                    InfoNetkit::PeerPolicy(p) => info.peer_policy = Some(u32::from(*p)),
                    InfoNetkit::Primary(primary) => info.primary = *primary,
                    _ => {}
                }
            }
            info
        }))
    }
}

/// What the kernel reports of a netkit device (policies as `NETKIT_*`:
/// 0 forward, 2 blackhole).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetkitInfo {
    /// L2 mode (Ethernet) rather than L3.
    pub l2: bool,
    /// This device's default policy.
    pub policy: Option<u32>,
    /// The other end's default policy (reported while the pair is whole).
    pub peer_policy: Option<u32>,
    /// The device is the primary of its pair.
    pub primary: bool,
}

fn wrap(failure: Failure, operation: String, device: Option<String>) -> NetlinkError {
    match failure {
        Failure::Errno { source, extack } => NetlinkError::Kernel {
            operation,
            device,
            extack,
            source,
        },
        Failure::Protocol(detail) => NetlinkError::Protocol { operation, detail },
    }
}

/// The `NLMSGERR_ATTR_MSG` of an error answer: after the echoed request
/// (only its header when capped) come the extended-ack attributes.
fn extack_message(flags: u16, payload: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 || payload.len() < 16 {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        let len = u32::from_ne_bytes(payload[..4].try_into().ok()?) as usize;
        (len + 3) & !3
    };
    parse_tlv_message(payload.get(echoed..)?)
}

fn parse_tlv_message(tlvs: &[u8]) -> Option<String> {
    NlasIterator::new(tlvs).find_map(|nla: Result<NlaBuffer<&[u8]>, _>| {
        let nla = nla.ok()?;
        (nla.kind() == NLMSGERR_ATTR_MSG).then(|| {
            let value = nla.value();
            let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
            String::from_utf8_lossy(&value[..end]).into_owned()
        })
    })
}

fn parse_link(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        lower_up: msg.header.flags.contains(LinkFlags::LowerUp),
        running: msg.header.flags.contains(LinkFlags::Running),
        kind: None,
        link: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => link.name.clone_from(name),
            LinkAttribute::Address(mac) => link.mac = <[u8; 6]>::try_from(mac.as_slice()).ok(),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Link(peer) => link.link = Some(*peer),
            LinkAttribute::LinkInfo(infos) => {
                link.kind = infos.iter().find_map(|info| match info {
                    LinkInfo::Kind(kind) => Some(kind.to_string()),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    link
}

fn address_message(index: u32, ip: Ipv4Addr, prefix_len: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.prefix_len = prefix_len;
    msg.header.index = index;
    msg.header.scope = if ip.is_loopback() {
        AddressScope::Host
    } else {
        AddressScope::Universe
    };
    msg.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
    msg.attributes
        .push(AddressAttribute::Address(IpAddr::V4(ip)));
    msg
}

fn route_message(route: &Route, delete: bool) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.destination_prefix_length = route.dst.prefix_len();
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    if delete {
        // Match on what the caller gave; leave scope, type and protocol open.
        msg.header.scope = RouteScope::NoWhere;
    } else {
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.kind = RouteType::Unicast;
        msg.header.scope = if route.scope_link {
            RouteScope::Link
        } else {
            RouteScope::Universe
        };
        if route.onlink {
            msg.header.flags = RouteFlags::Onlink;
        }
    }
    if route.dst.prefix_len() > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(
                route.dst.network(),
            )));
    }
    if let Some(gw) = route.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
    }
    if let Some(oif) = route.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    if let Some(src) = route.src {
        msg.attributes
            .push(RouteAttribute::PrefSource(RouteAddress::Inet(src)));
    }
    if let Some(mtu) = route.mtu {
        msg.attributes
            .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
    }
    msg
}

fn parse_route(msg: &RouteMessage) -> Option<Route> {
    let header = &msg.header;
    if header.address_family != AddressFamily::Inet || header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(header.table);
    let mut route = Route {
        dst: Ipv4Net::new(Ipv4Addr::UNSPECIFIED, header.destination_prefix_length).ok()?,
        gateway: None,
        oif: None,
        scope_link: header.scope == RouteScope::Link,
        src: None,
        onlink: header.flags.contains(RouteFlags::Onlink),
        mtu: None,
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(dst)) => {
                route.dst = Ipv4Net::new(*dst, header.destination_prefix_length).ok()?;
            }
            RouteAttribute::Gateway(RouteAddress::Inet(gw)) => route.gateway = Some(*gw),
            RouteAttribute::Oif(oif) => route.oif = Some(*oif),
            RouteAttribute::PrefSource(RouteAddress::Inet(src)) => route.src = Some(*src),
            RouteAttribute::Metrics(metrics) => {
                route.mtu = metrics.iter().find_map(|m| match m {
                    RouteMetric::Mtu(mtu) => Some(*mtu),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    (table == MAIN_TABLE).then_some(route)
}

/// The two link messages of a device pair (veth, netkit): names, a shared
/// MTU, and the peer born in `peer_netns` when given. The caller adds the
/// kind and puts the peer into its info data.
fn pair_messages(
    name: &str,
    peer_name: &str,
    mtu: Option<u32>,
    peer_netns: Option<BorrowedFd<'_>>,
) -> (LinkMessage, LinkMessage) {
    let mut peer = LinkMessage::default();
    peer.attributes
        .push(LinkAttribute::IfName(peer_name.to_string()));
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    if let Some(mtu) = mtu {
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        peer.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(fd) = peer_netns {
        peer.attributes.push(LinkAttribute::NetNsFd(fd.as_raw_fd()));
    }
    (msg, peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let mac = [0x0a, 0xbc, 0x00, 0xff, 0x12, 0x9e];
        assert_eq!(format_mac(mac), "0a:bc:00:ff:12:9e");
        assert_eq!(parse_mac("0a:bc:00:ff:12:9e").unwrap(), mac);
        assert_eq!(parse_mac("0A-BC-00-FF-12-9E").unwrap(), mac);
        for bad in [
            "",
            "0a:bc:00:ff:12",
            "0a:bc:00:ff:12:9e:00",
            "0a:bc:00:ff:12:9",
            "zz:bc:00:ff:12:9e",
            "0a:bc:00:ff:12:+9",
        ] {
            let err = parse_mac(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn route_display() {
        let r = Route::via("0.0.0.0/0".parse().unwrap(), Ipv4Addr::new(10, 0, 0, 1), 3);
        assert_eq!(r.to_string(), "default via 10.0.0.1 dev #3");
        let r = Route::link_scope("10.0.0.1/32".parse().unwrap(), 3);
        assert_eq!(r.to_string(), "10.0.0.1/32 dev #3 scope link");
    }

    #[test]
    fn error_chain_reads_well() {
        let e = NetlinkError::Kernel {
            operation: "adding address 10.0.0.5/32 to eth0".into(),
            device: Some("eth0".into()),
            extack: None,
            source: io::Error::from_raw_os_error(libc::EEXIST),
        };
        assert!(e.is_exists());
        assert!(!e.is_not_found());
        assert_eq!(e.device(), Some("eth0"));
        let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
        assert_eq!(
            chain,
            "adding address 10.0.0.5/32 to eth0: File exists (os error 17)"
        );
    }

    #[test]
    fn extack_is_found_after_a_capped_header() {
        let mut payload = vec![0u8; 16];
        let text = b"Invalid prefix\0";
        let len = (4 + text.len()) as u16;
        payload.extend_from_slice(&len.to_ne_bytes());
        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(text);
        payload.resize((payload.len() + 3) & !3, 0);
        assert_eq!(
            extack_message(NLM_F_CAPPED | NLM_F_ACK_TLVS, &payload).as_deref(),
            Some("Invalid prefix")
        );
        assert_eq!(extack_message(NLM_F_CAPPED, &payload), None);
    }
}
