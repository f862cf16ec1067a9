//! Live migration of a running vgpu between two in-process instances
//! through the SDK's `LocalDevice` handles: pre-copy rounds while both
//! engines run, stop-copy, resume, digest comparison, DMA dirty logging of
//! guest memory, and refusal of bad states at the end of RESUMING.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::time::Duration;
use vfio_migrate_backend::{DmaDirtyLog, IovaRange, MigState, MigrationDevice, RegionAccess};
use vfio_migrate_samples::mem::SharedMemory;
use vfio_migrate_samples::vgpu::engines::dma_target;
use vfio_migrate_samples::vgpu::regs::reg;

const PAGE: u64 = 4096;

/// Reads and clears the DMA dirty log of the guest window into `seen`.
fn collect_dma_log(h: &mut impl MigrationDevice, guest_len: u64, seen: &mut BTreeSet<u64>) {
    let pages = guest_len / PAGE;
    let mut bitmap = vec![0u8; (pages.div_ceil(64) * 8) as usize];
    h.dma_log()
        .expect("DMA logging")
        .dma_logging_report(GUEST_IOVA, guest_len, PAGE, &mut bitmap)
        .expect("DMA logging report");
    for p in 0..pages {
        if bitmap[(p / 8) as usize] & (1 << (p % 8)) != 0 {
            seen.insert(p);
        }
    }
}

#[test]
fn live_migration_with_precopy_rounds_matches_digest() {
    let mem = 32 * MIB;
    let guest_len = 8 * MIB;
    let guest = SharedMemory::new("guest", guest_len).unwrap();
    let mut a = vgpu("vgpu-a", mem);
    let mut b = vgpu("vgpu-b", mem);
    map_guest(&mut a, &guest);
    map_guest(&mut b, &guest);

    // Compatibility as the engine checks it.
    let (da, db) = (a.descriptor().unwrap(), b.descriptor().unwrap());
    da.check_compatible(&db).unwrap();
    assert_eq!((da.vendor_id, da.device_id), (0x1b36, 0x00f0));
    assert_eq!(da.region_sizes[2], mem);

    // DMA logging on before the DMA engine writes anything.
    a.dma_logging_start(
        PAGE,
        &[IovaRange {
            iova: GUEST_IOVA,
            length: guest_len,
        }],
    )
    .unwrap();

    write_reg(&mut a, reg::SEED, 0x5eed);
    write_reg(&mut a, reg::RENDER_RATE, 16 * MIB); // 4096 frames/s
    write_reg(&mut a, reg::DMA_RATE, 2 * MIB);
    write_reg(&mut a, reg::DMA_IOVA, GUEST_IOVA);
    write_reg(&mut a, reg::DMA_SIZE, guest_len);
    write_reg(&mut a, reg::SCRATCH, 0xfeed_f00d);
    write_reg(&mut a, reg::CONTROL, 3);
    std::thread::sleep(Duration::from_millis(50));
    assert!(read_reg(&mut a, reg::FRAME) > 0, "render engine runs");

    b.set_state(MigState::Resuming).unwrap();
    a.set_state(MigState::PreCopy).unwrap();
    let full = a.precopy_info().unwrap();
    assert!(full.initial_bytes >= mem, "{full:?}");

    let mut dma_seen = BTreeSet::new();
    let mut rounds = Vec::new();
    for round in 0..6 {
        let info = a.precopy_info().unwrap();
        // One round: what is pending at its start (the device may keep
        // producing while the engines run).
        let budget = info.initial_bytes + info.dirty_bytes;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        while got < budget {
            let n = a.read_data(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            b.write_data(&buf[..n]).unwrap();
            got += n as u64;
        }
        if round == 0 {
            assert!(got >= mem, "initial pass sent {got} bytes");
            assert_eq!(a.precopy_info().unwrap().initial_bytes, 0);
        }
        rounds.push(got);
        collect_dma_log(&mut a, guest_len, &mut dma_seen);
        std::thread::sleep(Duration::from_millis(40));
    }
    let dirty_rounds = rounds[1..].iter().filter(|&&n| n > 0).count();
    assert!(
        dirty_rounds > 1,
        "more than one pre-copy round after the initial pass must carry dirty pages: {rounds:?}"
    );

    let estimate = a.stop_copy_size().unwrap().unwrap();
    a.set_state(MigState::StopCopy).unwrap();
    let frame = read_reg(&mut a, reg::FRAME);
    let dma_count = read_reg(&mut a, reg::DMA_COUNT);
    let mut buf = vec![0u8; 1 << 20];
    let mut final_bytes = 0u64;
    loop {
        let n = a.read_data(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        final_bytes += n as u64;
        b.write_data(&buf[..n]).unwrap();
    }
    assert_eq!(a.read_data(&mut buf).unwrap(), 0, "0 forever after the end");
    // The estimate was taken before the last writes of the engines; the
    // final stop-copy is at least the registers and end record and never
    // the whole memory again.
    assert!(final_bytes > 0 && final_bytes < mem / 2, "{final_bytes}");
    assert!(estimate < mem / 2, "stop-copy estimate {estimate}");

    // Engines are stopped: counters and memory are frozen.
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(read_reg(&mut a, reg::FRAME), frame);
    assert_eq!(read_reg(&mut a, reg::DMA_COUNT), dma_count);
    assert!(
        frame > 100 && dma_count > 10,
        "frame {frame} dma {dma_count}"
    );

    b.set_state(MigState::Stop).unwrap();
    let digest_a = read_reg(&mut a, reg::DIGEST);
    let digest_b = read_reg(&mut b, reg::DIGEST);
    assert_eq!(digest_a, digest_b, "digests differ after migration");
    for r in [
        reg::CONTROL,
        reg::RENDER_RATE,
        reg::DMA_RATE,
        reg::DMA_IOVA,
        reg::DMA_SIZE,
        reg::SEED,
        reg::SCRATCH,
        reg::FRAME,
        reg::DMA_COUNT,
        reg::DMA_ERRORS,
    ] {
        assert_eq!(read_reg(&mut a, r), read_reg(&mut b, r), "register {r:#x}");
    }
    let mut cfg_a = [0u8; 64];
    let mut cfg_b = [0u8; 64];
    a.region_read(7, 0, &mut cfg_a).unwrap();
    b.region_read(7, 0, &mut cfg_b).unwrap();
    assert_eq!(cfg_a, cfg_b);

    // Every guest page the DMA engine wrote was reported by DMA logging.
    collect_dma_log(&mut a, guest_len, &mut dma_seen);
    let mut page = vec![0u8; PAGE as usize];
    let mut written = 0;
    for p in 0..guest_len / PAGE {
        guest.read(p * PAGE, &mut page).unwrap();
        if page.iter().any(|&x| x != 0) {
            written += 1;
            assert!(
                dma_seen.contains(&p),
                "guest page {p} was written but not reported"
            );
        }
    }
    assert!(written > 0);
    let (off, _, _) = dma_target(0x5eed, 0, guest_len);
    assert!(
        dma_seen.contains(&(off / PAGE)),
        "the first DMA write's page is reported"
    );
    a.dma_logging_stop().unwrap();

    // The destination runs on from the migrated state.
    b.set_state(MigState::Running).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    assert!(
        read_reg(&mut b, reg::FRAME) > frame,
        "destination engines run"
    );
    b.set_state(MigState::Stop).unwrap();
    assert_ne!(read_reg(&mut b, reg::DIGEST), digest_a);
}

#[test]
fn stop_copy_without_precopy_sends_everything_and_estimate_is_exact() {
    let mem = 4 * MIB;
    let mut a = vgpu("a", mem);
    let mut b = vgpu("b", mem);
    fill_bar2(&mut a, mem, 11);
    write_reg(&mut a, reg::SEED, 3);
    a.set_state(MigState::Stop).unwrap();
    let estimate = a.stop_copy_size().unwrap().unwrap();
    a.set_state(MigState::StopCopy).unwrap();
    assert_eq!(a.stop_copy_size().unwrap().unwrap(), estimate);
    let stream = stop_copy_stream(&mut a, 1 << 20);
    let len = stream.len() as u64;
    assert!(len > mem);
    // An upper bound within 0.5 %.
    assert!(
        len <= estimate && estimate - len < len / 200,
        "{len} vs {estimate}"
    );
    assert_eq!(a.stop_copy_size().unwrap().unwrap(), 0);

    b.set_state(MigState::Resuming).unwrap();
    b.write_data(&stream).unwrap();
    b.set_state(MigState::Stop).unwrap();
    assert_eq!(read_reg(&mut a, reg::DIGEST), read_reg(&mut b, reg::DIGEST));
    let mut x = [0u8; 4096];
    let mut y = [0u8; 4096];
    a.region_read(2, mem - 4096, &mut x).unwrap();
    b.region_read(2, mem - 4096, &mut y).unwrap();
    assert_eq!(x, y);
}

/// `stream` loads into a fresh vgpu of `mem` bytes written in pieces of
/// each of `splits` bytes, to `digest` with SCRATCH = `scratch`.
fn loads_split_anywhere(stream: &[u8], mem: u64, digest: u64, scratch: u64, splits: &[usize]) {
    for &split in splits {
        let mut b = vgpu("b", mem);
        b.set_state(MigState::Resuming).unwrap();
        for c in stream.chunks(split) {
            b.write_data(c).unwrap();
        }
        b.set_state(MigState::Stop).unwrap();
        assert_eq!(read_reg(&mut b, reg::DIGEST), digest, "split {split}");
        assert_eq!(read_reg(&mut b, reg::SCRATCH), scratch);
    }
}

/// Records may be split at any byte boundary, on both sides.
#[test]
fn odd_chunk_sizes_on_both_sides() {
    let mem = 256 << 10;
    let mut a = vgpu("a", mem);
    fill_bar2(&mut a, mem, 99);
    write_reg(&mut a, reg::SCRATCH, 42);
    a.set_state(MigState::StopCopy).unwrap();
    // Source: tiny and odd reads (the outbox path and partial records).
    let mut stream = Vec::new();
    let sizes = [1usize, 7, 13, 4099, 4100, 4117, 16, 3, 8191, 65537];
    let mut i = 0;
    loop {
        let mut buf = vec![0u8; sizes[i % sizes.len()]];
        i += 1;
        let n = a.read_data(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        stream.extend_from_slice(&buf[..n]);
    }
    let digest = read_reg(&mut a, reg::DIGEST);
    loads_split_anywhere(&stream, mem, digest, 42, &[1, 3, 11, 4095, 4100, 12289]);
    // The same state saved with big reads (records of other sizes) loads
    // to the same device.
    a.set_state(MigState::Stop).unwrap();
    a.set_state(MigState::StopCopy).unwrap();
    let big = stop_copy_stream(&mut a, 8 << 20);
    assert!(big != stream, "record framing follows the read sizes");
    let mut b = vgpu("b", mem);
    b.set_state(MigState::Resuming).unwrap();
    b.write_data(&big).unwrap();
    b.set_state(MigState::Stop).unwrap();
    assert_eq!(read_reg(&mut b, reg::DIGEST), digest);
}

fn saved_state(mem: u64, seed: u64) -> (Vec<u8>, u64) {
    let mut a = vgpu("src", mem);
    fill_bar2(&mut a, mem, seed);
    a.set_state(MigState::StopCopy).unwrap();
    let s = stop_copy_stream(&mut a, 1 << 20);
    let d = read_reg(&mut a, reg::DIGEST);
    (s, d)
}

/// Feeds `data` (ignoring early refusals) and returns the error that ends
/// RESUMING; the device must still be RESUMING afterwards.
fn refused_resume(b: &mut VgpuHandle, data: &[u8]) -> String {
    b.set_state(MigState::Resuming).unwrap();
    let early = b.write_data(data).err();
    let e = b
        .set_state(MigState::Stop)
        .expect_err("RESUMING -> STOP must refuse a bad state");
    assert_eq!(e.errno(), Some(libc::EINVAL), "{e}");
    assert_eq!(b.state().unwrap(), MigState::Resuming, "stays in RESUMING");
    if let Some(early) = early {
        assert_eq!(early.errno(), Some(libc::EINVAL));
    }
    // Trying again reports the same problem; the device never runs.
    assert!(b.set_state(MigState::Running).is_err());
    assert_eq!(b.state().unwrap(), MigState::Resuming);
    e.to_string()
}

#[test]
fn truncated_and_corrupted_states_are_refused_and_reset_recovers() {
    let mem = MIB;
    let (stream, digest) = saved_state(mem, 5);
    let mut b = vgpu("dst", mem);

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "cut inside a record",
            stream[..stream.len() / 2].to_vec(),
            "truncated",
        ),
        (
            "cut before the end record",
            stream[..stream.len() - 32].to_vec(),
            "no end record",
        ),
        (
            "one byte short",
            stream[..stream.len() - 1].to_vec(),
            "truncated",
        ),
        ("empty", Vec::new(), "empty"),
        (
            "flipped page byte",
            {
                let mut s = stream.clone();
                s[100_000] ^= 1;
                s
            },
            "checksum mismatch",
        ),
        (
            "flipped register byte",
            {
                let mut s = stream.clone();
                let n = s.len();
                s[n - 100] ^= 0x10;
                s
            },
            "checksum mismatch",
        ),
        ("garbage", vec![0xa5; 5000], "bad record tag"),
    ];
    for (what, data, want) in cases {
        let msg = refused_resume(&mut b, &data);
        assert!(msg.contains(want), "{what}: {msg}");
        assert!(msg.contains("RESUMING -> STOP failed"), "{what}: {msg}");
        b.reset().unwrap();
        assert_eq!(b.state().unwrap(), MigState::Running);
    }

    // After a reset the device takes a good state.
    b.set_state(MigState::Resuming).unwrap();
    b.write_data(&stream).unwrap();
    b.set_state(MigState::Stop).unwrap();
    assert_eq!(read_reg(&mut b, reg::DIGEST), digest);
}

#[test]
fn state_from_another_size_is_refused_naming_both_sizes() {
    let (stream, _) = saved_state(4 * MIB, 1);
    let mut b = vgpu("dst", 2 * MIB);
    let msg = refused_resume(&mut b, &stream);
    assert!(
        msg.contains("4 MiB (4194304 bytes)") && msg.contains("2 MiB (2097152 bytes)"),
        "{msg}"
    );
}

#[test]
fn a_serial_state_is_not_a_vgpu_state() {
    let mut s = serial("serial");
    s.set_state(MigState::StopCopy).unwrap();
    let stream = stop_copy_stream(&mut s, 4096);
    let mut b = vgpu("dst", MIB);
    let msg = refused_resume(&mut b, &stream);
    assert!(msg.contains("not a vgpu state"), "{msg}");
}

#[test]
fn precopy_cancel_and_restart_sends_everything_again() {
    let mem = MIB;
    let mut a = vgpu("a", mem);
    fill_bar2(&mut a, mem, 8);
    a.set_state(MigState::PreCopy).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    a.read_data(&mut buf).unwrap();
    let left = a.precopy_info().unwrap().initial_bytes;
    assert!(left > 0 && left < mem, "{left}");
    // Cancel: back to RUNNING, the stream is dropped.
    a.set_state(MigState::Running).unwrap();
    assert!(
        a.read_data(&mut buf).is_err(),
        "no data outside PRE_COPY/STOP_COPY"
    );
    a.set_state(MigState::PreCopy).unwrap();
    assert!(a.precopy_info().unwrap().initial_bytes > mem);
    let mut b = vgpu("b", mem);
    b.set_state(MigState::Resuming).unwrap();
    drain(&mut a, 1 << 20, |c| b.write_data(c).unwrap());
    assert_eq!(a.precopy_info().unwrap(), Default::default());
    // STOP_COPY cannot go back to PRE_COPY.
    a.set_state(MigState::StopCopy).unwrap();
    let e = a.set_state(MigState::PreCopy).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EINVAL));
    assert_eq!(a.state().unwrap(), MigState::StopCopy);
    drain(&mut a, 1 << 20, |c| b.write_data(c).unwrap());
    b.set_state(MigState::Stop).unwrap();
    assert_eq!(read_reg(&mut a, reg::DIGEST), read_reg(&mut b, reg::DIGEST));
}

/// A page dirtied after it was sent in pre-copy is sent again, and the
/// pre-copy estimate says so.
#[test]
fn pages_written_during_precopy_are_resent() {
    let mem = MIB;
    let mut a = vgpu("a", mem);
    let mut b = vgpu("b", mem);
    b.set_state(MigState::Resuming).unwrap();
    a.set_state(MigState::PreCopy).unwrap();
    drain(&mut a, 1 << 20, |c| b.write_data(c).unwrap());
    assert_eq!(a.precopy_info().unwrap().dirty_bytes, 0);
    a.region_write(2, 5 * 4096 + 10, b"changed").unwrap();
    a.region_write(2, 200 * 4096, b"also").unwrap();
    let info = a.precopy_info().unwrap();
    assert_eq!(info.initial_bytes, 0);
    assert!((2 * 4096..3 * 4096).contains(&info.dirty_bytes), "{info:?}");
    let resent = drain(&mut a, 1 << 20, |c| b.write_data(c).unwrap());
    assert!((2 * 4096..3 * 4096).contains(&resent), "{resent}");
    a.set_state(MigState::StopCopy).unwrap();
    drain(&mut a, 1 << 20, |c| b.write_data(c).unwrap());
    b.set_state(MigState::Stop).unwrap();
    let mut got = [0u8; 7];
    b.region_read(2, 5 * 4096 + 10, &mut got).unwrap();
    assert_eq!(&got, b"changed");
    assert_eq!(read_reg(&mut a, reg::DIGEST), read_reg(&mut b, reg::DIGEST));
}

/// The chunk `pieces` describes, read as the server sends it (file ranges
/// read at their offsets).
fn materialize(pieces: &vfio_migrate_device::SavePieces) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut out = Vec::with_capacity(pieces.len());
    for p in pieces.pieces() {
        match p {
            vfio_migrate_device::Piece::Bytes(r) => {
                out.extend_from_slice(&pieces.bytes()[r.clone()])
            }
            vfio_migrate_device::Piece::File { fd, offset, len } => {
                let f = std::fs::File::from(fd.try_clone().unwrap());
                let mut b = vec![0u8; *len];
                f.read_exact_at(&mut b, *offset).unwrap();
                out.extend_from_slice(&b);
            }
        }
    }
    out
}

/// A stopped vgpu describes its stop-copy stream as page runs over its
/// memfd (nothing copied) plus framing and copied scattered pages; every
/// chunk is as long as asked until the end, its checksum is that of its
/// bytes, and the stream loads — split anywhere — into the same device.
#[test]
fn stop_copy_described_as_page_runs_of_the_memfd_loads_to_the_same_device() {
    let mem = 2 * MIB;
    let mut a = vgpu("a", mem);
    fill_bar2(&mut a, mem, 5);
    write_reg(&mut a, reg::SCRATCH, 77);
    // Pre-copy first: the initial pass goes, then scattered pages are
    // dirtied, so the stop-copy part is runs with gaps.
    a.set_state(MigState::PreCopy).unwrap();
    let mut stream = Vec::new();
    drain(&mut a, 256 << 10, |b| stream.extend_from_slice(b));
    // Scattered pages (copied as a pages record) and a run of 40 (spliced
    // from the memfd as a page run).
    for p in [3u64, 4, 5, 9, 200, 201, 511] {
        a.regions()
            .unwrap()
            .region_write(2, p * 4096 + 17, &[p as u8 ^ 0xa5; 100])
            .unwrap();
    }
    a.regions()
        .unwrap()
        .region_write(2, 100 * 4096, &vec![0x3c; 100 * 4096])
        .unwrap();
    a.set_state(MigState::StopCopy).unwrap();
    let core = a.core().clone();
    let mut pieces = vfio_migrate_device::SavePieces::new();
    let (mut files, mut copied) = (0, 0);
    for max in [5000usize, 128 << 10, 4099, 128 << 10].into_iter().cycle() {
        let described = core
            .lock()
            .unwrap()
            .read_data_pieces(max, &mut pieces)
            .unwrap();
        let Some(n) = described else {
            // The small rest (under 256 KiB) is copied, and continues the
            // same stream.
            let mut buf = vec![0u8; max];
            let n = core.lock().unwrap().read_data(&mut buf).unwrap();
            stream.extend_from_slice(&buf[..n]);
            copied += n;
            if n == 0 {
                break;
            }
            continue;
        };
        assert!(copied == 0, "pieces after the copied rest");
        let bytes = materialize(&pieces);
        assert_eq!(bytes.len(), n);
        assert_eq!(n, max, "the end is copied, so a described chunk is full");
        assert_eq!(pieces.crc(), crc32c::crc32c(&bytes), "chunk checksum");
        files += pieces
            .pieces()
            .iter()
            .filter(|p| matches!(p, vfio_migrate_device::Piece::File { .. }))
            .count();
        stream.extend_from_slice(&bytes);
    }
    assert!(files >= 1, "the dirty run went as ranges of the memfd");
    assert!(copied > 0 && copied < 256 << 10, "{copied} bytes copied");
    let digest = read_reg(&mut a, reg::DIGEST);
    loads_split_anywhere(&stream, mem, digest, 77, &[1, 7, 4096, 4105, 1 << 20]);
    // Not while running: the pages would change after they were hashed.
    a.set_state(MigState::Running).unwrap();
    a.set_state(MigState::PreCopy).unwrap();
    assert_eq!(
        core.lock()
            .unwrap()
            .read_data_pieces(1 << 20, &mut pieces)
            .unwrap(),
        None
    );
}
