//! vfio-user messages (QEMU `docs/interop/vfio-user.rst`): the 16-byte
//! header, command numbers, payload structs and the VERSION capabilities.

use crate::wire::WireError;
use crate::wire_struct;
use serde::{Deserialize, Serialize};

/// Protocol major version spoken here.
pub const VERSION_MAJOR: u16 = 0;
/// Protocol minor version spoken here.
pub const VERSION_MINOR: u16 = 1;

/// Header size.
pub const HEADER_SIZE: usize = 16;

/// Header `flags`: message type mask.
pub const FLAGS_TYPE_MASK: u32 = 0xf;
/// Header type: command.
pub const TYPE_COMMAND: u32 = 0;
/// Header type: reply.
pub const TYPE_REPLY: u32 = 1;
/// Header flag: the sender expects no reply.
pub const FLAG_NO_REPLY: u32 = 0x10;
/// Header flag: the reply is an error; `error_no` holds the errno.
pub const FLAG_ERROR: u32 = 0x20;

/// Default `max_msg_fds` when VERSION does not say.
pub const DEFAULT_MAX_MSG_FDS: u32 = 1;
/// Default `max_data_xfer_size` when VERSION does not say.
pub const DEFAULT_MAX_DATA_XFER_SIZE: u32 = 1 << 20;
/// Largest VERSION JSON accepted.
pub const MAX_VERSION_JSON: usize = 4096;

wire_struct! {
    /// The vfio-user message header.
    pub struct Header {
        pub msg_id: u16,
        pub cmd: u16,
        /// Whole message size including this header.
        pub msg_size: u32,
        pub flags: u32,
        pub error_no: u32,
    }
}

impl Header {
    /// True when this is a reply.
    pub fn is_reply(&self) -> bool {
        self.flags & FLAGS_TYPE_MASK == TYPE_REPLY
    }
    /// True when the error flag is set.
    pub fn is_error(&self) -> bool {
        self.flags & FLAG_ERROR != 0
    }
    /// True when no reply is expected.
    pub fn no_reply(&self) -> bool {
        self.flags & FLAG_NO_REPLY != 0
    }
    /// Payload size (`msg_size - 16`), or an error when `msg_size < 16`.
    pub fn payload_len(&self) -> Result<usize, WireError> {
        (self.msg_size as usize)
            .checked_sub(HEADER_SIZE)
            .ok_or(WireError::Invalid {
                what: "msg_size",
                value: self.msg_size as u64,
            })
    }
}

/// vfio-user command numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Command {
    Version = 1,
    DmaMap = 2,
    DmaUnmap = 3,
    DeviceGetInfo = 4,
    DeviceGetRegionInfo = 5,
    DeviceGetRegionIoFds = 6,
    DeviceGetIrqInfo = 7,
    DeviceSetIrqs = 8,
    RegionRead = 9,
    RegionWrite = 10,
    DmaRead = 11,
    DmaWrite = 12,
    DeviceReset = 13,
    /// Only in the older spec revision that carried the v1 migration region.
    DirtyPages = 14,
    RegionWriteMulti = 15,
    DeviceFeature = 16,
    MigDataRead = 17,
    MigDataWrite = 18,
}

impl Command {
    /// The command for a wire value, if known.
    pub fn from_u16(v: u16) -> Option<Self> {
        use Command::*;
        Some(match v {
            1 => Version,
            2 => DmaMap,
            3 => DmaUnmap,
            4 => DeviceGetInfo,
            5 => DeviceGetRegionInfo,
            6 => DeviceGetRegionIoFds,
            7 => DeviceGetIrqInfo,
            8 => DeviceSetIrqs,
            9 => RegionRead,
            10 => RegionWrite,
            11 => DmaRead,
            12 => DmaWrite,
            13 => DeviceReset,
            14 => DirtyPages,
            15 => RegionWriteMulti,
            16 => DeviceFeature,
            17 => MigDataRead,
            18 => MigDataWrite,
            _ => return None,
        })
    }
}

wire_struct! {
    /// VERSION payload head; a NUL-terminated JSON object follows.
    pub struct Version {
        pub major: u16,
        pub minor: u16,
    }
}

/// `capabilities.migration` of VERSION.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct MigrationCaps {
    /// Dirty-page granularity in bytes.
    #[serde(default)]
    pub pgsize: u64,
    /// Largest bitmap a DMA logging report may ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bitmap_size: Option<u64>,
}

/// The `capabilities` object of VERSION.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Capabilities {
    #[serde(default = "default_max_msg_fds")]
    pub max_msg_fds: u32,
    #[serde(default = "default_max_data_xfer_size")]
    pub max_data_xfer_size: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationCaps>,
}

fn default_max_msg_fds() -> u32 {
    DEFAULT_MAX_MSG_FDS
}
fn default_max_data_xfer_size() -> u32 {
    DEFAULT_MAX_DATA_XFER_SIZE
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            max_msg_fds: DEFAULT_MAX_MSG_FDS,
            max_data_xfer_size: DEFAULT_MAX_DATA_XFER_SIZE,
            migration: None,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct VersionJson {
    #[serde(default)]
    capabilities: Capabilities,
}

impl Capabilities {
    /// Parses the JSON that follows the VERSION head (NUL terminator and
    /// anything after it ignored). An empty string means all defaults.
    pub fn from_json_bytes(b: &[u8]) -> Result<Self, WireError> {
        if b.len() > MAX_VERSION_JSON {
            return Err(WireError::Json(format!(
                "{} bytes, more than {MAX_VERSION_JSON}",
                b.len()
            )));
        }
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        let text = std::str::from_utf8(&b[..end]).map_err(|e| WireError::Json(e.to_string()))?;
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let v: VersionJson =
            serde_json::from_str(text).map_err(|e| WireError::Json(e.to_string()))?;
        Ok(v.capabilities)
    }

    /// The JSON document with its NUL terminator.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(&VersionJson {
            capabilities: self.clone(),
        })
        .expect("capabilities serialize");
        v.push(0);
        v
    }
}

/// DMA_MAP / DMA_UNMAP flag: readable.
pub const DMA_FLAG_READ: u32 = 1;
/// DMA_MAP / DMA_UNMAP flag: writable.
pub const DMA_FLAG_WRITE: u32 = 2;

wire_struct! {
    /// DMA_MAP payload.
    pub struct DmaMap {
        pub argsz: u32,
        pub flags: u32,
        /// Offset into the passed fd.
        pub offset: u64,
        /// IOVA of the mapping.
        pub addr: u64,
        pub size: u64,
    }
}

wire_struct! {
    /// DMA_UNMAP payload.
    pub struct DmaUnmap {
        pub argsz: u32,
        pub flags: u32,
        pub addr: u64,
        pub size: u64,
    }
}

wire_struct! {
    /// DEVICE_GET_INFO payload (`struct vfio_device_info`).
    pub struct DeviceInfo {
        pub argsz: u32,
        pub flags: u32,
        pub num_regions: u32,
        pub num_irqs: u32,
    }
}

/// `vfio_device_info.flags`: PCI device.
pub const DEVICE_FLAGS_PCI: u32 = 1 << 1;
/// `vfio_device_info.flags`: supports reset.
pub const DEVICE_FLAGS_RESET: u32 = 1 << 0;

/// PCI region indices.
pub const PCI_BAR0_REGION_INDEX: u32 = 0;
pub const PCI_BAR1_REGION_INDEX: u32 = 1;
pub const PCI_BAR2_REGION_INDEX: u32 = 2;
pub const PCI_ROM_REGION_INDEX: u32 = 6;
pub const PCI_CONFIG_REGION_INDEX: u32 = 7;
pub const PCI_VGA_REGION_INDEX: u32 = 8;
/// Number of fixed PCI region indices; device-specific regions follow.
pub const PCI_NUM_REGIONS: u32 = 9;

/// IRQ indices.
pub const PCI_INTX_IRQ_INDEX: u32 = 0;
pub const PCI_MSI_IRQ_INDEX: u32 = 1;
pub const PCI_MSIX_IRQ_INDEX: u32 = 2;
pub const PCI_ERR_IRQ_INDEX: u32 = 3;
pub const PCI_REQ_IRQ_INDEX: u32 = 4;
pub const PCI_NUM_IRQS: u32 = 5;

/// Region flags.
pub const REGION_FLAG_READ: u32 = 1;
pub const REGION_FLAG_WRITE: u32 = 2;
pub const REGION_FLAG_MMAP: u32 = 4;
pub const REGION_FLAG_CAPS: u32 = 8;

/// Capability ids in a region info chain.
pub const REGION_INFO_CAP_SPARSE_MMAP: u16 = 1;
pub const REGION_INFO_CAP_TYPE: u16 = 2;

wire_struct! {
    /// DEVICE_GET_REGION_INFO payload (`struct vfio_region_info`).
    pub struct RegionInfo {
        pub argsz: u32,
        pub flags: u32,
        pub index: u32,
        pub cap_offset: u32,
        pub size: u64,
        pub offset: u64,
    }
}

wire_struct! {
    /// `struct vfio_info_cap_header`.
    pub struct CapHeader {
        pub id: u16,
        pub version: u16,
        /// Offset of the next capability from the start of the region info,
        /// 0 for the last.
        pub next: u32,
    }
}

wire_struct! {
    /// Body of `VFIO_REGION_INFO_CAP_TYPE`.
    pub struct CapType {
        pub ty: u32,
        pub subtype: u32,
    }
}

wire_struct! {
    /// Body head of `VFIO_REGION_INFO_CAP_SPARSE_MMAP`; areas follow.
    pub struct CapSparseMmap {
        pub nr_areas: u32,
        pub reserved: u32,
    }
}

wire_struct! {
    /// One sparse-mmap area.
    pub struct SparseMmapArea {
        pub offset: u64,
        pub size: u64,
    }
}

wire_struct! {
    /// REGION_READ / REGION_WRITE payload head; data follows.
    pub struct RegionAccess {
        pub offset: u64,
        pub region: u32,
        pub count: u32,
    }
}

wire_struct! {
    /// DMA_READ / DMA_WRITE (server to client) payload head.
    pub struct DmaAccess {
        pub address: u64,
        pub count: u64,
    }
}

wire_struct! {
    /// DEVICE_GET_IRQ_INFO payload (`struct vfio_irq_info`).
    pub struct IrqInfo {
        pub argsz: u32,
        pub flags: u32,
        pub index: u32,
        pub count: u32,
    }
}

/// IRQ info flags.
pub const IRQ_INFO_EVENTFD: u32 = 1;
pub const IRQ_INFO_MASKABLE: u32 = 2;
pub const IRQ_INFO_AUTOMASKED: u32 = 4;
pub const IRQ_INFO_NORESIZE: u32 = 8;

wire_struct! {
    /// DEVICE_SET_IRQS payload (`struct vfio_irq_set`).
    pub struct IrqSet {
        pub argsz: u32,
        pub flags: u32,
        pub index: u32,
        pub start: u32,
        pub count: u32,
    }
}

/// IRQ set flags.
pub const IRQ_SET_DATA_NONE: u32 = 1;
pub const IRQ_SET_DATA_BOOL: u32 = 2;
pub const IRQ_SET_DATA_EVENTFD: u32 = 4;
pub const IRQ_SET_ACTION_MASK: u32 = 8;
pub const IRQ_SET_ACTION_UNMASK: u32 = 16;
pub const IRQ_SET_ACTION_TRIGGER: u32 = 32;

wire_struct! {
    /// MIG_DATA_READ / MIG_DATA_WRITE payload head; data follows.
    pub struct MigData {
        pub argsz: u32,
        pub size: u32,
    }
}
