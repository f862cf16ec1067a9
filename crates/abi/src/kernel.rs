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

pub const VFIO_GET_API_VERSION: u32 = io(VFIO_TYPE, VFIO_BASE);
pub const VFIO_CHECK_EXTENSION: u32 = io(VFIO_TYPE, VFIO_BASE + 1);
pub const VFIO_SET_IOMMU: u32 = io(VFIO_TYPE, VFIO_BASE + 2);
pub const VFIO_GROUP_GET_STATUS: u32 = io(VFIO_TYPE, VFIO_BASE + 3);
pub const VFIO_GROUP_SET_CONTAINER: u32 = io(VFIO_TYPE, VFIO_BASE + 4);
pub const VFIO_GROUP_UNSET_CONTAINER: u32 = io(VFIO_TYPE, VFIO_BASE + 5);
pub const VFIO_GROUP_GET_DEVICE_FD: u32 = io(VFIO_TYPE, VFIO_BASE + 6);
pub const VFIO_DEVICE_GET_INFO: u32 = io(VFIO_TYPE, VFIO_BASE + 7);
pub const VFIO_DEVICE_GET_REGION_INFO: u32 = io(VFIO_TYPE, VFIO_BASE + 8);
pub const VFIO_DEVICE_GET_IRQ_INFO: u32 = io(VFIO_TYPE, VFIO_BASE + 9);
pub const VFIO_DEVICE_SET_IRQS: u32 = io(VFIO_TYPE, VFIO_BASE + 10);
pub const VFIO_DEVICE_RESET: u32 = io(VFIO_TYPE, VFIO_BASE + 11);
pub const VFIO_IOMMU_GET_INFO: u32 = io(VFIO_TYPE, VFIO_BASE + 12);
pub const VFIO_IOMMU_MAP_DMA: u32 = io(VFIO_TYPE, VFIO_BASE + 13);
pub const VFIO_IOMMU_UNMAP_DMA: u32 = io(VFIO_TYPE, VFIO_BASE + 14);
pub const VFIO_DEVICE_FEATURE: u32 = io(VFIO_TYPE, VFIO_BASE + 17);
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
    Error = 0,
    Stop = 1,
    Running = 2,
    StopCopy = 3,
    Resuming = 4,
    RunningP2p = 5,
    PreCopy = 6,
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
        pub argsz: u32,
        pub flags: u32,
    }
}

wire_struct! {
    /// `struct vfio_device_feature_migration`.
    pub struct FeatureMigration {
        pub flags: u64,
    }
}

wire_struct! {
    /// `struct vfio_device_feature_mig_state`.
    pub struct FeatureMigState {
        pub device_state: u32,
        pub data_fd: i32,
    }
}

wire_struct! {
    /// `struct vfio_precopy_info` (argument of `VFIO_MIG_GET_PRECOPY_INFO`).
    pub struct PrecopyInfo {
        pub argsz: u32,
        pub flags: u32,
        pub initial_bytes: u64,
        pub dirty_bytes: u64,
    }
}

wire_struct! {
    /// `struct vfio_device_feature_mig_data_size`.
    pub struct FeatureMigDataSize {
        pub stop_copy_length: u64,
    }
}

wire_struct! {
    /// `struct vfio_device_feature_dma_logging_control`. In vfio-user the
    /// ranges follow inline and `ranges` is ignored.
    pub struct DmaLoggingControl {
        pub page_size: u64,
        pub num_ranges: u32,
        pub rsvd: u32,
        pub ranges: u64,
    }
}

wire_struct! {
    /// `struct vfio_device_feature_dma_logging_range`.
    pub struct DmaLoggingRange {
        pub iova: u64,
        pub length: u64,
    }
}

wire_struct! {
    /// `struct vfio_device_feature_dma_logging_report`. In vfio-user the
    /// bitmap follows inline in the reply and `bitmap` is ignored.
    pub struct DmaLoggingReport {
        pub iova: u64,
        pub length: u64,
        pub page_size: u64,
        pub bitmap: u64,
    }
}

wire_struct! {
    /// `struct vfio_group_status`.
    pub struct GroupStatus {
        pub argsz: u32,
        pub flags: u32,
    }
}

wire_struct! {
    /// `struct vfio_iommu_type1_dma_map`.
    pub struct IommuDmaMap {
        pub argsz: u32,
        pub flags: u32,
        pub vaddr: u64,
        pub iova: u64,
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
