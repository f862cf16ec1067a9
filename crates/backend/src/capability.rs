//! The optional capabilities a backend may offer beside the migration
//! core, each a small trait: DMA dirty logging (what the engine needs to
//! migrate guest RAM a device writes), raw region access and DMA mapping
//! (what a VMM, a test or the CLI's `device` command needs).

use crate::{BackendError, DmaWindow, IovaRange, MigrationDevice, Result};

/// Dirty logging of the device's DMA writes into guest memory
/// (`VFIO_DEVICE_FEATURE_DMA_LOGGING_*`, the v1 `DIRTY_PAGES` command, the
/// seed's `dirty_pfns`).
pub trait DmaDirtyLog {
    /// Starts logging over `ranges` (empty = everything mapped).
    fn dma_logging_start(&mut self, page_size: u64, ranges: &[IovaRange]) -> Result<()>;

    /// Reads and clears the dirty bitmap of `[iova, iova+length)`; bit n of
    /// `bitmap` (LSB first in little-endian u64 words) is page n.
    fn dma_logging_report(
        &mut self,
        iova: u64,
        length: u64,
        page_size: u64,
        bitmap: &mut [u8],
    ) -> Result<()>;

    /// Stops logging.
    fn dma_logging_stop(&mut self) -> Result<()>;
}

/// Slowing down the work that dirties a device's memory while it is
/// migrated (the device-side analogue of QEMU's auto-converge, which
/// throttles vCPUs): a vfio-migrate extension, offered by devices that
/// implement the SDK's throttle hook.
pub trait DeviceThrottle {
    /// Withholds `percent` (0–99) of the device's dirtying work; 0 runs it
    /// at full speed again. The device releases it by itself when it
    /// leaves pre-copy or is reset.
    fn set_throttle(&mut self, percent: u32) -> Result<()>;
}

/// Most a throttle may withhold, percent.
pub const MAX_THROTTLE: u32 = 99;

/// Raw reads and writes of the device's regions (BARs, config space).
pub trait RegionAccess {
    /// Reads region `index` at `offset` into `buf`.
    fn region_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// Writes `data` into region `index` at `offset`.
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<()>;
}

/// Guest memory mapped for the device's DMA.
pub trait DmaMapping {
    /// Maps a window of guest memory.
    fn dma_map(&mut self, window: DmaWindow<'_>) -> Result<()>;

    /// Unmaps the window at `iova` of `size` bytes.
    fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<()>;
}

/// What [`DataSplice::read_data_spliced`] tells its caller as the data
/// moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spliced {
    /// `len` data bytes with CRC32C `crc` come; none moved yet.
    Head {
        /// Data bytes.
        len: usize,
        /// Their CRC32C, as the device side computed it.
        crc: u32,
    },
    /// This many of them are in the pipe now: move them out.
    Data(usize),
}

/// Migration data moved without passing through this process: the
/// device's next data is put straight into a pipe (the kernel moves page
/// references), and its checksum comes from the other side, so the caller
/// can frame it into its own checksummed records and splice it on.
pub trait DataSplice {
    /// Moves up to `max` bytes of migration data — what `read_data` would
    /// return — through the pipe whose write end is `pipe`: `each` gets
    /// [`Spliced::Head`] (length and CRC32C) first, then
    /// [`Spliced::Data`] whenever bytes are in the pipe, which it moves out
    /// before returning. Returns the length and CRC. `Ok(None)`: not
    /// possible on this device now (use `read_data`; `each` was not
    /// called).
    ///
    /// `ahead`: how many more reads of `max` bytes the backend may start
    /// behind this one, so the device prepares the next data while this
    /// one moves on (a backend that cannot ignores it). A caller that asks
    /// for any must keep reading, with `ahead` 0 at the end, until
    /// [`DataSplice::reads_ahead`] is 0: data read ahead is stream data.
    fn read_data_spliced(
        &mut self,
        pipe: std::os::fd::BorrowedFd<'_>,
        max: usize,
        ahead: usize,
        each: &mut dyn FnMut(Spliced) -> std::io::Result<()>,
    ) -> Result<Option<(usize, u32)>>;

    /// Reads started ahead and not returned yet.
    fn reads_ahead(&self) -> usize {
        0
    }

    /// Waits until the device answered every spliced write; the first
    /// refusal among them is the error. Called before anything that
    /// relies on the device having taken the data (an acknowledgement to
    /// the source, the end of the device's stream).
    fn flush_writes(&mut self) -> Result<()> {
        Ok(())
    }

    /// Writes the next `len` bytes of migration data — what `write_data`
    /// would take — through the pipe whose read end is `pipe`, without
    /// copying them through this process: `fill(max)` puts between 1 and
    /// `max` more of them into the (then empty) pipe and says how many;
    /// it is called until all `len` went. The device side checks them
    /// against `crc` (their CRC32C) before taking them, and refuses them
    /// otherwise. `Ok(false)`: not possible on this device now, `fill` was
    /// not called (use `write_data`).
    ///
    /// The backend may return before the device answered (the next write
    /// moves meanwhile); a refusal then comes from a later write or from
    /// [`DataSplice::flush_writes`].
    fn write_data_spliced(
        &mut self,
        pipe: std::os::fd::BorrowedFd<'_>,
        len: usize,
        crc: u32,
        fill: &mut dyn FnMut(usize) -> std::io::Result<usize>,
    ) -> Result<bool>;
}

/// The device's region access, or [`BackendError::Unsupported`] naming the
/// device when its backend has none.
pub fn regions_of<D: MigrationDevice + ?Sized>(dev: &mut D) -> Result<&mut dyn RegionAccess> {
    let name = dev.name();
    dev.regions().ok_or_else(|| {
        BackendError::unsupported(
            format!("{name}: region access"),
            "this backend offers no raw region access",
        )
    })
}

/// The device's DMA mapping, or [`BackendError::Unsupported`] naming the
/// device when its backend has none.
pub fn dma_mapping_of<D: MigrationDevice + ?Sized>(dev: &mut D) -> Result<&mut dyn DmaMapping> {
    let name = dev.name();
    dev.dma_mapping().ok_or_else(|| {
        BackendError::unsupported(
            format!("{name}: DMA mapping"),
            "this backend does not map guest memory",
        )
    })
}

/// The device's DMA dirty log, or [`BackendError::Unsupported`] naming the
/// device when it offers none.
pub fn dma_log_of<D: MigrationDevice + ?Sized>(dev: &mut D) -> Result<&mut dyn DmaDirtyLog> {
    let name = dev.name();
    dev.dma_log().ok_or_else(|| {
        BackendError::unsupported(
            format!("{name}: DMA dirty logging"),
            "the device offers no DMA dirty logging",
        )
    })
}
