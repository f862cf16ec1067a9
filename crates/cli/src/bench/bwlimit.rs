//! `--bandwidth-limit` accuracy: whole `--precopy off` migrations between
//! fresh `serve` processes held to a few rates, with one and with four
//! channels; the figure is the rate the data moved at (stream bytes over
//! the final transfer, the part the limit holds) over the limit asked for.
//! The goal is within 10 %.

use super::datapath::{median, server};
use crate::report::bytes;
use anyhow::{bail, Context};
use serde::Serialize;
use std::process::Stdio;
use vfio_migrate_harness::TempDir;

/// One limit.
#[derive(Serialize, Debug)]
pub struct Held {
    /// The limit, bytes/s.
    pub limit: u64,
    /// Channels.
    pub channels: u32,
    /// Measured rate / limit, each run.
    pub ratios: Vec<f64>,
    /// Their median.
    pub median_ratio: f64,
}

fn one(mem: u64, limit: u64, channels: u32) -> anyhow::Result<f64> {
    let dir = TempDir::new("bench-bw")?;
    let a = server(&dir, "a.sock", mem)?;
    let b = server(&dir, "b.sock", mem)?;
    let out = super::datapath::migrate_cmd(&a.uri(), &b.uri())?
        .args(["--bandwidth-limit", &limit.to_string()])
        .args(["--channels", &channels.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output()
        .context("running migrate")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("migrate output")?;
    if v["status"] != "ok" {
        bail!("the migration failed: {}", v["error"]);
    }
    let secs = v["final_transfer_ms"].as_f64().unwrap_or(0.0) / 1000.0;
    let moved = v["transferred_bytes"].as_u64().unwrap_or(0) as f64;
    Ok(moved / secs.max(1e-9) / limit as f64)
}

/// Each of `limits`, with 1 and 4 channels, `runs` times.
pub fn accuracy(mem: u64, limits: &[u64], runs: usize) -> anyhow::Result<Vec<Held>> {
    let mut out = Vec::new();
    for &limit in limits {
        for channels in [1, 4] {
            let mut ratios = Vec::new();
            for _ in 0..runs.max(1) {
                ratios.push(one(mem, limit, channels)?);
            }
            let m = median(&ratios);
            eprintln!(
                "  --bandwidth-limit {}/s, {channels} channel(s): {m:.3} x the limit",
                bytes(limit)
            );
            out.push(Held {
                limit,
                channels,
                ratios,
                median_ratio: m,
            });
        }
    }
    Ok(out)
}

/// One line per limit.
pub fn print(v: &[Held]) {
    for h in v {
        let lo = h.ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = h.ratios.iter().copied().fold(0.0, f64::max);
        println!(
            "--bandwidth-limit {:>9}/s, {} channel(s): moved at {:.3} x the limit (runs {lo:.3}-{hi:.3}){}",
            bytes(h.limit),
            h.channels,
            h.median_ratio,
            if (0.9..=1.1).contains(&h.median_ratio) {
                ""
            } else {
                "  OUTSIDE 10 %"
            }
        );
    }
}
