//! [`MigrationDevice`]: the migration core every backend implements, and
//! the door to its optional capabilities.

use crate::capability::{DataSplice, DeviceThrottle, DmaDirtyLog, DmaMapping, RegionAccess};
use crate::{DeviceDescriptor, DeviceStatus, MigState, PrecopyInfo, Result};

/// The migration core of a device: what the engine drives.
///
/// Every protocol generation and every backend implements it: state
/// transitions, the data stream, the size estimates, a reset. What only
/// some backends offer — DMA dirty logging, raw region access, guest memory
/// maps — is reached through the defaulted capability accessors
/// ([`MigrationDevice::dma_log`], [`MigrationDevice::regions`],
/// [`MigrationDevice::dma_mapping`]), which return `None` unless the backend
/// (and, where it must be asked, the device) offers it.
///
/// Methods take `&mut self` because each is one synchronous exchange with
/// the device.
///
/// ```text
///  engine                                             device
///    │ descriptor() / migration_flags() ───────────────▶ │ probe
///    │ dma_log()?.dma_logging_start(page, ranges) ─────▶ │
///    │ set_state(PRE_COPY) ────────────────────────────▶ │ RUNNING→PRE_COPY
///    │ precopy_info() / read_data(buf)… ◀──────────────── │ initial + dirty bytes
///    │ set_state(STOP_COPY) ───────────────────────────▶ │ …→STOP_COPY
///    │ read_data(buf) until 0 ◀────────────────────────── │ final state
/// ```
pub trait MigrationDevice: Send {
    /// Where the device is, for messages (e.g. `unix:/run/vgpu.sock`).
    fn name(&self) -> String;

    /// Which protocol carries the migration (`vfio-user v2`, `kernel v2`, …).
    fn protocol(&self) -> &'static str;

    /// The compatibility descriptor.
    fn descriptor(&mut self) -> Result<DeviceDescriptor>;

    /// `VFIO_MIGRATION_*` flags (0 = not migratable).
    fn migration_flags(&mut self) -> Result<u64>;

    /// The current device state.
    fn state(&mut self) -> Result<MigState>;

    /// Moves the device to `new` (the device walks the arcs).
    fn set_state(&mut self, new: MigState) -> Result<()>;

    /// Reads migration data into `buf`. In PRE_COPY, 0 means "nothing now";
    /// in STOP_COPY, 0 means the whole state has been read.
    fn read_data(&mut self, buf: &mut [u8]) -> Result<usize>;

    /// Writes migration data (RESUMING only).
    fn write_data(&mut self, data: &[u8]) -> Result<()>;

    /// Pre-copy estimate (PRE_COPY / PRE_COPY_P2P only).
    fn precopy_info(&mut self) -> Result<PrecopyInfo>;

    /// Whether [`MigrationDevice::precopy_info`]'s `initial_bytes` is the
    /// device's initial data alone (v2). The older migration regions report
    /// one pending count, initial and dirty data together: their initial
    /// data counts as sent after the first whole pre-copy round.
    fn precopy_initial_known(&self) -> bool {
        true
    }

    /// Estimated stop-copy size, `None` when the device cannot tell.
    fn stop_copy_size(&mut self) -> Result<Option<u64>> {
        Ok(None)
    }

    /// Resets the device to its power-on state: RUNNING, no migration in
    /// progress, partial state discarded. Used to leave RESUMING without
    /// ever running what was loaded, and to recover a device in ERROR.
    fn reset(&mut self) -> Result<()>;

    /// What the device says about its use, `None` when its backend cannot
    /// tell (foreign vfio-user servers, kernel devices).
    fn status(&mut self) -> Result<Option<DeviceStatus>> {
        Ok(None)
    }

    /// Best chunk size for `read_data`/`write_data`.
    fn preferred_chunk(&self) -> usize {
        1 << 20
    }

    /// DMA dirty logging, when the device offers it.
    fn dma_log(&mut self) -> Option<&mut dyn DmaDirtyLog> {
        None
    }

    /// Raw access to the device's regions (BARs, config space), when the
    /// backend offers it.
    fn regions(&mut self) -> Option<&mut dyn RegionAccess> {
        None
    }

    /// Mapping guest memory for the device's DMA, when the backend offers
    /// it.
    fn dma_mapping(&mut self) -> Option<&mut dyn DmaMapping> {
        None
    }

    /// Migration data straight into a pipe, with its checksum, when the
    /// backend can.
    fn data_splice(&mut self) -> Option<&mut dyn DataSplice> {
        None
    }

    /// Throttling the device's dirtying work, when the device offers it.
    fn throttle(&mut self) -> Option<&mut dyn DeviceThrottle> {
        None
    }
}

impl<T: MigrationDevice + ?Sized> MigrationDevice for Box<T> {
    fn name(&self) -> String {
        (**self).name()
    }
    fn protocol(&self) -> &'static str {
        (**self).protocol()
    }
    fn descriptor(&mut self) -> Result<DeviceDescriptor> {
        (**self).descriptor()
    }
    fn migration_flags(&mut self) -> Result<u64> {
        (**self).migration_flags()
    }
    fn state(&mut self) -> Result<MigState> {
        (**self).state()
    }
    fn set_state(&mut self, new: MigState) -> Result<()> {
        (**self).set_state(new)
    }
    fn read_data(&mut self, buf: &mut [u8]) -> Result<usize> {
        (**self).read_data(buf)
    }
    fn write_data(&mut self, data: &[u8]) -> Result<()> {
        (**self).write_data(data)
    }
    fn precopy_info(&mut self) -> Result<PrecopyInfo> {
        (**self).precopy_info()
    }
    fn stop_copy_size(&mut self) -> Result<Option<u64>> {
        (**self).stop_copy_size()
    }
    fn precopy_initial_known(&self) -> bool {
        (**self).precopy_initial_known()
    }
    fn reset(&mut self) -> Result<()> {
        (**self).reset()
    }
    fn status(&mut self) -> Result<Option<DeviceStatus>> {
        (**self).status()
    }
    fn preferred_chunk(&self) -> usize {
        (**self).preferred_chunk()
    }
    fn dma_log(&mut self) -> Option<&mut dyn DmaDirtyLog> {
        (**self).dma_log()
    }
    fn regions(&mut self) -> Option<&mut dyn RegionAccess> {
        (**self).regions()
    }
    fn dma_mapping(&mut self) -> Option<&mut dyn DmaMapping> {
        (**self).dma_mapping()
    }
    fn data_splice(&mut self) -> Option<&mut dyn DataSplice> {
        (**self).data_splice()
    }
    fn throttle(&mut self) -> Option<&mut dyn DeviceThrottle> {
        (**self).throttle()
    }
}
