//! The vgpu register file (BAR0): offsets, the atomic registers shared
//! with the engine threads, and the register part of the save stream.

use std::sync::atomic::{AtomicU64, Ordering};
use vfio_migrate_device::error::{DeviceError, DeviceResult};
use vfio_migrate_device::pci::CONFIG_SIZE;

/// BAR0 register offsets (each a little-endian u64).
pub mod reg {
    /// RO: [`super::ID_VALUE`].
    pub const ID: u64 = 0x00;
    /// RW: bit 0 render engine on, bit 1 DMA engine on, bit 2 MSI after
    /// every render step, bit 3 MSI after every DMA step.
    pub const CONTROL: u64 = 0x08;
    /// RW: bytes/s the render engine writes into device memory.
    pub const RENDER_RATE: u64 = 0x10;
    /// RW: bytes/s the DMA engine writes into guest memory.
    pub const DMA_RATE: u64 = 0x18;
    /// RW: start of the DMA window (guest IOVA).
    pub const DMA_IOVA: u64 = 0x20;
    /// RW: size of the DMA window.
    pub const DMA_SIZE: u64 = 0x28;
    /// RW: seed of the engines' pseudo-random writes.
    pub const SEED: u64 = 0x30;
    /// RO: digest of device memory, RW registers and counters.
    pub const DIGEST: u64 = 0x38;
    /// RO: render steps done.
    pub const FRAME: u64 = 0x40;
    /// RO: DMA writes done.
    pub const DMA_COUNT: u64 = 0x48;
    /// RO: DMA writes that failed (window not mapped or not writable).
    pub const DMA_ERRORS: u64 = 0x50;
    /// RO: device memory size.
    pub const MEM_SIZE: u64 = 0x58;
    /// RW: free for the driver.
    pub const SCRATCH: u64 = 0x60;
    /// RO: the same digest as [`DIGEST`], with every page of device memory
    /// hashed now (DIGEST reuses the hashes of pages saved or loaded and
    /// not written since). For checking the incremental digest.
    pub const DIGEST_FULL: u64 = 0x68;
    /// RO: the render engine's throttle, percent of RENDER_RATE withheld
    /// (set by a migration through the SDK's throttle hook; 0 otherwise).
    pub const THROTTLE: u64 = 0x70;
    /// WO (reads 0): writing any value changes the display mode: the whole
    /// framebuffer is redrawn, and a pre-copy in progress starts its
    /// initial data again (it reports REINIT).
    pub const MODESET: u64 = 0x78;
}

/// End of the register block; the rest of BAR0 holds no registers.
pub const REG_END: u64 = 0x80;
/// BAR0 size.
pub const BAR0_SIZE: u64 = 4096;
/// Value of the ID register ("VGPU", version 1).
pub const ID_VALUE: u64 = 0x5647_5055_0000_0001;
/// CONTROL: render engine on.
pub const CONTROL_RENDER: u64 = 1;
/// CONTROL: DMA engine on.
pub const CONTROL_DMA: u64 = 2;
/// CONTROL: raise MSI vector 0 after every render step ("frame done").
pub const CONTROL_IRQ_FRAME: u64 = 4;
/// CONTROL: raise MSI vector 0 after every DMA step (written or failed).
pub const CONTROL_IRQ_DMA: u64 = 8;
/// Every CONTROL bit that means something; the others are reserved.
pub const CONTROL_BITS: u64 = CONTROL_RENDER | CONTROL_DMA | CONTROL_IRQ_FRAME | CONTROL_IRQ_DMA;

/// Name of the register at `off`, for messages.
pub fn name(off: u64) -> &'static str {
    match off {
        reg::ID => "ID",
        reg::CONTROL => "CONTROL",
        reg::RENDER_RATE => "RENDER_RATE",
        reg::DMA_RATE => "DMA_RATE",
        reg::DMA_IOVA => "DMA_IOVA",
        reg::DMA_SIZE => "DMA_SIZE",
        reg::SEED => "SEED",
        reg::DIGEST => "DIGEST",
        reg::FRAME => "FRAME",
        reg::DMA_COUNT => "DMA_COUNT",
        reg::DMA_ERRORS => "DMA_ERRORS",
        reg::MEM_SIZE => "MEM_SIZE",
        reg::SCRATCH => "SCRATCH",
        reg::DIGEST_FULL => "DIGEST_FULL",
        reg::THROTTLE => "THROTTLE",
        reg::MODESET => "MODESET",
        _ => "(none)",
    }
}

/// The registers that carry state, shared with the engine threads.
#[derive(Debug, Default)]
pub struct Regs {
    /// [`reg::CONTROL`]: [`CONTROL_BITS`].
    pub control: AtomicU64,
    /// [`reg::RENDER_RATE`], bytes/s.
    pub render_rate: AtomicU64,
    /// [`reg::DMA_RATE`], bytes/s.
    pub dma_rate: AtomicU64,
    /// [`reg::DMA_IOVA`]: first guest IOVA the DMA engine writes.
    pub dma_iova: AtomicU64,
    /// [`reg::DMA_SIZE`]: bytes of the DMA engine's window.
    pub dma_size: AtomicU64,
    /// [`reg::SEED`]: seeds the engines' block placement and content.
    pub seed: AtomicU64,
    /// [`reg::SCRATCH`]: free for the driver.
    pub scratch: AtomicU64,
    /// [`reg::FRAME`]: render steps done (written by the render engine).
    pub frame: AtomicU64,
    /// [`reg::DMA_COUNT`]: DMA writes done (written by the DMA engine).
    pub dma_count: AtomicU64,
    /// [`reg::DMA_ERRORS`]: DMA writes that failed.
    pub dma_errors: AtomicU64,
}

/// A copy of [`Regs`], in save-stream order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegSnapshot {
    /// [`Regs::control`].
    pub control: u64,
    /// [`Regs::render_rate`], bytes/s.
    pub render_rate: u64,
    /// [`Regs::dma_rate`], bytes/s.
    pub dma_rate: u64,
    /// [`Regs::dma_iova`].
    pub dma_iova: u64,
    /// [`Regs::dma_size`], bytes.
    pub dma_size: u64,
    /// [`Regs::seed`].
    pub seed: u64,
    /// [`Regs::scratch`].
    pub scratch: u64,
    /// [`Regs::frame`].
    pub frame: u64,
    /// [`Regs::dma_count`].
    pub dma_count: u64,
    /// [`Regs::dma_errors`].
    pub dma_errors: u64,
}

impl RegSnapshot {
    /// Encoded size.
    pub const LEN: usize = 80;

    /// The words in stream (and digest) order.
    pub fn words(&self) -> [u64; 10] {
        [
            self.control,
            self.render_rate,
            self.dma_rate,
            self.dma_iova,
            self.dma_size,
            self.seed,
            self.scratch,
            self.frame,
            self.dma_count,
            self.dma_errors,
        ]
    }

    fn from_words(w: [u64; 10]) -> Self {
        Self {
            control: w[0],
            render_rate: w[1],
            dma_rate: w[2],
            dma_iova: w[3],
            dma_size: w[4],
            seed: w[5],
            scratch: w[6],
            frame: w[7],
            dma_count: w[8],
            dma_errors: w[9],
        }
    }
}

impl Regs {
    fn all(&self) -> [&AtomicU64; 10] {
        [
            &self.control,
            &self.render_rate,
            &self.dma_rate,
            &self.dma_iova,
            &self.dma_size,
            &self.seed,
            &self.scratch,
            &self.frame,
            &self.dma_count,
            &self.dma_errors,
        ]
    }

    /// Current values.
    pub fn snapshot(&self) -> RegSnapshot {
        let mut w = [0u64; 10];
        for (v, a) in w.iter_mut().zip(self.all()) {
            *v = a.load(Ordering::Acquire);
        }
        RegSnapshot::from_words(w)
    }

    /// Sets every register from `s`.
    pub fn restore(&self, s: &RegSnapshot) {
        for (v, a) in s.words().iter().zip(self.all()) {
            a.store(*v, Ordering::Release);
        }
    }

    /// Power-on values (all zero).
    pub fn reset(&self) {
        self.restore(&RegSnapshot::default());
    }
}

/// Size of the registers record payload: registers then config space.
pub const STATE_LEN: usize = RegSnapshot::LEN + CONFIG_SIZE;

/// Encodes the registers record payload.
pub fn encode_state(r: &RegSnapshot, config: &[u8; CONFIG_SIZE]) -> Vec<u8> {
    let mut b = Vec::with_capacity(STATE_LEN);
    for w in r.words() {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b.extend_from_slice(config);
    b
}

/// Decodes the registers record payload.
pub fn decode_state(b: &[u8]) -> DeviceResult<(RegSnapshot, [u8; CONFIG_SIZE])> {
    if b.len() != STATE_LEN {
        return Err(DeviceError::inval(format!(
            "registers record has {} bytes, {STATE_LEN} expected",
            b.len()
        )));
    }
    let mut w = [0u64; 10];
    for (i, v) in w.iter_mut().enumerate() {
        *v = u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    }
    let s = RegSnapshot::from_words(w);
    if s.control & !CONTROL_BITS != 0 {
        return Err(DeviceError::inval(format!(
            "registers record sets reserved CONTROL bits ({:#x})",
            s.control
        )));
    }
    let config = b[RegSnapshot::LEN..].try_into().expect("config bytes");
    Ok((s, config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trip() {
        let r = Regs::default();
        r.seed.store(5, Ordering::Relaxed);
        r.frame.store(77, Ordering::Relaxed);
        r.control.store(3, Ordering::Relaxed);
        let cfg = [9u8; CONFIG_SIZE];
        let b = encode_state(&r.snapshot(), &cfg);
        assert_eq!(b.len(), STATE_LEN);
        let (s, c) = decode_state(&b).unwrap();
        assert_eq!(s, r.snapshot());
        assert_eq!(c, cfg);
        let r2 = Regs::default();
        r2.restore(&s);
        assert_eq!(r2.snapshot(), s);
        r2.reset();
        assert_eq!(r2.snapshot(), RegSnapshot::default());
    }

    #[test]
    fn bad_state_is_refused() {
        let mut b = encode_state(&RegSnapshot::default(), &[0; CONFIG_SIZE]);
        assert!(decode_state(&b[1..]).is_err());
        b[0] = 0x80 | CONTROL_BITS as u8;
        let e = decode_state(&b).unwrap_err();
        assert!(e.message.contains("reserved CONTROL bits"), "{e}");
    }
}
