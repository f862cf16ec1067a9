//! Guest memory as the engine sees it ([`GuestRam`]), and a simulated
//! guest for the demo, tests and benchmarks: [`MemfdRam`] (RAM in a memfd
//! that devices map for DMA) and [`SimGuest`] (that RAM plus a vCPU thread
//! writing it at a set rate and logging what it dirtied, as KVM's dirty log
//! would).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vfio_migrate_backend::IovaRange;
use vfio_migrate_sys::{memfd, MmapRegion};

/// Guest RAM: what the engine needs to migrate it.
///
/// RAM is one range of guest-physical memory starting at [`GuestRam::iova`]
/// (the address devices DMA to), split into pages of
/// [`GuestRam::page_size`] bytes.
pub trait GuestRam: Send + Sync {
    /// Size in bytes (a multiple of the page size).
    fn size(&self) -> u64;

    /// Page size of the dirty log.
    fn page_size(&self) -> u64 {
        4096
    }

    /// I/O virtual address of the first byte (where devices see it).
    fn iova(&self) -> u64 {
        0
    }

    /// Copies pages `[first, first + buf.len() / page_size)` into `buf`.
    fn read_pages(&self, first: u64, buf: &mut [u8]) -> std::io::Result<()>;

    /// Writes whole pages starting at page `first`.
    fn write_pages(&self, first: u64, data: &[u8]) -> std::io::Result<()>;

    /// Fetches and clears the vCPU dirty log: sets bit `n` of `bitmap`
    /// (u64 words, LSB first) for every page `n` the vCPUs wrote since the
    /// last call. Bits already set stay set.
    fn take_dirty(&self, bitmap: &mut [u64]);

    /// Pauses the vCPUs; returns once no vCPU write is in flight.
    fn pause(&self);

    /// Resumes the vCPUs.
    fn resume(&self);

    /// How many pages from `page` on are known to read as zero without
    /// being touched (never written, e.g. a hole in a memfd); 0 when `page`
    /// holds data or nobody knows. Lets the engine send zero runs without
    /// reading (and so allocating) untouched memory.
    fn zero_pages_at(&self, page: u64) -> u64 {
        let _ = page;
        0
    }

    /// How many pages from `page` on may hold data (up to the next known
    /// zero page); `u64::MAX` when nobody knows.
    fn data_pages_at(&self, page: u64) -> u64 {
        let _ = page;
        u64::MAX
    }

    /// Pages in RAM.
    fn pages(&self) -> u64 {
        self.size() / self.page_size()
    }

    /// The IOVA range devices log DMA writes over.
    fn dma_range(&self) -> IovaRange {
        IovaRange {
            iova: self.iova(),
            length: self.size(),
        }
    }
}

/// Guest RAM in a memfd, mapped here and shareable with devices by fd.
pub struct MemfdRam {
    fd: OwnedFd,
    map: MmapRegion,
}

impl MemfdRam {
    /// `size` bytes of zeroed RAM (rounded up to 4 KiB).
    pub fn new(name: &str, size: u64) -> std::io::Result<Self> {
        let size = size.div_ceil(4096) * 4096;
        if size == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "guest RAM size must be at least one page",
            ));
        }
        let len = usize::try_from(size).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "guest RAM too large")
        })?;
        let cname = std::ffi::CString::new(name).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in memfd name")
        })?;
        let fd = memfd::create(&cname)?;
        memfd::set_len(fd.as_fd(), size)?;
        let map = MmapRegion::shared(fd.as_fd(), 0, len, true)?;
        Ok(Self { fd, map })
    }

    /// The memfd (for `DMA_MAP`).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Never empty (construction refuses 0 bytes).
    pub fn is_empty(&self) -> bool {
        false
    }

    fn check(&self, offset: u64, n: usize) -> std::io::Result<usize> {
        match offset.checked_add(n as u64) {
            Some(end) if end <= self.len() => Ok(offset as usize),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{offset:#x}+{n:#x} is outside guest RAM ({:#x} bytes)",
                    self.len()
                ),
            )),
        }
    }

    /// Bytes from `offset` on that are a hole (never written: zero, with no
    /// memory behind them), by `lseek(SEEK_DATA)`.
    pub fn hole_at(&self, offset: u64) -> u64 {
        if offset >= self.len() {
            return 0;
        }
        match memfd::seek_data(self.fd.as_fd(), offset) {
            Ok(r) => r.saturating_sub(offset),
            // No data from here to the end.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => self.len() - offset,
            Err(_) => 0,
        }
    }

    /// Bytes from `offset` on that hold data (up to the next hole), by
    /// `lseek(SEEK_HOLE)`.
    pub fn data_at(&self, offset: u64) -> u64 {
        if offset >= self.len() {
            return 0;
        }
        match memfd::seek_hole(self.fd.as_fd(), offset) {
            Ok(r) => r.saturating_sub(offset),
            Err(_) => self.len() - offset,
        }
    }

    /// Copies `buf.len()` bytes at byte `offset` into `buf`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let off = self.check(offset, buf.len())?;
        self.map.read(off, buf)
    }

    /// Copies `data` to byte `offset`.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let off = self.check(offset, data.len())?;
        self.map.write(off, data)
    }
}

fn check_whole_pages(n: usize) -> std::io::Result<()> {
    if !n.is_multiple_of(4096) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{n} bytes is not a whole number of 4096-byte pages"),
        ));
    }
    Ok(())
}

impl GuestRam for MemfdRam {
    fn size(&self) -> u64 {
        self.len()
    }
    fn read_pages(&self, first: u64, buf: &mut [u8]) -> std::io::Result<()> {
        check_whole_pages(buf.len())?;
        self.read_at(first.saturating_mul(4096), buf)
    }
    fn write_pages(&self, first: u64, data: &[u8]) -> std::io::Result<()> {
        check_whole_pages(data.len())?;
        self.write_at(first.saturating_mul(4096), data)
    }
    fn zero_pages_at(&self, page: u64) -> u64 {
        self.hole_at(page.saturating_mul(4096)) / 4096
    }
    fn data_pages_at(&self, page: u64) -> u64 {
        self.data_at(page.saturating_mul(4096)).div_ceil(4096)
    }
    /// A bare memfd has no vCPUs: nothing is ever dirtied by one.
    fn take_dirty(&self, _bitmap: &mut [u64]) {}
    fn pause(&self) {}
    fn resume(&self) {}
}

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

    #[test]
    fn holes_are_found_without_touching_memory() {
        let r = MemfdRam::new("t", 64 << 10).unwrap();
        assert_eq!(r.zero_pages_at(0), 16);
        r.write_pages(5, &[1u8; 4096]).unwrap();
        assert_eq!(r.zero_pages_at(0), 5);
        assert_eq!(r.zero_pages_at(5), 0);
        assert_eq!(r.zero_pages_at(6), 10);
        assert_eq!(r.zero_pages_at(16), 0);
        assert_eq!(r.data_pages_at(5), 1);
        assert_eq!(r.data_pages_at(4), 0);
    }

    #[test]
    fn out_of_range_access_is_refused() {
        let r = MemfdRam::new("t", 8192).unwrap();
        assert!(r.read_pages(2, &mut [0u8; 4096]).is_err());
        assert!(r.write_pages(1, &[0u8; 8192]).is_err());
        assert!(r.write_pages(0, &[0u8; 100]).is_err());
    }
}
