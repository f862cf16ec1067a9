//! # vfio-migrate-samples
//!
//! Sample devices built on the device SDK (`vfio-migrate-device`), and the
//! helpers they share.
//!
//! - [`vgpu`]: a GPU-like device with an mmap-able framebuffer BAR, a render
//!   engine and a DMA engine that dirty memory while it runs, and pre-copy.
//! - [`serial`]: a 16550-like UART with a loopback FIFO — tens of bytes of
//!   state, STOP_COPY only: the minimal migration path.
//!
//! Shared helpers: [`stream`] (the checked record framing of both save
//! streams), [`mem`] (memfd-backed shared memory), [`hash`] (the 64-bit
//! state digest). `docs/devices.md` describes registers and state formats.

#![forbid(unsafe_code)]

pub mod hash;
pub mod mem;
pub mod serial;
pub mod stream;
pub mod vgpu;

use vfio_migrate_abi::kernel::MigState;

/// PCI vendor id of both samples (Red Hat / QEMU's id for emulated devices).
pub const SAMPLE_VENDOR_ID: u16 = 0x1b36;

/// Region index of PCI config space (as in VFIO).
pub const CONFIG_REGION: u32 = 7;

/// True in the states where a device runs (engines on, register writes
/// allowed): RUNNING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P.
pub fn is_running(s: MigState) -> bool {
    matches!(
        s,
        MigState::Running | MigState::RunningP2p | MigState::PreCopy | MigState::PreCopyP2p
    )
}
