//! Liveness of the link between source and destination: a destination
//! that is slow but alive (validating for longer than the stall timeout)
//! is waited for, kept alive by its heartbeats; a destination that goes
//! silent is given up on after the stall timeout, and the source rolls
//! back; a cancel ends a blocked wait at once.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vfio_migrate_backend::{MigState, MigrationDevice, RegionAccess};
use vfio_migrate_device::{DeviceCore, DmaSpace, LocalDevice};
use vfio_migrate_engine::error::SourceState;
use vfio_migrate_engine::format::{Kind, RecordWriter, NO_DEVICE};
use vfio_migrate_engine::{
    migrate_in, migrate_out, Cancel, Deadlines, DestLink, DestOptions, EngineError, Link, Phase,
    SourceOptions,
};
use vfio_migrate_samples::vgpu::{Latency, Vgpu, VgpuConfig};

use vfio_migrate_samples::vgpu::regs::reg::{DIGEST, SEED};

fn vgpu(name: &str, latency: Latency) -> LocalDevice<Vgpu> {
    let dma = Arc::new(DmaSpace::new());
    let dev = Vgpu::new(
        VgpuConfig {
            mem_size: 1 << 20,
            latency,
        },
        dma.clone(),
    )
    .unwrap();
    LocalDevice::new(name, Arc::new(Mutex::new(DeviceCore::new(dev, dma))))
}

fn digest(d: &mut LocalDevice<Vgpu>) -> u64 {
    let s = d.state().unwrap();
    d.set_state(MigState::Stop).unwrap();
    let mut b = [0u8; 8];
    d.region_read(0, DIGEST, &mut b).unwrap();
    d.set_state(s).unwrap();
    u64::from_le_bytes(b)
}

fn quick(stall_ms: u64, cancel: &Cancel) -> Deadlines {
    Deadlines {
        connect: Duration::from_secs(5),
        stall: Duration::from_millis(stall_ms),
        cancel: cancel.clone(),
    }
}

#[test]
fn a_destination_validating_longer_than_the_stall_timeout_is_waited_for() {
    let mut src = vgpu("src", Latency::default());
    src.region_write(0, SEED, &7u64.to_le_bytes()).unwrap();
    let before = digest(&mut src);
    // The destination takes 2 s to validate; the link gives up after
    // 600 ms of silence: only the destination's heartbeats keep it alive.
    let mut dst = vgpu(
        "dst",
        Latency {
            validate: Duration::from_secs(2),
            ..Latency::default()
        },
    );
    let (a, b) = UnixStream::pair().unwrap();
    let cancel = Cancel::new();
    let d = quick(600, &cancel);
    let t = Instant::now();
    let dest = std::thread::spawn(move || {
        let r = migrate_in(
            std::slice::from_mut(&mut dst),
            None,
            DestLink::unix(b, "src", &quick(600, &Cancel::new())).unwrap(),
            DestOptions::default(),
        );
        (r, dst)
    });
    let r = migrate_out(
        std::slice::from_mut(&mut src),
        None,
        Link::unix(a, "dst", &d).unwrap(),
        SourceOptions {
            precopy: false,
            cancel,
            ..Default::default()
        },
    );
    let (dr, mut dst) = dest.join().unwrap();
    assert!(r.is_ok(), "{}", r.unwrap_err());
    dr.unwrap();
    assert!(t.elapsed() >= Duration::from_secs(2));
    assert_eq!(dst.state().unwrap(), MigState::Running);
    assert_eq!(digest(&mut dst), before);
}

#[test]
fn a_destination_that_goes_silent_is_given_up_on_and_the_source_rolls_back() {
    let mut src = vgpu("src", Latency::default());
    src.region_write(0, SEED, &9u64.to_le_bytes()).unwrap();
    let before = digest(&mut src);
    let (a, mut b) = UnixStream::pair().unwrap();
    // A destination that accepts, then says nothing more (no heartbeats)
    // and reads nothing: a peer process that stopped.
    let fake = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        let _ = b.read(&mut buf).unwrap();
        let mut w = RecordWriter::new(&mut b, "fake");
        w.write_stream_header().unwrap();
        w.write(Kind::Accept, NO_DEVICE, &[]).unwrap();
        w.flush().unwrap();
        std::thread::sleep(Duration::from_secs(4));
        drop(b);
    });
    let cancel = Cancel::new();
    let t = Instant::now();
    let f = migrate_out(
        std::slice::from_mut(&mut src),
        None,
        Link::unix(a, "silent", &quick(700, &cancel)).unwrap(),
        SourceOptions {
            cancel,
            // Pre-copy forever: only the silence can end it.
            downtime_limit: Duration::ZERO,
            max_iterations: u32::MAX,
            ..Default::default()
        },
    )
    .unwrap_err();
    let took = t.elapsed();
    assert!(
        matches!(f.error, EngineError::Stalled { .. }),
        "{}",
        f.error
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(f.state, SourceState::Restored);
    assert_eq!(src.state().unwrap(), MigState::Running);
    assert_eq!(digest(&mut src), before);
    fake.join().unwrap();
}

#[test]
fn a_cancel_ends_a_blocked_send_at_once() {
    let mut src = vgpu("src", Latency::default());
    let (a, mut b) = UnixStream::pair().unwrap();
    // Accepts, then stops reading: the source blocks in a send.
    let fake = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        let _ = b.read(&mut buf).unwrap();
        let mut w = RecordWriter::new(&mut b, "fake");
        w.write_stream_header().unwrap();
        w.write(Kind::Accept, NO_DEVICE, &[]).unwrap();
        w.flush().unwrap();
        // Keep heartbeating by hand (so the stall timeout cannot be what
        // ends it), never reading.
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(50));
            let _ = w.write_heartbeat();
        }
    });
    let cancel = Cancel::new();
    let c = cancel.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        c.cancel();
    });
    let t = Instant::now();
    let f = migrate_out(
        std::slice::from_mut(&mut src),
        None,
        Link::unix(a, "stuck", &quick(30_000, &cancel)).unwrap(),
        SourceOptions {
            cancel,
            downtime_limit: Duration::ZERO,
            max_iterations: u32::MAX,
            ..Default::default()
        },
    )
    .unwrap_err();
    let took = t.elapsed();
    assert!(
        matches!(f.error, EngineError::Cancelled { .. }),
        "{}",
        f.error
    );
    assert!(took < Duration::from_millis(2500), "{took:?}");
    assert_eq!(f.error.phase(), Phase::PreCopy);
    assert_eq!(src.state().unwrap(), MigState::Running);
    // The fake peer stops on its own once the link is closed.
    drop(fake);
}
