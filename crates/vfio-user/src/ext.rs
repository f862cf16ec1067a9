//! What this implementation adds to the vfio-user spec, all optional and
//! discoverable, so clients and servers of other implementations keep
//! working:
//!
//! - **Capability [`EXT_CAP_KEY`]** in VERSION. Our client proposes
//!   `"vfio_migrate": {"version": 1}`; our server echoes it back (the reply
//!   stays a subset of the proposal). A client that sees it knows the server
//!   reads whole messages of any size up to `max_data_xfer_size` (no 32 KiB
//!   limit on MIG_DATA_WRITE) and offers the extension features below.
//! - **Feature [`FEATURE_MIG_DATA_SIZE`]** (the kernel's
//!   `VFIO_DEVICE_FEATURE_MIG_DATA_SIZE`, not in the vfio-user spec): GET
//!   returns `{u64 stop_copy_length}`. Clients PROBE before using it.
//! - **Feature [`FEATURE_PRECOPY_INFO`]**: GET in PRE_COPY/PRE_COPY_P2P
//!   returns `struct vfio_precopy_info`'s two counters `{u64 initial_bytes,
//!   u64 dirty_bytes}` (the kernel gets them with an ioctl on the data fd,
//!   which vfio-user does not have). Clients PROBE before using it.
//! - **Feature [`FEATURE_DEVICE_STATUS`]**: GET returns `{u32 flags, u32
//!   reserved}` with [`STATUS_PRISTINE`], [`STATUS_INCOMING`] and
//!   [`STATUS_MIGRATED_OUT`]: whether the device has been used since it
//!   started, waits for an incoming migration, or was migrated out and not
//!   run since. A migration reads it to refuse overwriting a device in use
//!   and to refuse starting a second copy of a device. Any state. Clients
//!   PROBE before using it; a server without it simply cannot say.
//! - **Feature [`FEATURE_MIG_DATA_CRC`]**: SET `{u32 on, u32 reserved}`
//!   (GET returns it): while on, on this connection, every MIG_DATA_READ
//!   reply carries `{u32 crc32c, u32 0}` — the CRC32C of its data — between
//!   its 8-byte head and the data, so a client can put the data into its
//!   own checksummed records without reading it (it splices it on); and
//!   every MIG_DATA_WRITE carries the same block, the CRC32C of its data,
//!   which the server checks before the device takes the data (`EILSEQ`
//!   when it does not match), so a client can splice data it did not read.
//!   Clients PROBE before using it.
//! - **Feature [`FEATURE_THROTTLE`]**: the device-side analogue of QEMU's
//!   auto-converge. SET `{u32 percent, u32 reserved}` ([`FeatureThrottle`])
//!   asks the device to withhold `percent` (0–99) of the work that dirties
//!   its memory while it is in PRE_COPY/PRE_COPY_P2P (0 in any state);
//!   GET returns the throttle in force. The device releases it by itself
//!   when it leaves pre-copy, on reset, and when its client goes away.
//!   Offered only by devices that can throttle; clients PROBE first.
//! - **Feature [`FEATURE_PRECOPY_INFO_V2`]**: SET (no data) opts this
//!   connection in to the second pre-copy info layout, as a kernel client
//!   SETs `VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2`: afterwards
//!   [`FEATURE_PRECOPY_INFO`] GET returns `{u64 initial_bytes, u64
//!   dirty_bytes, u32 flags, u32 reserved}` with [`PRECOPY_FLAG_REINIT`]
//!   (the kernel's `VFIO_PRECOPY_INFO_REINIT`): the device re-initialised
//!   its pre-copy data — new initial data is present, `initial_bytes`
//!   counts it, `dirty_bytes` restarted — reported once. Without the
//!   opt-in the reply keeps its 16 bytes.

use serde_json::{Map, Value};
use vfio_migrate_abi::vfio_user::Capabilities;
use vfio_migrate_abi::WireError;

/// Key of our capability object in the VERSION JSON.
pub const EXT_CAP_KEY: &str = "vfio_migrate";
/// Version of the extension set described in this module.
pub const EXT_VERSION: u64 = 1;

/// `VFIO_DEVICE_FEATURE_MIG_DATA_SIZE` (kernel feature 9), an extension here.
pub const FEATURE_MIG_DATA_SIZE: u32 = vfio_migrate_abi::kernel::FEATURE_MIG_DATA_SIZE;
/// Pre-copy info as a device feature (vfio-migrate extension).
pub const FEATURE_PRECOPY_INFO: u32 = 0xf001;
/// Device status (vfio-migrate extension): `{u32 flags, u32 reserved}`.
pub const FEATURE_DEVICE_STATUS: u32 = 0xf002;
/// Checksummed MIG_DATA_READ replies (vfio-migrate extension):
/// `{u32 on, u32 reserved}`.
pub const FEATURE_MIG_DATA_CRC: u32 = 0xf005;
/// Size of the checksum block a MIG_DATA_READ reply carries after its
/// head while [`FEATURE_MIG_DATA_CRC`] is on.
pub const MIG_DATA_CRC_SIZE: usize = 8;
/// Device throttle (vfio-migrate extension): [`FeatureThrottle`].
pub const FEATURE_THROTTLE: u32 = 0xf003;
/// Opt-in to the pre-copy info layout with flags (vfio-migrate extension).
pub const FEATURE_PRECOPY_INFO_V2: u32 = 0xf004;
/// Pre-copy info flag (second layout): new initial data is present.
pub const PRECOPY_FLAG_REINIT: u32 = 1;

vfio_migrate_abi::wire_struct! {
    /// Data of [`FEATURE_THROTTLE`] (GET reply, SET request).
    pub struct FeatureThrottle {
        /// Percent of the device's dirtying work withheld (0–99).
        pub percent: u32,
        /// 0.
        pub reserved: u32,
    }
}

/// [`FEATURE_DEVICE_STATUS`] flag: nothing has been done with the device
/// since it started or was reset (config space writes aside).
pub const STATUS_PRISTINE: u32 = 1 << 0;
/// [`FEATURE_DEVICE_STATUS`] flag: waiting for an incoming migration.
pub const STATUS_INCOMING: u32 = 1 << 1;
/// [`FEATURE_DEVICE_STATUS`] flag: migrated out, not run since.
pub const STATUS_MIGRATED_OUT: u32 = 1 << 2;

/// The capabilities a VERSION message carried, plus whether the peer
/// offered (client) or accepted (server) our extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionCaps {
    /// The spec's capabilities (defaults filled in).
    pub caps: Capabilities,
    /// The extension version the peer announced, if any.
    pub ext: Option<u64>,
}

impl VersionCaps {
    /// Parses the JSON that follows the VERSION head. Empty = defaults.
    pub fn from_json_bytes(b: &[u8]) -> Result<Self, WireError> {
        let caps = Capabilities::from_json_bytes(b)?;
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        let text = std::str::from_utf8(&b[..end]).map_err(|e| WireError::Json(e.to_string()))?;
        let ext = if text.trim().is_empty() {
            None
        } else {
            let v: Value =
                serde_json::from_str(text).map_err(|e| WireError::Json(e.to_string()))?;
            v.get("capabilities")
                .and_then(|c| c.get(EXT_CAP_KEY))
                .and_then(|e| e.get("version"))
                .and_then(Value::as_u64)
        };
        Ok(Self { caps, ext })
    }

    /// The NUL-terminated JSON document.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        let mut caps = serde_json::to_value(&self.caps).expect("capabilities serialize");
        if let (Some(ver), Value::Object(m)) = (self.ext, &mut caps) {
            let mut e = Map::new();
            e.insert("version".into(), Value::from(ver));
            m.insert(EXT_CAP_KEY.into(), Value::Object(e));
        }
        let mut top = Map::new();
        top.insert("capabilities".into(), caps);
        let mut v = serde_json::to_vec(&Value::Object(top)).expect("json serialize");
        v.push(0);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfio_migrate_abi::vfio_user::MigrationCaps;

    #[test]
    fn round_trip_with_and_without_extension() {
        for ext in [None, Some(EXT_VERSION)] {
            let v = VersionCaps {
                caps: Capabilities {
                    max_msg_fds: 8,
                    max_data_xfer_size: 1 << 23,
                    migration: Some(MigrationCaps {
                        pgsize: 4096,
                        max_bitmap_size: None,
                    }),
                },
                ext,
            };
            let b = v.to_json_bytes();
            assert_eq!(*b.last().unwrap(), 0);
            assert_eq!(VersionCaps::from_json_bytes(&b).unwrap(), v);
        }
    }

    #[test]
    fn foreign_json_has_no_extension() {
        let j = br#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576,"migration":{"pgsize":4096}}}"#;
        let v = VersionCaps::from_json_bytes(j).unwrap();
        assert_eq!(v.ext, None);
        assert_eq!(v.caps.max_msg_fds, 8);
        assert!(VersionCaps::from_json_bytes(b"{not json").is_err());
    }
}
