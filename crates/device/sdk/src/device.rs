//! The trait a device author implements, and the types it describes itself
//! with. Hooks have defaults where a device may not care (IRQs, reset,
//! pre-copy info, digest); region access and the other migration hooks
//! are required.
//!
//! The SDK (see [`crate::core::DeviceCore`]) is the one home of the
//! migration state: it walks the v2 state machine, calls
//! [`Device::transition`] with single arcs only, checks that data is read
//! and written only in the states that allow it, and owns DMA and the DMA
//! dirty log ([`crate::dma::DmaSpace`]). A device keeps no copy of the
//! state: every hook whose behaviour depends on it gets the current state
//! as its `state` parameter (`transition` gets `from` and `to`).

use crate::error::{DeviceError, DeviceResult};
use crate::irq::IrqRequest;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use vfio_migrate_abi::kernel::MigState;
use vfio_migrate_backend::PrecopyInfo;

/// Who the device is: what goes into the compatibility descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// Model name (`vgpu`, `serial`).
    pub model: String,
    /// Model version: state format version plus any parameter that changes
    /// the state layout.
    pub version: String,
    /// PCI vendor ID, for config space and the descriptor.
    pub vendor_id: u16,
    /// PCI device ID.
    pub device_id: u16,
    /// PCI subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// PCI subsystem ID.
    pub subsystem_id: u16,
    /// PCI revision ID.
    pub revision: u8,
    /// PCI class code: base class, subclass and programming interface in
    /// the low 24 bits (e.g. `0x038000`, other display controller); the
    /// top byte is ignored.
    pub class_code: u32,
}

/// One device region (BAR, config space, or device-specific region).
#[derive(Debug, Clone)]
pub struct Region {
    /// Region index (PCI: BAR0..5 = 0..5, config = 7; extra regions ≥ 9).
    pub index: u32,
    /// Size in bytes; accesses must lie inside it.
    pub size: u64,
    /// Region reads are allowed.
    pub readable: bool,
    /// Region writes are allowed.
    pub writable: bool,
    /// Memory backing the mmap-able part, shared by fd.
    pub mmap: Option<RegionMmap>,
    /// `(type, subtype)` for the region-type capability.
    pub region_type: Option<(u32, u32)>,
}

/// The mmap-able part of a region.
#[derive(Debug, Clone)]
pub struct RegionMmap {
    /// The fd a client maps (offset 0 of the fd = offset 0 of the region).
    pub fd: Arc<OwnedFd>,
    /// `(offset, size)` areas inside the region that may be mapped; the
    /// whole region when it is a single area covering it.
    pub areas: Vec<(u64, u64)>,
}

/// An interrupt index the device offers.
#[derive(Debug, Clone, Copy)]
pub struct IrqDesc {
    /// IRQ index (PCI: `vfio_migrate_abi::vfio_user::PCI_*_IRQ_INDEX`).
    pub index: u32,
    /// Number of vectors at that index.
    pub count: u32,
    /// `IRQ_INFO_*` flags.
    pub flags: u32,
}

/// A migratable device.
///
/// `state` parameters are the state the SDK has the device in when it calls
/// the hook; between calls the device is in the `to` state of the last
/// [`Device::transition`] that succeeded (RUNNING at first and after
/// [`Device::reset`]).
pub trait Device: Send {
    /// Identity for config space and the compatibility descriptor.
    fn identity(&self) -> DeviceIdentity;

    /// Every region, by index.
    fn regions(&self) -> Vec<Region>;

    /// Reads `buf.len()` bytes of region `index` at `offset` in `state`. The
    /// caller has checked the range against [`Region::size`].
    fn region_read(
        &mut self,
        state: MigState,
        index: u32,
        offset: u64,
        buf: &mut [u8],
    ) -> DeviceResult<()>;

    /// Writes region `index` at `offset` in `state` (range checked by the
    /// caller). A device whose state is frozen outside the running states
    /// refuses writes that would change it.
    fn region_write(
        &mut self,
        state: MigState,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> DeviceResult<()>;

    /// Interrupts offered. Keep them consistent with config space: INTx
    /// (index 0) exactly when the interrupt pin is not 0, MSI (index 1)
    /// with as many vectors as the MSI capability announces; QEMU decides
    /// from config space, other clients from this list.
    fn irqs(&self) -> Vec<IrqDesc> {
        Vec::new()
    }

    /// A client's DEVICE_SET_IRQS for `index` (vectors and fds checked by
    /// the server). Devices built on [`crate::Interrupts`] pass it to
    /// [`crate::Interrupts::apply`].
    fn set_irqs(&mut self, index: u32, req: IrqRequest) -> DeviceResult<()> {
        let _ = req;
        Err(DeviceError::unsupported(format!(
            "IRQ index {index} is not offered"
        )))
    }

    /// Device reset: back to power-on state. The SDK then sets RUNNING.
    fn reset(&mut self) -> DeviceResult<()> {
        Ok(())
    }

    /// `VFIO_MIGRATION_*` flags.
    fn migration_flags(&self) -> u64;

    /// One arc of the state machine. On error the device must still be in
    /// `from` (the SDK keeps reporting `from`); returning an error with
    /// `errno == EIO` means the device is broken and the SDK moves it to
    /// ERROR. Leaving RESUMING validates what was loaded and fails on bad
    /// data.
    fn transition(&mut self, from: MigState, to: MigState) -> DeviceResult<()>;

    /// Reads the next chunk of the save stream into `buf`; `state` is
    /// PRE_COPY, PRE_COPY_P2P or STOP_COPY. Returns 0 in pre-copy when
    /// nothing is pending right now, and in STOP_COPY when the state is
    /// complete.
    fn save(&mut self, state: MigState, buf: &mut [u8]) -> DeviceResult<usize>;

    /// The next chunk of the save stream, up to `max` bytes, described in
    /// `out` (empty on entry) as bytes and ranges of the device's memfd
    /// that the server splices into the socket unread (see
    /// [`crate::pieces`]); the same stream [`Device::save`] would give.
    /// `Ok(false)`: not offered now, use `save` (the default). Asked only
    /// in STOP_COPY, when the device is stopped, and only by a server
    /// whose client takes checksummed data; an empty chunk is the end.
    fn save_pieces(
        &mut self,
        state: MigState,
        max: usize,
        out: &mut crate::pieces::SavePieces,
    ) -> DeviceResult<bool> {
        let _ = (state, max, out);
        Ok(false)
    }

    /// Pre-copy estimate (asked in PRE_COPY and PRE_COPY_P2P only). A
    /// device without `MIGRATION_PRE_COPY` keeps the default (nothing).
    fn precopy_info(&mut self) -> PrecopyInfo {
        PrecopyInfo::default()
    }

    /// Bytes the stop-copy phase is expected to produce from now on.
    fn stop_copy_size(&mut self) -> u64;

    /// Takes the next chunk of the load stream; `state` is RESUMING.
    fn load(&mut self, state: MigState, data: &[u8]) -> DeviceResult<()>;

    /// A digest of the device's complete state (memory and registers), for
    /// verifying migrations. Devices that cannot compute one return None.
    fn digest(&mut self) -> Option<u64> {
        None
    }

    /// Whether the device can slow the work that dirties its memory when
    /// a migration does not converge ([`Device::set_throttle`]).
    fn throttle_offered(&self) -> bool {
        false
    }

    /// Withholds `percent` (0 to [`vfio_migrate_backend::MAX_THROTTLE`]) of
    /// the work that dirties the device's memory (e.g. a GPU's render
    /// engine); 0 runs it at full speed. Asked for by a migration whose
    /// pre-copy rounds stop shrinking; the SDK releases it (0) when the
    /// device leaves pre-copy and on reset. Only called when
    /// [`Device::throttle_offered`].
    fn set_throttle(&mut self, percent: u32) -> DeviceResult<()> {
        let _ = percent;
        Err(DeviceError::unsupported("this device has no throttle"))
    }
}
