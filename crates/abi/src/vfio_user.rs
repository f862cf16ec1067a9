//! vfio-user messages (QEMU `docs/interop/vfio-user.rst`): the 16-byte
//! header, command numbers, payload structs and the VERSION capabilities.

use crate::wire::WireError;
use crate::wire_struct;
use serde::{Deserialize, Serialize};

/// Protocol major version spoken here.
pub const VERSION_MAJOR: u16 = 0;
/// Protocol minor version spoken here.
pub const VERSION_MINOR: u16 = 1;

/// Size of [`Header`] in bytes; every message starts with one.
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
    /// The vfio-user message header, at the start of every command and
    /// reply.
    pub struct Header {
        /// Chosen by the sender of a command; the reply carries the same id.
        pub msg_id: u16,
        /// A [`Command`] number; a reply repeats its command's.
        pub cmd: u16,
        /// Whole message size including this header.
        pub msg_size: u32,
        /// Message type ([`FLAGS_TYPE_MASK`] bits: [`TYPE_COMMAND`] or
        /// [`TYPE_REPLY`]) OR'ed with [`FLAG_NO_REPLY`] and [`FLAG_ERROR`].
        pub flags: u32,
        /// In a reply with [`FLAG_ERROR`]: the errno; 0 otherwise.
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

/// vfio-user command numbers (the header's `cmd`). Unless noted, the client
/// sends the command and the server replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Command {
    /// VERSION: the first message of a connection; [`Version`] head plus
    /// the capabilities JSON, answered in kind.
    Version = 1,
    /// DMA_MAP: [`DmaMap`], with the fd of the memory when it is shared.
    DmaMap = 2,
    /// DMA_UNMAP: [`DmaUnmap`].
    DmaUnmap = 3,
    /// DEVICE_GET_INFO: [`DeviceInfo`].
    DeviceGetInfo = 4,
    /// DEVICE_GET_REGION_INFO: [`RegionInfo`] and its capability chain,
    /// with the region's fd when it can be mmap'ed.
    DeviceGetRegionInfo = 5,
    /// DEVICE_GET_REGION_IO_FDS: ioeventfds for a region.
    DeviceGetRegionIoFds = 6,
    /// DEVICE_GET_IRQ_INFO: [`IrqInfo`].
    DeviceGetIrqInfo = 7,
    /// DEVICE_SET_IRQS: [`IrqSet`], with eventfds for triggers.
    DeviceSetIrqs = 8,
    /// REGION_READ: [`RegionAccess`]; the reply carries the data.
    RegionRead = 9,
    /// REGION_WRITE: [`RegionAccess`] followed by the data.
    RegionWrite = 10,
    /// DMA_READ (server to client): [`DmaAccess`]; the reply carries the
    /// data.
    DmaRead = 11,
    /// DMA_WRITE (server to client): [`DmaAccess`] followed by the data.
    DmaWrite = 12,
    /// DEVICE_RESET: no payload.
    DeviceReset = 13,
    /// Only in the older spec revision that carried the v1 migration region.
    DirtyPages = 14,
    /// REGION_WRITE_MULTI: several region writes in one message.
    RegionWriteMulti = 15,
    /// DEVICE_FEATURE: [`crate::kernel::DeviceFeature`] head plus the
    /// feature data, as the kernel's `VFIO_DEVICE_FEATURE`.
    DeviceFeature = 16,
    /// MIG_DATA_READ: [`MigData`]; the reply carries up to `size` bytes of
    /// migration data.
    MigDataRead = 17,
    /// MIG_DATA_WRITE: [`MigData`] followed by `size` bytes of migration
    /// data.
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
        /// Protocol major version ([`VERSION_MAJOR`] here).
        pub major: u16,
        /// Protocol minor version ([`VERSION_MINOR`] here).
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
    /// Most file descriptors the sender accepts in one message (default
    /// [`DEFAULT_MAX_MSG_FDS`]).
    #[serde(default = "default_max_msg_fds")]
    pub max_msg_fds: u32,
    /// Largest data count, in bytes, of one message: region and migration
    /// data, DMA accesses, dirty bitmaps (default
    /// [`DEFAULT_MAX_DATA_XFER_SIZE`]).
    #[serde(default = "default_max_data_xfer_size")]
    pub max_data_xfer_size: u32,
    /// Present when the sender supports migration.
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
        /// Size of this struct (32).
        pub argsz: u32,
        /// [`DMA_FLAG_READ`] and/or [`DMA_FLAG_WRITE`]: what the device may
        /// do to the window.
        pub flags: u32,
        /// Offset into the passed fd.
        pub offset: u64,
        /// IOVA of the mapping.
        pub addr: u64,
        /// Length of the window in bytes.
        pub size: u64,
    }
}

wire_struct! {
    /// DMA_UNMAP payload.
    pub struct DmaUnmap {
        /// Size of this struct (24).
        pub argsz: u32,
        /// 0, or `VFIO_DMA_UNMAP_FLAG_ALL` (2) with `addr` = `size` = 0 to
        /// remove every window.
        pub flags: u32,
        /// IOVA of the window to remove, as given to DMA_MAP.
        pub addr: u64,
        /// Length of that window in bytes, as given to DMA_MAP.
        pub size: u64,
    }
}

wire_struct! {
    /// DEVICE_GET_INFO payload (`struct vfio_device_info`).
    pub struct DeviceInfo {
        /// Size of this struct (16).
        pub argsz: u32,
        /// [`DEVICE_FLAGS_PCI`], [`DEVICE_FLAGS_RESET`].
        pub flags: u32,
        /// Number of region indices; for PCI at least [`PCI_NUM_REGIONS`].
        pub num_regions: u32,
        /// Number of IRQ indices; for PCI at least [`PCI_NUM_IRQS`].
        pub num_irqs: u32,
    }
}

/// `vfio_device_info.flags`: PCI device.
pub const DEVICE_FLAGS_PCI: u32 = 1 << 1;
/// `vfio_device_info.flags`: supports reset.
pub const DEVICE_FLAGS_RESET: u32 = 1 << 0;

/// PCI region index of BAR0 (BARn is index n, up to BAR5 = 5).
pub const PCI_BAR0_REGION_INDEX: u32 = 0;
/// PCI region index of BAR1.
pub const PCI_BAR1_REGION_INDEX: u32 = 1;
/// PCI region index of BAR2.
pub const PCI_BAR2_REGION_INDEX: u32 = 2;
/// PCI region index of the expansion ROM.
pub const PCI_ROM_REGION_INDEX: u32 = 6;
/// PCI region index of the configuration space.
pub const PCI_CONFIG_REGION_INDEX: u32 = 7;
/// PCI region index of the legacy VGA ranges.
pub const PCI_VGA_REGION_INDEX: u32 = 8;
/// Number of fixed PCI region indices; device-specific regions follow.
pub const PCI_NUM_REGIONS: u32 = 9;

/// PCI IRQ index of the legacy INTx pin.
pub const PCI_INTX_IRQ_INDEX: u32 = 0;
/// PCI IRQ index of MSI.
pub const PCI_MSI_IRQ_INDEX: u32 = 1;
/// PCI IRQ index of MSI-X.
pub const PCI_MSIX_IRQ_INDEX: u32 = 2;
/// PCI IRQ index of the error-reporting interrupt.
pub const PCI_ERR_IRQ_INDEX: u32 = 3;
/// PCI IRQ index of the device-release request interrupt.
pub const PCI_REQ_IRQ_INDEX: u32 = 4;
/// Number of PCI IRQ indices.
pub const PCI_NUM_IRQS: u32 = 5;

/// [`RegionInfo::flags`]: the region can be read.
pub const REGION_FLAG_READ: u32 = 1;
/// [`RegionInfo::flags`]: the region can be written.
pub const REGION_FLAG_WRITE: u32 = 2;
/// [`RegionInfo::flags`]: the region can be mmap'ed (in vfio-user, from
/// the fd sent with the reply).
pub const REGION_FLAG_MMAP: u32 = 4;
/// [`RegionInfo::flags`]: a capability chain starts at
/// [`RegionInfo::cap_offset`].
pub const REGION_FLAG_CAPS: u32 = 8;

/// Region capability id: the mmap-able parts of the region
/// ([`CapSparseMmap`] and its areas).
pub const REGION_INFO_CAP_SPARSE_MMAP: u16 = 1;
/// Region capability id: a device-specific region's type and subtype
/// ([`CapType`]).
pub const REGION_INFO_CAP_TYPE: u16 = 2;

wire_struct! {
    /// DEVICE_GET_REGION_INFO payload (`struct vfio_region_info`).
    pub struct RegionInfo {
        /// Request: room for the reply, capability chain included. Reply:
        /// the size the whole info needs; when larger than asked, the chain
        /// was left out and the caller asks again.
        pub argsz: u32,
        /// `REGION_FLAG_*` bits.
        pub flags: u32,
        /// The region index asked about.
        pub index: u32,
        /// Offset of the first [`CapHeader`] from the start of this struct,
        /// 0 when there is no chain (or it did not fit).
        pub cap_offset: u32,
        /// Region size in bytes; 0 for an absent region.
        pub size: u64,
        /// Kernel: where the region starts in the device fd. vfio-user:
        /// where it starts in the fd passed with the reply.
        pub offset: u64,
    }
}

wire_struct! {
    /// `struct vfio_info_cap_header`.
    pub struct CapHeader {
        /// Capability id, e.g. [`REGION_INFO_CAP_TYPE`].
        pub id: u16,
        /// Version of that capability's layout.
        pub version: u16,
        /// Offset of the next capability from the start of the region info,
        /// 0 for the last.
        pub next: u32,
    }
}

wire_struct! {
    /// Body of `VFIO_REGION_INFO_CAP_TYPE`.
    pub struct CapType {
        /// Region type (e.g. the v1 or the seed migration region's).
        pub ty: u32,
        /// Region subtype within that type.
        pub subtype: u32,
    }
}

wire_struct! {
    /// Body head of `VFIO_REGION_INFO_CAP_SPARSE_MMAP`; areas follow.
    pub struct CapSparseMmap {
        /// Number of [`SparseMmapArea`]s that follow.
        pub nr_areas: u32,
        /// Reserved, 0.
        pub reserved: u32,
    }
}

wire_struct! {
    /// One sparse-mmap area.
    pub struct SparseMmapArea {
        /// Start of the area, from the start of the region.
        pub offset: u64,
        /// Length of the area in bytes.
        pub size: u64,
    }
}

wire_struct! {
    /// REGION_READ / REGION_WRITE payload head; data follows.
    pub struct RegionAccess {
        /// Offset of the access inside the region.
        pub offset: u64,
        /// Region index.
        pub region: u32,
        /// Bytes to read or write (at most `max_data_xfer_size`).
        pub count: u32,
    }
}

wire_struct! {
    /// DMA_READ / DMA_WRITE (server to client) payload head.
    pub struct DmaAccess {
        /// IOVA of the access, inside a window the client mapped.
        pub address: u64,
        /// Bytes to read or write.
        pub count: u64,
    }
}

wire_struct! {
    /// DEVICE_GET_IRQ_INFO payload (`struct vfio_irq_info`).
    pub struct IrqInfo {
        /// Size of this struct (16).
        pub argsz: u32,
        /// `IRQ_INFO_*` bits; 0 for an index the device does not offer.
        pub flags: u32,
        /// The IRQ index asked about.
        pub index: u32,
        /// Number of vectors at that index; 0 when not offered.
        pub count: u32,
    }
}

/// [`IrqInfo::flags`]: the index can signal through eventfds.
pub const IRQ_INFO_EVENTFD: u32 = 1;
/// [`IrqInfo::flags`]: the index can be masked and unmasked.
pub const IRQ_INFO_MASKABLE: u32 = 2;
/// [`IrqInfo::flags`]: the interrupt masks itself when it fires (level
/// triggered) until unmasked.
pub const IRQ_INFO_AUTOMASKED: u32 = 4;
/// [`IrqInfo::flags`]: the set of enabled vectors cannot grow without
/// disabling them all first.
pub const IRQ_INFO_NORESIZE: u32 = 8;

wire_struct! {
    /// DEVICE_SET_IRQS payload (`struct vfio_irq_set`).
    pub struct IrqSet {
        /// Size of this struct plus any data that follows it.
        pub argsz: u32,
        /// One `IRQ_SET_DATA_*` and one `IRQ_SET_ACTION_*` bit.
        pub flags: u32,
        /// The IRQ index to act on.
        pub index: u32,
        /// First vector of the index.
        pub start: u32,
        /// Number of vectors from `start`; with eventfd data, as many
        /// eventfds come with the message (0 with `DATA_NONE` tears down).
        pub count: u32,
    }
}

/// [`IrqSet::flags`] data kind: no data (act on every vector of the range).
pub const IRQ_SET_DATA_NONE: u32 = 1;
/// [`IrqSet::flags`] data kind: one byte per vector says whether to act.
pub const IRQ_SET_DATA_BOOL: u32 = 2;
/// [`IrqSet::flags`] data kind: one eventfd per vector (sent as fds in
/// vfio-user).
pub const IRQ_SET_DATA_EVENTFD: u32 = 4;
/// [`IrqSet::flags`] action: mask the vectors.
pub const IRQ_SET_ACTION_MASK: u32 = 8;
/// [`IrqSet::flags`] action: unmask the vectors.
pub const IRQ_SET_ACTION_UNMASK: u32 = 16;
/// [`IrqSet::flags`] action: fire the vectors, or with eventfds, attach
/// the fds the device signals.
pub const IRQ_SET_ACTION_TRIGGER: u32 = 32;

wire_struct! {
    /// MIG_DATA_READ / MIG_DATA_WRITE payload head; data follows.
    pub struct MigData {
        /// Request: room the client has for the reply payload (for READ,
        /// this head plus `size`). Reply: the reply payload's size.
        pub argsz: u32,
        /// Request: bytes asked for (READ) or sent (WRITE). READ reply: bytes
        /// returned; fewer than asked in STOP_COPY means the end of the
        /// state.
        pub size: u32,
    }
}
