//! `bench --part downtime`: the demo workload in its variants (pre-copy,
//! without digest reads, stop-copy only, `--full-verify`), each run's
//! downtime with its breakdown; a large device moved by a `migrate`
//! process (peak RSS, throughput against the raw AF_UNIX copy); and
//! `migrate` downtime with little dirty for the demo's device size and the
//! large one, and the large one stop-copy only.

use super::{datapath, gib_s, limits, median, Args, Limits};
use crate::demo;
use crate::progress::Style;
use crate::report::{breakdown, bytes};
use anyhow::{bail, Context};
use serde::Serialize;
use std::process::{Command, Stdio};
use std::time::Instant;
use vfio_migrate_engine::metrics::DowntimeBreakdown;
use vfio_migrate_harness::TempDir;

#[derive(Serialize)]
pub(super) struct Variant {
    name: &'static str,
    downtime_ms: Vec<f64>,
    median_downtime_ms: f64,
    median_total_ms: f64,
    /// Of the downtime: the destination reading digests.
    median_dest_digest_ms: f64,
    /// The median run's breakdown and estimate.
    median_breakdown: DowntimeBreakdown,
    median_expected_ms: f64,
    /// Median end-to-end throughput of the demo migration (stream bytes
    /// over its total time).
    pub(super) median_gib_s: f64,
    verified: bool,
}

/// One `vfio-migrate migrate` process between two `serve` processes.
#[derive(Serialize)]
struct MigrateRun {
    device_mem: u64,
    precopy: bool,
    downtime_ms: f64,
    expected_downtime_ms: f64,
    breakdown: DowntimeBreakdown,
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
pub(super) struct Downtime {
    limits: Limits,
    pub(super) precopy: Variant,
    precopy_unverified: Variant,
    pub(super) stopcopy: Variant,
    precopy_full_verify: Variant,
    /// stop-copy downtime / pre-copy downtime (verified runs).
    downtime_ratio: f64,
    /// The same, without digest reads in either.
    downtime_ratio_unverified: f64,
    big: Big,
    /// `migrate`, little dirty: the demo's device size, the large one, and
    /// the large one stop-copy only.
    migrate_small: MigrateRun,
    migrate_big: MigrateRun,
    migrate_big_stopcopy: MigrateRun,
    /// Large device: stop-copy-only downtime / pre-copy downtime.
    migrate_ratio: f64,
}

fn variant(
    a: &Args,
    name: &'static str,
    precopy: bool,
    verify: bool,
    full_verify: bool,
) -> anyhow::Result<Variant> {
    let mut down = Vec::new();
    let mut total = Vec::new();
    let mut digest = Vec::new();
    let mut thr = Vec::new();
    let mut runs = Vec::new();
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
            converge: crate::migrate::Converge {
                full_verify,
                ..Default::default()
            },
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
        runs.push((m.downtime_ms, m.downtime_breakdown, m.expected_downtime_ms));
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (_, median_breakdown, median_expected_ms) = runs[runs.len() / 2];
    Ok(Variant {
        name,
        median_breakdown,
        median_expected_ms,
        median_downtime_ms: median(&mut down.clone()),
        median_total_ms: median(&mut total),
        median_dest_digest_ms: median(&mut digest),
        median_gib_s: median(&mut thr),
        downtime_ms: down,
        verified,
    })
}

/// Migrates a `mem` vgpu (rendering at `render` bytes/s) with a separate
/// `migrate` process (`extra` arguments); returns its JSON report and the
/// wall time.
fn migrate_process(
    mem: u64,
    render: u64,
    extra: &[&str],
) -> anyhow::Result<(serde_json::Value, f64)> {
    let dir = TempDir::new("bench").context("creating a directory for the sockets")?;
    let exe = std::env::current_exe()?;
    let servers = [
        datapath::server(&dir, "a.sock", mem)?,
        datapath::server(&dir, "b.sock", mem)?,
    ];
    if render > 0 {
        let mut c =
            vfio_migrate_client::open(dir.join("a.sock"), vfio_migrate_client::Protocol::Auto)
                .context("connecting to the source vgpu")?;
        for (off, v) in [(0x30u64, 0x5eedu64), (0x10, render), (0x08, 1)] {
            vfio_migrate_backend::regions_of(&mut *c)?.region_write(0, off, &v.to_le_bytes())?;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let t = Instant::now();
    let child = Command::new(&exe)
        .args(["migrate", "--json", "--no-control", "--source"])
        .arg(servers[0].uri())
        .arg("--dest")
        .arg(servers[1].uri())
        .args(extra)
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
        bail!("the migration of a {mem}-byte vgpu failed: {}", v["error"]);
    }
    Ok((v, secs))
}

/// `migrate` of a `mem` vgpu with little dirty; its downtime.
fn migrate_run(mem: u64, precopy: bool) -> anyhow::Result<MigrateRun> {
    let (v, _) = migrate_process(
        mem,
        8 << 20,
        &["--precopy", if precopy { "on" } else { "off" }],
    )?;
    Ok(MigrateRun {
        device_mem: mem,
        precopy,
        downtime_ms: v["downtime_ms"].as_f64().unwrap_or(0.0),
        expected_downtime_ms: v["expected_downtime_ms"].as_f64().unwrap_or(0.0),
        breakdown: serde_json::from_value(v["downtime_breakdown"].clone())
            .context("migrate reported no downtime breakdown")?,
        verified: v["verified"] == true,
    })
}

/// Migrates a `big_mem` idle vgpu with a separate `migrate` process;
/// returns its peak RSS.
fn big(a: &Args, unix_copy: f64) -> anyhow::Result<Big> {
    let (v, secs) = migrate_process(a.big_mem, 0, &[])?;
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

pub(super) fn downtime(a: &Args) -> anyhow::Result<Downtime> {
    eprintln!("limits ...");
    let limits = limits()?;
    eprintln!(
        "demo workload ({} device, {} guest) ...",
        bytes(a.device_mem),
        bytes(a.guest_mem)
    );
    let precopy = variant(a, "pre-copy", true, true, false)?;
    let precopy_unverified = variant(a, "pre-copy, no digest reads", true, false, false)?;
    let stopcopy = variant(a, "stop-copy only", false, true, false)?;
    let precopy_full_verify = variant(a, "pre-copy, --full-verify", true, true, true)?;
    eprintln!("large device ({}) ...", bytes(a.big_mem));
    let big = big(a, limits.unix_copy_gib_s)?;
    eprintln!("migrate, little dirty ...");
    let migrate_small = migrate_run(a.device_mem, true)?;
    let migrate_big = migrate_run(a.big_mem, true)?;
    let migrate_big_stopcopy = migrate_run(a.big_mem, false)?;
    Ok(Downtime {
        migrate_ratio: migrate_big_stopcopy.downtime_ms / migrate_big.downtime_ms,
        migrate_small,
        migrate_big,
        migrate_big_stopcopy,
        precopy_full_verify,
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

pub(super) fn print_downtime(out: &Downtime, big_mem: u64) {
    let l = &out.limits;
    println!(
        "limits: memcpy {:.1} GiB/s, AF_UNIX copy {:.2} GiB/s, TCP loopback copy {:.2} GiB/s",
        l.memcpy_gib_s, l.unix_copy_gib_s, l.tcp_copy_gib_s
    );
    for v in [
        &out.precopy,
        &out.precopy_unverified,
        &out.stopcopy,
        &out.precopy_full_verify,
    ] {
        println!(
            "{:<28} downtime {:>7.1} ms (median of {}; expected {:.1} ms)  total {:>6.0} ms ({:.2} GiB/s)  verified {}",
            v.name,
            v.median_downtime_ms,
            v.downtime_ms.len(),
            v.median_expected_ms,
            v.median_total_ms,
            v.median_gib_s,
            v.verified
        );
        println!("{:<28} {}", "", breakdown(&v.median_breakdown));
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
    for m in [
        &out.migrate_small,
        &out.migrate_big,
        &out.migrate_big_stopcopy,
    ] {
        println!(
            "migrate {} vgpu, render 8 MiB/s, pre-copy {}: downtime {:.1} ms (expected {:.1} ms), verified {}",
            bytes(m.device_mem),
            if m.precopy { "on" } else { "off" },
            m.downtime_ms,
            m.expected_downtime_ms,
            m.verified
        );
        println!("    {}", breakdown(&m.breakdown));
    }
    println!(
        "migrate {}: stop-copy only / pre-copy downtime: {:.0}x",
        bytes(big_mem),
        out.migrate_ratio
    );
}
