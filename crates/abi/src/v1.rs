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

// Field offsets inside the region, as `MigrationInfo::fields()` reports
// them.

/// Region offset of [`MigrationInfo::device_state`] (u32).
pub const OFF_DEVICE_STATE: u64 = 0;
/// Region offset of [`MigrationInfo::reserved`] (u32).
pub const OFF_RESERVED: u64 = 4;
/// Region offset of [`MigrationInfo::pending_bytes`] (u64).
pub const OFF_PENDING_BYTES: u64 = 8;
/// Region offset of [`MigrationInfo::data_offset`] (u64).
pub const OFF_DATA_OFFSET: u64 = 16;
/// Region offset of [`MigrationInfo::data_size`] (u64).
pub const OFF_DATA_SIZE: u64 = 24;

wire_struct! {
    /// `struct vfio_device_migration_info` of the v1 protocol, at offset 0
    /// of the migration region.
    pub struct MigrationInfo {
        /// State bits ([`STATE_RUNNING`], [`STATE_SAVING`],
        /// [`STATE_RESUMING`]); writing requests a transition.
        pub device_state: u32,
        /// Reserved, reads as 0.
        pub reserved: u32,
        /// Read-only: bytes of device state still to save (saving states
        /// only).
        pub pending_bytes: u64,
        /// Read-only: region offset of the data section. Reading it while
        /// saving also stages the next chunk of state there.
        pub data_offset: u64,
        /// Saving: bytes staged by the last `data_offset` read. Resuming:
        /// written by the user, the device then consumes that many bytes
        /// from the data section.
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
        /// Request: room for the reply in bytes. Reply: the reply's size.
        pub argsz: u32,
        /// Exactly one of [`DIRTY_PAGES_START`], [`DIRTY_PAGES_STOP`],
        /// [`DIRTY_PAGES_GET_BITMAP`].
        pub flags: u32,
    }
}

wire_struct! {
    /// `DIRTY_PAGES` bitmap range (follows the header for GET_BITMAP).
    pub struct DirtyBitmapRange {
        /// First IOVA of the range (bit 0 of the bitmap).
        pub iova: u64,
        /// Length of the range in bytes.
        pub size: u64,
        /// Bytes per bitmap bit.
        pub pgsize: u64,
        /// Bitmap size in bytes, which must match `size / pgsize` bits rounded
        /// up to whole u64 words; the bitmap follows this struct in the reply.
        pub bitmap_size: u64,
    }
}
