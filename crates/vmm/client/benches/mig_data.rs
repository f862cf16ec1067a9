//! MIG_DATA throughput: a vgpu's whole state (1 GiB of device memory by
//! default) moved out of one `vfio-migrate serve` process with
//! MIG_DATA_READ and into another with MIG_DATA_WRITE, through the
//! vfio-user client, against the limits measured in the same run: the same
//! bytes over a raw AF_UNIX socketpair (one hop, same chunk and socket
//! buffer sizes) and memcpy.
//!
//! `cargo bench -p vfio-migrate-vfio-user --bench mig_data`
//! Environment: `MIG_BENCH_MEM` (device memory, default `1G`),
//! `MIG_BENCH_RUNS` (default 3; the best run of each is reported).

mod common;
use common::{binary, memcpy, raw_socket, serve_vgpu};
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};
use vfio_migrate_abi::kernel::MigState;
use vfio_migrate_backend::{MigrationDevice, RegionAccess};
use vfio_migrate_client::{forward_mig_data, Client, ClientConfig};
use vfio_migrate_harness::TempDir;

fn parse_size(s: &str) -> u64 {
    let (n, m) = match s.as_bytes().last() {
        Some(b'K') => (&s[..s.len() - 1], 1 << 10),
        Some(b'M') => (&s[..s.len() - 1], 1 << 20),
        Some(b'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    n.parse::<u64>().expect("MIG_BENCH_MEM like 1G") * m
}

/// Moves the whole stop-copy state; reader and writer overlap (two
/// threads, a bounded queue of reused buffers). Returns (bytes, seconds).
fn move_pipelined(src: &mut Client, dst: &mut Client) -> (u64, f64) {
    let chunk = src.preferred_chunk();
    const DEPTH: usize = 3;
    let (full_tx, full_rx) = sync_channel::<(Vec<u8>, usize)>(DEPTH);
    let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(DEPTH + 1);
    for _ in 0..DEPTH + 1 {
        empty_tx.send(vec![0u8; chunk]).unwrap();
    }
    let t0 = Instant::now();
    let total = std::thread::scope(|sc| {
        let writer = sc.spawn(move || {
            let mut total = 0u64;
            while let Ok((buf, n)) = full_rx.recv() {
                dst.write_data(&buf[..n]).expect("MIG_DATA_WRITE");
                total += n as u64;
                if empty_tx.send(buf).is_err() {
                    break;
                }
            }
            total
        });
        loop {
            let mut buf = empty_rx.recv().unwrap();
            let n = src.read_data(&mut buf).expect("MIG_DATA_READ");
            if n == 0 {
                break;
            }
            full_tx.send((buf, n)).unwrap();
        }
        drop(full_tx);
        writer.join().unwrap()
    });
    (total, t0.elapsed().as_secs_f64())
}

/// Spliced forwarding (no copy through the mover), reads overlapped with
/// the destination's writes.
fn move_spliced(src: &mut Client, dst: &mut Client) -> (u64, f64) {
    let chunk = std::env::var("MIG_BENCH_CHUNK")
        .ok()
        .map(|v| parse_size(&v))
        .unwrap_or(src.preferred_chunk() as u64) as usize;
    let t0 = Instant::now();
    let n = forward_mig_data(src, dst, chunk).expect("forward");
    (n, t0.elapsed().as_secs_f64())
}

/// The same, one thread: read a chunk, write it, repeat.
fn move_sequential(src: &mut Client, dst: &mut Client) -> (u64, f64) {
    let mut buf = vec![0u8; src.preferred_chunk()];
    let t0 = Instant::now();
    let mut total = 0u64;
    loop {
        let n = src.read_data(&mut buf).expect("MIG_DATA_READ");
        if n == 0 {
            break;
        }
        dst.write_data(&buf[..n]).expect("MIG_DATA_WRITE");
        total += n as u64;
    }
    (total, t0.elapsed().as_secs_f64())
}

fn digest(c: &mut Client) -> u64 {
    let mut b = [0u8; 8];
    RegionAccess::region_read(c, 0, 0x38, &mut b).unwrap();
    u64::from_le_bytes(b)
}

/// CPU seconds (user + system) used so far by process `pid` (0 = self).
fn cpu_secs(pid: u32) -> f64 {
    let path = if pid == 0 {
        "/proc/self/stat".to_string()
    } else {
        format!("/proc/{pid}/stat")
    };
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / vfio_migrate_sys::signal::clock_ticks_per_second() as f64
}

fn gib_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / (1u64 << 30) as f64
}

fn main() {
    let mem = std::env::var("MIG_BENCH_MEM").unwrap_or_else(|_| "1G".into());
    let runs: usize = std::env::var("MIG_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let bin = binary();
    let dir = TempDir::new("mig-data-bench").unwrap();
    let s = serve_vgpu(&bin, &dir, "src.sock", &mem, &[]);
    let d = serve_vgpu(&bin, &dir, "dst.sock", &mem, &[]);
    let mut src = Client::connect_with(s.socket(), ClientConfig::default()).unwrap();
    let mut dst = Client::connect_with(d.socket(), ClientConfig::default()).unwrap();

    // Give the device memory real content: run the render engine over it.
    let mem_bytes = parse_size(&mem);
    for (r, v) in [(0x30u64, 0xbe7c_u64), (0x10, 8u64 << 30), (0x08, 1)] {
        RegionAccess::region_write(&mut src, 0, r, &v.to_le_bytes()).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    src.set_state(MigState::Stop).unwrap();

    println!("vfio-user MIG_DATA throughput: vgpu with {mem} device memory, {runs} runs each, best reported");
    println!(
        "chunk {} KiB (server max_data_xfer_size), peer recognised as vfio-migrate: {}",
        src.preferred_chunk() >> 10,
        dst.peer_is_vfio_migrate()
    );
    type Mover = fn(&mut Client, &mut Client) -> (u64, f64);
    let movers: [(&str, Mover); 3] = [
        ("spliced", move_spliced),
        ("two-thread copy", move_pipelined),
        ("sequential copy", move_sequential),
    ];
    let mut best = [(0u64, f64::MAX); 3];
    // Run 0 is a warm-up (first touch of the destination's memory).
    for i in 0..=runs * 3 {
        let m = if i == 0 { 0 } else { (i - 1) % 3 };
        src.set_state(MigState::StopCopy).unwrap();
        dst.set_state(MigState::Resuming).unwrap();
        let cpu0 = [cpu_secs(s.pid()), cpu_secs(0), cpu_secs(d.pid())];
        let (bytes, secs) = movers[m].1(&mut src, &mut dst);
        let cpu1 = [cpu_secs(s.pid()), cpu_secs(0), cpu_secs(d.pid())];
        let gib = bytes as f64 / (1u64 << 30) as f64;
        println!(
            "  run {i} ({}): {:.2} GiB/s; CPU s/GiB: source server {:.2}, mover {:.2}, destination server {:.2}",
            if i == 0 { "warm-up" } else { movers[m].0 },
            gib / secs,
            (cpu1[0] - cpu0[0]) / gib,
            (cpu1[1] - cpu0[1]) / gib,
            (cpu1[2] - cpu0[2]) / gib
        );
        assert!(
            bytes >= mem_bytes,
            "moved {bytes} bytes, less than device memory"
        );
        dst.set_state(MigState::Stop).unwrap();
        src.set_state(MigState::Stop).unwrap();
        assert_eq!(
            digest(&mut src),
            digest(&mut dst),
            "digests differ after run {i}"
        );
        if i > 0 && secs < best[m].1 {
            best[m] = (bytes, secs);
        }
    }
    let bytes = best[0].0;
    let raw = (0..runs)
        .map(|_| raw_socket(bytes, src.preferred_chunk(), 4 << 20))
        .fold(f64::MAX, f64::min);
    let mc = (0..runs).map(|_| memcpy(bytes)).fold(f64::MAX, f64::min);
    let r = gib_s(bytes, raw);
    let mcp = gib_s(bytes, mc);
    println!("state bytes                        {bytes:>12}");
    println!("raw AF_UNIX socketpair (limit)     {r:>8.2} GiB/s");
    println!("memcpy                             {mcp:>8.2} GiB/s");
    for (k, (name, _)) in movers.iter().enumerate() {
        let g = gib_s(best[k].0, best[k].1);
        println!(
            "MIG_DATA, {name:<24} {g:>8.2} GiB/s   {:.2} of raw socket, {:.2} of memcpy",
            g / r,
            g / mcp
        );
    }
    let p = gib_s(best[0].0, best[0].1);
    println!(
        "goal: spliced >= 0.80 of raw socket: {}",
        if p / r >= 0.8 { "met" } else { "NOT met" }
    );
    drop((src, dst));
    drop((s, d));
}
