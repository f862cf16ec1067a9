//! Dispatcher unit tests: one message in, one reply out, no sockets.

use super::testdev::{TestDev, MEM};
use super::*;
use std::os::fd::OwnedFd;
use vfio_migrate_abi::kernel::*;
use vfio_migrate_abi::vfio_user::*;
use vfio_migrate_vfio_user::ext::{
    VersionCaps, EXT_VERSION, FEATURE_MIG_DATA_SIZE, FEATURE_PRECOPY_INFO,
};
use vfio_migrate_vfio_user::sock::RecvFds;

fn hdr(cmd: u16, len: usize) -> Header {
    Header {
        msg_id: 7,
        cmd,
        msg_size: (HEADER_SIZE + len) as u32,
        flags: TYPE_COMMAND,
        error_no: 0,
    }
}

fn call_fds(
    s: &mut Session<'_, TestDev>,
    cmd: u16,
    payload: &[u8],
    fds: Vec<OwnedFd>,
) -> (i32, Vec<u8>, usize) {
    let mut r = Reply::new();
    dispatch(
        s,
        &hdr(cmd, payload.len()),
        payload,
        RecvFds {
            fds,
            truncated: false,
        },
        &mut r,
    );
    (r.errno, r.payload().to_vec(), r.fds.len())
}

fn call(s: &mut Session<'_, TestDev>, cmd: Command, payload: &[u8]) -> (i32, Vec<u8>) {
    let (e, p, _) = call_fds(s, cmd as u16, payload, Vec::new());
    (e, p)
}

fn feature(s: &mut Session<'_, TestDev>, flags: u32, data: &[u8], argsz: u32) -> (i32, Vec<u8>) {
    let mut p = DeviceFeature { argsz, flags }.to_bytes();
    p.extend_from_slice(data);
    call(s, Command::DeviceFeature, &p)
}

fn set_state(s: &mut Session<'_, TestDev>, st: MigState) -> i32 {
    let d = FeatureMigState {
        device_state: st as u32,
        data_fd: -1,
    }
    .to_bytes();
    feature(s, FEATURE_MIG_DEVICE_STATE | FEATURE_SET, &d, 16).0
}

fn get_state(s: &mut Session<'_, TestDev>) -> u32 {
    let (e, p) = feature(s, FEATURE_MIG_DEVICE_STATE | FEATURE_GET, &[], 16);
    assert_eq!(e, 0);
    u32::from_le_bytes(p[8..12].try_into().unwrap())
}

fn memfd(len: usize) -> OwnedFd {
    vfio_migrate_sys::memfd::create_sized(c"guest", len as u64).unwrap()
}

fn eventfd() -> OwnedFd {
    vfio_migrate_sys::fd::eventfd().unwrap()
}

fn version_payload(json: &[u8], major: u16) -> Vec<u8> {
    let mut p = Version { major, minor: 1 }.to_bytes();
    p.extend_from_slice(json);
    p
}

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

    // BAR2 with a small argsz: the size needed, no caps, but the fd.
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
    assert_eq!(nfds, 1);
    let (e, p, _) = call_fds(
        &mut s,
        Command::DeviceGetRegionInfo as u16,
        &q(ri.argsz, 2),
        vec![],
    );
    assert_eq!(e, 0);
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

fn access(offset: u64, region: u32, count: u32, data: &[u8]) -> Vec<u8> {
    let mut p = RegionAccess {
        offset,
        region,
        count,
    }
    .to_bytes();
    p.extend_from_slice(data);
    p
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

#[test]
fn features_and_states() {
    let mut srv = Server::new(TestDev::core());
    let mut s = srv.session();
    let (e, p) = feature(&mut s, FEATURE_MIGRATION | FEATURE_GET, &[], 16);
    assert_eq!(e, 0);
    assert_eq!(
        u32::from_le_bytes(p[0..4].try_into().unwrap()),
        16,
        "argsz = full reply"
    );
    assert_eq!(u64::from_le_bytes(p[8..16].try_into().unwrap()), 7);
    assert_eq!(
        feature(&mut s, FEATURE_MIGRATION | FEATURE_GET, &[], 8).0,
        libc::EINVAL,
        "argsz too small"
    );
    assert_eq!(
        feature(&mut s, FEATURE_MIGRATION | FEATURE_SET, &[], 16).0,
        libc::EINVAL
    );
    assert_eq!(feature(&mut s, 3 | FEATURE_GET, &[], 16).0, libc::ENOTTY);
    assert_eq!(
        feature(&mut s, FEATURE_MIGRATION, &[], 16).0,
        libc::EINVAL,
        "no op"
    );
    assert_eq!(
        feature(&mut s, FEATURE_MIGRATION | 1 << 20, &[], 16).0,
        libc::EINVAL,
        "unknown bits"
    );
    assert_eq!(
        feature(
            &mut s,
            FEATURE_MIG_DATA_SIZE | FEATURE_GET | FEATURE_PROBE,
            &[],
            8
        )
        .0,
        0
    );
    assert_eq!(
        feature(
            &mut s,
            FEATURE_PRECOPY_INFO | FEATURE_SET | FEATURE_PROBE,
            &[],
            8
        )
        .0,
        libc::EINVAL
    );

    for st in [
        MigState::RunningP2p,
        MigState::Stop,
        MigState::Running,
        MigState::PreCopyP2p,
        MigState::Running,
    ] {
        assert_eq!(set_state(&mut s, st), 0, "{st}");
        assert_eq!(get_state(&mut s), st as u32);
    }
    let bad = FeatureMigState {
        device_state: 8,
        data_fd: -1,
    }
    .to_bytes();
    assert_eq!(
        feature(&mut s, FEATURE_MIG_DEVICE_STATE | FEATURE_SET, &bad, 16).0,
        libc::EINVAL
    );
    assert_eq!(set_state(&mut s, MigState::Error), libc::EINVAL);
    assert_eq!(set_state(&mut s, MigState::StopCopy), 0);
    assert_eq!(
        set_state(&mut s, MigState::PreCopy),
        libc::EINVAL,
        "STOP_COPY -> PRE_COPY"
    );
    assert_eq!(get_state(&mut s), MigState::StopCopy as u32);
    assert_eq!(
        feature(&mut s, FEATURE_PRECOPY_INFO | FEATURE_GET, &[], 24).0,
        libc::EINVAL,
        "not in pre-copy"
    );
}

fn mig_read(s: &mut Session<'_, TestDev>, size: u32) -> (i32, Vec<u8>) {
    let (e, p) = call(
        s,
        Command::MigDataRead,
        &MigData {
            argsz: 8 + size,
            size,
        }
        .to_bytes(),
    );
    if e == 0 {
        let h = MigData::decode(&p).unwrap();
        assert_eq!(h.argsz as usize, p.len());
        assert_eq!(h.size as usize + 8, p.len());
        (0, p[8..].to_vec())
    } else {
        (e, p)
    }
}

fn mig_write(s: &mut Session<'_, TestDev>, data: &[u8]) -> i32 {
    let mut p = MigData {
        argsz: 8,
        size: data.len() as u32,
    }
    .to_bytes();
    p.extend_from_slice(data);
    call(s, Command::MigDataWrite, &p).0
}

#[test]
fn migration_data_between_two_devices() {
    let mut src = Server::new(TestDev::core());
    let mut dst = Server::new(TestDev::core());
    let mut s = src.session();
    let mut d = dst.session();
    call(&mut s, Command::RegionWrite, &access(0, 2, 4, b"abcd"));
    call(&mut s, Command::RegionWrite, &access(16, 0, 4, b"wxyz"));
    assert_eq!(mig_read(&mut s, 64).0, libc::EINVAL, "RUNNING");
    assert_eq!(mig_write(&mut d, b"x"), libc::EINVAL, "RUNNING");
    assert_eq!(set_state(&mut s, MigState::PreCopy), 0);
    let (e, p) = feature(&mut s, FEATURE_PRECOPY_INFO | FEATURE_GET, &[], 24);
    assert_eq!(e, 0);
    assert_eq!(
        u64::from_le_bytes(p[8..16].try_into().unwrap()),
        (8 + 64 + MEM) as u64
    );
    let (e, _) = call(
        &mut s,
        Command::MigDataRead,
        &MigData { argsz: 8, size: 64 }.to_bytes(),
    );
    assert_eq!(e, libc::EINVAL, "argsz too small for the reply");
    assert_eq!(mig_read(&mut s, 9 << 20).0, libc::E2BIG);
    assert_eq!(set_state(&mut d, MigState::Resuming), 0);
    assert_eq!(
        mig_read(&mut d, 8).0,
        libc::EINVAL,
        "RESUMING cannot be read"
    );
    let mut moved = 0;
    loop {
        let (e, data) = mig_read(&mut s, 5000);
        assert_eq!(e, 0);
        if data.is_empty() {
            break;
        }
        moved += data.len();
        assert_eq!(mig_write(&mut d, &data), 0);
    }
    assert_eq!(moved, 8 + 64 + MEM);
    assert_eq!(set_state(&mut s, MigState::StopCopy), 0);
    assert_eq!(mig_read(&mut s, 5000), (0, vec![]), "nothing changed");
    let mut bad = MigData { argsz: 8, size: 10 }.to_bytes();
    bad.extend_from_slice(&[0; 3]);
    assert_eq!(
        call(&mut d, Command::MigDataWrite, &bad).0,
        libc::EINVAL,
        "size != data"
    );
    assert_eq!(set_state(&mut d, MigState::Running), 0);
    let a = src.core().lock().unwrap().device_ref().digest();
    let b = dst.core().lock().unwrap().device_ref().digest();
    assert_eq!(a, b);
}

#[test]
fn bad_state_data_is_refused_when_resuming_ends() {
    let mut dst = Server::new(TestDev::core());
    let mut d = dst.session();
    assert_eq!(set_state(&mut d, MigState::Resuming), 0);
    assert_eq!(mig_write(&mut d, b"garbage"), 0);
    assert_eq!(set_state(&mut d, MigState::Running), libc::EINVAL);
    assert_eq!(get_state(&mut d), MigState::Resuming as u32);
}

fn dma_map(iova: u64, size: u64, offset: u64, flags: u32) -> Vec<u8> {
    DmaMap {
        argsz: 32,
        flags,
        offset,
        addr: iova,
        size,
    }
    .to_bytes()
}

fn logging_start(page: u64, ranges: &[(u64, u64)]) -> Vec<u8> {
    let mut d = page.to_le_bytes().to_vec();
    d.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
    d.extend_from_slice(&[0; 4]);
    for &(i, l) in ranges {
        d.extend_from_slice(&i.to_le_bytes());
        d.extend_from_slice(&l.to_le_bytes());
    }
    d
}

fn report(
    s: &mut Session<'_, TestDev>,
    iova: u64,
    len: u64,
    page: u64,
    argsz: u32,
) -> (i32, Vec<u8>) {
    let mut d = iova.to_le_bytes().to_vec();
    d.extend_from_slice(&len.to_le_bytes());
    d.extend_from_slice(&page.to_le_bytes());
    feature(s, FEATURE_DMA_LOGGING_REPORT | FEATURE_GET, &d, argsz)
}

#[test]
fn dma_windows_and_logging() {
    let mut srv = Server::new(TestDev::core());
    let mut s = srv.session();
    let mem = memfd(1 << 20);
    let m = |s: &mut Session<'_, TestDev>, p: Vec<u8>, fds| {
        call_fds(s, Command::DmaMap as u16, &p, fds).0
    };
    assert_eq!(
        m(
            &mut s,
            dma_map(0x10000, 1 << 20, 0, 3),
            vec![mem.try_clone().unwrap()]
        ),
        0
    );
    assert_eq!(
        m(
            &mut s,
            dma_map(0x80000, 4096, 0, 3),
            vec![mem.try_clone().unwrap()]
        ),
        libc::EEXIST
    );
    assert_eq!(
        m(
            &mut s,
            dma_map(0x1_0000_0000, 2 << 20, 0, 3),
            vec![mem.try_clone().unwrap()]
        ),
        libc::EINVAL,
        "past the fd's end"
    );
    assert_eq!(
        m(&mut s, dma_map(0x1_0000_0000, 4096, 0, 3), vec![eventfd()]),
        libc::EBADF
    );
    assert_eq!(
        m(&mut s, dma_map(0x1_0000_0000, 4096, 4096, 3), vec![]),
        libc::EINVAL,
        "offset without fd"
    );
    assert_eq!(
        m(&mut s, dma_map(0x1_0000_0000, 4096, 0, 8), vec![]),
        libc::EINVAL,
        "flags"
    );
    assert_eq!(
        m(&mut s, dma_map(0x1_0000_0000, 4096, 0, 3), vec![]),
        0,
        "no fd"
    );
    let mut short = dma_map(0, 4096, 0, 3);
    short[0] = 16;
    assert_eq!(m(&mut s, short, vec![]), libc::EINVAL, "argsz");
    let um = |iova: u64, size: u64| {
        DmaUnmap {
            argsz: 24,
            flags: 0,
            addr: iova,
            size,
        }
        .to_bytes()
    };
    assert_eq!(
        call(&mut s, Command::DmaUnmap, &um(0x20000, 4096)).0,
        libc::ENOENT
    );
    let (e, p) = call(&mut s, Command::DmaUnmap, &um(0x1_0000_0000, 4096));
    assert_eq!((e, p), (0, um(0x1_0000_0000, 4096)));

    let start = |s: &mut Session<'_, TestDev>, d: Vec<u8>| {
        feature(
            s,
            FEATURE_DMA_LOGGING_START | FEATURE_SET,
            &d,
            8 + d.len() as u32,
        )
        .0
    };
    // The START page size is a hint: 1000 becomes 4096, said in the reply.
    let (e, p) = feature(
        &mut s,
        FEATURE_DMA_LOGGING_START | FEATURE_SET,
        &logging_start(1000, &[]),
        24,
    );
    assert_eq!((e, &p[8..16]), (0, &4096u64.to_le_bytes()[..]), "page hint");
    assert_eq!(
        feature(&mut s, FEATURE_DMA_LOGGING_STOP | FEATURE_SET, &[], 8).0,
        0
    );
    assert_eq!(
        start(
            &mut s,
            logging_start(4096, &[(0x10000, 8192), (0x11000, 4096)])
        ),
        libc::EINVAL,
        "overlap"
    );
    let mut lie = logging_start(4096, &[(0x10000, 8192)]);
    lie[8] = 5;
    assert_eq!(
        start(&mut s, lie),
        libc::EINVAL,
        "num_ranges beyond the payload"
    );
    let mut many = logging_start(4096, &[]);
    many[8..12].copy_from_slice(&5000u32.to_le_bytes());
    assert_eq!(start(&mut s, many), libc::E2BIG);
    assert_eq!(
        report(&mut s, 0x10000, 1 << 20, 4096, 64).0,
        libc::EINVAL,
        "logging off"
    );
    assert_eq!(start(&mut s, logging_start(4096, &[])), 0);
    assert_eq!(start(&mut s, logging_start(4096, &[])), libc::EBUSY);
    srv_dma_write(&s, 0x10000 + 5 * 4096 + 10, b"dirty");
    assert_eq!(
        report(&mut s, 0x10000, 1 << 20, 4096, 16).0,
        libc::EINVAL,
        "argsz too small"
    );
    assert_eq!(
        report(&mut s, 0x0, 1 << 20, 4096, 1024).0,
        libc::EINVAL,
        "outside logged ranges"
    );
    assert_eq!(
        report(&mut s, 0x10000, 1 << 20, 3000, 1024).0,
        libc::EINVAL,
        "page size"
    );
    let (e, p) = report(&mut s, 0x10000, 1 << 20, 4096, 1024);
    assert_eq!(e, 0);
    assert_eq!(p.len(), 8 + 24 + 32);
    assert_eq!(u64::from_le_bytes(p[32..40].try_into().unwrap()), 1 << 5);
    let (_, p) = report(&mut s, 0x10000, 1 << 20, 4096, 1024);
    assert!(p[32..].iter().all(|&b| b == 0), "read-and-clear");
    // Report page sizes other than START's: a finer one repeats the
    // logged bit, a coarser one ORs the logged bits.
    srv_dma_write(&s, 0x10000 + 5 * 4096 + 10, b"dirty");
    let (e, p) = report(&mut s, 0x10000, 1 << 16, 2048, 1024);
    assert_eq!(e, 0);
    assert_eq!(p.len(), 8 + 24 + 8);
    assert_eq!(
        u64::from_le_bytes(p[32..40].try_into().unwrap()),
        0b11 << 10
    );
    srv_dma_write(&s, 0x10000 + 5 * 4096 + 10, b"dirty");
    let (e, p) = report(&mut s, 0x10000, 1 << 16, 8192, 1024);
    assert_eq!(e, 0);
    assert_eq!(u64::from_le_bytes(p[32..40].try_into().unwrap()), 1 << 2);
    assert_eq!(
        feature(&mut s, FEATURE_DMA_LOGGING_STOP | FEATURE_SET, &[], 8).0,
        0
    );
    s.close();
    assert!(
        srv.core().lock().unwrap().dma().windows().is_empty(),
        "disconnect clears DMA"
    );
}

fn srv_dma_write(s: &Session<'_, TestDev>, iova: u64, data: &[u8]) {
    s.lock().dma().write(iova, data).unwrap();
}

#[test]
fn irqs() {
    let mut srv = Server::new(TestDev::core());
    let mut s = srv.session();
    let (e, p) = call(
        &mut s,
        Command::DeviceGetIrqInfo,
        &IrqInfo {
            argsz: 16,
            index: 2,
            ..Default::default()
        }
        .to_bytes(),
    );
    assert_eq!(e, 0);
    assert_eq!(IrqInfo::decode(&p).unwrap().count, 2);
    assert_eq!(
        call(
            &mut s,
            Command::DeviceGetIrqInfo,
            &IrqInfo {
                argsz: 16,
                index: 5,
                ..Default::default()
            }
            .to_bytes()
        )
        .0,
        libc::EINVAL
    );
    let set = |flags, index, start, count| {
        IrqSet {
            argsz: 20,
            flags,
            index,
            start,
            count,
        }
        .to_bytes()
    };
    let trig = IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER;
    let si = |s: &mut Session<'_, TestDev>, p: Vec<u8>, fds| {
        call_fds(s, Command::DeviceSetIrqs as u16, &p, fds).0
    };
    assert_eq!(
        si(&mut s, set(trig, 2, 0, 2), vec![eventfd(), eventfd()]),
        0
    );
    assert_eq!(srv_irq_fds(&s), 2);
    assert_eq!(
        si(&mut s, set(trig, 2, 1, 2), vec![eventfd(), eventfd()]),
        libc::EINVAL,
        "vectors out of range"
    );
    assert_eq!(
        si(&mut s, set(trig, 2, 0, 2), vec![eventfd()]),
        libc::EINVAL,
        "count != fds"
    );
    assert_eq!(si(&mut s, set(trig, 2, 0, 1), vec![memfd(16)]), libc::EBADF);
    assert_eq!(
        si(&mut s, set(trig | IRQ_SET_DATA_NONE, 2, 0, 1), vec![]),
        libc::EINVAL,
        "two data flags"
    );
    assert_eq!(
        si(
            &mut s,
            set(IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK, 2, 0, 1),
            vec![]
        ),
        libc::ENOTSUP
    );
    assert_eq!(
        si(&mut s, set(trig, 0, 0, 1), vec![eventfd()]),
        libc::EINVAL,
        "INTx not offered"
    );
    s.close();
    assert_eq!(
        srv.core().lock().unwrap().device_ref().irq_fds.len(),
        0,
        "disconnect drops IRQ fds"
    );
}

fn srv_irq_fds(s: &Session<'_, TestDev>) -> usize {
    s.lock().device_ref().irq_fds.len()
}
