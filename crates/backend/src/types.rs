//! Plain types every backend shares: the pre-copy estimate, IOVA ranges
//! and DMA windows.

use serde::{Deserialize, Serialize};
use std::os::fd::BorrowedFd;

/// Pre-copy estimate (`struct vfio_precopy_info`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrecopyInfo {
    /// Bytes of the initial state not read yet.
    pub initial_bytes: u64,
    /// Bytes dirtied since they were last read (an estimate).
    pub dirty_bytes: u64,
    /// The device re-initialised its pre-copy data since the last report
    /// (`VFIO_PRECOPY_INFO_REINIT`): new initial data is present,
    /// `initial_bytes` counts it, `dirty_bytes` restarted. Reported once.
    #[serde(default)]
    pub reinit: bool,
}

/// What a device says about its use, where its backend can tell (our
/// vfio-user server's extension feature; an in-process device). A
/// migration uses it to refuse overwriting a device that is in use, or
/// starting a second copy of a device that was already migrated out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// Nothing has been done with the device since it started or was
    /// last reset: no region writes (config space aside), no state loaded.
    pub pristine: bool,
    /// It was started to receive a migration (`serve --incoming`) and has
    /// not received one yet: it refuses a workload until then.
    pub incoming: bool,
    /// Its state was read to the end in STOP_COPY and it has not run since:
    /// a copy of it may be running elsewhere.
    pub migrated_out: bool,
}

/// A range of I/O virtual addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IovaRange {
    /// First IOVA of the range.
    pub iova: u64,
    /// Length of the range in bytes.
    pub length: u64,
}

/// One guest-memory window handed to a device for DMA.
#[derive(Debug, Clone, Copy)]
pub struct DmaWindow<'a> {
    /// IOVA the device sees the window at.
    pub iova: u64,
    /// Length of the window in bytes.
    pub size: u64,
    /// The memory, shared by fd (memfd or file), when mappable.
    pub fd: Option<BorrowedFd<'a>>,
    /// Offset of the window in `fd`.
    pub offset: u64,
    /// The device may read the window (DMA from guest memory).
    pub readable: bool,
    /// The device may write the window (DMA into guest memory).
    pub writable: bool,
}
