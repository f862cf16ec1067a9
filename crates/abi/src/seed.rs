//! The 2018 proposal's migration region ("VFIO KABI for migration
//! interface"): region type `1 << 30`, subtype 1, a packed
//! `vfio_device_migration_info` at offset 0 followed by the data section.

use crate::wire::WireError;
use crate::wire_struct;

/// Region type proposed by the seed.
pub const REGION_TYPE: u32 = 1 << 30;
/// Region subtype proposed by the seed.
pub const REGION_SUBTYPE: u32 = 1;

/// The seed's ten device states, in its enum order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum SeedState {
    None = 0,
    Running = 1,
    Setup = 2,
    Precopy = 3,
    StopNCopy = 4,
    SaveCompleted = 5,
    Resume = 6,
    ResumeCompleted = 7,
    Failed = 8,
    Cancelled = 9,
}

impl SeedState {
    /// Every state, in numeric order.
    pub const ALL: [SeedState; 10] = [
        SeedState::None,
        SeedState::Running,
        SeedState::Setup,
        SeedState::Precopy,
        SeedState::StopNCopy,
        SeedState::SaveCompleted,
        SeedState::Resume,
        SeedState::ResumeCompleted,
        SeedState::Failed,
        SeedState::Cancelled,
    ];

    /// The state for a wire value.
    pub fn from_u32(v: u32) -> Result<Self, WireError> {
        Self::ALL
            .get(v as usize)
            .copied()
            .ok_or(WireError::Invalid {
                what: "seed device_state",
                value: v as u64,
            })
    }

    /// The seed's constant name without the `VFIO_DEVICE_STATE_` prefix.
    pub fn name(self) -> &'static str {
        match self {
            SeedState::None => "NONE",
            SeedState::Running => "RUNNING",
            SeedState::Setup => "MIGRATION_SETUP",
            SeedState::Precopy => "MIGRATION_PRECOPY",
            SeedState::StopNCopy => "MIGRATION_STOPNCOPY",
            SeedState::SaveCompleted => "MIGRATION_SAVE_COMPLETED",
            SeedState::Resume => "MIGRATION_RESUME",
            SeedState::ResumeCompleted => "MIGRATION_RESUME_COMPLETED",
            SeedState::Failed => "MIGRATION_FAILED",
            SeedState::Cancelled => "MIGRATION_CANCELLED",
        }
    }
}

/// Field offsets inside the region (also in [`MigrationInfo::fields`]).
pub const OFF_DEVICE_STATE: u64 = 0;
pub const OFF_PENDING_PRECOPY_ONLY: u64 = 4;
pub const OFF_PENDING_COMPATIBLE: u64 = 12;
pub const OFF_PENDING_POSTCOPY_ONLY: u64 = 20;
pub const OFF_PENDING_THRESHOLD_SIZE: u64 = 28;
pub const OFF_DATA_OFFSET: u64 = 36;
pub const OFF_DATA_SIZE: u64 = 44;
pub const OFF_DIRTY_START_ADDR: u64 = 52;
pub const OFF_DIRTY_TOTAL: u64 = 60;
pub const OFF_DIRTY_COPIED: u64 = 68;

wire_struct! {
    /// The seed's packed `struct vfio_device_migration_info` with its nested
    /// `pending`, `data` and `dirty_pfns` structs flattened (same bytes).
    pub struct MigrationInfo {
        pub device_state: u32,
        pub pending_precopy_only: u64,
        pub pending_compatible: u64,
        pub pending_postcopy_only: u64,
        pub pending_threshold_size: u64,
        pub data_offset: u64,
        pub data_size: u64,
        pub dirty_pfns_start_addr: u64,
        pub dirty_pfns_total: u64,
        pub dirty_pfns_copied: u64,
    }
}
