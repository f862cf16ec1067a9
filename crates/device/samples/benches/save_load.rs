//! Save and load of a 256 MiB vgpu state through the SDK, as a ratio to
//! `memcpy` of the same bytes measured in the same run.
//!
//! ```sh
//! cargo bench -p vfio-migrate-device --bench save_load
//! VGPU_BENCH_MIB=64 VGPU_BENCH_ROUNDS=3 cargo bench -p vfio-migrate-device --bench save_load
//! ```
//!
//! - memcpy: one copy of device memory (source BAR2 mapping) into another
//!   device memory (destination BAR2 mapping) — the limit.
//! - save: `read_data` of the whole STOP_COPY stream in 1 MiB chunks into
//!   one 256 MiB buffer (page copies from device memory plus CRC-32C) —
//!   the same memory traffic as the memcpy plus the CRC.
//! - save, reused chunk: the same reads into one reused 1 MiB buffer, the
//!   way the engine reads (a chunk is sent on before the next read).
//! - load: `write_data` of that stream in 1 MiB chunks into a RESUMING
//!   vgpu (copies into device memory plus CRC-32C), then RESUMING → STOP
//!   (validation).
//! - pipelined: save a chunk, load it, repeat — the in-process migration
//!   path: two copies and two CRCs against the one memcpy.
//!
//! - DIGEST: one read of the vgpu's digest register after a load (only
//!   pages written since they were loaded are hashed: none), what
//!   migration verification costs per device and side; DIGEST_FULL: every
//!   page hashed (`--full-verify`). Both must be equal.
//!
//! Each figure is the best of several rounds; the digests of source and
//! destination are compared after every round.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vfio_migrate_backend::{MigState, MigrationDevice, RegionAccess};
use vfio_migrate_device::{Device, DeviceCore, DmaSpace, LocalDevice};
use vfio_migrate_samples::hash::fill_pseudo_random;
use vfio_migrate_samples::mem::SharedMemory;
use vfio_migrate_samples::vgpu::regs::reg;
use vfio_migrate_samples::vgpu::{Vgpu, VgpuConfig, BAR2};

const CHUNK: usize = 1 << 20;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        Err(_) => default,
    }
}

fn vgpu(mem: u64) -> (LocalDevice<Vgpu>, SharedMemory) {
    let dma = Arc::new(DmaSpace::new());
    let dev = Vgpu::new(
        VgpuConfig {
            mem_size: mem,
            ..Default::default()
        },
        dma.clone(),
    )
    .expect("vgpu");
    let fd = dev
        .regions()
        .into_iter()
        .find(|r| r.index == BAR2)
        .and_then(|r| r.mmap)
        .expect("BAR2 is mmap-able")
        .fd;
    let map = SharedMemory::map(fd, mem).expect("map BAR2");
    let h = LocalDevice::new("bench", Arc::new(Mutex::new(DeviceCore::new(dev, dma))));
    (h, map)
}

fn digest(h: &mut LocalDevice<Vgpu>) -> u64 {
    read(h, reg::DIGEST)
}

fn read(h: &mut LocalDevice<Vgpu>, off: u64) -> u64 {
    let mut b = [0u8; 8];
    h.region_read(0, off, &mut b).unwrap();
    u64::from_le_bytes(b)
}

fn gib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / (1u64 << 30) as f64
}

fn main() {
    // `cargo bench` passes `--bench`; ignore any arguments.
    let mib = env_u64("VGPU_BENCH_MIB", 256);
    let rounds = env_u64("VGPU_BENCH_ROUNDS", 5).max(1);
    let mem = mib << 20;
    let (mut src, src_map) = vgpu(mem);
    let (mut dst, dst_map) = vgpu(mem);

    // Non-zero, incompressible device memory at the source; touch the
    // destination so that no run pays first-touch page faults.
    let mut block = vec![0u8; CHUNK];
    let mut at = 0;
    while at < mem {
        fill_pseudo_random(at ^ 0x5eed, &mut block);
        src_map.write(at, &block).unwrap();
        dst_map.fill(at, CHUNK, 1).unwrap();
        at += CHUNK as u64;
    }
    src.set_state(MigState::Stop).unwrap();

    // Room for the whole stream (its upper bound plus a chunk), touched.
    let bound = src.stop_copy_size().unwrap().expect("vgpu gives a size");
    let mut stream = vec![1u8; bound as usize + CHUNK];
    let mut stream_len = 0;
    let mut best_memcpy = Duration::MAX;
    let mut best_save = Duration::MAX;
    let mut best_load = Duration::MAX;
    let mut best_pipe = Duration::MAX;
    let mut best_digest = Duration::MAX;
    let mut best_digest_full = Duration::MAX;
    let mut best_save_reuse = Duration::MAX;
    let mut chunk = vec![0u8; CHUNK];
    let want = digest(&mut src);

    for _ in 0..rounds {
        // memcpy: source device memory → destination device memory, one
        // copy of every byte.
        let t = Instant::now();
        src_map.copy_to(0, &dst_map, 0, mem as usize).unwrap();
        best_memcpy = best_memcpy.min(t.elapsed());

        // save: the whole stream, read in 1 MiB chunks into a buffer
        // allocated and touched before the clock starts.
        src.set_state(MigState::StopCopy).unwrap();
        let mut len = 0;
        let t = Instant::now();
        loop {
            if stream.len() < len + CHUNK {
                panic!("the stream is larger than its upper bound");
            }
            let n = src.read_data(&mut stream[len..len + CHUNK]).unwrap();
            if n == 0 {
                break;
            }
            len += n;
        }
        best_save = best_save.min(t.elapsed());
        stream_len = len as u64;
        src.set_state(MigState::Stop).unwrap();

        // save into one reused 1 MiB buffer (how the engine reads: a chunk
        // at a time, sent on before the next read).
        src.set_state(MigState::StopCopy).unwrap();
        let t = Instant::now();
        let mut total = 0;
        loop {
            let n = src.read_data(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            total += n;
        }
        best_save_reuse = best_save_reuse.min(t.elapsed());
        assert_eq!(total, len, "both saves produce the same amount");
        src.set_state(MigState::Stop).unwrap();

        // load: the stream in 1 MiB chunks, then validation.
        dst.set_state(MigState::Resuming).unwrap();
        let t = Instant::now();
        for c in stream[..len].chunks(CHUNK) {
            dst.write_data(c).unwrap();
        }
        dst.set_state(MigState::Stop).unwrap();
        best_load = best_load.min(t.elapsed());
        assert_eq!(digest(&mut dst), want, "load produced a different device");

        // pipelined save → load.
        src.set_state(MigState::StopCopy).unwrap();
        dst.set_state(MigState::Resuming).unwrap();
        let t = Instant::now();
        loop {
            let n = src.read_data(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            dst.write_data(&chunk[..n]).unwrap();
        }
        dst.set_state(MigState::Stop).unwrap();
        best_pipe = best_pipe.min(t.elapsed());
        src.set_state(MigState::Stop).unwrap();
        let t = Instant::now();
        let d = digest(&mut dst);
        best_digest = best_digest.min(t.elapsed());
        assert_eq!(d, want, "pipelined migration produced a different device");
        let t = Instant::now();
        let full = read(&mut dst, reg::DIGEST_FULL);
        best_digest_full = best_digest_full.min(t.elapsed());
        assert_eq!(
            full, d,
            "the incremental digest differs from a full re-hash"
        );
    }

    println!(
        "save_load: vgpu {mib} MiB of device memory, stream {:.1} MiB, {} KiB chunks, best of {rounds}",
        stream_len as f64 / (1 << 20) as f64,
        CHUNK >> 10
    );
    let line = |what: &str, d: Duration, note: &str| {
        println!(
            "  {what:<22} {:>8.1} ms  {:>6.2} GiB/s  ratio to memcpy {:.2}{note}",
            d.as_secs_f64() * 1e3,
            gib_s(mem, d),
            best_memcpy.as_secs_f64() / d.as_secs_f64(),
        );
    };
    line("memcpy (limit)", best_memcpy, "");
    line("save", best_save, "  (goal >= 0.5)");
    line(
        "save, reused chunk",
        best_save_reuse,
        "  (one 1 MiB buffer, as the engine reads)",
    );
    line("load", best_load, "  (goal >= 0.5)");
    line(
        "DIGEST register read",
        best_digest,
        "  (after a load: nothing left to hash)",
    );
    line(
        "DIGEST_FULL register read",
        best_digest_full,
        "  (every page hashed, 2 threads)",
    );
    line(
        "save+load pipelined",
        best_pipe,
        "  (two copies + two CRCs vs one copy)",
    );
}
