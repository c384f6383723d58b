//! The loader across object versions, on the TCX links of a veth pod in a
//! namespace of its own: a new object moves every pinned link onto its
//! program of the same name, and every open removes the links of programs
//! the object does not have, so that no old program keeps running. That is
//! the upgrade from the layout with `to_container` at the lxc device's egress.

#[macro_use]
mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::programs::links::FdLink;
use aya::programs::tc::{SchedClassifier, TcAttachOptions, TcAttachType};
use aya::programs::LinkOrder;
use ciliate_datapath::loader::{Datapath, Origin, LXC_ATTACH};
use common::{add_pod, datapath_in, in_netns, Namespaces, ROUTER};

const LXC: &str = "lxcld";

/// Ids of the programs TCX runs at `attach` of the lxc device.
fn tcx_programs(node: &str, attach: TcAttachType) -> Vec<u32> {
    in_netns(node, move || {
        let (_, programs) = SchedClassifier::query_tcx(LXC, attach).unwrap();
        programs
            .iter()
            .map(aya::programs::ProgramInfo::id)
            .collect()
    })
}

/// Pins a TCX link at the lxc device's egress under `pin`, the name of a
/// program no object has now. (Any program will do; the pin name says
/// which it was.)
fn pin_unknown_program_link(node: &str, root: &Path, pin: &Path) {
    let (program, pin) = (programs_dir(root).join("from_container"), pin.to_owned());
    in_netns(node, move || {
        let mut prog = SchedClassifier::from_pin(&program).unwrap();
        let id = prog
            .attach_with_options(
                LXC,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .unwrap();
        let link: FdLink = prog.take_link(id).unwrap().try_into().unwrap();
        link.pin(&pin).unwrap();
    });
    assert_eq!(tcx_programs(node, TcAttachType::Egress).len(), 1);
}

/// The directory of the pinned programs (one object's).
fn programs_dir(root: &Path) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("progs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.remove(0)
}

#[test]
fn a_new_object_moves_pinned_links_and_removes_those_of_programs_it_lacks() {
    root_only!();
    let mut spaces = Namespaces::new();
    let node = spaces.create("ld-node");
    let pod = spaces.create("ld-pod");
    let (bpffs, mut maps) = datapath_in(&node, vec![]);
    add_pod(
        &node,
        &pod,
        LXC,
        Ipv4Addr::new(10, 77, 0, 10),
        Ipv4Addr::from(ROUTER),
        &mut maps,
    );
    let root = bpffs.root();
    let links = root.join("links");
    let attach_root = root.clone();
    in_netns(&node, move || {
        Datapath::open(&attach_root)
            .unwrap()
            .attach(LXC, LXC_ATTACH)
            .unwrap();
    });

    // What an earlier object left: a pinned link at the lxc device's egress
    // of a program this object does not have.
    let old = links.join(format!("{LXC}-to_container"));
    pin_unknown_program_link(&node, &root, &old);

    // A new object: the pinned programs' directory is renamed to look like
    // an older object's.
    let current = programs_dir(&root);
    std::fs::rename(&current, current.with_file_name("0000000000000000")).unwrap();
    let open_root = root.clone();
    let (origin, ids) = in_netns(&node, move || {
        let dp = Datapath::open(&open_root).unwrap();
        (dp.origin(), dp.program_ids())
    });
    assert_eq!(origin, Origin::Replaced);
    let new_id = |name: &str| ids.iter().find(|(n, ..)| n == name).unwrap().1;

    assert!(!old.exists(), "the removed program's pin is gone");
    assert_eq!(
        tcx_programs(&node, TcAttachType::Egress),
        Vec::<u32>::new(),
        "nothing runs at the lxc device's egress"
    );
    assert!(links.join(format!("{LXC}-from_container")).exists());
    assert_eq!(
        tcx_programs(&node, TcAttachType::Ingress),
        vec![new_id("from_container")],
        "the kept link runs the new from_container"
    );
    assert!(
        !root.join("progs").join("0000000000000000").exists(),
        "the old object's programs are gone"
    );

    // An upgrade interrupted after the new programs were pinned: the next
    // open adopts them, and still removes such a link.
    pin_unknown_program_link(&node, &root, &old);
    let open_root = root.clone();
    let origin = in_netns(&node, move || Datapath::open(&open_root).unwrap().origin());
    assert_eq!(origin, Origin::Adopted);
    assert!(!old.exists(), "removed when adopting too");
    assert_eq!(tcx_programs(&node, TcAttachType::Egress), Vec::<u32>::new());
}
