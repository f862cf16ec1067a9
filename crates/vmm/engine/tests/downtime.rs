//! The short-downtime machinery end to end against in-process vgpus:
//! incremental digests that equal a full re-hash, the downtime breakdown
//! adding up, switchover acknowledgement, and a device re-initialising its
//! pre-copy data mid-migration (REINIT).

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vfio_migrate_backend::{MigState, MigrationDevice};
use vfio_migrate_engine::SourceOptions;

#[test]
fn incremental_digests_equal_a_full_rehash_and_the_downtime_adds_up() {
    let World {
        guest,
        dst_ram,
        mut src,
        mut dst,
    } = World::running(9);
    let run = migrate(
        &mut src,
        Some(&guest),
        &mut dst,
        Some(&dst_ram),
        SourceOptions {
            verifier: Some(verifier()),
            // The RAM hash kept as pages went must equal RAM hashed whole.
            full_verify: true,
            ..Default::default()
        },
    );
    let rep = run.source.expect("migration");
    run.dest.expect("destination");
    assert!(rep.verified, "{rep:#?}");
    assert!(rep.switchover_ack, "the destination acknowledges: {rep:#?}");
    // The cached per-page terms give the digest a full re-hash gives, at
    // both ends (the source stopped, the destination just loaded).
    let (s, sf) = (rd(&mut src, DIGEST), rd(&mut src, DIGEST_FULL));
    assert_eq!(s, sf, "source: incremental vs full");
    assert_eq!(
        rep.devices[0].digest_source.as_deref(),
        Some(format!("{s:#018x}").as_str())
    );
    // The parts of the downtime add up to it.
    let b = &rep.downtime_breakdown;
    assert!(
        (b.total_ms() - rep.downtime_ms).abs() < 0.01,
        "{b:?} vs {}",
        rep.downtime_ms
    );
    assert!(b.stop_ms > 0.0 && b.resume_ms > 0.0, "{b:?}");
    assert!(rep.expected_downtime_ms.is_finite() && rep.expected_fixed_ms > 0.0);
    assert!(!rep.rounds.is_empty() && rep.rounds.len() as u32 == rep.precopy_iterations + 1);
    // The destination runs; stopped, its digest is still exact.
    dst.set_state(MigState::Stop).unwrap();
    assert_eq!(rd(&mut dst, DIGEST), rd(&mut dst, DIGEST_FULL));
}

#[test]
fn a_device_reinitialising_mid_migration_is_sent_again_and_acknowledged() {
    let mut src = vgpu("src", 8 * MIB, None);
    let mut dst = vgpu("dst", 8 * MIB, None);
    start_engines(&mut src, None);
    std::thread::sleep(Duration::from_millis(20));
    // A mode change once the first round was sent: the whole framebuffer
    // is redrawn and its initial data starts again.
    let core = src.core().clone();
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let progress = Box::new(move |p: &vfio_migrate_engine::Progress| {
        if p.iteration == 1 && !d.swap(true, Ordering::SeqCst) {
            core.lock()
                .unwrap()
                .region_write(0, MODESET, &1u64.to_le_bytes())
                .unwrap();
        }
    });
    let run = migrate(
        &mut src,
        None,
        &mut dst,
        None,
        SourceOptions {
            verifier: Some(verifier()),
            progress: Some(progress),
            ..Default::default()
        },
    );
    let rep = run.source.expect("migration");
    run.dest.expect("destination");
    assert!(done.load(Ordering::SeqCst), "the mode change happened");
    assert_eq!(rep.reinits, 1, "{rep:#?}");
    assert!(rep.switchover_ack);
    assert!(rep.verified, "{rep:#?}");
    // The initial data went twice: before and after the mode change.
    assert!(rep.devices[0].precopy_bytes >= 16 * MIB, "{rep:#?}");
    assert_eq!(rd(&mut src, DIGEST), rd(&mut src, DIGEST_FULL));
}
