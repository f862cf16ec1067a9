//! `vfio-migrate bench` (hidden): the engine's figures, each next to the
//! limit measured in the same run.
//!
//! - limits: `memcpy` and a raw AF_UNIX / TCP loopback copy of the same
//!   bytes;
//! - the demo workload (running vgpu with render + DMA engines, a guest
//!   vCPU dirtying RAM, separate server processes, loopback TCP) with and
//!   without pre-copy, verified, and once more with pre-copy but without
//!   the digest reads (what a production migration pays), and once with
//!   `--full-verify` (every page re-hashed at both ends inside the
//!   downtime); downtimes, each with its breakdown, and the stop-copy /
//!   pre-copy ratio ([`downtime`]);
//! - a large device (2 GiB by default) migrated by a separate
//!   `vfio-migrate migrate` process: its peak RSS (its own VmHWM, which
//!   exec resets — `wait4`'s ru_maxrss would include the forking parent's)
//!   and throughput against the raw AF_UNIX copy;
//! - `migrate` downtime with little dirty (render engine at 8 MiB/s) for
//!   the demo's device size and the large one, and the large one
//!   stop-copy only: the downtime must not grow with the device;
//! - the data path ([`datapath`]): whole `--precopy off` migrations of a
//!   1 GiB vgpu, unix → unix and through TCP and `receive`, each against a
//!   raw relay of the same bytes through the same socket hops
//!   ([`relay`]), with the peak RSS of `migrate` and `receive`.

mod bwlimit;
mod datapath;
mod downtime;
mod relay;
mod scaling;

use crate::report::{bytes, print_json};
use crate::serve::parse_size;
use anyhow::bail;
use serde::Serialize;
use std::io::{Read, Write};
use std::time::Instant;

/// Arguments of `vfio-migrate bench`.
#[derive(clap::Args)]
pub struct Args {
    /// vgpu device memory of the demo workload.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256M")]
    device_mem: u64,
    /// Guest RAM of the demo workload.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "1G")]
    guest_mem: u64,
    /// Device memory of the large-device run (peak RSS).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "2G")]
    big_mem: u64,
    /// Runs of each demo variant (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Which figures: all, downtime (the demo workload and the large
    /// device) or datapath (the end-to-end moves against raw relays).
    #[arg(long, value_enum, default_value = "all")]
    part: Part,
    /// Device memory of the data-path moves.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "1G")]
    move_mem: u64,
    /// Runs of each data-path move (each next to a relay run).
    #[arg(long, default_value_t = 3)]
    move_runs: usize,
    /// Parallel channels of the data-path moves (1, and this if above 1).
    #[arg(long, default_value_t = 1)]
    channels: u32,
    /// Channel scaling: the rate each TCP flow is held to.
    #[arg(long, value_name = "BYTES/S", value_parser = parse_size, default_value = "32M")]
    flow_rate: u64,
    /// Device memory of the channel-scaling and bandwidth-limit runs.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256M")]
    scale_mem: u64,
    /// Bandwidth limits to check (comma-separated).
    #[arg(long, value_name = "BYTES/S", value_parser = parse_size, value_delimiter = ',', default_value = "64M,256M")]
    limits: Vec<u64>,
}

/// `bench --part`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// Downtime, data path and bandwidth limit (not the scaling: root).
    All,
    Downtime,
    Datapath,
    /// Channel scaling in a network-namespace pair (needs root).
    Scaling,
    /// `--bandwidth-limit` accuracy.
    Bwlimit,
}

#[derive(Serialize)]
pub(super) struct Limits {
    memcpy_gib_s: f64,
    unix_copy_gib_s: f64,
    tcp_copy_gib_s: f64,
}

#[derive(Serialize)]
struct Out {
    #[serde(flatten)]
    downtime: Option<downtime::Downtime>,
    /// The end-to-end moves against raw relays.
    datapath: Vec<datapath::Move>,
    /// Channel scaling with rate-held flows.
    scaling: Option<scaling::Scaling>,
    /// `--bandwidth-limit` accuracy.
    bandwidth_limit: Vec<bwlimit::Held>,
}

fn gib_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64 / secs.max(1e-9)
}

fn memcpy_speed() -> f64 {
    let n = 256usize << 20;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    dst.copy_from_slice(&src); // fault everything in first
    let t = Instant::now();
    for _ in 0..4 {
        dst.copy_from_slice(&src);
        std::hint::black_box(&dst);
    }
    gib_s(4 * n as u64, t.elapsed().as_secs_f64())
}

/// Copies 1 GiB through a connected pair in 1 MiB writes.
fn stream_copy<S: Read + Write + Send + 'static>(mut a: S, mut b: S) -> anyhow::Result<f64> {
    let total = 1u64 << 30;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < total {
            let n = b.read(&mut buf)?;
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        Ok(got)
    });
    let buf = vec![7u8; 1 << 20];
    let t = Instant::now();
    for _ in 0..(total >> 20) {
        a.write_all(&buf)?;
    }
    let got = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    if got != total {
        bail!("raw copy moved {got} of {total} bytes");
    }
    Ok(gib_s(total, t.elapsed().as_secs_f64()))
}

fn limits() -> anyhow::Result<Limits> {
    let (a, b) = std::os::unix::net::UnixStream::pair()?;
    let unix = stream_copy(a, b)?;
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let a = std::net::TcpStream::connect(l.local_addr()?)?;
    let (b, _) = l.accept()?;
    let tcp = stream_copy(a, b)?;
    Ok(Limits {
        memcpy_gib_s: memcpy_speed(),
        unix_copy_gib_s: unix,
        tcp_copy_gib_s: tcp,
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs the command; returns the process exit code.
pub fn run(a: Args) -> anyhow::Result<i32> {
    let downtime = match a.part {
        Part::All | Part::Downtime => Some(downtime::downtime(&a)?),
        _ => None,
    };
    let mut moves = Vec::new();
    if matches!(a.part, Part::All | Part::Datapath) {
        eprintln!("data path ({} vgpu, --precopy off) ...", bytes(a.move_mem));
        let mut chans = vec![1];
        if a.channels > 1 {
            chans.push(a.channels);
        }
        for &c in &chans {
            for tcp in [false, true] {
                moves.push(datapath::moves(a.move_mem, tcp, c, a.move_runs)?);
            }
        }
    }
    let scaling = match a.part {
        Part::Scaling => {
            eprintln!("channel scaling ...");
            Some(scaling::scaling(a.flow_rate, a.scale_mem, a.move_runs)?)
        }
        _ => None,
    };
    let bw = match a.part {
        Part::All | Part::Bwlimit => {
            eprintln!("bandwidth limit ...");
            bwlimit::accuracy(a.scale_mem, &a.limits, a.move_runs)?
        }
        _ => Vec::new(),
    };
    let out = Out {
        downtime,
        datapath: moves,
        scaling,
        bandwidth_limit: bw,
    };
    if a.json {
        print_json(&out);
        return Ok(0);
    }
    if let Some(d) = &out.downtime {
        downtime::print_downtime(d, a.big_mem);
    }
    for m in &out.datapath {
        datapath::print(m);
    }
    if let Some(s) = &out.scaling {
        scaling::print(s);
    }
    bwlimit::print(&out.bandwidth_limit);
    if let (Some(d), false) = (&out.downtime, out.datapath.is_empty()) {
        println!(
            "demo end to end (pre-copy, verified): {:.2} GiB/s; stop-copy only: {:.2} GiB/s",
            d.precopy.median_gib_s, d.stopcopy.median_gib_s
        );
    }
    Ok(0)
}
