//! VERSION negotiation, device and region info, region access and bounds,
//! unknown commands, fds and reply types, extension commands.

use super::*;

#[test]
fn version_negotiation() {
    let mut srv = Server::new(TestDev::core());
    let mut s = srv.session();
    let ours = VersionCaps {
        caps: Capabilities {
            max_msg_fds: 4,
            max_data_xfer_size: 1 << 16,
            migration: Some(MigrationCaps {
                pgsize: 4096,
                max_bitmap_size: None,
            }),
        },
        ext: Some(EXT_VERSION),
    };
    let (e, _) = call(
        &mut s,
        Command::Version,
        &version_payload(&ours.to_json_bytes(), 1),
    );
    assert_eq!(e, libc::ENOTSUP, "wrong major");
    let (e, _) = call(
        &mut s,
        Command::Version,
        &version_payload(b"{\"capabilities\":", 0),
    );
    assert_eq!(e, libc::EINVAL, "bad JSON");
    let (e, _) = call(&mut s, Command::Version, &[0, 0]);
    assert_eq!(e, libc::EINVAL, "short payload");
    assert!(!s.negotiated());
    let (e, p) = call(
        &mut s,
        Command::Version,
        &version_payload(&ours.to_json_bytes(), 0),
    );
    assert_eq!(e, 0);
    let v = Version::decode(&p).unwrap();
    assert_eq!((v.major, v.minor), (0, 1));
    let theirs = VersionCaps::from_json_bytes(&p[4..]).unwrap();
    assert_eq!(theirs.ext, Some(EXT_VERSION));
    assert_eq!(theirs.caps.max_data_xfer_size, 8 << 20);
    assert_eq!(theirs.caps.migration.unwrap().pgsize, 4096);
    // The client's own limit now bounds replies.
    assert_eq!(s.max_out(), 1 << 16);
    let (e, _) = call(
        &mut s,
        Command::Version,
        &version_payload(&ours.to_json_bytes(), 0),
    );
    assert_eq!(e, libc::EINVAL, "second VERSION");
}

#[test]
fn foreign_client_gets_no_extension() {
    let mut srv = Server::new(TestDev::core());
    let mut s = srv.session();
    let (e, p) = call(&mut s, Command::Version, &version_payload(b"{}\0", 0));
    assert_eq!(e, 0);
    let theirs = VersionCaps::from_json_bytes(&p[4..]).unwrap();
    assert_eq!(theirs.ext, None);
    assert!(
        theirs.caps.migration.is_none(),
        "not proposed, not answered"
    );
}

#[test]
fn info_and_regions() {
    let mut srv = Server::new(TestDev::core());
    let mut s = srv.session();
    let (e, p) = call(
        &mut s,
        Command::DeviceGetInfo,
        &DeviceInfo {
            argsz: 16,
            ..Default::default()
        }
        .to_bytes(),
    );
    assert_eq!(e, 0);
    let i = DeviceInfo::decode(&p).unwrap();
    assert_eq!((i.num_regions, i.num_irqs), (9, 5));
    let (e, _) = call(
        &mut s,
        Command::DeviceGetInfo,
        &DeviceInfo {
            argsz: 8,
            ..Default::default()
        }
        .to_bytes(),
    );
    assert_eq!(e, libc::EINVAL, "argsz too small");

    // BAR2 with a small argsz: the size needed, and nothing it does not
    // carry: no CAPS, no MMAP, no fd (they come with the full reply).
    let q = |argsz, index| {
        RegionInfo {
            argsz,
            index,
            ..Default::default()
        }
        .to_bytes()
    };
    let (e, p, nfds) = call_fds(
        &mut s,
        Command::DeviceGetRegionInfo as u16,
        &q(32, 2),
        vec![],
    );
    assert_eq!(e, 0);
    let ri = RegionInfo::decode(&p).unwrap();
    assert_eq!(p.len(), 32);
    assert_eq!(ri.argsz, 32 + 8 + 8 + 16);
    assert_eq!(ri.cap_offset, 0);
    assert_eq!(ri.flags, REGION_FLAG_READ | REGION_FLAG_WRITE);
    assert_eq!(nfds, 0);
    let (e, p, nfds) = call_fds(
        &mut s,
        Command::DeviceGetRegionInfo as u16,
        &q(ri.argsz, 2),
        vec![],
    );
    assert_eq!(e, 0);
    assert_eq!(nfds, 1, "the full reply passes the region fd");
    let ri = RegionInfo::decode(&p).unwrap();
    assert_eq!(ri.cap_offset, 32);
    assert_ne!(ri.flags & REGION_FLAG_MMAP, 0);
    assert_ne!(ri.flags & REGION_FLAG_CAPS, 0);
    let ch = CapHeader::decode(&p[32..]).unwrap();
    assert_eq!((ch.id, ch.next), (REGION_INFO_CAP_SPARSE_MMAP, 0));
    let sp = CapSparseMmap::decode(&p[40..]).unwrap();
    assert_eq!(sp.nr_areas, 1);
    assert_eq!(SparseMmapArea::decode(&p[48..]).unwrap().size, MEM as u64);
    // Absent BAR1: zero size. Index 9: out of range.
    let (e, p) = call(&mut s, Command::DeviceGetRegionInfo, &q(32, 1));
    assert_eq!((e, RegionInfo::decode(&p).unwrap().size), (0, 0));
    let (e, _) = call(&mut s, Command::DeviceGetRegionInfo, &q(32, 9));
    assert_eq!(e, libc::EINVAL);
}

#[test]
fn region_access_and_bounds() {
    let mut srv = Server::new(TestDev::core());
    let mut s = srv.session();
    let (e, p) = call(
        &mut s,
        Command::RegionWrite,
        &access(8, 0, 8, &0xdead_beef_u64.to_le_bytes()),
    );
    assert_eq!((e, p.len()), (0, 16));
    let (e, p) = call(&mut s, Command::RegionRead, &access(8, 0, 8, &[]));
    assert_eq!(e, 0);
    assert_eq!(
        u64::from_le_bytes(p[16..24].try_into().unwrap()),
        0xdead_beef
    );
    let (e, p) = call(&mut s, Command::RegionRead, &access(0, 7, 4, &[]));
    assert_eq!((e, &p[16..20]), (0, &[0x36, 0x1b, 0xff, 0x00][..]));
    for (bad, want) in [
        (access(60, 0, 8, &[]), libc::EINVAL),       // past the end
        (access(u64::MAX, 0, 2, &[]), libc::EINVAL), // overflow
        (access(0, 1, 4, &[]), libc::EINVAL),        // absent region
        (access(0, 42, 4, &[]), libc::EINVAL),       // index out of range
        (access(0, 2, 9 << 20, &[]), libc::E2BIG),   // over the transfer limit
        (vec![0; 10], libc::EINVAL),                 // short payload
    ] {
        assert_eq!(call(&mut s, Command::RegionRead, &bad).0, want, "{bad:?}");
    }
    assert_eq!(
        call(&mut s, Command::RegionWrite, &access(0, 7, 2, &[1, 2])).0,
        libc::EINVAL,
        "config is read-only"
    );
    assert_eq!(
        call(&mut s, Command::RegionWrite, &access(0, 0, 4, &[1, 2])).0,
        libc::EINVAL,
        "count != data"
    );
}

#[test]
fn unknown_commands_fds_and_reply_types() {
    let mut srv = Server::new(TestDev::core());
    let mut s = srv.session();
    assert_eq!(call_fds(&mut s, 999, &[1, 2, 3], vec![]).0, libc::ENOSYS);
    assert_eq!(
        call_fds(&mut s, Command::DmaRead as u16, &[], vec![]).0,
        libc::ENOTSUP
    );
    assert_eq!(
        call_fds(&mut s, Command::DeviceReset as u16, &[], vec![eventfd()]).0,
        libc::EINVAL,
        "fds on a command that takes none"
    );
    let nine: Vec<OwnedFd> = (0..9).map(|_| eventfd()).collect();
    assert_eq!(
        call_fds(&mut s, Command::DmaMap as u16, &[0; 32], nine).0,
        libc::E2BIG
    );
    let mut r = Reply::new();
    let mut h = hdr(Command::DeviceReset as u16, 0);
    h.flags = TYPE_REPLY;
    dispatch(&mut s, &h, &[], RecvFds::default(), &mut r);
    assert_eq!(r.errno, libc::EINVAL, "a reply sent to the server");
}

#[test]
fn extension_command_hook() {
    struct Echo;
    impl CommandHandler<TestDev> for Echo {
        fn command(&self) -> u16 {
            14
        }
        fn handle(
            &mut self,
            core: &mut DeviceCore<TestDev>,
            payload: &[u8],
            _fds: Vec<OwnedFd>,
            reply: &mut Reply,
        ) -> vfio_migrate_device::DeviceResult<()> {
            reply.put(payload);
            reply.put(&[core.state() as u8]);
            Ok(())
        }
    }
    let mut srv = Server::new(TestDev::core());
    srv.add_command(Box::new(Echo));
    let mut s = srv.session();
    let (e, p, _) = call_fds(&mut s, 14, &[9, 9], vec![]);
    assert_eq!((e, p), (0, vec![9, 9, MigState::Running as u8]));
}
