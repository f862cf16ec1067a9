//! The engine end to end against in-process sample devices
//! (`LocalDevice`): a running vgpu with its render and DMA engines on, a
//! guest whose vCPU dirties RAM, migrated over a UNIX socket pair with the
//! destination on another thread; and the failure paths.

use std::os::unix::net::UnixStream;
use std::time::Duration;
use vfio_migrate_backend::{MigState, MigrationDevice};
use vfio_migrate_engine::error::SourceState;
use vfio_migrate_engine::format::{RecordProblem, StreamError};
use vfio_migrate_engine::{
    migrate_in, migrate_out, Cancel, Deadlines, DestLink, DestOptions, EngineError, GuestRam, Link,
    MemfdRam, Phase, SourceOptions,
};
use vfio_migrate_harness::{SimGuest, VcpuConfig};

mod common;
use common::*;

#[test]
fn live_migration_with_running_engines_and_guest_is_verified() {
    let World {
        guest,
        dst_ram,
        mut src,
        mut dst,
    } = World::running(7);
    let run = migrate(
        &mut src,
        Some(&guest),
        &mut dst,
        Some(&dst_ram),
        SourceOptions {
            verifier: Some(verifier()),
            ..Default::default()
        },
    );
    let rep = run.source.expect("migration");
    let dest = run.dest.expect("destination");
    assert_eq!(rep.status, "ok");
    assert!(rep.verified, "{rep:#?}");
    assert!(rep.precopy_iterations >= 1);
    assert_eq!(rep.devices[0].digest_source, rep.devices[0].digest_dest);
    assert!(rep.ram_hash_source.is_some() && rep.ram_hash_source == rep.ram_hash_dest);
    assert!(rep.devices[0].precopy_bytes >= 16 * MIB, "{rep:#?}");
    assert!(
        rep.ram_bytes + rep.ram_zero_pages * 4096 >= 32 * MIB,
        "{rep:#?}"
    );
    // Live, the source compares; the destination reports what it loaded.
    assert_eq!(dest.devices[0].digest_dest, rep.devices[0].digest_dest);
    // The source is parked in STOP; its digest is the one that was sent.
    assert_eq!(src.state().unwrap(), MigState::Stop);
    let d = rd(&mut src, DIGEST);
    assert_eq!(
        rep.devices[0].digest_source.as_deref(),
        Some(format!("{d:#018x}").as_str())
    );
    // The destination runs: its render engine advances.
    assert_eq!(dst.state().unwrap(), MigState::Running);
    let f = rd(&mut dst, FRAME);
    std::thread::sleep(Duration::from_millis(30));
    assert!(rd(&mut dst, FRAME) > f, "destination engines do not run");
}

#[test]
fn guest_ram_arrives_byte_for_byte() {
    // Only the vCPU writes RAM, so the destination RAM (whose device does
    // no DMA) must equal the frozen source RAM after the migration.
    let mut guest = SimGuest::new(16 * MIB).unwrap();
    let dst_ram = MemfdRam::new("dest", 16 * MIB).unwrap();
    let mut src = vgpu("src", 4 * MIB, Some(guest.ram()));
    let mut dst = vgpu("dst", 4 * MIB, Some(&dst_ram));
    guest
        .start_vcpu(VcpuConfig {
            rate: 64 * MIB,
            offset: 0,
            length: 16 * MIB,
            seed: 3,
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let run = migrate(
        &mut src,
        Some(&guest),
        &mut dst,
        Some(&dst_ram),
        SourceOptions::default(),
    );
    run.source.expect("migration");
    run.dest.expect("destination");
    let mut a = vec![0u8; (16 * MIB) as usize];
    let mut b = vec![0u8; (16 * MIB) as usize];
    guest.read_pages(0, &mut a).unwrap();
    dst_ram.read_pages(0, &mut b).unwrap();
    assert!(a == b, "destination RAM differs from the source RAM");
    assert!(a.iter().any(|x| *x != 0), "the vCPU wrote nothing");
}

#[test]
fn incompatible_destination_refuses_before_the_source_stops() {
    let mut src = vgpu("src", 8 * MIB, None);
    let mut dst = vgpu("dst", 4 * MIB, None);
    wr(&mut src, SEED, 9);
    wr(&mut src, 0x60, 1234);
    let before = rd(&mut src, DIGEST);
    let run = migrate(&mut src, None, &mut dst, None, SourceOptions::default());
    let f = run.source.unwrap_err();
    match &f.error {
        EngineError::Refused { phase, reason, .. } => {
            assert_eq!(*phase, Phase::Setup);
            assert!(
                reason.contains("region 2 is 8388608 bytes at the source, 4194304"),
                "the refusal names the mismatch: {reason}"
            );
        }
        e => panic!("expected a refusal, got {e}"),
    }
    assert_eq!(f.state, SourceState::Restored);
    assert_eq!(f.report.precopy_iterations, 0);
    assert!(run.dest.is_err());
    assert_eq!(src.state().unwrap(), MigState::Running);
    assert_eq!(rd(&mut src, DIGEST), before);
    // The destination was never touched.
    assert_eq!(dst.state().unwrap(), MigState::Running);
}

#[test]
fn cancel_during_precopy_rolls_the_source_back() {
    let mut src = vgpu("src", 8 * MIB, None);
    let mut dst = vgpu("dst", 8 * MIB, None);
    wr(&mut src, SEED, 5);
    let before = rd(&mut src, DIGEST);
    let cancel = Cancel::new();
    let c2 = cancel.clone();
    let run = migrate(
        &mut src,
        None,
        &mut dst,
        None,
        SourceOptions {
            // Never converges: only the cancel ends it.
            downtime_limit: Duration::ZERO,
            max_iterations: u32::MAX,
            cancel,
            progress: Some(Box::new(move |p| {
                if p.iteration >= 3 {
                    c2.cancel();
                }
            })),
            ..Default::default()
        },
    );
    let f = run.source.unwrap_err();
    assert!(
        matches!(
            f.error,
            EngineError::Cancelled {
                phase: Phase::PreCopy
            }
        ),
        "{f}"
    );
    assert_eq!(f.state, SourceState::Restored);
    let e = run.dest.unwrap_err();
    assert!(matches!(e.error, EngineError::SourceAborted { .. }), "{e}");
    assert_eq!(src.state().unwrap(), MigState::Running);
    assert_eq!(rd(&mut src, DIGEST), before);
    assert_ne!(
        dst.state().unwrap(),
        MigState::Running,
        "the destination must not run"
    );
}

#[test]
fn destination_closing_mid_stream_rolls_the_source_back() {
    let mut src = vgpu("src", 16 * MIB, None);
    start_engines(&mut src, None);
    let (a, mut b) = UnixStream::pair().unwrap();
    // A destination that accepts, reads 1 MiB of pre-copy data, then
    // vanishes.
    let t = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut buf = vec![0u8; 4096];
        let _ = b.read(&mut buf).unwrap();
        let mut w = vfio_migrate_engine::format::RecordWriter::new(&mut b, "t");
        w.write_stream_header().unwrap();
        w.write(vfio_migrate_engine::format::Kind::Accept, u32::MAX, &[])
            .unwrap();
        w.flush().unwrap();
        let mut big = vec![0u8; MIB as usize];
        b.read_exact(&mut big).unwrap();
        b.flush().unwrap();
        drop(b);
    });
    let f = migrate_out(
        std::slice::from_mut(&mut src),
        None,
        Link::unix(a, "vanishing", &Deadlines::default()).unwrap(),
        SourceOptions::default(),
    )
    .unwrap_err();
    t.join().unwrap();
    assert_eq!(f.state, SourceState::Restored, "{f}");
    assert_eq!(src.state().unwrap(), MigState::Running);
    let fr = rd(&mut src, FRAME);
    std::thread::sleep(Duration::from_millis(30));
    assert!(rd(&mut src, FRAME) > fr, "source engines stopped");
}

#[test]
fn snapshot_round_trip_through_a_file() {
    let dir = std::env::temp_dir().join(format!("engine-snap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("snap.bin");
    let mut src = vgpu("src", 8 * MIB, None);
    start_engines(&mut src, None);
    std::thread::sleep(Duration::from_millis(30));
    let rep = migrate_out(
        std::slice::from_mut(&mut src),
        None,
        Link::file(std::fs::File::create(&path).unwrap(), "file"),
        SourceOptions {
            verifier: Some(verifier()),
            ..Default::default()
        },
    )
    .unwrap();
    // A snapshot leaves the source running.
    assert_eq!(src.state().unwrap(), MigState::Running);
    let digest = rep.devices[0].digest_source.clone().unwrap();

    let sum = vfio_migrate_engine::snapshot::check(std::fs::File::open(&path).unwrap(), "snap");
    assert!(sum.ok, "{:?}", sum.problems);
    assert_eq!(sum.devices.len(), 1);
    assert_eq!(sum.devices[0].digest.as_deref(), Some(digest.as_str()));

    let mut dst = vgpu("dst", 8 * MIB, None);
    let r = migrate_in(
        std::slice::from_mut(&mut dst),
        None,
        DestLink::file(std::fs::File::open(&path).unwrap(), "file"),
        DestOptions {
            verifier: Some(verifier()),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(r.verified);
    assert_eq!(r.devices[0].digest_dest.as_deref(), Some(digest.as_str()));

    // One flipped byte in the middle: the check names the record.
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let sum = vfio_migrate_engine::snapshot::check(std::fs::File::open(&path).unwrap(), "snap");
    assert!(!sum.ok);
    // The report is text (for `inspect`); the parser's error is typed.
    let mut p = vfio_migrate_engine::format::StreamParser::new(&bytes[..], "snap");
    p.read_header().unwrap();
    let e = loop {
        match p.read_event() {
            Ok(vfio_migrate_engine::format::Event::End) => panic!("the flip went unnoticed"),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert!(
        matches!(
            e,
            StreamError::Record {
                problem: RecordProblem::Checksum { .. },
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(sum.problems, [e.to_string()]);
    std::fs::remove_dir_all(&dir).unwrap();
}
