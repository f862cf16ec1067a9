//! End to end through server processes and the vfio-user client: live
//! migration of a running vgpu (pre-copy, DMA logging into a shared memfd
//! guest memory) and of the serial device, digests compared; plus the
//! server's lifecycle (state survives clients, DMA maps do not, SIGTERM,
//! socket mode, busy, live and stale sockets, a file in the way).

mod support;
mod wire;

use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use support::Served;
use vfio_migrate_abi::kernel::MigState;
use vfio_migrate_backend::{
    DmaDirtyLog, DmaMapping, DmaWindow, IovaRange, MigrationDevice, RegionAccess,
};
use vfio_migrate_client::Client;
use wire::*;

const GUEST_IOVA: u64 = 0x1_0000_0000;
const GUEST_SIZE: u64 = 8 << 20;
const PAGE: u64 = 4096;

use vfio_migrate_samples::vgpu::regs::reg as vgpu_reg;

fn reg(c: &mut Client, off: u64) -> u64 {
    let mut b = [0u8; 8];
    RegionAccess::region_read(c, 0, off, &mut b).unwrap();
    u64::from_le_bytes(b)
}

fn set_reg(c: &mut Client, off: u64, v: u64) {
    RegionAccess::region_write(c, 0, off, &v.to_le_bytes()).unwrap();
}

fn map_guest(c: &mut Client, ram: &std::os::fd::OwnedFd) {
    c.dma_map(DmaWindow {
        iova: GUEST_IOVA,
        size: GUEST_SIZE,
        fd: Some(ram.as_fd()),
        offset: 0,
        readable: true,
        writable: true,
    })
    .unwrap();
}

/// Moves everything the source has right now to the destination; returns
/// the bytes moved.
fn pump(src: &mut Client, dst: &mut Client, buf: &mut [u8]) -> usize {
    let mut moved = 0;
    loop {
        let n = src.read_data(buf).unwrap();
        if n == 0 {
            return moved;
        }
        dst.write_data(&buf[..n]).unwrap();
        moved += n;
    }
}

fn dirty_pages(c: &mut Client, seen: &mut [bool]) -> usize {
    let mut bm = vec![0u8; (GUEST_SIZE / PAGE / 8) as usize];
    c.dma_logging_report(GUEST_IOVA, GUEST_SIZE, PAGE, &mut bm)
        .unwrap();
    let mut n = 0;
    for (p, s) in seen.iter_mut().enumerate() {
        if bm[p / 8] & (1 << (p % 8)) != 0 {
            *s = true;
            n += 1;
        }
    }
    n
}

#[test]
fn vgpu_live_migration_with_precopy_and_dma_logging() {
    let src_p = Served::start("vgpu", Some(16 << 20));
    let dst_p = Served::start("vgpu", Some(16 << 20));
    let mut src = src_p.client();
    let mut dst = dst_p.client();
    assert!(src.peer_is_vfio_migrate());
    assert_eq!(reg(&mut src, vgpu_reg::ID), 0x5647_5055_0000_0001);

    // Compatibility is checked before anything moves.
    let d_src = src.descriptor().unwrap();
    let d_dst = dst.descriptor().unwrap();
    assert_eq!((d_src.vendor_id, d_src.device_id), (0x1b36, 0x00f0));
    assert_eq!(
        (
            d_src.subsystem_vendor_id,
            d_src.subsystem_id,
            d_src.revision
        ),
        (0x1b36, 0x0001, 1)
    );
    assert_eq!(d_src.region_sizes[2], 16 << 20);
    assert_eq!(d_src.migration_flags, 7);
    d_src.check_compatible(&d_dst).unwrap();

    // Shared guest memory, mapped into both servers.
    let ram = memfd(GUEST_SIZE);
    map_guest(&mut src, &ram);
    map_guest(&mut dst, &ram);

    // A busy device: render engine and DMA engine on.
    set_reg(&mut src, vgpu_reg::SEED, 0x5eed);
    set_reg(&mut src, vgpu_reg::DMA_IOVA, GUEST_IOVA);
    set_reg(&mut src, vgpu_reg::DMA_SIZE, GUEST_SIZE);
    set_reg(&mut src, vgpu_reg::RENDER_RATE, 32 << 20);
    set_reg(&mut src, vgpu_reg::DMA_RATE, 16 << 20);
    set_reg(&mut src, vgpu_reg::CONTROL, 3);
    std::thread::sleep(std::time::Duration::from_millis(100));

    assert!(src.dma_log().is_some());
    src.dma_logging_start(
        PAGE,
        &[IovaRange {
            iova: GUEST_IOVA,
            length: GUEST_SIZE,
        }],
    )
    .unwrap();
    // Snapshot after logging started: every later change must be logged.
    let before = pread(&ram, 0, GUEST_SIZE as usize);
    let mut logged = vec![false; (GUEST_SIZE / PAGE) as usize];

    src.set_state(MigState::PreCopy).unwrap();
    dst.set_state(MigState::Resuming).unwrap();
    assert_eq!(dst.state().unwrap(), MigState::Resuming);
    let info = src.precopy_info().unwrap();
    assert!(info.initial_bytes >= 16 << 20, "{info:?}");
    let mut buf = vec![0u8; src.preferred_chunk()];
    let mut total = 0;
    let mut dma_dirty = 0;
    for _ in 0..4 {
        total += pump(&mut src, &mut dst, &mut buf);
        dma_dirty += dirty_pages(&mut src, &mut logged);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        total >= 16 << 20,
        "initial data moved in pre-copy ({total} bytes)"
    );
    assert!(dma_dirty > 0, "the running DMA engine dirtied guest pages");
    let stop_copy = src
        .stop_copy_size()
        .unwrap()
        .expect("our server offers MIG_DATA_SIZE");
    assert!(stop_copy > 0);

    // Stop and copy.
    src.set_state(MigState::StopCopy).unwrap();
    dirty_pages(&mut src, &mut logged);
    let last = pump(&mut src, &mut dst, &mut buf);
    assert!(last > 0, "stop-copy carries registers and the end record");
    assert_eq!(src.read_data(&mut buf).unwrap(), 0, "end of state stays 0");
    src.dma_logging_stop().unwrap();
    dst.set_state(MigState::Stop).unwrap();

    // Every guest page the DMA engine changed was reported dirty.
    let after = pread(&ram, 0, GUEST_SIZE as usize);
    let mut changed = 0;
    let pages = before
        .chunks(PAGE as usize)
        .zip(after.chunks(PAGE as usize));
    for (p, ((b, a), was_logged)) in pages.zip(&logged).enumerate() {
        if b != a {
            changed += 1;
            assert!(*was_logged, "page {p} changed but was never reported dirty");
        }
    }
    assert!(changed > 0);

    // Same state on both sides.
    let a = reg(&mut src, vgpu_reg::DIGEST);
    let b = reg(&mut dst, vgpu_reg::DIGEST);
    assert_eq!(a, b, "digests differ after migration");
    for r in [
        vgpu_reg::FRAME,
        vgpu_reg::DMA_COUNT,
        vgpu_reg::CONTROL,
        vgpu_reg::SEED,
    ] {
        assert_eq!(reg(&mut src, r), reg(&mut dst, r), "register {r:#x}");
    }
    assert!(reg(&mut src, vgpu_reg::FRAME) > 0);
    assert_eq!(reg(&mut src, vgpu_reg::DMA_ERRORS), 0);

    // The destination runs on; its engines go on from where the source was.
    dst.set_state(MigState::Running).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    dst.set_state(MigState::Stop).unwrap();
    assert!(reg(&mut dst, vgpu_reg::FRAME) > reg(&mut src, vgpu_reg::FRAME));
    drop((src, dst));
    assert_eq!(src_p.stop(), Some(0));
    assert_eq!(dst_p.stop(), Some(0));
}

#[test]
fn serial_migration_stop_copy_only() {
    let src_p = Served::start("serial", None);
    let dst_p = Served::start("serial", None);
    let mut src = src_p.client();
    let mut dst = dst_p.client();
    assert_eq!(src.migration_flags().unwrap(), 1);
    assert_eq!(src.descriptor().unwrap().device_id, 0x00f1);
    for b in b"hello, world" {
        RegionAccess::region_write(&mut src, 0, 0, &[*b]).unwrap();
    }
    RegionAccess::region_write(&mut src, 0, 7, &[0x5a]).unwrap(); // SCR
    let e = src.set_state(MigState::PreCopy).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EINVAL), "serial has no pre-copy: {e}");
    let e = src.set_state(MigState::RunningP2p).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EINVAL), "serial has no P2P: {e}");
    assert!(src.precopy_info().is_err());

    src.set_state(MigState::StopCopy).unwrap();
    dst.set_state(MigState::Resuming).unwrap();
    let mut buf = vec![0u8; 4096];
    let mut state = Vec::new();
    loop {
        let n = src.read_data(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        state.extend_from_slice(&buf[..n]);
    }
    assert!(!state.is_empty());
    dst.write_data(&state).unwrap();
    dst.set_state(MigState::Stop).unwrap();
    let digest = |c: &mut Client| {
        let mut d = [0u8; 8];
        RegionAccess::region_read(c, 0, 0x10, &mut d).unwrap();
        u64::from_le_bytes(d)
    };
    assert_eq!(digest(&mut src), digest(&mut dst));
    dst.set_state(MigState::Running).unwrap();
    let mut got = Vec::new();
    for _ in 0..12 {
        let mut b = [0u8; 1];
        RegionAccess::region_read(&mut dst, 0, 0, &mut b).unwrap();
        got.push(b[0]);
    }
    assert_eq!(&got, b"hello, world", "the FIFO contents moved");
}

#[test]
fn corrupted_state_is_refused_and_destination_never_runs() {
    let src_p = Served::start("serial", None);
    let dst_p = Served::start("serial", None);
    let mut src = src_p.client();
    let mut dst = dst_p.client();
    RegionAccess::region_write(&mut src, 0, 0, b"x").unwrap();
    src.set_state(MigState::StopCopy).unwrap();
    dst.set_state(MigState::Resuming).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = src.read_data(&mut buf).unwrap();
    buf[n / 2] ^= 0x40;
    dst.write_data(&buf[..n]).ok();
    let e = dst.set_state(MigState::Running).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EINVAL), "{e}");
    assert_ne!(dst.state().unwrap(), MigState::Running);
}

#[test]
fn device_state_survives_clients_dma_maps_do_not() {
    let p = Served::start("vgpu", Some(1 << 20));
    let ram = memfd(GUEST_SIZE);
    {
        let mut c = p.client();
        set_reg(&mut c, vgpu_reg::SEED, 77);
        map_guest(&mut c, &ram);
        c.set_state(MigState::Stop).unwrap();
        // The same window again on the same connection overlaps.
        let e = c
            .dma_map(DmaWindow {
                iova: GUEST_IOVA,
                size: 4096,
                fd: Some(ram.as_fd()),
                offset: 0,
                readable: true,
                writable: true,
            })
            .unwrap_err();
        assert_eq!(e.errno(), Some(libc::EEXIST));
    }
    let mut c = p.client();
    assert_eq!(
        c.state().unwrap(),
        MigState::Stop,
        "state kept across clients"
    );
    assert_eq!(reg(&mut c, vgpu_reg::SEED), 77);
    // The window went with the old client: mapping it again works.
    map_guest(&mut c, &ram);
    c.dma_unmap(GUEST_IOVA, GUEST_SIZE).unwrap();
}

#[test]
fn socket_mode_sigterm_busy_and_stale_socket() {
    use vfio_migrate_server::{Listener, ServerError};
    let p = Served::start("serial", None);
    let mode = std::fs::metadata(&p.path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A second client while one is connected is refused with EBUSY.
    let first = p.client();
    let e = match Client::connect(&p.path) {
        Err(e) => e,
        Ok(_) => panic!("second client accepted"),
    };
    assert_eq!(e.errno(), Some(libc::EBUSY), "{e}");
    drop(first);
    let _again = p.client();
    drop(_again);
    // Another server on the same live path is refused.
    let e = Listener::bind(&p.path).unwrap_err();
    assert!(matches!(e, ServerError::InUse { .. }), "{e:?}");
    let path = p.path.clone();
    assert_eq!(p.stop(), Some(0));
    assert!(!exists(&path), "socket removed on SIGTERM");

    // A stale socket file (nobody listening) is replaced.
    let dir = vfio_migrate_harness::TempDir::new("stale").unwrap();
    let stale = dir.join("s.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(exists(&stale));
    let l = Listener::bind(&stale).unwrap();
    std::os::unix::net::UnixStream::connect(&stale).unwrap();
    drop(l);
    assert!(!exists(&stale), "socket removed with the listener");
    // A regular file at the path is never deleted.
    std::fs::write(&stale, b"keep me").unwrap();
    let e = Listener::bind(&stale).unwrap_err();
    assert!(matches!(e, ServerError::NotASocket { .. }), "{e:?}");
    assert_eq!(std::fs::read(&stale).unwrap(), b"keep me");
}

#[test]
fn region_info_caps_and_mmap_fd() {
    let p = Served::start("vgpu", Some(1 << 20));
    let mut c = p.client();
    let info = c.device_info().unwrap();
    assert!(info.num_regions >= 9);
    let bar2 = c.region_info(2).unwrap();
    assert_eq!(bar2.size, 1 << 20);
    assert_ne!(
        bar2.flags & vfio_migrate_abi::vfio_user::REGION_FLAG_MMAP,
        0
    );
    assert_eq!(bar2.sparse_areas, vec![(0, 1 << 20)]);
    let fd = bar2.fd.expect("BAR2 comes with its fd");
    // Device memory written through the region shows through the fd.
    RegionAccess::region_write(&mut c, 2, 8192, b"through the region").unwrap();
    assert_eq!(pread(&fd, 8192, 18), b"through the region");
    let bar0 = c.region_info(0).unwrap();
    assert!(bar0.fd.is_none());
    assert_eq!(bar0.size, 4096);
}

#[test]
fn forwarding_between_servers_spliced_and_buffered() {
    use vfio_migrate_client::{forward_mig_data, ClientConfig};
    for robust in [true, false] {
        let src_p = Served::start("vgpu", Some(4 << 20));
        let dst_p = Served::start("vgpu", Some(4 << 20));
        let mut src = src_p.client();
        let cfg = ClientConfig {
            propose_extension: robust,
            ..Default::default()
        };
        let mut dst = Client::connect_with(&dst_p.path, cfg).unwrap();
        assert_eq!(dst.peer_is_vfio_migrate(), robust);
        assert_eq!(dst.write_chunk(), if robust { 8 << 20 } else { 32 << 10 });
        set_reg(&mut src, vgpu_reg::SEED, 99);
        set_reg(&mut src, vgpu_reg::RENDER_RATE, 256 << 20);
        set_reg(&mut src, vgpu_reg::CONTROL, 1);
        std::thread::sleep(std::time::Duration::from_millis(60));
        src.set_state(MigState::StopCopy).unwrap();
        dst.set_state(MigState::Resuming).unwrap();
        let n = forward_mig_data(&mut src, &mut dst, 1 << 20).unwrap();
        assert!(n > 4 << 20, "{n} bytes");
        dst.set_state(MigState::Stop).unwrap();
        assert_eq!(
            reg(&mut src, vgpu_reg::DIGEST),
            reg(&mut dst, vgpu_reg::DIGEST),
            "robust={robust}"
        );
        // A destination that refuses the data is reported, and both
        // connections stay usable.
        src.set_state(MigState::Stop).unwrap();
        src.set_state(MigState::StopCopy).unwrap();
        let e = forward_mig_data(&mut src, &mut dst, 1 << 20).unwrap_err();
        assert_eq!(
            e.errno(),
            Some(libc::EINVAL),
            "destination not RESUMING: {e}"
        );
        assert_eq!(src.state().unwrap(), MigState::StopCopy);
        assert_eq!(dst.state().unwrap(), MigState::Stop);
    }
}

#[test]
fn dma_log_reports_split_to_fit_small_transfer_limits() {
    use vfio_migrate_client::ClientConfig;
    let p = Served::start("vgpu", Some(64 << 10));
    // 256-byte replies: an 8 MiB report (256 bytes of bitmap) needs pieces.
    let cfg = ClientConfig {
        max_data_xfer_size: 256,
        ..Default::default()
    };
    let mut c = Client::connect_with(&p.path, cfg).unwrap();
    let ram = memfd(GUEST_SIZE);
    map_guest(&mut c, &ram);
    c.dma_logging_start(PAGE, &[]).unwrap();
    let before = pread(&ram, 0, GUEST_SIZE as usize);
    set_reg(&mut c, vgpu_reg::SEED, 3);
    set_reg(&mut c, vgpu_reg::DMA_IOVA, GUEST_IOVA);
    set_reg(&mut c, vgpu_reg::DMA_SIZE, GUEST_SIZE);
    set_reg(&mut c, vgpu_reg::DMA_RATE, 64 << 20);
    set_reg(&mut c, vgpu_reg::CONTROL, 2);
    std::thread::sleep(std::time::Duration::from_millis(60));
    c.set_state(MigState::Stop).unwrap();
    let mut bm = vec![0u8; (GUEST_SIZE / PAGE / 8) as usize];
    c.dma_logging_report(GUEST_IOVA, GUEST_SIZE, PAGE, &mut bm)
        .unwrap();
    let after = pread(&ram, 0, GUEST_SIZE as usize);
    let mut changed = 0;
    for (p, (b, a)) in before
        .chunks(PAGE as usize)
        .zip(after.chunks(PAGE as usize))
        .enumerate()
    {
        let dirty = bm[p / 8] & (1 << (p % 8)) != 0;
        if b != a {
            changed += 1;
            assert!(dirty, "page {p} changed but is not in the report");
        }
    }
    assert!(changed > 0, "the DMA engine wrote guest memory");
}

#[test]
fn checksummed_replies_move_data_through_a_pipe_with_its_checksum() {
    use vfio_migrate_backend::DataSplice;
    let src_p = Served::start("vgpu", Some(2 << 20));
    let dst_p = Served::start("vgpu", Some(2 << 20));
    let (mut src, mut dst) = (src_p.client(), dst_p.client());
    render(&mut src, 5);
    src.set_state(MigState::StopCopy).unwrap();
    dst.set_state(MigState::Resuming).unwrap();
    let (r, w) = vfio_migrate_sys::fd::pipe(libc::O_CLOEXEC).unwrap();
    vfio_migrate_sys::fd::set_pipe_size(w.as_fd(), 1 << 20).unwrap();
    let mut r = std::fs::File::from(r);
    let mut chunks = 0;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        // Alternate: spliced with its checksum, and a plain copying read
        // on the same connection (which skips the checksum block).
        if chunks % 2 == 0 {
            let mut data = Vec::new();
            let (n, crc) = src
                .read_data_spliced(w.as_fd(), 256 << 10, 0, &mut |ev| {
                    out_of_pipe(&mut r, ev, &mut data)
                })
                .unwrap()
                .expect("our server checksums its replies");
            if n == 0 {
                break;
            }
            assert_eq!(data.len(), n);
            assert_eq!(crc, crc32c::crc32c(&data), "chunk {chunks}");
            dst.mig_data_write(&data).unwrap();
        } else {
            let n = src.mig_data_read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            dst.mig_data_write(&buf[..n]).unwrap();
        }
        chunks += 1;
    }
    assert!(chunks > 8, "{chunks} chunks");
    dst.set_state(MigState::Stop).unwrap();
    assert_eq!(
        reg(&mut src, vgpu_reg::DIGEST),
        reg(&mut dst, vgpu_reg::DIGEST)
    );
    // A client that proposes no extension cannot ask for them.
    let cfg = vfio_migrate_client::ClientConfig {
        propose_extension: false,
        ..Default::default()
    };
    drop(src);
    let mut plain = Client::connect_with(&src_p.path, cfg).unwrap();
    assert!(!plain.enable_mig_data_crc().unwrap());
}

/// Lets the vgpu's render engine (seeded with `seed`) write its memory for
/// 30 ms.
fn render(c: &mut Client, seed: u64) {
    set_reg(c, vgpu_reg::SEED, seed);
    set_reg(c, vgpu_reg::RENDER_RATE, 256 << 20);
    set_reg(c, vgpu_reg::CONTROL, 1);
    std::thread::sleep(std::time::Duration::from_millis(30));
}

/// Takes what a spliced read put into the pipe (read end `r`) into `data`.
fn out_of_pipe(
    r: &mut std::fs::File,
    ev: vfio_migrate_backend::Spliced,
    data: &mut Vec<u8>,
) -> std::io::Result<()> {
    use std::io::Read;
    match ev {
        vfio_migrate_backend::Spliced::Head { len, .. } => data.reserve(len),
        vfio_migrate_backend::Spliced::Data(k) => {
            let at = data.len();
            data.resize(at + k, 0);
            r.read_exact(&mut data[at..])?;
        }
    }
    Ok(())
}

/// Writes `data` into `w` (an empty pipe with room), for the fill of a
/// spliced write.
fn into_pipe(w: std::os::fd::BorrowedFd<'_>, data: &[u8]) -> std::io::Result<usize> {
    use std::io::Write;
    let mut f = std::fs::File::from(w.try_clone_to_owned()?);
    f.write_all(data)?;
    Ok(data.len())
}

#[test]
fn reads_sent_ahead_and_writes_left_unanswered_move_the_whole_state_in_order() {
    use vfio_migrate_backend::DataSplice;
    let src_p = Served::start("vgpu", Some(4 << 20));
    let dst_p = Served::start("vgpu", Some(4 << 20));
    let (mut src, mut dst) = (src_p.client(), dst_p.client());
    render(&mut src, 9);
    src.set_state(MigState::StopCopy).unwrap();
    dst.set_state(MigState::Resuming).unwrap();
    assert!(dst.enable_mig_data_crc().unwrap());
    let (r, w) = vfio_migrate_sys::fd::pipe(libc::O_CLOEXEC).unwrap();
    vfio_migrate_sys::fd::set_pipe_size(w.as_fd(), 1 << 20).unwrap();
    let (wr, ww) = vfio_migrate_sys::fd::pipe(libc::O_CLOEXEC).unwrap();
    vfio_migrate_sys::fd::set_pipe_size(ww.as_fd(), 1 << 20).unwrap();
    let mut r = std::fs::File::from(r);
    let (mut moved, mut most_ahead, mut writes) = (0usize, 0usize, 0usize);
    let mut short = false;
    loop {
        // Three reads in flight until the device says it has no more;
        // then the ones in flight are collected (0 bytes: the end).
        let ahead = if short { 0 } else { 3 };
        let mut data = Vec::new();
        let (n, crc) = src
            .read_data_spliced(w.as_fd(), 128 << 10, ahead, &mut |ev| {
                out_of_pipe(&mut r, ev, &mut data)
            })
            .unwrap()
            .expect("our server checksums its replies");
        most_ahead = most_ahead.max(src.reads_ahead());
        if n == 0 && src.reads_ahead() == 0 {
            break;
        }
        short |= n < 128 << 10;
        if n == 0 {
            continue;
        }
        assert_eq!(data.len(), n);
        assert_eq!(crc, crc32c::crc32c(&data));
        assert!(dst
            .write_data_spliced(wr.as_fd(), n, crc, &mut |_| into_pipe(ww.as_fd(), &data))
            .unwrap());
        moved += n;
        writes += 1;
    }
    assert_eq!(most_ahead, 3, "reads were kept in flight");
    assert!(
        writes > 20 && moved > 4 << 20,
        "{writes} writes, {moved} bytes"
    );
    dst.flush_writes().unwrap();
    dst.set_state(MigState::Stop).unwrap();
    assert_eq!(
        reg(&mut src, vgpu_reg::DIGEST),
        reg(&mut dst, vgpu_reg::DIGEST)
    );
    drop(wr);
}

#[test]
fn reads_in_flight_are_dropped_when_the_stream_is_abandoned_and_the_device_rolls_back_intact() {
    use vfio_migrate_backend::DataSplice;
    let p = Served::start("vgpu", Some(4 << 20));
    let mut c = p.client();
    render(&mut c, 3);
    set_reg(&mut c, vgpu_reg::CONTROL, 0);
    let before = reg(&mut c, vgpu_reg::DIGEST);
    c.set_state(MigState::StopCopy).unwrap();
    let (_r, w) = vfio_migrate_sys::fd::pipe(libc::O_CLOEXEC).unwrap();
    vfio_migrate_sys::fd::set_pipe_size(w.as_fd(), 1 << 20).unwrap();
    let (mut r, mut data) = (std::fs::File::from(_r), Vec::new());
    let (n, _) = c
        .read_data_spliced(w.as_fd(), 64 << 10, 4, &mut |ev| {
            out_of_pipe(&mut r, ev, &mut data)
        })
        .unwrap()
        .unwrap();
    assert_eq!(n, 64 << 10);
    assert_eq!(c.reads_ahead(), 4);
    // Any other command answers them first (their data is dropped) and
    // the connection stays in step: the rollback works.
    assert_eq!(c.state().unwrap(), MigState::StopCopy);
    assert_eq!(c.reads_ahead(), 0);
    c.set_state(MigState::Stop).unwrap();
    c.set_state(MigState::Running).unwrap();
    assert_eq!(reg(&mut c, vgpu_reg::DIGEST), before, "state intact");
}

#[test]
fn a_refused_spliced_write_is_reported_by_a_later_write_or_by_flush_writes() {
    use vfio_migrate_backend::{BackendError, DataSplice};
    let p = Served::start("vgpu", Some(1 << 20));
    let mut c = p.client();
    c.set_state(MigState::Resuming).unwrap();
    assert!(c.enable_mig_data_crc().unwrap());
    let (r, w) = vfio_migrate_sys::fd::pipe(libc::O_CLOEXEC).unwrap();
    let data = vec![0x5a_u8; 4096];
    let wrong = crc32c::crc32c(&data) ^ 1;
    let mut fill = |_: usize| into_pipe(w.as_fd(), &data);
    // Sent, not answered yet.
    assert!(c
        .write_data_spliced(r.as_fd(), 4096, wrong, &mut fill)
        .unwrap());
    let refused = |e: BackendError| match e {
        BackendError::Refused { errno, detail, .. } => {
            assert_eq!(errno, libc::EILSEQ);
            assert!(detail.contains("corrupted"), "{detail}");
        }
        e => panic!("expected a refusal, got {e}"),
    };
    refused(c.flush_writes().unwrap_err());
    c.flush_writes().unwrap();
    // With as many in flight as allowed, the next write waits for the
    // oldest answer and reports its refusal (and is not sent).
    for _ in 0..vfio_migrate_client::WRITES_IN_FLIGHT {
        assert!(c
            .write_data_spliced(r.as_fd(), 4096, wrong, &mut fill)
            .unwrap());
    }
    refused(
        c.write_data_spliced(r.as_fd(), 4096, wrong, &mut fill)
            .unwrap_err(),
    );
    refused(c.flush_writes().unwrap_err());
    // A command in between answers it and keeps the refusal for the flush.
    assert!(c
        .write_data_spliced(r.as_fd(), 4096, wrong, &mut fill)
        .unwrap());
    assert_eq!(c.state().unwrap(), MigState::Resuming);
    refused(c.flush_writes().unwrap_err());
    // Nothing was loaded: the device never took a byte.
    c.reset().unwrap();
}

#[test]
fn a_reply_that_needs_more_pipe_slots_than_the_pipe_has_moves_in_several_pipefuls() {
    use vfio_migrate_backend::{DataSplice, Spliced};
    let p = Served::start("vgpu", Some(2 << 20));
    let mut c = p.client();
    render(&mut c, 4);
    c.set_state(MigState::StopCopy).unwrap();
    // A pipe of 32 slots, asked for as many bytes as it holds: the stopped
    // vgpu's reply is a run of its memory's pages (a slot each) plus
    // record framing (more slots), so it cannot fit in one pipeful.
    let (r, w) = vfio_migrate_sys::fd::pipe(libc::O_CLOEXEC).unwrap();
    let cap = vfio_migrate_sys::fd::set_pipe_size(w.as_fd(), 128 << 10).unwrap();
    assert_eq!(cap, 128 << 10);
    let mut r = std::fs::File::from(r);
    let (mut total, mut most_pipefuls) = (0usize, 0usize);
    loop {
        let mut data = Vec::new();
        let mut pipefuls = 0;
        let (n, crc) = c
            .read_data_spliced(w.as_fd(), cap, 0, &mut |ev| {
                pipefuls += usize::from(matches!(ev, Spliced::Data(_)));
                out_of_pipe(&mut r, ev, &mut data)
            })
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        assert_eq!((data.len(), crc), (n, crc32c::crc32c(&data)));
        most_pipefuls = most_pipefuls.max(pipefuls);
        total += n;
    }
    assert!(total > 2 << 20, "{total}");
    assert!(most_pipefuls >= 2, "a reply took {most_pipefuls} pipefuls");
}

#[test]
fn a_server_that_stops_mid_reply_is_given_up_on_at_the_stall_deadline() {
    use vfio_migrate_backend::{DataSplice, Spliced};
    let mut p = Served::start("vgpu", Some(32 << 20));
    let cfg = vfio_migrate_client::ClientConfig {
        timeout: std::time::Duration::from_secs(1),
        ..Default::default()
    };
    let mut c = Client::connect_with(&p.path, cfg).unwrap();
    c.set_state(MigState::StopCopy).unwrap();
    let (r, w) = vfio_migrate_sys::fd::pipe(libc::O_CLOEXEC).unwrap();
    let mut r = std::fs::File::from(r);
    let mut data = Vec::new();
    let mut stopped_at = None;
    // Four 8 MiB replies asked for at once cannot all fit the server's
    // socket buffer: stopped after the first pipeful arrived, the server
    // is still sending, and one of the replies stops in the middle.
    let res = loop {
        let r = c.read_data_spliced(w.as_fd(), 8 << 20, 3, &mut |ev| {
            if matches!(ev, Spliced::Data(_)) && stopped_at.is_none() {
                p.signal(libc::SIGSTOP);
                stopped_at = Some(std::time::Instant::now());
            }
            out_of_pipe(&mut r, ev, &mut data)
        });
        if r.is_err() || data.len() >= 32 << 20 {
            break r;
        }
    };
    let took = stopped_at.expect("data arrived").elapsed();
    p.signal(libc::SIGCONT);
    let e = res.expect_err("a reply that stops must fail");
    assert!(
        took < std::time::Duration::from_secs(4),
        "given up after {took:?}: {e}"
    );
    assert!(
        data.len() < 32 << 20,
        "the replies were cut ({} bytes)",
        data.len()
    );
}
