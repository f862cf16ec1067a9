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
    /// `NONE`: the initial value only; it can never be written.
    None = 0,
    /// `RUNNING`: normal operation.
    Running = 1,
    /// `MIGRATION_SETUP`: saving starts while the device runs; dirty
    /// logging of the DMA windows begins.
    Setup = 2,
    /// `MIGRATION_PRECOPY`: pre-copy rounds while the device runs.
    Precopy = 3,
    /// `MIGRATION_STOPNCOPY`: the device is stopped and the rest of its
    /// state is read out.
    StopNCopy = 4,
    /// `MIGRATION_SAVE_COMPLETED`: everything was read; the device stays
    /// stopped and dirty logging ends.
    SaveCompleted = 5,
    /// `MIGRATION_RESUME`: the destination loads state through the data
    /// section.
    Resume = 6,
    /// `MIGRATION_RESUME_COMPLETED`: the loaded state is validated; the
    /// device is stopped and ready to run.
    ResumeCompleted = 7,
    /// `MIGRATION_FAILED`: migration abandoned after an error (the source
    /// runs on; a partial destination state is discarded).
    Failed = 8,
    /// `MIGRATION_CANCELLED`: migration abandoned by the user; handled as
    /// [`SeedState::Failed`].
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

// Field offsets inside the region, as `MigrationInfo::fields()` reports
// them (the struct is packed, so the u64 fields are unaligned).

/// Region offset of [`MigrationInfo::device_state`] (u32).
pub const OFF_DEVICE_STATE: u64 = 0;
/// Region offset of [`MigrationInfo::pending_precopy_only`] (u64).
pub const OFF_PENDING_PRECOPY_ONLY: u64 = 4;
/// Region offset of [`MigrationInfo::pending_compatible`] (u64).
pub const OFF_PENDING_COMPATIBLE: u64 = 12;
/// Region offset of [`MigrationInfo::pending_postcopy_only`] (u64).
pub const OFF_PENDING_POSTCOPY_ONLY: u64 = 20;
/// Region offset of [`MigrationInfo::pending_threshold_size`] (u64).
pub const OFF_PENDING_THRESHOLD_SIZE: u64 = 28;
/// Region offset of [`MigrationInfo::data_offset`] (u64).
pub const OFF_DATA_OFFSET: u64 = 36;
/// Region offset of [`MigrationInfo::data_size`] (u64).
pub const OFF_DATA_SIZE: u64 = 44;
/// Region offset of [`MigrationInfo::dirty_pfns_start_addr`] (u64).
pub const OFF_DIRTY_START_ADDR: u64 = 52;
/// Region offset of [`MigrationInfo::dirty_pfns_total`] (u64).
pub const OFF_DIRTY_TOTAL: u64 = 60;
/// Region offset of [`MigrationInfo::dirty_pfns_copied`] (u64).
pub const OFF_DIRTY_COPIED: u64 = 68;

wire_struct! {
    /// The seed's packed `struct vfio_device_migration_info` with its nested
    /// `pending`, `data` and `dirty_pfns` structs flattened (same bytes).
    /// Each field is accessed on its own, and some accesses trigger an
    /// action: `docs/seed-protocol.md` gives the rules.
    pub struct MigrationInfo {
        /// A [`SeedState`] value. Writing it requests that transition;
        /// reading returns the state last set.
        pub device_state: u32,
        /// `pending.precopy_only`, output: bytes that must move while the
        /// device still runs. Reading it computes all three pending fields.
        pub pending_precopy_only: u64,
        /// `pending.compatible`, output: bytes that may move at any time
        /// (pre-copy data not yet read).
        pub pending_compatible: u64,
        /// `pending.postcopy_only`, output: bytes that can move only once the
        /// device is stopped.
        pub pending_postcopy_only: u64,
        /// `pending.threshold_size`, input: the most bytes one Get buffer
        /// stages; 0 means the whole data section.
        pub pending_threshold_size: u64,
        /// `data.offset`: region offset of the staged data. Reading it while
        /// saving stages the next chunk; written by the user when resuming
        /// to point inside the data section.
        pub data_offset: u64,
        /// `data.size`: bytes staged by the last Get buffer (saving), or
        /// bytes for the device to consume, written when resuming.
        pub data_size: u64,
        /// `dirty_pfns.start_addr`, input: first IOVA (page-aligned) of the
        /// next dirty bitmap request.
        pub dirty_pfns_start_addr: u64,
        /// `dirty_pfns.total`, input: number of pages asked for from
        /// `start_addr` on.
        pub dirty_pfns_total: u64,
        /// `dirty_pfns.copied`, output: reading it copies (and clears) the
        /// bitmap of that many pages to the data section start.
        pub dirty_pfns_copied: u64,
    }
}
