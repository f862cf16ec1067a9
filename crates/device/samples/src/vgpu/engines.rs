//! The vgpu's two engine threads: the render engine (writes device memory)
//! and the DMA engine (writes guest memory through [`DmaSpace::write`], so
//! DMA dirty logging sees every write).
//!
//! Both are paced to a byte rate read live from their registers, write
//! 4 KiB blocks whose place and content follow from `(SEED, counter)` only,
//! raise MSI vector 0 after each step when CONTROL asks for it, and stop
//! synchronously: [`Engine::stop`] returns after the thread has finished
//! its last write.

use super::regs::{Regs, CONTROL_IRQ_DMA, CONTROL_IRQ_FRAME};
use crate::hash::{fill_pseudo_random, mix_words};
use crate::mem::SharedMemory;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vfio_migrate_abi::vfio_user::PCI_MSI_IRQ_INDEX;
use vfio_migrate_device::dirty::DirtyBitmap;
use vfio_migrate_device::dma::DmaSpace;
use vfio_migrate_device::error::{DeviceError, DeviceResult};
use vfio_migrate_device::irq::Interrupts;

/// Page size of device memory and of the engines' blocks.
pub const PAGE: u64 = 4096;

/// Longest nap of an idle or ahead-of-schedule engine before it looks at
/// its registers again (a register write also wakes it at once).
const MAX_NAP: Duration = Duration::from_millis(20);

/// What the device and its engines share.
#[derive(Debug)]
pub struct Shared {
    /// Device memory (BAR2), memfd-backed so clients can mmap it.
    pub mem: SharedMemory,
    /// Pages of `mem` written since they were last cleared (a save stream
    /// clears all when it starts and each page it sends): marked by the
    /// render engine and by region writes, not by writes through a
    /// client's mmap.
    pub dirty: DirtyBitmap,
    /// The digest terms of pages as last saved or loaded
    /// ([`super::pagehash`]).
    pub hashes: super::pagehash::PageHashes,
    /// The registers the engines read their rates, window and seed from
    /// and count their work in.
    pub regs: Regs,
    /// The MSI the engines raise after a step when CONTROL asks for it.
    pub irq: Interrupts,
    /// Percent of RENDER_RATE the render engine withholds while a
    /// migration throttles it (not migrated state: 0 outside migrations).
    pub throttle: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Raises MSI vector 0 when CONTROL has `bit`.
    fn interrupt_if(&self, bit: u64) {
        if self.regs.control.load(Ordering::Acquire) & bit != 0 {
            self.irq.raise(PCI_MSI_IRQ_INDEX, 0);
        }
    }
}

impl Shared {
    /// Device memory pages.
    pub fn pages(&self) -> u64 {
        self.dirty.pages()
    }
}

#[derive(Debug, Default)]
struct Ctl {
    stop: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Ctl {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn nap(&self, d: Duration) {
        let g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if !self.stopping() {
            let _ = self.cv.wait_timeout(g, d.min(MAX_NAP));
        }
    }

    fn wake(&self) {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.cv.notify_all();
    }
}

/// A running engine thread.
#[derive(Debug)]
pub struct Engine {
    name: &'static str,
    ctl: Arc<Ctl>,
    thread: JoinHandle<()>,
}

impl Engine {
    fn spawn(name: &'static str, body: impl FnOnce(&Ctl) + Send + 'static) -> DeviceResult<Self> {
        let ctl = Arc::new(Ctl::default());
        let c = ctl.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vgpu-{name}"))
            .spawn(move || body(&c))
            .map_err(|e| {
                DeviceError::new(
                    e.raw_os_error().unwrap_or(libc::EAGAIN),
                    format!("cannot start the {name} engine thread: {e}"),
                )
            })?;
        Ok(Self { name, ctl, thread })
    }

    /// Starts the render engine.
    pub fn render(shared: Arc<Shared>) -> DeviceResult<Self> {
        Self::spawn("render", move |ctl| render_loop(ctl, &shared))
    }

    /// Starts the DMA engine.
    pub fn dma(shared: Arc<Shared>, dma: Arc<DmaSpace>) -> DeviceResult<Self> {
        Self::spawn("dma", move |ctl| dma_loop(ctl, &shared, &dma))
    }

    /// Wakes the engine so that it sees a register change now.
    pub fn poke(&self) {
        self.ctl.wake();
    }

    /// Stops the engine and waits until its last write is done. A thread
    /// that panicked is reported as EIO (the device is broken).
    pub fn stop(self) -> DeviceResult<()> {
        self.ctl.stop.store(true, Ordering::Release);
        self.ctl.wake();
        self.thread.join().map_err(|_| {
            DeviceError::new(
                libc::EIO,
                format!("the {} engine thread panicked", self.name),
            )
        })
    }
}

/// Paces blocks to a byte rate.
#[derive(Debug)]
struct Pacer {
    rate: u64,
    start: Instant,
    done: u64,
}

enum Pace {
    Go,
    Wait(Duration),
}

impl Pacer {
    fn new() -> Self {
        Self {
            rate: 0,
            start: Instant::now(),
            done: 0,
        }
    }

    /// Whether a block of `block` bytes may be written now at `rate`.
    fn next(&mut self, rate: u64, block: u64) -> Pace {
        self.next_at(Instant::now(), rate, block)
    }

    /// [`next`](Self::next) at time `now`.
    fn next_at(&mut self, now: Instant, rate: u64, block: u64) -> Pace {
        if rate != self.rate {
            self.rate = rate;
            self.start = now;
            self.done = 0;
        }
        if rate == 0 {
            return Pace::Wait(MAX_NAP);
        }
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        let due =
            (elapsed.saturating_mul(rate as u128) / 1_000_000_000).min(u64::MAX as u128) as u64;
        // Never burst more than 50 ms worth after being descheduled.
        let slack = (rate / 20).max(block);
        if due > self.done.saturating_add(slack) {
            self.done = due - slack;
        }
        if self.done.saturating_add(block) <= due {
            self.done += block;
            Pace::Go
        } else {
            let short = self.done + block - due;
            let ns = (short as u128 * 1_000_000_000 / rate as u128).min(u64::MAX as u128) as u64;
            Pace::Wait(Duration::from_nanos(ns.max(100_000)))
        }
    }
}

/// Where render step `frame` writes, and the seed of what it writes.
pub fn render_target(seed: u64, frame: u64, pages: u64) -> (u64, u64) {
    (
        mix_words(&[seed, frame, 1]) % pages,
        mix_words(&[seed, frame, 2]),
    )
}

/// One render step: a page of pseudo-random bytes at a pseudo-random page.
/// Memory first, dirty mark second (see [`vfio_migrate_device::dirty`]).
fn render_step(s: &Shared, block: &mut [u8]) {
    let frame = s.regs.frame.load(Ordering::Acquire);
    let seed = s.regs.seed.load(Ordering::Acquire);
    let (page, fill) = render_target(seed, frame, s.pages());
    fill_pseudo_random(fill, block);
    s.mem
        .write(page * PAGE, block)
        .expect("render target lies inside device memory");
    s.dirty
        .mark_page(page)
        .expect("render target lies inside device memory");
    s.regs.frame.store(frame + 1, Ordering::Release);
}

fn render_loop(ctl: &Ctl, s: &Shared) {
    let mut pacer = Pacer::new();
    let mut block = vec![0u8; PAGE as usize];
    while !ctl.stopping() {
        let rate = s.regs.render_rate.load(Ordering::Acquire);
        let throttle = s.throttle.load(Ordering::Acquire).min(100);
        let rate = (u128::from(rate) * u128::from(100 - throttle) / 100) as u64;
        match pacer.next(rate, PAGE) {
            Pace::Go => {
                render_step(s, &mut block);
                s.interrupt_if(CONTROL_IRQ_FRAME);
            }
            Pace::Wait(d) => ctl.nap(d),
        }
    }
}

/// Where DMA step `step` writes inside a window of `size` bytes (offset
/// from DMA_IOVA, block length), and the seed of what it writes.
pub fn dma_target(seed: u64, step: u64, size: u64) -> (u64, u64, u64) {
    let blk = size.min(PAGE);
    let slots = size / blk;
    let slot = mix_words(&[seed, step, 3]) % slots;
    (slot * blk, blk, mix_words(&[seed, step, 4]))
}

/// One DMA step into `[DMA_IOVA, DMA_IOVA + DMA_SIZE)`; a failed write
/// counts in DMA_ERRORS.
fn dma_step(s: &Shared, dma: &DmaSpace, block: &mut [u8]) {
    let r = &s.regs;
    let step = r.dma_count.load(Ordering::Acquire) + r.dma_errors.load(Ordering::Acquire);
    let seed = r.seed.load(Ordering::Acquire);
    let iova = r.dma_iova.load(Ordering::Acquire);
    let size = r.dma_size.load(Ordering::Acquire);
    if size == 0 {
        return;
    }
    let (off, blk, fill) = dma_target(seed, step, size);
    let data = &mut block[..blk as usize];
    fill_pseudo_random(fill, data);
    let ok = iova
        .checked_add(off)
        .map(|a| dma.write(a, data).is_ok())
        .unwrap_or(false);
    if ok {
        r.dma_count.fetch_add(1, Ordering::AcqRel);
    } else {
        r.dma_errors.fetch_add(1, Ordering::AcqRel);
    }
}

fn dma_loop(ctl: &Ctl, s: &Shared, dma: &DmaSpace) {
    let mut pacer = Pacer::new();
    let mut block = vec![0u8; PAGE as usize];
    while !ctl.stopping() {
        let size = s.regs.dma_size.load(Ordering::Acquire);
        let rate = if size == 0 {
            0
        } else {
            s.regs.dma_rate.load(Ordering::Acquire)
        };
        match pacer.next(rate, size.clamp(1, PAGE)) {
            Pace::Go => {
                dma_step(s, dma, &mut block);
                s.interrupt_if(CONTROL_IRQ_DMA);
            }
            Pace::Wait(d) => ctl.nap(d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulated clock: the pacer lets through exactly the blocks due, says
    /// how long to wait otherwise, caps bursts and restarts on a new rate.
    #[test]
    fn pacer_holds_the_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::new();
        let rate = 4096 * 200; // 200 blocks/s: one every 5 ms
        assert!(matches!(p.next_at(t0, rate, 4096), Pace::Wait(_)));
        let mut blocks = 0;
        for ms in 0..=100u64 {
            let now = t0 + Duration::from_millis(ms);
            while let Pace::Go = p.next_at(now, rate, 4096) {
                blocks += 1;
            }
        }
        assert_eq!(blocks, 20);
        match p.next_at(t0 + Duration::from_millis(101), rate, 4096) {
            Pace::Wait(d) => assert_eq!(d.as_micros(), 4000),
            Pace::Go => panic!("ahead of schedule"),
        }
        // After a 10 s stall at most 50 ms worth (10 blocks) burst out.
        let late = t0 + Duration::from_secs(10);
        let mut burst = 0;
        while let Pace::Go = p.next_at(late, rate, 4096) {
            burst += 1;
        }
        assert_eq!(burst, 10);
        assert!(matches!(p.next_at(late, 0, 4096), Pace::Wait(_)));
        // Unlimited rate: always go once any time has passed.
        assert!(matches!(p.next_at(late, u64::MAX, 4096), Pace::Wait(_)));
        for _ in 0..1000 {
            let now = late + Duration::from_millis(1);
            assert!(matches!(p.next_at(now, u64::MAX, 4096), Pace::Go));
        }
    }

    #[test]
    fn targets_are_deterministic_and_in_range() {
        for f in 0..1000 {
            let (p, s) = render_target(9, f, 100);
            assert!(p < 100);
            assert_eq!(render_target(9, f, 100), (p, s));
            let (off, blk, _) = dma_target(9, f, 10_000);
            assert_eq!(blk, 4096);
            assert!(off + blk <= 10_000);
            let (off, blk, _) = dma_target(9, f, 100);
            assert_eq!((off, blk), (0, 100));
        }
    }
}
