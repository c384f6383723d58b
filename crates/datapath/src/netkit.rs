//! BPF programs as the policy of a netkit device pair, through `bpf(2)`.
//!
//! A netkit pair has no tc hooks of its own: each device runs the programs
//! attached to it when it *transmits*, and its verdict decides what becomes of
//! the packet (`NETKIT_PASS` = 0 hands it to the other device's namespace,
//! `NETKIT_DROP` = 2 drops it, `NETKIT_REDIRECT` = 7 performs the program's
//! `bpf_redirect*`: the same numbers as `TC_ACT_OK`, `TC_ACT_SHOT` and
//! `TC_ACT_REDIRECT`, so a tc classifier runs unchanged). Both attach points
//! are named by the primary device's ifindex:
//! - [`NetkitAttach::Peer`] (`BPF_NETKIT_PEER`): what the pod sends out of its
//!   end (the peer); the place of `from_container`.
//! - [`NetkitAttach::Primary`] (`BPF_NETKIT_PRIMARY`): what the node sends
//!   through the primary towards the pod; the datapath attaches nothing
//!   there (what the node sends to pods is `from_host`'s).
//!
//! aya 0.14 knows the netkit link type but cannot create one, so this module
//! makes the `BPF_LINK_CREATE` call itself, and pins, opens and updates links
//! the same way. A pinned link keeps the program attached after the process
//! exits, as the TCX links do; removing the pin (or deleting the device)
//! detaches it.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;

const BPF_NETKIT_PRIMARY: u32 = 54;
const BPF_NETKIT_PEER: u32 = 55;

/// `BPF_LINK_TYPE_NETKIT`, as `bpf_link_info.type` reports it.
pub const LINK_TYPE_NETKIT: u32 = 13;

/// Which end of a netkit pair a program polices (both named by the primary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetkitAttach {
    /// Runs on what the primary (in the node) transmits towards the peer.
    Primary,
    /// Runs on what the peer (in the pod) transmits towards the primary.
    Peer,
}

impl NetkitAttach {
    fn attach_type(self) -> u32 {
        match self {
            Self::Primary => BPF_NETKIT_PRIMARY,
            Self::Peer => BPF_NETKIT_PEER,
        }
    }

    fn from_attach_type(value: u32) -> Option<Self> {
        match value {
            BPF_NETKIT_PRIMARY => Some(Self::Primary),
            BPF_NETKIT_PEER => Some(Self::Peer),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Peer => "peer",
        }
    }
}

/// `bpf_attr.link_create` for netkit: the `netkit` member of its last union
/// (relative_fd, expected_revision) sits at offset 16, 8-byte aligned.
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    pad: u32,
    expected_revision: u64,
}

#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    pad: u32,
}

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_link_info` up to its union, whose `netkit` member is
/// (ifindex, attach_type); room for the larger members of the union.
#[repr(C)]
#[derive(Default)]
struct LinkInfoRaw {
    link_type: u32,
    id: u32,
    prog_id: u32,
    pad: u32,
    union: [u64; 8],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, fully initialised #[repr(C)] value of the
    // layout the kernel expects for `cmd`, and its size is passed with it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            std::mem::size_of::<T>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel just returned this descriptor to us; nobody else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Attaches `prog` (a loaded `sched_cls` program) to the netkit pair whose
/// primary device has `primary_ifindex` (in the calling thread's network
/// namespace), after any programs already there. Returns the link; dropping
/// it without pinning detaches the program again.
pub fn link_create(
    prog: BorrowedFd<'_>,
    primary_ifindex: u32,
    attach: NetkitAttach,
) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: primary_ifindex,
        attach_type: attach.attach_type(),
        flags: 0,
        relative_fd: 0,
        pad: 0,
        expected_revision: 0,
    };
    bpf(BPF_LINK_CREATE, &mut attr).map(owned)
}

/// Points an existing link at another program, atomically.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// Pins a BPF object (here: a link) at `path` on a bpffs.
pub fn pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let name = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: name.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
        path_fd: 0,
        pad: 0,
    };
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// Opens the BPF object pinned at `path`.
pub fn open_pinned(path: &Path) -> io::Result<OwnedFd> {
    let name = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: name.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        pad: 0,
    };
    bpf(BPF_OBJ_GET, &mut attr).map(owned)
}

/// What the kernel says about a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// `BPF_LINK_TYPE_*` ([`LINK_TYPE_NETKIT`] for ours).
    pub link_type: u32,
    pub id: u32,
    /// The attached program's id.
    pub prog_id: u32,
    /// For a netkit link: the ifindex of the device the program runs on (the
    /// primary's for [`NetkitAttach::Primary`], the peer's, in the pod's
    /// namespace, for [`NetkitAttach::Peer`]; 0 once the pair is gone) and the end.
    pub netkit: Option<(u32, Option<NetkitAttach>)>,
}

pub fn link_info(link: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    let mut raw = LinkInfoRaw::default();
    let mut attr = InfoAttr {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: std::mem::size_of::<LinkInfoRaw>() as u32,
        info: std::ptr::from_mut(&mut raw) as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let netkit = (raw.link_type == LINK_TYPE_NETKIT).then(|| {
        let ifindex = raw.union[0] as u32;
        let attach = (raw.union[0] >> 32) as u32;
        (ifindex, NetkitAttach::from_attach_type(attach))
    });
    Ok(LinkInfo {
        link_type: raw.link_type,
        id: raw.id,
        prog_id: raw.prog_id,
        netkit,
    })
}

/// The link pinned at `path` if it is a netkit link, `None` for another kind.
pub fn open_pinned_netkit(path: &Path) -> io::Result<Option<OwnedFd>> {
    use std::os::fd::AsFd as _;
    let fd = open_pinned(path)?;
    let info = link_info(fd.as_fd())?;
    Ok((info.link_type == LINK_TYPE_NETKIT).then_some(fd))
}

/// Whether the link pinned at `path` is a live netkit link on `end` of the
/// pair whose primary is `primary_ifindex` (in the calling thread's
/// namespace). A pin whose pair was deleted, or that holds another link, is not.
pub fn pinned_link_is_live(path: &Path, primary_ifindex: u32, end: NetkitAttach) -> bool {
    use std::os::fd::AsFd as _;
    let Ok(info) = open_pinned(path).and_then(|fd| link_info(fd.as_fd())) else {
        return false;
    };
    let Some((index, Some(attached))) = info.netkit else {
        return false;
    };
    if attached != end || index == 0 {
        return false;
    }
    match end {
        NetkitAttach::Primary => index == primary_ifindex,
        // The kernel names the peer by its own ifindex, which the primary
        // reports as its link (IFLA_LINK); without an answer, alive is enough.
        NetkitAttach::Peer => crate::netlink::Netlink::new()
            .ok()
            .and_then(|nl| nl.link_by_index(primary_ifindex).ok().flatten())
            .and_then(|link| link.link)
            .is_none_or(|peer| peer == index),
    }
}

/// The ifindex of `name` in the calling thread's network namespace.
pub fn ifindex_of(name: &str) -> io::Result<u32> {
    let c_name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"))?;
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_layouts_match_the_kernel() {
        // bpf_attr.link_create: the netkit union member starts at 16.
        assert_eq!(std::mem::offset_of!(LinkCreateAttr, relative_fd), 16);
        assert_eq!(std::mem::offset_of!(LinkCreateAttr, expected_revision), 24);
        assert_eq!(std::mem::size_of::<LinkUpdateAttr>(), 16);
        // bpf_attr for OBJ_PIN/OBJ_GET: pathname, bpf_fd, file_flags, path_fd.
        assert_eq!(std::mem::offset_of!(ObjAttr, path_fd), 16);
        assert_eq!(std::mem::offset_of!(InfoAttr, info), 8);
        // bpf_link_info's union is 8-byte aligned after three u32s.
        assert_eq!(std::mem::offset_of!(LinkInfoRaw, union), 16);
    }

    #[test]
    fn attach_types_round_trip() {
        for attach in [NetkitAttach::Primary, NetkitAttach::Peer] {
            assert_eq!(
                NetkitAttach::from_attach_type(attach.attach_type()),
                Some(attach)
            );
        }
        assert_eq!(NetkitAttach::from_attach_type(46), None);
    }
}
