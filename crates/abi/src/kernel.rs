//! Linux VFIO uAPI v2 migration interface (Linux 5.18+), as far as
//! vfio-migrate uses it: ioctl numbers, `VFIO_DEVICE_FEATURE` and its
//! migration features, device states, pre-copy info and DMA logging.

use crate::wire::WireError;
use crate::wire_struct;

/// `VFIO_TYPE` (`';'`).
pub const VFIO_TYPE: u32 = b';' as u32;
/// `VFIO_BASE`.
pub const VFIO_BASE: u32 = 100;

/// `_IO(type, nr)` as the kernel encodes it (no direction, no size).
pub const fn io(ty: u32, nr: u32) -> u32 {
    (ty << 8) | nr
}

/// `VFIO_GET_API_VERSION` (container fd): returns the API version, which
/// must equal [`VFIO_API_VERSION`].
pub const VFIO_GET_API_VERSION: u32 = io(VFIO_TYPE, VFIO_BASE);
/// `VFIO_CHECK_EXTENSION` (container fd): nonzero when the IOMMU type or
/// extension given as the argument is supported.
pub const VFIO_CHECK_EXTENSION: u32 = io(VFIO_TYPE, VFIO_BASE + 1);
/// `VFIO_SET_IOMMU` (container fd): selects the IOMMU model, e.g.
/// [`VFIO_TYPE1V2_IOMMU`]; needs a group attached first.
pub const VFIO_SET_IOMMU: u32 = io(VFIO_TYPE, VFIO_BASE + 2);
/// `VFIO_GROUP_GET_STATUS` (group fd): fills a [`GroupStatus`].
pub const VFIO_GROUP_GET_STATUS: u32 = io(VFIO_TYPE, VFIO_BASE + 3);
/// `VFIO_GROUP_SET_CONTAINER` (group fd): attaches the group to the
/// container whose fd is passed by pointer.
pub const VFIO_GROUP_SET_CONTAINER: u32 = io(VFIO_TYPE, VFIO_BASE + 4);
/// `VFIO_GROUP_UNSET_CONTAINER` (group fd): detaches the group from its
/// container.
pub const VFIO_GROUP_UNSET_CONTAINER: u32 = io(VFIO_TYPE, VFIO_BASE + 5);
/// `VFIO_GROUP_GET_DEVICE_FD` (group fd): opens a device of the group by
/// name (NUL-terminated string argument) and returns its fd.
pub const VFIO_GROUP_GET_DEVICE_FD: u32 = io(VFIO_TYPE, VFIO_BASE + 6);
/// `VFIO_DEVICE_GET_INFO` (device fd): fills a `struct vfio_device_info`
/// (same layout as [`crate::vfio_user::DeviceInfo`]).
pub const VFIO_DEVICE_GET_INFO: u32 = io(VFIO_TYPE, VFIO_BASE + 7);
/// `VFIO_DEVICE_GET_REGION_INFO` (device fd): fills a
/// `struct vfio_region_info` (same layout as
/// [`crate::vfio_user::RegionInfo`]) for the index given in it.
pub const VFIO_DEVICE_GET_REGION_INFO: u32 = io(VFIO_TYPE, VFIO_BASE + 8);
/// `VFIO_DEVICE_GET_IRQ_INFO` (device fd): fills a `struct vfio_irq_info`
/// (same layout as [`crate::vfio_user::IrqInfo`]).
pub const VFIO_DEVICE_GET_IRQ_INFO: u32 = io(VFIO_TYPE, VFIO_BASE + 9);
/// `VFIO_DEVICE_SET_IRQS` (device fd): takes a `struct vfio_irq_set`
/// (same layout as [`crate::vfio_user::IrqSet`]) followed by its data.
pub const VFIO_DEVICE_SET_IRQS: u32 = io(VFIO_TYPE, VFIO_BASE + 10);
/// `VFIO_DEVICE_RESET` (device fd): resets the device; no argument.
pub const VFIO_DEVICE_RESET: u32 = io(VFIO_TYPE, VFIO_BASE + 11);
/// `VFIO_IOMMU_GET_INFO` (container fd): fills a
/// `struct vfio_iommu_type1_info`.
pub const VFIO_IOMMU_GET_INFO: u32 = io(VFIO_TYPE, VFIO_BASE + 12);
/// `VFIO_IOMMU_MAP_DMA` (container fd): maps process memory at an IOVA,
/// described by an [`IommuDmaMap`].
pub const VFIO_IOMMU_MAP_DMA: u32 = io(VFIO_TYPE, VFIO_BASE + 13);
/// `VFIO_IOMMU_UNMAP_DMA` (container fd): removes an IOVA range mapped
/// with [`VFIO_IOMMU_MAP_DMA`].
pub const VFIO_IOMMU_UNMAP_DMA: u32 = io(VFIO_TYPE, VFIO_BASE + 14);
/// `VFIO_DEVICE_FEATURE` (device fd): GET, SET or PROBE one feature; the
/// argument is a [`DeviceFeature`] head followed by the feature's data.
pub const VFIO_DEVICE_FEATURE: u32 = io(VFIO_TYPE, VFIO_BASE + 17);
/// `VFIO_MIG_GET_PRECOPY_INFO` (migration data fd, PRE_COPY states only):
/// fills a [`PrecopyInfo`].
pub const VFIO_MIG_GET_PRECOPY_INFO: u32 = io(VFIO_TYPE, VFIO_BASE + 21);

/// `VFIO_API_VERSION`.
pub const VFIO_API_VERSION: i32 = 0;
/// `VFIO_TYPE1v2_IOMMU` extension / IOMMU type.
pub const VFIO_TYPE1V2_IOMMU: u32 = 3;
/// `VFIO_GROUP_FLAGS_VIABLE`.
pub const VFIO_GROUP_FLAGS_VIABLE: u32 = 1;

/// `VFIO_DEVICE_FEATURE` flags: feature index mask.
pub const FEATURE_MASK: u32 = 0xffff;
/// `VFIO_DEVICE_FEATURE_GET`.
pub const FEATURE_GET: u32 = 1 << 16;
/// `VFIO_DEVICE_FEATURE_SET`.
pub const FEATURE_SET: u32 = 1 << 17;
/// `VFIO_DEVICE_FEATURE_PROBE`.
pub const FEATURE_PROBE: u32 = 1 << 18;

/// Feature `VFIO_DEVICE_FEATURE_MIGRATION`.
pub const FEATURE_MIGRATION: u32 = 1;
/// Feature `VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE`.
pub const FEATURE_MIG_DEVICE_STATE: u32 = 2;
/// Feature `VFIO_DEVICE_FEATURE_DMA_LOGGING_START`.
pub const FEATURE_DMA_LOGGING_START: u32 = 6;
/// Feature `VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP`.
pub const FEATURE_DMA_LOGGING_STOP: u32 = 7;
/// Feature `VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT`.
pub const FEATURE_DMA_LOGGING_REPORT: u32 = 8;
/// Feature `VFIO_DEVICE_FEATURE_MIG_DATA_SIZE`.
pub const FEATURE_MIG_DATA_SIZE: u32 = 9;
/// Feature `VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2` (VFIO tree, 2026): a
/// client SETs it (no data) to opt in to [`PRECOPY_INFO_REINIT`] in
/// `vfio_precopy_info.flags`; kernels without it answer ENOTTY.
pub const FEATURE_MIG_PRECOPY_INFO_V2: u32 = 12;

/// `VFIO_MIGRATION_STOP_COPY` (mandatory for migration).
pub const MIGRATION_STOP_COPY: u64 = 1;
/// `VFIO_MIGRATION_P2P`.
pub const MIGRATION_P2P: u64 = 2;
/// `VFIO_MIGRATION_PRE_COPY`.
pub const MIGRATION_PRE_COPY: u64 = 4;

/// `VFIO_PRECOPY_INFO_REINIT` (precopy info flag).
pub const PRECOPY_INFO_REINIT: u32 = 1;

/// The v2 migration device states (`enum vfio_device_mig_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum MigState {
    /// The device failed a transition and cannot be used until reset; it
    /// can never be requested.
    Error = 0,
    /// Stopped: no DMA, no interrupts, state neither saved nor loaded.
    Stop = 1,
    /// Normal operation (the state after reset).
    Running = 2,
    /// Stopped and saving: the data fd yields the rest of the device
    /// state, then end of stream.
    StopCopy = 3,
    /// Loading: state written to the data fd is taken in, and checked when
    /// the device leaves this state.
    Resuming = 4,
    /// Running, but no longer initiating peer-to-peer DMA (needs
    /// [`MIGRATION_P2P`]).
    RunningP2p = 5,
    /// Running and saving: pre-copy data can be read while the device works
    /// (needs [`MIGRATION_PRE_COPY`]).
    PreCopy = 6,
    /// [`MigState::PreCopy`] with peer-to-peer DMA quiesced (needs both
    /// [`MIGRATION_PRE_COPY`] and [`MIGRATION_P2P`]).
    PreCopyP2p = 7,
}

/// Serialized as its name (`"RUNNING"`, `"PRE_COPY_P2P"`, ...), as
/// reports show it.
impl serde::Serialize for MigState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl MigState {
    /// Every state, in numeric order.
    pub const ALL: [MigState; 8] = [
        MigState::Error,
        MigState::Stop,
        MigState::Running,
        MigState::StopCopy,
        MigState::Resuming,
        MigState::RunningP2p,
        MigState::PreCopy,
        MigState::PreCopyP2p,
    ];

    /// The state for a wire value.
    pub fn from_u32(v: u32) -> Result<Self, WireError> {
        Self::ALL
            .get(v as usize)
            .copied()
            .ok_or(WireError::Invalid {
                what: "device_state",
                value: v as u64,
            })
    }

    /// The kernel's name for the state.
    pub fn name(self) -> &'static str {
        match self {
            MigState::Error => "ERROR",
            MigState::Stop => "STOP",
            MigState::Running => "RUNNING",
            MigState::StopCopy => "STOP_COPY",
            MigState::Resuming => "RESUMING",
            MigState::RunningP2p => "RUNNING_P2P",
            MigState::PreCopy => "PRE_COPY",
            MigState::PreCopyP2p => "PRE_COPY_P2P",
        }
    }

    /// True for the states in which a device produces migration data.
    pub fn is_saving(self) -> bool {
        matches!(
            self,
            MigState::PreCopy | MigState::PreCopyP2p | MigState::StopCopy
        )
    }
}

impl std::fmt::Display for MigState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

wire_struct! {
    /// `struct vfio_device_feature` header (the feature data follows).
    pub struct DeviceFeature {
        /// Size in bytes of this head plus the feature data; for GET, the
        /// room the caller has for the reply.
        pub argsz: u32,
        /// Feature index ([`FEATURE_MASK`] bits) OR'ed with one or more of
        /// [`FEATURE_GET`], [`FEATURE_SET`], [`FEATURE_PROBE`].
        pub flags: u32,
    }
}

wire_struct! {
    /// `struct vfio_device_feature_migration`.
    pub struct FeatureMigration {
        /// Migration capabilities: [`MIGRATION_STOP_COPY`], optionally with
        /// [`MIGRATION_P2P`] and [`MIGRATION_PRE_COPY`].
        pub flags: u64,
    }
}

wire_struct! {
    /// `struct vfio_device_feature_mig_state`.
    pub struct FeatureMigState {
        /// The state to go to (SET) or the current state (GET), a
        /// [`MigState`] value.
        pub device_state: u32,
        /// Returned by SET: a new migration data fd when the arc starts a
        /// save or a load (e.g. RUNNING → PRE_COPY, STOP → STOP_COPY,
        /// STOP → RESUMING), else -1 (PRE_COPY → STOP_COPY keeps the
        /// PRE_COPY fd).
        pub data_fd: i32,
    }
}

wire_struct! {
    /// `struct vfio_precopy_info` (argument of `VFIO_MIG_GET_PRECOPY_INFO`).
    pub struct PrecopyInfo {
        /// Size of this struct (32) as set by the caller.
        pub argsz: u32,
        /// Output flags, e.g. [`PRECOPY_INFO_REINIT`].
        pub flags: u32,
        /// Bytes of the device's initial pre-copy data not yet read from
        /// the data fd.
        pub initial_bytes: u64,
        /// Bytes of other pending data (state changed while running); an
        /// estimate that can grow as the device runs.
        pub dirty_bytes: u64,
    }
}

wire_struct! {
    /// `struct vfio_device_feature_mig_data_size`.
    pub struct FeatureMigDataSize {
        /// The device's estimate, in bytes, of the data STOP_COPY would
        /// produce if entered now.
        pub stop_copy_length: u64,
    }
}

wire_struct! {
    /// `struct vfio_device_feature_dma_logging_control`, the data of
    /// DMA_LOGGING_START. vfio-user sends only the first 16 bytes and the
    /// [`DmaLoggingRange`]s follow inline: the `ranges` pointer is not on
    /// that wire.
    pub struct DmaLoggingControl {
        /// Requested tracking granularity in bytes; the device may pick
        /// another page size.
        pub page_size: u64,
        /// Number of [`DmaLoggingRange`]s to track.
        pub num_ranges: u32,
        /// Reserved, 0.
        pub rsvd: u32,
        /// Kernel only: user address of the array of `num_ranges`
        /// [`DmaLoggingRange`]s, read during the ioctl.
        pub ranges: u64,
    }
}

wire_struct! {
    /// `struct vfio_device_feature_dma_logging_range`.
    pub struct DmaLoggingRange {
        /// First IOVA of the range.
        pub iova: u64,
        /// Length of the range in bytes.
        pub length: u64,
    }
}

wire_struct! {
    /// `struct vfio_device_feature_dma_logging_report`, the data of a
    /// DMA_LOGGING_REPORT GET, which also clears the bits it reports.
    /// vfio-user sends only the first 24 bytes and the bitmap follows them
    /// inline in the reply: the `bitmap` pointer is not on that wire.
    pub struct DmaLoggingReport {
        /// First IOVA reported (bit 0 of the bitmap).
        pub iova: u64,
        /// Length of the reported range in bytes.
        pub length: u64,
        /// Bytes per bitmap bit; the bitmap size is [`bitmap_bytes`]`(length,
        /// page_size)`.
        pub page_size: u64,
        /// Kernel only: user address of the bitmap the kernel fills (bit n =
        /// page n, LSB first, in u64 words).
        pub bitmap: u64,
    }
}

wire_struct! {
    /// `struct vfio_group_status`.
    pub struct GroupStatus {
        /// Size of this struct (8), set by the caller.
        pub argsz: u32,
        /// Output: [`VFIO_GROUP_FLAGS_VIABLE`] when every device of the
        /// group is bound to a VFIO driver (or none at all).
        pub flags: u32,
    }
}

wire_struct! {
    /// `struct vfio_iommu_type1_dma_map`.
    pub struct IommuDmaMap {
        /// Size of this struct (32).
        pub argsz: u32,
        /// `VFIO_DMA_MAP_FLAG_READ` (1) and/or `VFIO_DMA_MAP_FLAG_WRITE` (2):
        /// the device's access rights.
        pub flags: u32,
        /// Process virtual address of the memory to map.
        pub vaddr: u64,
        /// IOVA the device sees the memory at.
        pub iova: u64,
        /// Length of the mapping in bytes.
        pub size: u64,
    }
}

/// Bytes needed for a dirty bitmap of `length` bytes at `page_size`
/// granularity, rounded up to whole u64 words (the kernel's layout).
pub fn bitmap_bytes(length: u64, page_size: u64) -> Option<u64> {
    if page_size == 0 {
        return None;
    }
    let pages = length.div_ceil(page_size);
    Some(pages.div_ceil(64) * 8)
}
