//! `vfio-migrate bench` (hidden): the engine's figures, each next to the
//! limit measured in the same run.
//!
//! - limits: `memcpy` and a raw AF_UNIX / TCP loopback copy of the same
//!   bytes;
//! - the demo workload (running vgpu with render + DMA engines, a guest
//!   vCPU dirtying RAM, separate server processes, loopback TCP) with and
//!   without pre-copy, verified, and once more with pre-copy but without
//!   the digest reads (what a production migration pays); downtimes and
//!   the stop-copy / pre-copy ratio;
//! - a large device (2 GiB by default) migrated by a separate
//!   `vfio-migrate migrate` process: its peak RSS (its own VmHWM, which
//!   exec resets — `wait4`'s ru_maxrss would include the forking parent's)
//!   and throughput against the raw AF_UNIX copy;
//! - the data path ([`datapath`]): whole `--precopy off` migrations of a
//!   1 GiB vgpu, unix → unix and through TCP and `receive`, each against a
//!   raw relay of the same bytes through the same socket hops
//!   ([`relay`]), with the peak RSS of `migrate` and `receive`.

mod bwlimit;
mod datapath;
mod relay;
mod scaling;

use crate::demo;
use crate::progress::Style;
use crate::report::{bytes, print_json};
use crate::serve::parse_size;
use anyhow::{bail, Context};
use serde::Serialize;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Instant;
use vfio_migrate_harness::TempDir;

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
struct Limits {
    memcpy_gib_s: f64,
    unix_copy_gib_s: f64,
    tcp_copy_gib_s: f64,
}

#[derive(Serialize)]
struct Variant {
    name: &'static str,
    downtime_ms: Vec<f64>,
    median_downtime_ms: f64,
    median_total_ms: f64,
    /// Of the downtime: the destination reading digests.
    median_dest_digest_ms: f64,
    /// Median end-to-end throughput of the demo migration (stream bytes
    /// over its total time).
    median_gib_s: f64,
    verified: bool,
}

#[derive(Serialize)]
struct Big {
    device_mem: u64,
    peak_rss_bytes: u64,
    total_ms: f64,
    throughput_gib_s: f64,
    /// Throughput over the raw AF_UNIX copy.
    throughput_vs_unix_copy: f64,
    verified: bool,
}

#[derive(Serialize)]
struct Downtime {
    limits: Limits,
    precopy: Variant,
    precopy_unverified: Variant,
    stopcopy: Variant,
    /// stop-copy downtime / pre-copy downtime (verified runs).
    downtime_ratio: f64,
    /// The same, without digest reads in either.
    downtime_ratio_unverified: f64,
    big: Big,
}

#[derive(Serialize)]
struct Out {
    #[serde(flatten)]
    downtime: Option<Downtime>,
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

fn variant(a: &Args, name: &'static str, precopy: bool, verify: bool) -> anyhow::Result<Variant> {
    let mut down = Vec::new();
    let mut total = Vec::new();
    let mut digest = Vec::new();
    let mut thr = Vec::new();
    let mut verified = true;
    for i in 0..a.runs.max(1) {
        let args = demo::Args {
            json: true,
            no_precopy: !precopy,
            device_mem: a.device_mem,
            guest_mem: a.guest_mem,
            downtime_limit: 300,
            max_iterations: 30,
            vcpu_rate: 64 << 20,
            render_rate: 64 << 20,
            dma_rate: 32 << 20,
            protocol: crate::endpoint::ProtocolArg::Auto,
            liveness: crate::liveness::Liveness::default(),
            bandwidth_limit: None,
            channels: 1,
            tls: false,
            verify,
        };
        let out = demo::execute(&args, Style::Off, &crate::interrupt::install()?)?;
        if let Some(f) = out.failure {
            bail!("{name} run {i}: {f}");
        }
        let m = &out.report.migration;
        verified &= verify && m.verified;
        eprintln!(
            "  {name} run {}: downtime {:.1} ms, total {:.0} ms",
            i + 1,
            m.downtime_ms,
            m.total_ms
        );
        down.push(m.downtime_ms);
        total.push(m.total_ms);
        digest.push(m.dest_digest_ms);
        thr.push(gib_s(m.transferred_bytes, m.total_ms / 1000.0));
    }
    Ok(Variant {
        name,
        median_downtime_ms: median(&mut down.clone()),
        median_total_ms: median(&mut total),
        median_dest_digest_ms: median(&mut digest),
        median_gib_s: median(&mut thr),
        downtime_ms: down,
        verified,
    })
}

/// Migrates a `big_mem` vgpu with a separate `migrate` process; returns
/// its peak RSS.
fn big(a: &Args, unix_copy: f64) -> anyhow::Result<Big> {
    let dir = TempDir::new("bench").context("creating a directory for the sockets")?;
    let exe = std::env::current_exe()?;
    let servers = [
        datapath::server(&dir, "a.sock", a.big_mem)?,
        datapath::server(&dir, "b.sock", a.big_mem)?,
    ];
    let t = Instant::now();
    let child = Command::new(&exe)
        .args(["migrate", "--json", "--source"])
        .arg(servers[0].uri())
        .arg("--dest")
        .arg(servers[1].uri())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting migrate")?;
    let out = child.wait_with_output()?;
    let secs = t.elapsed().as_secs_f64();
    for mut s in servers {
        s.kill();
    }
    drop(dir);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("migrate output")?;
    if v["status"] != "ok" {
        bail!("large-device migration failed: {}", v["error"]);
    }
    let moved = v["transferred_bytes"].as_u64().unwrap_or(0);
    let thr = gib_s(
        moved,
        v["total_ms"].as_f64().unwrap_or(secs * 1000.0) / 1000.0,
    );
    Ok(Big {
        device_mem: a.big_mem,
        peak_rss_bytes: v["peak_rss_bytes"]
            .as_u64()
            .context("migrate reported no peak RSS")?,
        total_ms: secs * 1000.0,
        throughput_gib_s: thr,
        throughput_vs_unix_copy: thr / unix_copy,
        verified: v["verified"] == true,
    })
}

/// Runs the command; returns the process exit code.
pub fn run(a: Args) -> anyhow::Result<i32> {
    let downtime = match a.part {
        Part::All | Part::Downtime => Some(downtime(&a)?),
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
        print_downtime(d);
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

fn downtime(a: &Args) -> anyhow::Result<Downtime> {
    eprintln!("limits ...");
    let limits = limits()?;
    eprintln!(
        "demo workload ({} device, {} guest) ...",
        bytes(a.device_mem),
        bytes(a.guest_mem)
    );
    let precopy = variant(a, "pre-copy", true, true)?;
    let precopy_unverified = variant(a, "pre-copy, no digest reads", true, false)?;
    let stopcopy = variant(a, "stop-copy only", false, true)?;
    eprintln!("large device ({}) ...", bytes(a.big_mem));
    let big = big(a, limits.unix_copy_gib_s)?;
    Ok(Downtime {
        downtime_ratio: stopcopy.median_downtime_ms / precopy.median_downtime_ms,
        downtime_ratio_unverified: stopcopy.median_downtime_ms
            / precopy_unverified.median_downtime_ms,
        limits,
        precopy,
        precopy_unverified,
        stopcopy,
        big,
    })
}

fn print_downtime(out: &Downtime) {
    let l = &out.limits;
    println!(
        "limits: memcpy {:.1} GiB/s, AF_UNIX copy {:.2} GiB/s, TCP loopback copy {:.2} GiB/s",
        l.memcpy_gib_s, l.unix_copy_gib_s, l.tcp_copy_gib_s
    );
    for v in [&out.precopy, &out.precopy_unverified, &out.stopcopy] {
        println!(
            "{:<28} downtime {:>7.1} ms (median of {}; digest reads {:.1} ms)  total {:>6.0} ms ({:.2} GiB/s)  verified {}",
            v.name,
            v.median_downtime_ms,
            v.downtime_ms.len(),
            v.median_dest_digest_ms,
            v.median_total_ms,
            v.median_gib_s,
            v.verified
        );
    }
    println!(
        "stop-copy / pre-copy downtime: {:.1}x (verified), {:.1}x (no digest reads)",
        out.downtime_ratio, out.downtime_ratio_unverified
    );
    let b = &out.big;
    println!(
        "{} device by a `migrate` process: peak RSS {}, {:.2} GiB/s = {:.2}x the raw AF_UNIX copy, verified {}",
        bytes(b.device_mem),
        bytes(b.peak_rss_bytes),
        b.throughput_gib_s,
        b.throughput_vs_unix_copy,
        b.verified
    );
}
