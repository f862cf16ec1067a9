//! Malformed and hostile messages against a real `vfio-migrate serve`
//! process over its UNIX socket: each gets an error reply with its
//! specific errno, and the server keeps serving (the same connection
//! while the stream is in sync, a new connection always).

mod serve_support;

use serve_support::*;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use vfio_migrate_abi::kernel::*;
use vfio_migrate_abi::vfio_user::*;
use vfio_migrate_backend::{DmaDirtyLog, MigrationDevice};
use vfio_migrate_client::{Client, ClientConfig, RawReply};

/// A request that must succeed on a healthy connection.
fn healthy(c: &mut Client) {
    let i = c.device_info().expect("connection still serves");
    assert!(i.num_regions >= 9);
}

fn raw_healthy(s: &mut UnixStream) {
    send_cmd(
        s,
        Command::DeviceGetInfo as u16,
        &DeviceInfo {
            argsz: 16,
            ..Default::default()
        }
        .to_bytes(),
    );
    let (h, p) = read_reply(s);
    assert_eq!(errno_of(&h), 0);
    assert_eq!(DeviceInfo::decode(&p).unwrap().argsz, 16);
}

fn req(c: &mut Client, cmd: Command, payload: &[u8]) -> RawReply {
    c.request(cmd as u16, payload, &[]).unwrap()
}

fn req_fds(c: &mut Client, cmd: Command, payload: &[u8], fds: &[BorrowedFd<'_>]) -> RawReply {
    c.request(cmd as u16, payload, fds).unwrap()
}

fn expect(r: RawReply, errno: i32, what: &str) {
    assert_eq!(r.errno(), Some(errno), "{what}: got {:?}", r.header);
    assert_eq!(
        r.header.msg_size as usize, HEADER_SIZE,
        "{what}: error replies are bare headers"
    );
}

fn feature_payload(flags: u32, argsz: u32, data: &[u8]) -> Vec<u8> {
    let mut p = DeviceFeature { argsz, flags }.to_bytes();
    p.extend_from_slice(data);
    p
}

fn set_state_payload(s: u32) -> Vec<u8> {
    feature_payload(
        FEATURE_MIG_DEVICE_STATE | FEATURE_SET,
        16,
        &FeatureMigState {
            device_state: s,
            data_fd: -1,
        }
        .to_bytes(),
    )
}

#[test]
fn msg_size_below_header_size() {
    let p = ServerProc::start("serial", None);
    let mut s = p.raw();
    send_raw(&mut s, Command::DeviceGetInfo as u16, 8, &[]);
    let (h, body) = read_reply(&mut s);
    assert_eq!(errno_of(&h), libc::EINVAL);
    assert!(body.is_empty());
    raw_healthy(&mut s);
}

#[test]
fn msg_size_over_the_cap_closes_only_that_connection() {
    let p = ServerProc::start("serial", None);
    let mut s = p.raw();
    // Claims 4 GiB; nothing that large is ever allocated or read.
    send_raw(&mut s, Command::MigDataWrite as u16, u32::MAX, &[0; 64]);
    let (h, _) = read_reply(&mut s);
    assert_eq!(errno_of(&h), libc::EMSGSIZE);
    assert!(closed_by_peer(&mut s));
    let mut c = p.client();
    healthy(&mut c);
}

#[test]
fn payload_shorter_than_its_struct() {
    let p = ServerProc::start("serial", None);
    let mut c = p.client();
    for (cmd, len) in [
        (Command::DmaMap, 8),
        (Command::DmaUnmap, 16),
        (Command::DeviceGetInfo, 4),
        (Command::DeviceGetRegionInfo, 16),
        (Command::DeviceGetIrqInfo, 12),
        (Command::DeviceSetIrqs, 16),
        (Command::RegionRead, 12),
        (Command::RegionWrite, 0),
        (Command::DeviceFeature, 4),
        (Command::MigDataRead, 4),
        (Command::MigDataWrite, 7),
        (Command::Version, 2),
    ] {
        expect(
            req(&mut c, cmd, &vec![0xff; len]),
            libc::EINVAL,
            &format!("{cmd:?} with {len} bytes"),
        );
        healthy(&mut c);
    }
}

#[test]
fn unknown_command_is_drained() {
    let p = ServerProc::start("serial", None);
    let mut s = p.raw();
    // A payload that looks like a header: if it were not drained, it
    // would be taken as the next message.
    let inner = Header {
        msg_id: 1,
        cmd: 4,
        msg_size: 16,
        flags: 0,
        error_no: 0,
    }
    .to_bytes();
    let mut payload = inner.clone();
    payload.extend_from_slice(&[0xab; 1000]);
    send_cmd(&mut s, 777, &payload);
    let (h, _) = read_reply(&mut s);
    assert_eq!((errno_of(&h), h.cmd, h.msg_id), (libc::ENOSYS, 777, 0x4242));
    raw_healthy(&mut s);
    drop(s);
    // Known commands the server does not take are refused the same way.
    let mut c = p.client();
    expect(
        req(&mut c, Command::DmaWrite, &[0; 16]),
        libc::ENOTSUP,
        "DMA_WRITE to a server",
    );
    healthy(&mut c);
}

#[test]
fn argsz_too_small() {
    let p = ServerProc::start("vgpu", Some("1M"));
    let mut c = p.client();
    expect(
        req(
            &mut c,
            Command::DeviceGetInfo,
            &DeviceInfo {
                argsz: 15,
                ..Default::default()
            }
            .to_bytes(),
        ),
        libc::EINVAL,
        "GET_INFO",
    );
    expect(
        req(
            &mut c,
            Command::DeviceGetRegionInfo,
            &RegionInfo {
                argsz: 31,
                ..Default::default()
            }
            .to_bytes(),
        ),
        libc::EINVAL,
        "REGION_INFO",
    );
    expect(
        req(
            &mut c,
            Command::DeviceGetIrqInfo,
            &IrqInfo {
                argsz: 4,
                ..Default::default()
            }
            .to_bytes(),
        ),
        libc::EINVAL,
        "IRQ_INFO",
    );
    expect(
        req(
            &mut c,
            Command::DmaMap,
            &DmaMap {
                argsz: 8,
                flags: 3,
                offset: 0,
                addr: 0,
                size: 4096,
            }
            .to_bytes(),
        ),
        libc::EINVAL,
        "DMA_MAP",
    );
    expect(
        req(
            &mut c,
            Command::DeviceFeature,
            &feature_payload(FEATURE_MIGRATION | FEATURE_GET, 8, &[]),
        ),
        libc::EINVAL,
        "feature GET reply does not fit",
    );
    expect(
        req(
            &mut c,
            Command::MigDataRead,
            &MigData {
                argsz: 8,
                size: 4096,
            }
            .to_bytes(),
        ),
        libc::EINVAL,
        "MIG_DATA_READ reply does not fit",
    );
    healthy(&mut c);
}

fn access(offset: u64, region: u32, count: u32) -> Vec<u8> {
    RegionAccess {
        offset,
        region,
        count,
    }
    .to_bytes()
}

#[test]
fn region_index_offset_and_count_out_of_range() {
    let p = ServerProc::start("vgpu", Some("1M"));
    let mut c = p.client();
    expect(
        req(&mut c, Command::RegionRead, &access(0, 11, 4)), // 9, 10: migration regions
        libc::EINVAL,
        "index past the last region",
    );
    expect(
        req(&mut c, Command::RegionRead, &access(0, u32::MAX, 4)),
        libc::EINVAL,
        "huge index",
    );
    expect(
        req(&mut c, Command::RegionRead, &access(0, 1, 4)),
        libc::EINVAL,
        "absent BAR1",
    );
    expect(
        req(&mut c, Command::RegionRead, &access(4093, 0, 4)),
        libc::EINVAL,
        "past BAR0's end",
    );
    expect(
        req(&mut c, Command::RegionRead, &access(u64::MAX - 1, 0, 4)),
        libc::EINVAL,
        "offset overflow",
    );
    expect(
        req(&mut c, Command::RegionRead, &access(0, 2, 64 << 20)),
        libc::E2BIG,
        "count over max_data_xfer_size",
    );
    let mut w = access(256, 7, 4);
    w.extend_from_slice(&[1, 2, 3, 4]);
    expect(
        req(&mut c, Command::RegionWrite, &w),
        libc::EINVAL,
        "past config space",
    );
    let mut w = access(0, 0, 8);
    w.extend_from_slice(&[1, 2, 3]);
    expect(
        req(&mut c, Command::RegionWrite, &w),
        libc::EINVAL,
        "count disagrees with the data",
    );
    expect(
        req(
            &mut c,
            Command::DeviceGetRegionInfo,
            &RegionInfo {
                argsz: 32,
                index: 100,
                ..Default::default()
            }
            .to_bytes(),
        ),
        libc::EINVAL,
        "region info index",
    );
    expect(
        req(
            &mut c,
            Command::DeviceGetIrqInfo,
            &IrqInfo {
                argsz: 16,
                index: 50,
                ..Default::default()
            }
            .to_bytes(),
        ),
        libc::EINVAL,
        "IRQ index",
    );
    healthy(&mut c);
}

fn dma_map(addr: u64, size: u64, offset: u64) -> Vec<u8> {
    DmaMap {
        argsz: 32,
        flags: DMA_FLAG_READ | DMA_FLAG_WRITE,
        offset,
        addr,
        size,
    }
    .to_bytes()
}

#[test]
fn dma_map_overlap_and_unknown_unmap() {
    let p = ServerProc::start("vgpu", Some("1M"));
    let mut c = p.client();
    let ram = memfd(1 << 20);
    let r = req_fds(
        &mut c,
        Command::DmaMap,
        &dma_map(0x10_0000, 1 << 20, 0),
        &[ram.as_fd()],
    );
    assert_eq!(r.errno(), None);
    for (addr, size) in [(0x10_0000, 4096), (0x1f_f000, 8192), (0x8_0000, 0x9_0000)] {
        let r = req_fds(
            &mut c,
            Command::DmaMap,
            &dma_map(addr, size, 0),
            &[ram.as_fd()],
        );
        expect(r, libc::EEXIST, &format!("overlap {addr:#x}+{size:#x}"));
    }
    let um = |addr, size| {
        DmaUnmap {
            argsz: 24,
            flags: 0,
            addr,
            size,
        }
        .to_bytes()
    };
    expect(
        req(&mut c, Command::DmaUnmap, &um(0x50_0000, 4096)),
        libc::ENOENT,
        "never mapped",
    );
    expect(
        req(&mut c, Command::DmaUnmap, &um(0x10_0000, 4096)),
        libc::ENOENT,
        "not the whole window",
    );
    let r = req(&mut c, Command::DmaUnmap, &um(0x10_0000, 1 << 20));
    assert_eq!((r.errno(), r.payload), (None, um(0x10_0000, 1 << 20)));
    expect(
        req(&mut c, Command::DmaUnmap, &um(0x10_0000, 1 << 20)),
        libc::ENOENT,
        "twice",
    );
    healthy(&mut c);
}

fn pipe_read_end() -> OwnedFd {
    vfio_migrate_sys::fd::pipe(libc::O_CLOEXEC).unwrap().0
}

#[test]
fn bad_and_missing_fds() {
    let p = ServerProc::start("vgpu", Some("1M"));
    let mut c = p.client();
    let pipe = pipe_read_end();
    expect(
        req_fds(
            &mut c,
            Command::DmaMap,
            &dma_map(0, 4096, 0),
            &[pipe.as_fd()],
        ),
        libc::EBADF,
        "pipe as guest memory",
    );
    let small = memfd(4096);
    expect(
        req_fds(
            &mut c,
            Command::DmaMap,
            &dma_map(0, 1 << 20, 0),
            &[small.as_fd()],
        ),
        libc::EINVAL,
        "window past the fd's end",
    );
    expect(
        req(&mut c, Command::DmaMap, &dma_map(0, 4096, 4096)),
        libc::EINVAL,
        "offset but no fd",
    );
    let ev = eventfd();
    let ram = memfd(4096);
    expect(
        req_fds(
            &mut c,
            Command::DmaMap,
            &dma_map(0, 4096, 0),
            &[ram.as_fd(), ev.as_fd()],
        ),
        libc::E2BIG,
        "two fds for one window",
    );
    expect(
        req_fds(&mut c, Command::DeviceReset, &[], &[ev.as_fd()]),
        libc::EINVAL,
        "fd on a command that takes none",
    );
    expect(
        req_fds(
            &mut c,
            Command::DeviceGetInfo,
            &DeviceInfo {
                argsz: 16,
                ..Default::default()
            }
            .to_bytes(),
            &[ev.as_fd()],
        ),
        libc::EINVAL,
        "fd on GET_INFO",
    );
    healthy(&mut c);
}

#[test]
fn irq_fds_missing_or_not_eventfds() {
    // The samples offer no interrupts; the fds are checked first anyway.
    let p = ServerProc::start("serial", None);
    let mut c = p.client();
    let info = c.irq_info(0).unwrap();
    assert_eq!(info.count, 0);
    let set = |flags, start, count| {
        IrqSet {
            argsz: 20,
            flags,
            index: 0,
            start,
            count,
        }
        .to_bytes()
    };
    let trig = IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER;
    let m = memfd(16);
    expect(
        req_fds(
            &mut c,
            Command::DeviceSetIrqs,
            &set(trig, 0, 1),
            &[m.as_fd()],
        ),
        libc::EBADF,
        "memfd as eventfd",
    );
    let ev = eventfd();
    expect(
        req_fds(
            &mut c,
            Command::DeviceSetIrqs,
            &set(trig, 0, 2),
            &[ev.as_fd()],
        ),
        libc::EINVAL,
        "fewer fds than count",
    );
    expect(
        req_fds(
            &mut c,
            Command::DeviceSetIrqs,
            &set(trig, 0, 1),
            &[ev.as_fd()],
        ),
        libc::EINVAL,
        "index not offered",
    );
    expect(
        req(
            &mut c,
            Command::DeviceSetIrqs,
            &set(trig | IRQ_SET_DATA_BOOL, 0, 1),
        ),
        libc::EINVAL,
        "two DATA flags",
    );
    expect(
        req(
            &mut c,
            Command::DeviceSetIrqs,
            &set(IRQ_SET_DATA_NONE | IRQ_SET_ACTION_UNMASK, 0, 1),
        ),
        libc::ENOTSUP,
        "unmask",
    );
    expect(
        req(
            &mut c,
            Command::DeviceSetIrqs,
            &IrqSet {
                argsz: 20,
                flags: trig,
                index: 9,
                start: 0,
                count: 0,
            }
            .to_bytes(),
        ),
        libc::EINVAL,
        "index out of range",
    );
    healthy(&mut c);
}

#[test]
fn too_many_fds() {
    let p = ServerProc::start("serial", None);
    let mut c = p.client();
    healthy(&mut c);
    let before = p.fd_count();
    for n in [9usize, 40] {
        let evs: Vec<OwnedFd> = (0..n).map(|_| eventfd()).collect();
        let b: Vec<BorrowedFd<'_>> = evs.iter().map(|e| e.as_fd()).collect();
        expect(
            req_fds(
                &mut c,
                Command::DeviceGetInfo,
                &DeviceInfo {
                    argsz: 16,
                    ..Default::default()
                }
                .to_bytes(),
                &b,
            ),
            libc::E2BIG,
            &format!("{n} fds"),
        );
        healthy(&mut c);
    }
    assert_eq!(p.fd_count(), before, "the refused fds were closed");
}

fn version(major: u16, json: &[u8]) -> Vec<u8> {
    let mut p = Version { major, minor: 0 }.to_bytes();
    p.extend_from_slice(json);
    p
}

#[test]
fn invalid_json_and_wrong_major_version() {
    let p = ServerProc::start("serial", None);
    let s = p.raw();
    let mut c = Client::without_version(s, "raw", ClientConfig::default());
    for bad in [
        &b"{\"capabilities\": {"[..],
        b"[1,2,3]\0",
        b"{\"capabilities\":{\"max_msg_fds\":\"many\"}}\0",
        b"\xc3\x28\0",
    ] {
        expect(
            req(&mut c, Command::Version, &version(0, bad)),
            libc::EINVAL,
            &format!("JSON {bad:?}"),
        );
    }
    expect(
        req(
            &mut c,
            Command::Version,
            &version(0, b"{\"capabilities\":{\"migration\":{\"pgsize\":1000}}}\0"),
        ),
        libc::EINVAL,
        "pgsize",
    );
    expect(
        req(&mut c, Command::Version, &version(1, b"{}\0")),
        libc::ENOTSUP,
        "major 1",
    );
    // After all that, a proper VERSION on the same connection succeeds.
    c.negotiate().unwrap();
    assert!(c.peer_is_vfio_migrate());
    expect(
        req(&mut c, Command::Version, &version(0, b"{}\0")),
        libc::EINVAL,
        "second VERSION",
    );
    healthy(&mut c);
}

#[test]
fn migration_data_in_the_wrong_state() {
    let p = ServerProc::start("vgpu", Some("1M"));
    let mut c = p.client();
    let read = MigData {
        argsz: 8 + 4096,
        size: 4096,
    }
    .to_bytes();
    let mut write = MigData { argsz: 8, size: 4 }.to_bytes();
    write.extend_from_slice(b"data");
    expect(
        req(&mut c, Command::MigDataRead, &read),
        libc::EINVAL,
        "read while RUNNING",
    );
    expect(
        req(&mut c, Command::MigDataWrite, &write),
        libc::EINVAL,
        "write while RUNNING",
    );
    c.set_state(MigState::PreCopy).unwrap();
    expect(
        req(&mut c, Command::MigDataWrite, &write),
        libc::EINVAL,
        "write while PRE_COPY",
    );
    expect(
        req(
            &mut c,
            Command::MigDataRead,
            &MigData {
                argsz: 8 + (64 << 20),
                size: 64 << 20,
            }
            .to_bytes(),
        ),
        libc::E2BIG,
        "read over max_data_xfer_size",
    );
    c.set_state(MigState::Stop).unwrap();
    expect(
        req(&mut c, Command::MigDataRead, &read),
        libc::EINVAL,
        "read while STOP",
    );
    c.set_state(MigState::Resuming).unwrap();
    expect(
        req(&mut c, Command::MigDataRead, &read),
        libc::EINVAL,
        "read while RESUMING",
    );
    healthy(&mut c);
}

#[test]
fn invalid_and_unsupported_states() {
    let p = ServerProc::start("serial", None);
    let mut c = p.client();
    for s in [8u32, 1000, u32::MAX] {
        expect(
            req(&mut c, Command::DeviceFeature, &set_state_payload(s)),
            libc::EINVAL,
            &format!("state {s}"),
        );
    }
    expect(
        req(&mut c, Command::DeviceFeature, &set_state_payload(0)),
        libc::EINVAL,
        "ERROR requested",
    );
    for s in [
        MigState::RunningP2p,
        MigState::PreCopy,
        MigState::PreCopyP2p,
    ] {
        expect(
            req(&mut c, Command::DeviceFeature, &set_state_payload(s as u32)),
            libc::EINVAL,
            &format!("{s} on serial"),
        );
    }
    assert_eq!(c.state().unwrap(), MigState::Running, "nothing moved");
    expect(
        req(
            &mut c,
            Command::DeviceFeature,
            &feature_payload(FEATURE_MIG_DEVICE_STATE | FEATURE_SET, 16, &[1, 0]),
        ),
        libc::EINVAL,
        "state data too short",
    );
    expect(
        req(
            &mut c,
            Command::DeviceFeature,
            &feature_payload(44 | FEATURE_GET, 64, &[]),
        ),
        libc::ENOTTY,
        "unknown feature",
    );
    expect(
        req(
            &mut c,
            Command::DeviceFeature,
            &feature_payload(FEATURE_MIGRATION | FEATURE_GET | FEATURE_SET, 64, &[]),
        ),
        libc::EINVAL,
        "GET and SET",
    );

    let v = ServerProc::start("vgpu", Some("1M"));
    let mut c = v.client();
    c.set_state(MigState::StopCopy).unwrap();
    let e = c.set_state(MigState::PreCopy).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EINVAL), "STOP_COPY -> PRE_COPY: {e}");
    assert_eq!(c.state().unwrap(), MigState::StopCopy);
    healthy(&mut c);
}

fn logging_start(page: u64, ranges: &[(u64, u64)], num: Option<u32>) -> Vec<u8> {
    let mut d = page.to_le_bytes().to_vec();
    d.extend_from_slice(&num.unwrap_or(ranges.len() as u32).to_le_bytes());
    d.extend_from_slice(&[0; 4]);
    for &(i, l) in ranges {
        d.extend_from_slice(&i.to_le_bytes());
        d.extend_from_slice(&l.to_le_bytes());
    }
    feature_payload(
        FEATURE_DMA_LOGGING_START | FEATURE_SET,
        8 + d.len() as u32,
        &d,
    )
}

fn report(iova: u64, len: u64, page: u64) -> Vec<u8> {
    let mut d = iova.to_le_bytes().to_vec();
    d.extend_from_slice(&len.to_le_bytes());
    d.extend_from_slice(&page.to_le_bytes());
    feature_payload(FEATURE_DMA_LOGGING_REPORT | FEATURE_GET, 8 + 24 + 4096, &d)
}

#[test]
fn dma_logging_bad_page_size_ranges_and_reports() {
    let p = ServerProc::start("vgpu", Some("1M"));
    let mut c = p.client();
    let ram = memfd(1 << 20);
    assert_eq!(
        req_fds(
            &mut c,
            Command::DmaMap,
            &dma_map(0x10_0000, 1 << 20, 0),
            &[ram.as_fd()]
        )
        .errno(),
        None
    );
    expect(
        req(
            &mut c,
            Command::DeviceFeature,
            &report(0x10_0000, 4096, 4096),
        ),
        libc::EINVAL,
        "report while logging is off",
    );
    // The START page size is a hint (vfio-user spec): the device picks
    // one it can log at and says so in the reply.
    for (page, chosen) in [(0u64, 4096u64), (1000, 4096), (2048, 4096), (3 << 12, 8192)] {
        let r = req(
            &mut c,
            Command::DeviceFeature,
            &logging_start(page, &[(0x10_0000, 1 << 20)], None),
        );
        assert_eq!(r.errno(), None, "page size hint {page}");
        assert_eq!(r.payload[8..16], chosen.to_le_bytes(), "page size {page}");
        let stop = feature_payload(FEATURE_DMA_LOGGING_STOP | FEATURE_SET, 8, &[]);
        assert_eq!(req(&mut c, Command::DeviceFeature, &stop).errno(), None);
    }
    expect(
        req(
            &mut c,
            Command::DeviceFeature,
            &logging_start(4096, &[(0x10_0000, 8192), (0x10_1000, 4096)], None),
        ),
        libc::EINVAL,
        "overlapping ranges",
    );
    expect(
        req(
            &mut c,
            Command::DeviceFeature,
            &logging_start(4096, &[(0x10_0000, 0)], None),
        ),
        libc::EINVAL,
        "empty range",
    );
    expect(
        req(
            &mut c,
            Command::DeviceFeature,
            &logging_start(4096, &[(u64::MAX - 4095, 8192)], None),
        ),
        libc::EINVAL,
        "range wraps",
    );
    expect(
        req(
            &mut c,
            Command::DeviceFeature,
            &logging_start(4096, &[(0x10_0000, 4096)], Some(3)),
        ),
        libc::EINVAL,
        "num_ranges past the payload",
    );
    expect(
        req(
            &mut c,
            Command::DeviceFeature,
            &logging_start(4096, &[], Some(100_000)),
        ),
        libc::E2BIG,
        "too many ranges",
    );
    assert_eq!(
        req(
            &mut c,
            Command::DeviceFeature,
            &logging_start(4096, &[(0x10_0000, 1 << 19)], None)
        )
        .errno(),
        None
    );
    expect(
        req(
            &mut c,
            Command::DeviceFeature,
            &logging_start(4096, &[], None),
        ),
        libc::EBUSY,
        "already logging",
    );
    expect(
        req(
            &mut c,
            Command::DeviceFeature,
            &report(0x10_0000, 1 << 20, 4096),
        ),
        libc::EINVAL,
        "report past the logged range",
    );
    expect(
        req(&mut c, Command::DeviceFeature, &report(0x0, 4096, 4096)),
        libc::EINVAL,
        "report outside logged ranges",
    );
    // The report page size may differ from START's (vfio-user spec).
    assert_eq!(
        req(
            &mut c,
            Command::DeviceFeature,
            &report(0x10_0000, 4096, 8192),
        )
        .errno(),
        None,
        "report page size differs"
    );
    expect(
        req(
            &mut c,
            Command::DeviceFeature,
            &report(0x10_0000, 4096, 1000),
        ),
        libc::EINVAL,
        "report page size not a power of two",
    );
    expect(
        req(&mut c, Command::DeviceFeature, &report(0x10_0000, 0, 4096)),
        libc::EINVAL,
        "empty report",
    );
    expect(
        req(&mut c, Command::DeviceFeature, &report(0x0, 1 << 50, 4096)),
        libc::E2BIG,
        "bitmap over max_data_xfer_size",
    );
    let mut bm = [0u8; 8];
    c.dma_logging_report(0x10_0000, 4096 * 64, 4096, &mut bm)
        .unwrap();
    healthy(&mut c);
}

#[test]
fn a_reply_sent_to_the_server() {
    let p = ServerProc::start("serial", None);
    let mut s = p.raw();
    let h = Header {
        msg_id: 5,
        cmd: 4,
        msg_size: 16,
        flags: TYPE_REPLY,
        error_no: 0,
    }
    .to_bytes();
    std::io::Write::write_all(&mut s, &h).unwrap();
    let (h, _) = read_reply(&mut s);
    assert_eq!((errno_of(&h), h.msg_id), (libc::EINVAL, 5));
    raw_healthy(&mut s);
}
