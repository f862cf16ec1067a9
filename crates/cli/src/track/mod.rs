//! `vfio-migrate track ENDPOINT`: dirty-page tracking without migrating —
//! the seed review's other use of the dirty bitmap. It samples, every
//! interval, which pages of the device's memory changed and (with `--dma`)
//! which pages of a DMA window the device wrote, and reports the dirty
//! rate over time and the hot pages, so an operator can tell before a
//! migration whether a device will converge at a given bandwidth.
//!
//! Device memory is tracked from the VMM's side: the memory a vfio-user
//! server shares (its mmap-able regions) is mapped read-only and each page
//! compared with the last sample (CRC-32C), so it works for any device
//! whose memory is mapped, without help from the device; a page rewritten
//! with the same bytes does not count (it would not need sending either).
//! DMA writes come from the device's own dirty log
//! (`DMA_LOGGING_START`/`REPORT`).

mod plot;
mod sample;

use crate::endpoint::{Busy, Endpoint};
use crate::report::{bytes, print_json, rate};
use anyhow::{bail, Context};
use sample::{DeviceMemory, DmaLog};
use serde::Serialize;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Address bins of the heatmap.
pub const BINS: usize = 256;

/// Arguments of `vfio-migrate track`.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  vfio-migrate track unix:/run/a.sock --seconds 10
  vfio-migrate track unix:/run/a.sock --seconds 30 --interval-ms 250 --plot dirty.png
  vfio-migrate track unix:/run/a.sock --seconds 5 --dma 64M --json

Reading the result: a pre-copy migration converges when its bandwidth is well above the
dirty rate; the hot ranges are what will be sent again every round.")]
pub struct Args {
    /// The device: unix:PATH (a vfio-user device server).
    endpoint: String,
    /// How long to track.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    seconds: f64,
    /// Time between samples.
    #[arg(long, default_value_t = 500, value_name = "MS")]
    interval_ms: u64,
    /// Also map a DMA window of this size at IOVA 0 and log the device's
    /// DMA writes into it (K/M/G suffixes); the device must be set up to
    /// DMA there (its own registers).
    #[arg(long, value_name = "SIZE", value_parser = crate::serve::parse_size)]
    dma: Option<u64>,
    /// Draw the heatmap (address × time) and the dirty rate into this PNG.
    #[arg(long, value_name = "FILE.png")]
    plot: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// One sample.
#[derive(Serialize, Clone)]
pub struct Sample {
    /// Time since the start, ms.
    pub t_ms: f64,
    /// Device memory pages changed since the last sample.
    pub memory_pages: usize,
    /// Device memory bytes per second changed.
    pub memory_bytes_per_sec: f64,
    /// DMA window pages the device wrote since the last sample.
    pub dma_pages: usize,
    /// DMA bytes per second written.
    pub dma_bytes_per_sec: f64,
    /// Per address bin of device memory: the fraction of its pages that
    /// changed in this interval (the heatmap's column).
    #[serde(skip)]
    pub bins: Vec<f32>,
}

/// A range of device memory and how often it changed.
#[derive(Serialize)]
pub struct Hot {
    /// Region index.
    pub region: u32,
    /// Offset in the region.
    pub offset: u64,
    /// Bytes.
    pub size: u64,
    /// Fraction of the samples in which each block of the range changed,
    /// on average.
    pub dirty_fraction: f64,
}

/// What `track` found.
#[derive(Serialize)]
pub struct Tracked {
    endpoint: String,
    seconds: f64,
    interval_ms: u64,
    page_size: usize,
    memory_bytes: u64,
    memory_pages: usize,
    dma_window_bytes: Option<u64>,
    samples: Vec<Sample>,
    /// Mean and peak device-memory dirty rate, bytes/s.
    memory_rate_mean: f64,
    memory_rate_max: f64,
    /// Mean DMA dirty rate, bytes/s.
    dma_rate_mean: f64,
    /// Distinct pages that changed at least once.
    distinct_pages: usize,
    /// The hottest ranges of device memory, hottest first.
    hot: Vec<Hot>,
    /// Bandwidth a pre-copy migration needs above the mean dirty rate to
    /// converge (1.25 × the mean total dirty rate), bytes/s.
    converge_bandwidth: f64,
}

fn sleep_or_cancel(d: Duration, cancel: &vfio_migrate_engine::Cancel) -> bool {
    let mut p = libc::pollfd {
        fd: cancel.watch_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = d.as_millis().min(i32::MAX as u128) as i32;
    matches!(vfio_migrate_sys::fd::poll(std::slice::from_mut(&mut p), ms), Ok(n) if n > 0)
}

/// Runs the command; returns the process exit code.
pub fn run(a: Args) -> anyhow::Result<i32> {
    let ep = Endpoint::parse(&a.endpoint)?;
    let Endpoint::Unix(path) = &ep else {
        bail!("{ep}: track reads device memory through a vfio-user server's shared regions: give unix:PATH");
    };
    if !a.seconds.is_finite() || a.seconds <= 0.0 || a.interval_ms == 0 {
        return Err(crate::exit::usage(
            "--seconds and --interval-ms must be positive",
        ));
    }
    if let Some(p) = &a.plot {
        if !p.extension().is_some_and(|x| x.eq_ignore_ascii_case("png")) {
            return Err(crate::exit::usage(format!(
                "--plot {}: the plot is a PNG image; give a FILE.png",
                p.display()
            )));
        }
    }
    let cancel = crate::interrupt::install()?;
    let mut c = match vfio_migrate_client::Client::connect(path) {
        Ok(c) => c,
        Err(e) if e.errno() == Some(libc::EBUSY) => {
            return Err(anyhow::anyhow!(Busy::new(&ep, &e.to_string())))
        }
        Err(e) => return Err(anyhow::anyhow!(e).context(format!("cannot use {ep}"))),
    };
    let page = 4096usize;
    let mut mem = DeviceMemory::map(&mut c, page).with_context(|| format!("{ep}"))?;
    let mut dma = match a.dma {
        Some(size) => {
            Some(DmaLog::start(&mut c, size, page as u64).with_context(|| format!("{ep}"))?)
        }
        None => None,
    };
    let total_pages = mem.pages();
    // Page index (over all areas) → bin.
    let offsets: Vec<usize> = mem
        .areas
        .iter()
        .scan(0, |acc, ar| {
            let o = *acc;
            *acc += ar.pages(page);
            Some(o)
        })
        .collect();
    let bin_of =
        |area: usize, p: usize| ((offsets[area] + p) * BINS / total_pages.max(1)).min(BINS - 1);
    let pages_in_bin: Vec<usize> = (0..BINS)
        .map(|b| {
            let lo = b * total_pages / BINS;
            let hi = (b + 1) * total_pages / BINS;
            (hi - lo).max(1)
        })
        .collect();
    let mut counts = vec![0u32; total_pages];
    // Hot ranges are judged per block (at most 1024 blocks): how many
    // samples changed any page of the block.
    let block_pages = total_pages.div_ceil(1024).max(1);
    let mut block_counts = vec![0u32; total_pages.div_ceil(block_pages)];
    let mut block_seen = vec![usize::MAX; block_counts.len()];
    let interval = Duration::from_millis(a.interval_ms);
    let t0 = Instant::now();
    let mut last = t0;
    let mut samples = Vec::new();
    if !a.json {
        eprintln!(
            "tracking {ep}: {} of device memory in {} pages{}, every {} ms for {} s",
            bytes(mem.bytes()),
            total_pages,
            a.dma
                .map(|d| format!(", DMA window {}", bytes(d)))
                .unwrap_or_default(),
            a.interval_ms,
            a.seconds
        );
    }
    let mut next = t0;
    while t0.elapsed().as_secs_f64() < a.seconds {
        // A fixed cadence: the time a sample takes is not added to it.
        next += interval;
        if sleep_or_cancel(next.saturating_duration_since(Instant::now()), &cancel) {
            break;
        }
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64().max(1e-6);
        last = now;
        let mut bins = vec![0u32; BINS];
        let k = samples.len();
        let m = mem.sample(&mut |area, p| {
            bins[bin_of(area, p)] += 1;
            let g = offsets[area] + p;
            counts[g] += 1;
            let b = g / block_pages;
            if block_seen[b] != k {
                block_seen[b] = k;
                block_counts[b] += 1;
            }
        })?;
        let d = match dma.as_mut() {
            Some(l) => l.sample(&mut c, &mut |_| {})?,
            None => 0,
        };
        let s = Sample {
            t_ms: t0.elapsed().as_secs_f64() * 1000.0,
            memory_pages: m,
            memory_bytes_per_sec: (m * page) as f64 / dt,
            dma_pages: d,
            dma_bytes_per_sec: (d * page) as f64 / dt,
            bins: bins
                .iter()
                .zip(&pages_in_bin)
                .map(|(n, t)| *n as f32 / *t as f32)
                .collect(),
        };
        if !a.json {
            eprintln!(
                "[{:6.2}s] device memory {} pages ({}){}",
                s.t_ms / 1000.0,
                m,
                rate(s.memory_bytes_per_sec),
                if dma.is_some() {
                    format!(", DMA {} pages ({})", d, rate(s.dma_bytes_per_sec))
                } else {
                    String::new()
                }
            );
        }
        samples.push(s);
    }
    if let Some(l) = dma.take() {
        l.stop(&mut c);
    }
    if samples.is_empty() {
        bail!("interrupted before the first sample");
    }
    let n = samples.len() as f64;
    let mean = |f: &dyn Fn(&Sample) -> f64| samples.iter().map(f).sum::<f64>() / n;
    let memory_rate_mean = mean(&|s| s.memory_bytes_per_sec);
    let dma_rate_mean = mean(&|s| s.dma_bytes_per_sec);
    let memory_rate_max = samples
        .iter()
        .map(|s| s.memory_bytes_per_sec)
        .fold(0.0, f64::max);
    let hot = hot_ranges(&mem, &block_counts, block_pages, samples.len(), page);
    let t = Tracked {
        endpoint: ep.to_string(),
        seconds: t0.elapsed().as_secs_f64(),
        interval_ms: a.interval_ms,
        page_size: page,
        memory_bytes: mem.bytes(),
        memory_pages: total_pages,
        dma_window_bytes: a.dma,
        distinct_pages: counts.iter().filter(|c| **c > 0).count(),
        memory_rate_mean,
        memory_rate_max,
        dma_rate_mean,
        converge_bandwidth: 1.25 * (memory_rate_mean + dma_rate_mean),
        samples,
        hot,
    };
    if let Some(p) = &a.plot {
        plot::draw(p, &t.endpoint, &t.samples, page, mem.bytes())
            .with_context(|| format!("drawing {}", p.display()))?;
    }
    if a.json {
        print_json(&t);
    } else {
        print_human(&t);
        if let Some(p) = &a.plot {
            println!("  plot             {}", p.display());
        }
    }
    Ok(0)
}

/// Contiguous runs of blocks (`block` pages each) that changed in at
/// least half the samples, merged within an area, hottest (then largest)
/// first; at most 8.
fn hot_ranges(
    mem: &DeviceMemory,
    blocks: &[u32],
    block: usize,
    samples: usize,
    page: usize,
) -> Vec<Hot> {
    let hot = |b: usize| (blocks[b] as usize) * 2 >= samples.max(1);
    let mut out = Vec::new();
    let mut base = 0;
    for a in &mem.areas {
        let n = a.pages(page);
        // Blocks that lie in this area (areas are block-aligned in the
        // global page numbering only by chance: clamp to the area).
        let mut p = 0;
        while p < n {
            let b = (base + p) / block;
            if !hot(b) {
                p += block - (base + p) % block;
                continue;
            }
            let start = p;
            let mut sum = 0u64;
            let mut nb = 0u64;
            while p < n && hot((base + p) / block) {
                sum += u64::from(blocks[(base + p) / block]);
                nb += 1;
                p += block - (base + p) % block;
            }
            let end = p.min(n);
            out.push(Hot {
                region: a.region,
                offset: a.offset + (start * page) as u64,
                size: ((end - start) * page) as u64,
                dirty_fraction: sum as f64 / nb as f64 / samples.max(1) as f64,
            });
        }
        base += n;
    }
    out.sort_by(|x, y| {
        y.dirty_fraction
            .total_cmp(&x.dirty_fraction)
            .then(y.size.cmp(&x.size))
    });
    out.truncate(8);
    out
}

fn print_human(t: &Tracked) {
    println!(
        "vfio-migrate: tracked {} for {:.1} s ({} samples of {} ms)",
        t.endpoint,
        t.seconds,
        t.samples.len(),
        t.interval_ms
    );
    println!(
        "  device memory    {} in {} pages; {} distinct pages changed ({:.1} %)",
        bytes(t.memory_bytes),
        t.memory_pages,
        t.distinct_pages,
        100.0 * t.distinct_pages as f64 / t.memory_pages.max(1) as f64
    );
    println!(
        "  dirty rate       mean {}, peak {} (device memory)",
        rate(t.memory_rate_mean),
        rate(t.memory_rate_max)
    );
    if let Some(w) = t.dma_window_bytes {
        println!(
            "  DMA dirty rate   mean {} into a {} window",
            rate(t.dma_rate_mean),
            bytes(w)
        );
    }
    if t.hot.is_empty() {
        println!("  hot ranges       none (no page changed in half the samples)");
    }
    for (i, h) in t.hot.iter().enumerate() {
        println!(
            "  {}  region {} {:#x}+{} changed in {:.0} % of the samples",
            if i == 0 {
                "hot ranges     "
            } else {
                "               "
            },
            h.region,
            h.offset,
            bytes(h.size),
            100.0 * h.dirty_fraction
        );
    }
    if t.converge_bandwidth > 0.0 {
        println!(
            "  converges        with pre-copy at a bandwidth above ~{} (1.25 × the dirty rate); below it, rounds stop shrinking",
            rate(t.converge_bandwidth)
        );
    } else {
        println!("  converges        at any bandwidth: nothing changed while tracked");
    }
}
