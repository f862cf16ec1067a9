//! Device-state throughput of the three migration protocols: a vgpu's
//! whole STOP_COPY state (256 MiB of device memory by default) read out of
//! one `vfio-migrate serve --protocol all` process through
//!
//! - the seed region's data section, mmap'd (header accesses are
//!   REGION_READ/WRITE, the data is copied out of the shared mapping),
//! - the seed region with the data moved by REGION_READ messages,
//! - the v1 region, mmap'd and by REGION_READ,
//! - v2 MIG_DATA_READ,
//!
//! each against the limits measured in the same run: memcpy of the same
//! bytes, and the same bytes over a raw AF_UNIX socketpair (same chunk and
//! socket buffer). Every path reads 1 MiB at a time (the data section
//! size).
//!
//! `cargo bench -p vfio-migrate-vfio-user --bench regions`
//! Environment: `REGION_BENCH_MEM` (device memory, default `256M`),
//! `REGION_BENCH_RUNS` (default 3; the best run of each is reported).

mod common;
use common::{binary, memcpy};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;
use vfio_migrate_abi::kernel::MigState;
use vfio_migrate_backend::MigrationDevice;
use vfio_migrate_client::{Client, SeedDevice, V1Device};

const CHUNK: usize = 1 << 20;
const SNDBUF: usize = 4 << 20;

struct Srv {
    child: Child,
    path: PathBuf,
}

impl Srv {
    fn start(bin: &Path, dir: &Path, mem: &str) -> Self {
        let path = dir.join("bench.sock");
        let mut child = Command::new(bin)
            .args(["serve", "--device", "vgpu", "--protocol", "all"])
            .args(["--device-mem", mem, "--socket"])
            .arg(&path)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn vfio-migrate serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("listening on unix:"), "{line}");
        Self { child, path }
    }
}

impl Drop for Srv {
    fn drop(&mut self) {
        let _ = vfio_migrate_sys::signal::kill(&self.child, libc::SIGTERM);
        let _ = self.child.wait();
    }
}

/// Reads the whole STOP_COPY state through `dev` (then rolls it back to
/// RUNNING). Returns (bytes, seconds of the read loop).
fn drain(dev: &mut dyn MigrationDevice) -> (u64, f64) {
    let mut buf = vec![0u8; CHUNK];
    dev.set_state(MigState::StopCopy).expect("STOP_COPY");
    let t0 = Instant::now();
    let mut total = 0u64;
    loop {
        let n = dev.read_data(&mut buf).expect("read device state");
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let t = t0.elapsed().as_secs_f64();
    dev.set_state(MigState::Running).expect("back to RUNNING");
    (total, t)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mem = std::env::var("REGION_BENCH_MEM").unwrap_or_else(|_| "256M".into());
    let runs: usize = std::env::var("REGION_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let bin = binary();
    let dir =
        std::env::temp_dir().join(format!("vfio-migrate-regions-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let srv = Srv::start(&bin, &dir, &mem);
    // Some device content: the render engine runs briefly.
    {
        let mut c = Client::connect(&srv.path).unwrap();
        for (off, v) in [(0x30u64, 0xbe4cu64), (0x10, 1 << 30), (0x08, 1)] {
            c.region_write(0, off, &v.to_le_bytes()).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        c.region_write(0, 0x08, &0u64.to_le_bytes()).unwrap();
    }
    type Open = fn(Client) -> Box<dyn MigrationDevice>;
    let paths: [(&str, Open); 5] = [
        ("seed, data section mmap'd", |c| {
            Box::new(SeedDevice::new(c, true).unwrap())
        }),
        ("seed, REGION_READ messages", |c| {
            Box::new(SeedDevice::new(c, false).unwrap())
        }),
        ("v1, data section mmap'd", |c| {
            Box::new(V1Device::new(c, true).unwrap())
        }),
        ("v1, REGION_READ messages", |c| {
            Box::new(V1Device::new(c, false).unwrap())
        }),
        ("v2, MIG_DATA_READ", |c| Box::new(c)),
    ];
    let mut results = Vec::new();
    let mut bytes = 0u64;
    for (name, open) in paths {
        let mut best = f64::MAX;
        for _ in 0..runs {
            let mut dev = open(Client::connect(&srv.path).unwrap());
            let (n, t) = drain(&mut *dev);
            assert!(
                bytes == 0 || n == bytes,
                "{name}: {n} bytes, others {bytes}"
            );
            bytes = n;
            best = best.min(t);
        }
        results.push((name, best));
    }
    let mut t_mem = f64::MAX;
    let mut t_sock = f64::MAX;
    for _ in 0..runs {
        t_mem = t_mem.min(memcpy(bytes));
        t_sock = t_sock.min(common::raw_socket(bytes, CHUNK, SNDBUF));
    }
    let gbs = |t: f64| bytes as f64 / t / 1e9;
    println!(
        "device state: {} bytes ({mem} vgpu, STOP_COPY), 1 MiB reads, best of {runs}",
        bytes
    );
    println!("| path | GB/s | vs memcpy | vs raw AF_UNIX socket |");
    println!("|---|---|---|---|");
    for (name, t) in &results {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} |",
            gbs(*t),
            t_mem / t,
            t_sock / t
        );
    }
    println!(
        "| memcpy (limit) | {:.2} | 1.00 | {:.2} |",
        gbs(t_mem),
        t_sock / t_mem
    );
    println!(
        "| raw AF_UNIX socketpair (limit) | {:.2} | {:.2} | 1.00 |",
        gbs(t_sock),
        t_mem / t_sock
    );
    drop(srv);
    let _ = std::fs::remove_dir_all(&dir);
}
