//! A simulated guest for the demo, benchmarks and tests: [`SimGuest`] is
//! memfd RAM ([`MemfdRam`], which devices map for DMA) plus a vCPU thread
//! writing it at a set rate and logging what it dirtied, as KVM's dirty log
//! would. It implements the engine's [`GuestRam`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vfio_migrate_engine::{GuestRam, MemfdRam};

/// What the simulated vCPU does.
#[derive(Debug, Clone, Copy)]
pub struct VcpuConfig {
    /// Bytes per second it dirties (whole pages).
    pub rate: u64,
    /// First byte of the range it writes.
    pub offset: u64,
    /// Length of the range it writes (its working set).
    pub length: u64,
    /// Seed of its deterministic page choice and content.
    pub seed: u64,
}

#[derive(Default)]
struct Gate {
    paused: bool,
    in_write: bool,
}

struct Shared {
    ram: MemfdRam,
    dirty: Vec<AtomicU64>,
    gate: Mutex<Gate>,
    cv: Condvar,
    stop: AtomicBool,
    pages_written: AtomicU64,
}

/// A guest: memfd RAM, a vCPU thread that writes it, and the vCPU dirty log.
pub struct SimGuest {
    shared: Arc<Shared>,
    vcpu: Option<JoinHandle<()>>,
}

impl SimGuest {
    /// A guest with `size` bytes of zeroed RAM and no vCPU running yet.
    pub fn new(size: u64) -> std::io::Result<Self> {
        let ram = MemfdRam::new("vfio-migrate-guest", size)?;
        let pages = ram.len() / 4096;
        let dirty = (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        Ok(Self {
            shared: Arc::new(Shared {
                ram,
                dirty,
                gate: Mutex::new(Gate::default()),
                cv: Condvar::new(),
                stop: AtomicBool::new(false),
                pages_written: AtomicU64::new(0),
            }),
            vcpu: None,
        })
    }

    /// The RAM (for `DMA_MAP` by fd, and direct reads in tests).
    pub fn ram(&self) -> &MemfdRam {
        &self.shared.ram
    }

    /// Pages the vCPU has written so far.
    pub fn pages_written(&self) -> u64 {
        self.shared.pages_written.load(Ordering::Relaxed)
    }

    /// Starts the vCPU thread. It writes whole pages of its working set in
    /// 1 ms ticks at `cfg.rate` and logs each page after writing it.
    pub fn start_vcpu(&mut self, cfg: VcpuConfig) -> std::io::Result<()> {
        if self.vcpu.is_some() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the vCPU is already running",
            ));
        }
        let size = self.shared.ram.len();
        let end = cfg.offset.checked_add(cfg.length);
        if cfg.length < 4096
            || !cfg.offset.is_multiple_of(4096)
            || !matches!(end, Some(e) if e <= size)
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "vCPU working set {:#x}+{:#x} must be page-aligned, at least a page, and inside RAM ({size:#x} bytes)",
                    cfg.offset, cfg.length
                ),
            ));
        }
        let sh = Arc::clone(&self.shared);
        self.vcpu = Some(
            std::thread::Builder::new()
                .name("vcpu0".into())
                .spawn(move || vcpu_loop(&sh, cfg))?,
        );
        Ok(())
    }
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn vcpu_loop(sh: &Shared, cfg: VcpuConfig) {
    let first_page = cfg.offset / 4096;
    let pages = cfg.length / 4096;
    let mut rng = cfg.seed;
    let mut page = vec![0u8; 4096];
    // Token bucket in pages: time spent paused earns nothing, so resuming
    // never bursts.
    let mut credit = 0f64;
    let mut last = Instant::now();
    while !sh.stop.load(Ordering::Relaxed) {
        // Enter the write section unless paused.
        {
            let mut g = sh.gate.lock().unwrap();
            if g.paused {
                while g.paused && !sh.stop.load(Ordering::Relaxed) {
                    g = sh.cv.wait(g).unwrap();
                }
                last = Instant::now();
            }
            if sh.stop.load(Ordering::Relaxed) {
                return;
            }
            g.in_write = true;
        }
        let now = Instant::now();
        credit =
            (credit + now.duration_since(last).as_secs_f64() * cfg.rate as f64 / 4096.0).min(256.0);
        last = now;
        // Bounded batch so that a pause never waits long.
        let batch = credit as u64;
        credit -= batch as f64;
        for _ in 0..batch {
            let p = first_page + splitmix(&mut rng) % pages;
            let v = splitmix(&mut rng);
            for (i, w) in page.chunks_exact_mut(8).enumerate() {
                w.copy_from_slice(&(v ^ i as u64).to_le_bytes());
            }
            sh.ram.write_at(p * 4096, &page).expect("page inside RAM");
            // Log after the write: a fetch in between sends the page again
            // next round, never loses it.
            sh.dirty[(p / 64) as usize].fetch_or(1 << (p % 64), Ordering::Release);
        }
        sh.pages_written.fetch_add(batch, Ordering::Relaxed);
        {
            let mut g = sh.gate.lock().unwrap();
            g.in_write = false;
            sh.cv.notify_all();
        }
        if batch == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl GuestRam for SimGuest {
    fn size(&self) -> u64 {
        self.shared.ram.len()
    }
    fn read_pages(&self, first: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.shared.ram.read_pages(first, buf)
    }
    fn write_pages(&self, first: u64, data: &[u8]) -> std::io::Result<()> {
        self.shared.ram.write_pages(first, data)
    }
    fn zero_pages_at(&self, page: u64) -> u64 {
        self.shared.ram.zero_pages_at(page)
    }
    fn data_pages_at(&self, page: u64) -> u64 {
        self.shared.ram.data_pages_at(page)
    }
    fn take_dirty(&self, bitmap: &mut [u64]) {
        for (dst, src) in bitmap.iter_mut().zip(&self.shared.dirty) {
            if src.load(Ordering::Relaxed) != 0 {
                *dst |= src.swap(0, Ordering::Acquire);
            }
        }
    }
    fn pause(&self) {
        let mut g = self.shared.gate.lock().unwrap();
        g.paused = true;
        while g.in_write {
            g = self.shared.cv.wait(g).unwrap();
        }
    }
    fn resume(&self) {
        let mut g = self.shared.gate.lock().unwrap();
        g.paused = false;
        self.shared.cv.notify_all();
    }
}

impl Drop for SimGuest {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        {
            let _g = self.shared.gate.lock().unwrap();
            self.shared.cv.notify_all();
        }
        if let Some(t) = self.vcpu.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_dirties_and_pause_stops_it() {
        let mut g = SimGuest::new(4 << 20).unwrap();
        g.start_vcpu(VcpuConfig {
            rate: 64 << 20,
            offset: 0,
            length: 4 << 20,
            seed: 1,
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        g.pause();
        let mut bm = vec![0u64; 16];
        g.take_dirty(&mut bm);
        let n: u32 = bm.iter().map(|w| w.count_ones()).sum();
        assert!(n > 0, "the vCPU dirtied nothing");
        // While paused, nothing new is written or logged.
        let written = g.pages_written();
        let mut snap = vec![0u8; 4 << 20];
        g.read_pages(0, &mut snap).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let mut bm2 = vec![0u64; 16];
        g.take_dirty(&mut bm2);
        assert!(bm2.iter().all(|w| *w == 0));
        assert_eq!(g.pages_written(), written);
        let mut again = vec![0u8; 4 << 20];
        g.read_pages(0, &mut again).unwrap();
        assert!(snap == again, "RAM changed while paused");
        g.resume();
        std::thread::sleep(Duration::from_millis(30));
        assert!(g.pages_written() > written, "the vCPU did not resume");
    }
}
