//! The Linux 5.8 "v1" migration region (`VFIO_REGION_TYPE_MIGRATION_DEPRECATED`,
//! removed in 5.18) and the old vfio-user `DIRTY_PAGES` command.

use crate::wire_struct;

/// Region type of the v1 migration region.
pub const REGION_TYPE: u32 = 3;
/// Region subtype of the v1 migration region.
pub const REGION_SUBTYPE: u32 = 1;

/// `device_state` bit: device running.
pub const STATE_RUNNING: u32 = 1;
/// `device_state` bit: device saving.
pub const STATE_SAVING: u32 = 2;
/// `device_state` bit: device resuming.
pub const STATE_RESUMING: u32 = 4;
/// Mask of the defined bits.
pub const STATE_MASK: u32 = 7;
/// The error state (`SAVING | RESUMING`).
pub const STATE_ERROR: u32 = STATE_SAVING | STATE_RESUMING;

/// Field offsets inside the region (also in [`MigrationInfo::fields`]).
pub const OFF_DEVICE_STATE: u64 = 0;
pub const OFF_RESERVED: u64 = 4;
pub const OFF_PENDING_BYTES: u64 = 8;
pub const OFF_DATA_OFFSET: u64 = 16;
pub const OFF_DATA_SIZE: u64 = 24;

wire_struct! {
    /// `struct vfio_device_migration_info` of the v1 protocol, at offset 0
    /// of the migration region.
    pub struct MigrationInfo {
        pub device_state: u32,
        pub reserved: u32,
        pub pending_bytes: u64,
        pub data_offset: u64,
        pub data_size: u64,
    }
}

/// Old vfio-user `DIRTY_PAGES` flag: start logging.
pub const DIRTY_PAGES_START: u32 = 1;
/// Old vfio-user `DIRTY_PAGES` flag: stop logging.
pub const DIRTY_PAGES_STOP: u32 = 2;
/// Old vfio-user `DIRTY_PAGES` flag: get a bitmap.
pub const DIRTY_PAGES_GET_BITMAP: u32 = 4;

wire_struct! {
    /// `DIRTY_PAGES` request header.
    pub struct DirtyPages {
        pub argsz: u32,
        pub flags: u32,
    }
}

wire_struct! {
    /// `DIRTY_PAGES` bitmap range (follows the header for GET_BITMAP).
    pub struct DirtyBitmapRange {
        pub iova: u64,
        pub size: u64,
        pub pgsize: u64,
        pub bitmap_size: u64,
    }
}
