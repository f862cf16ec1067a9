//! `vgpu`: a GPU-like sample device.
//!
//! - BAR0 (region 0, 4 KiB, trapped): the register file in [`regs::reg`].
//! - BAR2 (region 2, `mem_size`, 256 MiB by default): device memory (a
//!   framebuffer), a memfd that clients may mmap (`Region::mmap`).
//! - Region 7: PCI config space (vendor 0x1b36, device 0x00f0, subsystem
//!   0x1b36:0x0001, revision 1, class 0x038000, no interrupt pin, a 64-bit
//!   MSI capability with one vector at 0x40).
//! - MSI (IRQ index 1, one vector): raised after every render step
//!   (CONTROL bit 2) and every DMA step (CONTROL bit 3).
//!
//! While the device runs (RUNNING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P) and
//! CONTROL enables them, a render engine writes device memory at
//! RENDER_RATE and a DMA engine writes guest memory at DMA_RATE through the
//! [`DmaSpace`] (so DMA dirty logging sees it). Any arc into STOP,
//! STOP_COPY or RESUMING stops both before it returns.
//!
//! Migration: STOP_COPY | P2P | PRE_COPY. The save stream ([`save`]) is a
//! header, page records and, in STOP_COPY, registers and an end record,
//! all CRC-checked; the load stream ([`load`]) writes pages straight into
//! device memory and is validated when RESUMING ends. The DIGEST register
//! hashes device memory, the RW registers and the counters, so equal
//! digests at source and destination mean the migration was exact.
//!
//! Writes through a client's mmap of BAR2 are not dirty-tracked (no device
//! could see them); writes by region access are.

pub mod engines;
pub mod load;
pub mod pagehash;
pub mod regs;
pub mod save;

use self::engines::{Engine, Shared, PAGE};
use self::load::LoadStream;
use self::regs::{reg, Regs, CONTROL_BITS, CONTROL_DMA, CONTROL_RENDER, REG_END};
use self::save::SaveStream;
use super::hash::{fill_pseudo_random, mix_words, Digest64};
use super::mem::SharedMemory;
use super::{is_running, CONFIG_REGION, SAMPLE_VENDOR_ID};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use vfio_migrate_abi::kernel::{MigState, MIGRATION_P2P, MIGRATION_PRE_COPY, MIGRATION_STOP_COPY};
use vfio_migrate_abi::vfio_user::{
    IRQ_INFO_EVENTFD, IRQ_INFO_MASKABLE, IRQ_INFO_NORESIZE, PCI_MSI_IRQ_INDEX,
};
use vfio_migrate_backend::PrecopyInfo;
use vfio_migrate_device::device::{Device, DeviceIdentity, IrqDesc, Region, RegionMmap};
use vfio_migrate_device::dirty::DirtyBitmap;
use vfio_migrate_device::dma::DmaSpace;
use vfio_migrate_device::error::{DeviceError, DeviceResult};
use vfio_migrate_device::irq::{Interrupts, IrqRequest};
use vfio_migrate_device::pci::{Bar, BarKind, PciConfig, CONFIG_SIZE};

pub use self::regs::{ID_VALUE, REG_END as BAR0_REG_END};

/// PCI device id.
pub const DEVICE_ID: u16 = 0x00f0;
/// PCI subsystem vendor id.
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x1b36;
/// PCI subsystem id.
pub const SUBSYSTEM_ID: u16 = 0x0001;
/// PCI revision.
pub const REVISION: u8 = 1;
/// PCI class code (display controller, other).
pub const CLASS_CODE: u32 = 0x03_80_00;
/// Migration flags.
pub const FLAGS: u64 = MIGRATION_STOP_COPY | MIGRATION_P2P | MIGRATION_PRE_COPY;
/// Region index of the register BAR.
pub const BAR0: u32 = 0;
/// Region index of the device-memory BAR.
pub const BAR2: u32 = 2;
/// Default device memory size.
pub const DEFAULT_MEM_SIZE: u64 = 256 << 20;
/// Below this much stop-copy data left, the save stream is copied, not
/// described as pieces ([`Device::save_pieces`]).
const PIECES_MIN: u64 = 256 << 10;
/// Config-space offset of the MSI capability.
pub const MSI_CAP: u8 = 0x40;
/// The MSI the vgpu offers: index 1, one vector (the config space's MSI
/// capability announces one).
pub const MSI: IrqDesc = IrqDesc {
    index: PCI_MSI_IRQ_INDEX,
    count: 1,
    flags: IRQ_INFO_EVENTFD | IRQ_INFO_MASKABLE | IRQ_INFO_NORESIZE,
};

/// How to build a vgpu.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VgpuConfig {
    /// Device memory (BAR2) size in bytes: a power of two, at least 4 KiB.
    pub mem_size: u64,
    /// Simulated slowness of some migration steps (none by default).
    pub latency: Latency,
}

impl Default for VgpuConfig {
    fn default() -> Self {
        Self {
            mem_size: DEFAULT_MEM_SIZE,
            latency: Latency::default(),
        }
    }
}

/// How long the vgpu takes for steps that are slow on real devices, to
/// show (and test) that a slow but live device is waited for and never
/// taken for a dead one: a destination that takes long to enter RESUMING
/// or to validate what it loaded, a source slow to estimate its stop-copy
/// size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    /// Entering RESUMING (STOP → RESUMING).
    pub resume: std::time::Duration,
    /// Validating a loaded state (RESUMING → STOP).
    pub validate: std::time::Duration,
    /// Each stop-copy size estimate.
    pub estimate: std::time::Duration,
}

/// The vgpu device.
pub struct Vgpu {
    shared: Arc<Shared>,
    dma: Arc<DmaSpace>,
    render: Option<Engine>,
    dma_engine: Option<Engine>,
    pci: PciConfig,
    save: Option<SaveStream>,
    load: Option<LoadStream>,
    latency: Latency,
}

impl std::fmt::Debug for Vgpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vgpu")
            .field("mem_size", &self.shared.mem.len())
            .field("render", &self.render.is_some())
            .field("dma", &self.dma_engine.is_some())
            .finish_non_exhaustive()
    }
}

fn identity() -> DeviceIdentity {
    DeviceIdentity {
        model: "vgpu".into(),
        version: format!("state format {}", save::VERSION),
        vendor_id: SAMPLE_VENDOR_ID,
        device_id: DEVICE_ID,
        subsystem_vendor_id: SUBSYSTEM_VENDOR_ID,
        subsystem_id: SUBSYSTEM_ID,
        revision: REVISION,
        class_code: CLASS_CODE,
    }
}

impl Vgpu {
    /// A powered-on vgpu (RUNNING, engines off, memory and registers zero)
    /// whose DMA engine writes guest memory through `dma`.
    pub fn new(cfg: VgpuConfig, dma: Arc<DmaSpace>) -> DeviceResult<Self> {
        let m = cfg.mem_size;
        if !m.is_power_of_two() || m < PAGE || m / PAGE > u32::MAX as u64 {
            return Err(DeviceError::inval(format!(
                "vgpu mem_size {m} must be a power of two between {PAGE} bytes and 16 TiB \
                 (it is a PCI BAR)"
            )));
        }
        let mem = SharedMemory::populated("vgpu-bar2", m)?;
        let dirty = DirtyBitmap::new(m, PAGE)?;
        let hashes = pagehash::PageHashes::new(m / PAGE);
        let mut pci = PciConfig::new(
            &identity(),
            &[
                Bar {
                    index: BAR0 as u8,
                    size: regs::BAR0_SIZE,
                    kind: BarKind::Mem32 {
                        prefetchable: false,
                    },
                },
                Bar {
                    index: BAR2 as u8,
                    size: m,
                    kind: BarKind::Mem64 { prefetchable: true },
                },
            ],
            0,
        )?;
        pci.add_msi(MSI_CAP, MSI.count)?;
        let regs = Regs::default();
        let irq = Interrupts::new(&[MSI]);
        Ok(Self {
            shared: Arc::new(Shared {
                mem,
                dirty,
                hashes,
                regs,
                irq,
                throttle: Default::default(),
            }),
            dma,
            render: None,
            dma_engine: None,
            pci,
            save: None,
            load: None,
            latency: cfg.latency,
        })
    }

    /// Device memory size.
    pub fn mem_size(&self) -> u64 {
        self.shared.mem.len()
    }

    /// The device's interrupts (shared: clones see the same eventfds).
    pub fn interrupts(&self) -> &Interrupts {
        &self.shared.irq
    }

    /// Whether the render / DMA engine threads are running.
    pub fn engines_running(&self) -> (bool, bool) {
        (self.render.is_some(), self.dma_engine.is_some())
    }

    /// Starts or stops the engine threads to match `state` and CONTROL.
    fn sync_engines(&mut self, state: MigState) -> DeviceResult<()> {
        let run = is_running(state);
        let control = self.shared.regs.control.load(Ordering::Acquire);
        let want_render = run && control & CONTROL_RENDER != 0;
        let want_dma = run && control & CONTROL_DMA != 0;
        let mut first_err = None;
        if !want_render {
            if let Some(e) = self.render.take() {
                first_err = e.stop().err();
            }
        }
        if !want_dma {
            if let Some(e) = self.dma_engine.take() {
                if let Err(err) = e.stop() {
                    first_err.get_or_insert(err);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        if want_render && self.render.is_none() {
            self.render = Some(Engine::render(self.shared.clone())?);
        }
        if want_dma && self.dma_engine.is_none() {
            self.dma_engine = Some(Engine::dma(self.shared.clone(), self.dma.clone())?);
        }
        Ok(())
    }

    fn poke_engines(&self) {
        for e in self.render.iter().chain(self.dma_engine.iter()) {
            e.poke();
        }
    }

    /// The DIGEST value: the memory digest ([`pagehash`]: the sum of every
    /// page's term — cached for pages saved or loaded and not written
    /// since, hashed now for the others; `full` hashes every page now),
    /// then the memory size and every register folded into one digest.
    fn compute_digest(&self, full: bool) -> u64 {
        let len = self.shared.mem.len();
        let memory = if full {
            pagehash::full_memory_digest(&self.shared.mem)
        } else {
            let (sum, hashed) = self
                .shared
                .hashes
                .memory_digest(&self.shared.mem, &self.shared.dirty);
            tracing::debug!(hashed, pages = len / PAGE, "vgpu digest");
            sum
        };
        let mut d = Digest64::new(ID_VALUE);
        d.update_u64(memory);
        d.update_u64(len);
        for w in self.shared.regs.snapshot().words() {
            d.update_u64(w);
        }
        d.finish()
    }

    /// MODESET: a display mode change redraws the whole framebuffer (every
    /// page pseudo-random from SEED, FRAME and the page) and counts as a
    /// frame; a pre-copy in progress starts its initial data again.
    fn modeset(&mut self) -> DeviceResult<()> {
        let r = &self.shared.regs;
        let (seed, frame) = (
            r.seed.load(Ordering::Acquire),
            r.frame.load(Ordering::Acquire),
        );
        let mut block = vec![0u8; 64 * PAGE as usize];
        let pages = self.shared.pages();
        let mut p = 0;
        while p < pages {
            let n = (pages - p).min(64);
            let b = &mut block[..(n * PAGE) as usize];
            for (i, page) in b.chunks_exact_mut(PAGE as usize).enumerate() {
                fill_pseudo_random(mix_words(&[seed, frame, p + i as u64, 5]), page);
            }
            self.shared.mem.write(p * PAGE, b)?;
            p += n;
        }
        self.shared.dirty.mark_all();
        r.frame.store(frame + 1, Ordering::Release);
        if let Some(s) = self.save.as_mut() {
            s.reinit(&self.shared);
        }
        Ok(())
    }

    fn read_reg(&self, off: u64) -> DeviceResult<u64> {
        let r = &self.shared.regs;
        let v = match off {
            reg::ID => ID_VALUE,
            reg::CONTROL => r.control.load(Ordering::Acquire),
            reg::RENDER_RATE => r.render_rate.load(Ordering::Acquire),
            reg::DMA_RATE => r.dma_rate.load(Ordering::Acquire),
            reg::DMA_IOVA => r.dma_iova.load(Ordering::Acquire),
            reg::DMA_SIZE => r.dma_size.load(Ordering::Acquire),
            reg::SEED => r.seed.load(Ordering::Acquire),
            reg::DIGEST => self.compute_digest(false),
            reg::DIGEST_FULL => self.compute_digest(true),
            reg::THROTTLE => self.shared.throttle.load(Ordering::Acquire),
            reg::MODESET => 0,
            reg::FRAME => r.frame.load(Ordering::Acquire),
            reg::DMA_COUNT => r.dma_count.load(Ordering::Acquire),
            reg::DMA_ERRORS => r.dma_errors.load(Ordering::Acquire),
            reg::MEM_SIZE => self.shared.mem.len(),
            reg::SCRATCH => r.scratch.load(Ordering::Acquire),
            _ => {
                return Err(DeviceError::inval(format!(
                    "vgpu BAR0 has no register at {off:#x} (registers are 0x00..{REG_END:#x})"
                )))
            }
        };
        Ok(v)
    }

    /// Checks that `v` may be written to register `off`.
    fn check_write(off: u64, v: u64) -> DeviceResult<()> {
        match off {
            reg::CONTROL if v & !CONTROL_BITS != 0 => Err(DeviceError::inval(format!(
                "CONTROL bits {:#x} are reserved (bit 0 = render, bit 1 = DMA, bit 2 = MSI per \
                 frame, bit 3 = MSI per DMA step)",
                v & !CONTROL_BITS
            ))),
            reg::CONTROL
            | reg::RENDER_RATE
            | reg::DMA_RATE
            | reg::DMA_IOVA
            | reg::DMA_SIZE
            | reg::SEED
            | reg::SCRATCH
            | reg::MODESET => Ok(()),
            _ if off < REG_END => Err(DeviceError::inval(format!(
                "vgpu register {} ({off:#x}) is read-only",
                regs::name(off)
            ))),
            _ => Err(DeviceError::inval(format!(
                "vgpu BAR0 has no register at {off:#x} (registers are 0x00..{REG_END:#x})"
            ))),
        }
    }

    fn write_reg(&mut self, state: MigState, off: u64, v: u64) -> DeviceResult<()> {
        let r = &self.shared.regs;
        match off {
            reg::CONTROL => {
                r.control.store(v, Ordering::Release);
                return self.sync_engines(state);
            }
            reg::RENDER_RATE => r.render_rate.store(v, Ordering::Release),
            reg::DMA_RATE => r.dma_rate.store(v, Ordering::Release),
            reg::DMA_IOVA => r.dma_iova.store(v, Ordering::Release),
            reg::DMA_SIZE => r.dma_size.store(v, Ordering::Release),
            reg::SEED => r.seed.store(v, Ordering::Release),
            reg::SCRATCH => r.scratch.store(v, Ordering::Release),
            reg::MODESET => return self.modeset(),
            _ => unreachable!("check_write refused {off:#x}"),
        }
        self.poke_engines();
        Ok(())
    }

    /// Splits a BAR0 access into registers: a 4-byte access to one half of
    /// a register, or whole aligned registers.
    fn bar0_layout(offset: u64, len: usize) -> DeviceResult<()> {
        let ok = (len == 4 && offset.is_multiple_of(4))
            || (len > 0 && len.is_multiple_of(8) && offset.is_multiple_of(8));
        if ok {
            Ok(())
        } else {
            Err(DeviceError::inval(format!(
                "vgpu BAR0 access of {len} bytes at {offset:#x}: registers are 8-byte little-endian \
                 words; use 8-byte aligned accesses (or 4 bytes for one half)"
            )))
        }
    }

    fn bar0_read(&self, offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
        Self::bar0_layout(offset, buf.len())?;
        if buf.len() == 4 {
            let v = self.read_reg(offset & !7)?.to_le_bytes();
            let h = (offset % 8) as usize;
            buf.copy_from_slice(&v[h..h + 4]);
            return Ok(());
        }
        for (i, c) in buf.chunks_mut(8).enumerate() {
            c.copy_from_slice(&self.read_reg(offset + 8 * i as u64)?.to_le_bytes());
        }
        Ok(())
    }

    fn bar0_write(&mut self, state: MigState, offset: u64, data: &[u8]) -> DeviceResult<()> {
        Self::bar0_layout(offset, data.len())?;
        let mut writes = Vec::with_capacity(data.len().div_ceil(8));
        if data.len() == 4 {
            let off = offset & !7;
            Self::check_write(off, 0)?;
            let mut v = self.read_reg(off)?.to_le_bytes();
            let h = (offset % 8) as usize;
            v[h..h + 4].copy_from_slice(data);
            writes.push((off, u64::from_le_bytes(v)));
        } else {
            for (i, c) in data.chunks(8).enumerate() {
                let v = u64::from_le_bytes(c.try_into().expect("8 bytes"));
                writes.push((offset + 8 * i as u64, v));
            }
        }
        // Validate everything before changing anything.
        for &(off, v) in &writes {
            Self::check_write(off, v)?;
        }
        for (off, v) in writes {
            self.write_reg(state, off, v)?;
        }
        Ok(())
    }

    fn require_running(state: MigState, what: &str) -> DeviceResult<()> {
        if is_running(state) {
            Ok(())
        } else {
            Err(DeviceError::new(
                libc::EBUSY,
                format!(
                    "{what} refused: the vgpu is in {state} and its state is frozen; set it RUNNING first"
                ),
            ))
        }
    }

    fn stop_engines_quietly(&mut self) {
        for e in [self.render.take(), self.dma_engine.take()]
            .into_iter()
            .flatten()
        {
            if let Err(err) = e.stop() {
                tracing::warn!(error = %err, "vgpu engine stopped with an error");
            }
        }
    }
}

impl Drop for Vgpu {
    fn drop(&mut self) {
        self.stop_engines_quietly();
    }
}

impl Device for Vgpu {
    fn identity(&self) -> DeviceIdentity {
        identity()
    }

    fn regions(&self) -> Vec<Region> {
        let m = self.shared.mem.len();
        vec![
            Region {
                index: BAR0,
                size: regs::BAR0_SIZE,
                readable: true,
                writable: true,
                mmap: None,
                region_type: None,
            },
            Region {
                index: BAR2,
                size: m,
                readable: true,
                writable: true,
                mmap: Some(RegionMmap {
                    fd: self.shared.mem.fd().clone(),
                    areas: vec![(0, m)],
                }),
                region_type: None,
            },
            Region {
                index: CONFIG_REGION,
                size: CONFIG_SIZE as u64,
                readable: true,
                writable: true,
                mmap: None,
                region_type: None,
            },
        ]
    }

    fn irqs(&self) -> Vec<IrqDesc> {
        self.shared.irq.descs()
    }

    fn set_irqs(&mut self, index: u32, req: IrqRequest) -> DeviceResult<()> {
        self.shared.irq.apply(index, req)
    }

    fn region_read(
        &mut self,
        _state: MigState,
        index: u32,
        offset: u64,
        buf: &mut [u8],
    ) -> DeviceResult<()> {
        match index {
            BAR0 => self.bar0_read(offset, buf),
            BAR2 => self.shared.mem.read(offset, buf),
            CONFIG_REGION => self.pci.read(offset, buf),
            _ => Err(DeviceError::inval(format!("vgpu has no region {index}"))),
        }
    }

    fn region_write(
        &mut self,
        state: MigState,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> DeviceResult<()> {
        match index {
            BAR0 => {
                Self::require_running(state, "register write")?;
                self.bar0_write(state, offset, data)
            }
            BAR2 => {
                Self::require_running(state, "device memory write")?;
                self.shared.mem.write(offset, data)?;
                self.shared.dirty.mark(offset, data.len() as u64)
            }
            CONFIG_REGION => {
                if matches!(state, MigState::StopCopy | MigState::Resuming) {
                    return Err(DeviceError::new(
                        libc::EBUSY,
                        format!(
                            "config space write refused in {state}: the state is being saved or loaded"
                        ),
                    ));
                }
                self.pci.write(offset, data)
            }
            _ => Err(DeviceError::inval(format!("vgpu has no region {index}"))),
        }
    }

    fn reset(&mut self) -> DeviceResult<()> {
        self.stop_engines_quietly();
        self.save = None;
        self.load = None;
        self.shared.hashes.forget_all();
        self.shared.mem.zero_all()?;
        self.shared.regs.reset();
        self.shared.dirty.clear_all();
        self.shared.throttle.store(0, Ordering::Release);
        self.pci.reset();
        Ok(())
    }

    fn migration_flags(&self) -> u64 {
        FLAGS
    }

    fn transition(&mut self, from: MigState, to: MigState) -> DeviceResult<()> {
        use MigState::*;
        vfio_migrate_device::core::check_arc(FLAGS, from, to)?;
        match (from, to) {
            (Stop, Resuming) => std::thread::sleep(self.latency.resume),
            (Resuming, Stop) => std::thread::sleep(self.latency.validate),
            _ => {}
        }
        match (from, to) {
            (Resuming, Stop) => {
                let load = self
                    .load
                    .as_ref()
                    .ok_or_else(|| DeviceError::new(libc::EIO, "RESUMING without a load stream"))?;
                let loaded = load.finish()?;
                self.pci.restore(&loaded.config)?;
                self.shared.regs.restore(&loaded.regs);
                self.shared.dirty.clear_all();
                self.load = None;
            }
            (Stop, Resuming) => self.load = Some(LoadStream::new(self.shared.clone())),
            (Stop, StopCopy) => self.save = Some(SaveStream::new(&self.shared, true)),
            (Running | RunningP2p, PreCopy | PreCopyP2p) => {
                self.save = Some(SaveStream::new(&self.shared, false))
            }
            (PreCopy | PreCopyP2p, Running | RunningP2p) | (StopCopy, Stop) => self.save = None,
            _ => {}
        }
        self.sync_engines(to)?;
        if (from, to) == (PreCopyP2p, StopCopy) {
            if let Some(s) = self.save.as_mut() {
                s.enter_stop_copy();
            }
        }
        Ok(())
    }

    fn save(&mut self, state: MigState, buf: &mut [u8]) -> DeviceResult<usize> {
        let s = self
            .save
            .as_mut()
            .ok_or_else(|| DeviceError::inval(format!("the vgpu has no save stream in {state}")))?;
        Ok(s.save(&self.shared, self.pci.bytes(), buf))
    }

    fn save_pieces(
        &mut self,
        state: MigState,
        max: usize,
        out: &mut vfio_migrate_device::SavePieces,
    ) -> DeviceResult<bool> {
        // Only stopped: the pages are read when the server sends them.
        if state != MigState::StopCopy {
            return Ok(false);
        }
        let s = self
            .save
            .as_mut()
            .ok_or_else(|| DeviceError::inval(format!("the vgpu has no save stream in {state}")))?;
        // A small rest (the few pages dirtied last, inside the downtime)
        // is copied in one piece: cheaper than splicing it.
        if s.remaining_bytes(&self.shared) < PIECES_MIN {
            return Ok(false);
        }
        s.save_pieces(&self.shared, self.pci.bytes(), max, out)?;
        Ok(true)
    }

    fn precopy_info(&mut self) -> PrecopyInfo {
        match &mut self.save {
            Some(s) => PrecopyInfo {
                initial_bytes: s.initial_bytes(),
                dirty_bytes: s.dirty_bytes(&self.shared),
                reinit: s.take_reinit(),
            },
            None => PrecopyInfo::default(),
        }
    }

    fn stop_copy_size(&mut self) -> u64 {
        std::thread::sleep(self.latency.estimate);
        match &self.save {
            Some(s) => s.remaining_bytes(&self.shared),
            None => save::full_stream_bytes(self.shared.pages()),
        }
    }

    fn load(&mut self, state: MigState, data: &[u8]) -> DeviceResult<()> {
        match self.load.as_mut() {
            Some(l) => l.load(data),
            None => Err(DeviceError::inval(format!(
                "the vgpu takes state data only in RESUMING; it is in {state}"
            ))),
        }
    }

    fn digest(&mut self) -> Option<u64> {
        Some(self.compute_digest(false))
    }

    fn throttle_offered(&self) -> bool {
        true
    }

    fn set_throttle(&mut self, percent: u32) -> DeviceResult<()> {
        self.shared
            .throttle
            .store(u64::from(percent), Ordering::Release);
        self.poke_engines();
        Ok(())
    }
}
