//! # vfio-migrate-client
//!
//! The vfio-user client (VMM side): one connection to a server (ours or any other
//! implementation of the spec), the raw operations as public methods, and
//! [`vfio_migrate_backend::MigrationDevice`] on top (see `migration.rs`).
//!
//! It owns every migration protocol a vfio-user device may speak, picked by
//! [`open`] with a [`Protocol`]: v2 on [`Client`] itself (DEVICE_FEATURE +
//! MIG_DATA_READ/WRITE), the Linux 5.8 v1 region ([`V1Device`], dirty
//! logging by `DIRTY_PAGES`) and the 2018 seed region ([`SeedDevice`]),
//! both over a [`MigRegion`]; and [`forward_mig_data`], which splices
//! migration data from one server to another on the same host.
//!
//! Every request is one `sendmsg` (header, struct and data as iovecs, fds
//! as `SCM_RIGHTS`); every reply is read to its last byte (`msg_size`),
//! error replies and padding included; data replies are read straight
//! into the caller's buffer. Chunk sizes stay within the negotiated
//! `max_data_xfer_size`, and MIG_DATA_WRITE chunks within 32 KiB unless the
//! peer announced our extension (see [`vfio_migrate_vfio_user::ext`]), because the
//! reference C server cannot take larger messages reliably.

#![forbid(unsafe_code)]

mod connection;
mod device;
mod dma;
mod forward;
mod mig_commands;
mod migration;
mod migregion;
mod protocol;
mod seed;
mod splice;
mod v1;

pub use forward::forward_mig_data;
pub use mig_commands::mig_write_argsz;
pub use migregion::MigRegion;
pub use protocol::{open, open_with, Protocol};
pub use seed::SeedDevice;
pub use splice::WRITES_IN_FLIGHT;
pub use v1::V1Device;

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use vfio_migrate_abi::kernel::{
    bitmap_bytes, DeviceFeature, FEATURE_DMA_LOGGING_REPORT, FEATURE_GET, FEATURE_PROBE,
    FEATURE_SET,
};
use vfio_migrate_abi::vfio_user::{
    CapHeader, CapSparseMmap, CapType, Capabilities, Command, DeviceInfo, DmaMap, DmaUnmap, Header,
    IrqInfo, IrqSet, MigData, MigrationCaps, RegionAccess, RegionInfo, SparseMmapArea, Version,
    FLAGS_TYPE_MASK, HEADER_SIZE, REGION_INFO_CAP_SPARSE_MMAP, REGION_INFO_CAP_TYPE, TYPE_COMMAND,
    TYPE_REPLY, VERSION_MAJOR, VERSION_MINOR,
};
use vfio_migrate_backend::{BackendError, DeviceDescriptor, Result};

use vfio_migrate_vfio_user::ext::{VersionCaps, EXT_VERSION};
use vfio_migrate_vfio_user::sock::{set_send_buffer, Conn, RecvFds};

/// MIG_DATA_WRITE chunk limit for peers not known to read large messages
/// whole (the reference C server's receive path).
pub const SAFE_WRITE_CHUNK: usize = 32 << 10;

/// Room for structs on top of `max_data_xfer_size` in a reply.
const REPLY_ALLOWANCE: usize = 64 << 10;

/// Largest region info (with capabilities) we accept.
const MAX_REGION_INFO: u32 = 64 << 10;

/// Client-side limits announced in VERSION.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Largest data count we accept in one reply.
    pub max_data_xfer_size: u32,
    /// Most fds we accept in one reply.
    pub max_msg_fds: u32,
    /// Socket send buffer to ask for.
    pub socket_buffer: usize,
    /// Propose our extension capability.
    pub propose_extension: bool,
    /// Connecting and VERSION must be done within this.
    pub connect_timeout: Duration,
    /// Longest wait for any reply (or for the server to take a message).
    pub timeout: Duration,
    /// A wake-up fd (the migration's cancel): once readable, every wait
    /// lasts at most `cancel_grace` more, so a live server still answers
    /// the requests that roll back and a dead one is given up on quickly.
    pub cancel: Option<Arc<OwnedFd>>,
    /// See `cancel`.
    pub cancel_grace: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            max_data_xfer_size: 8 << 20,
            max_msg_fds: 8,
            socket_buffer: 4 << 20,
            propose_extension: true,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            cancel: None,
            cancel_grace: Duration::from_millis(1500),
        }
    }
}

/// A reply as received, not interpreted (for callers that speak the
/// protocol themselves, e.g. tests of malformed requests).
#[derive(Debug)]
pub struct RawReply {
    /// The reply's header (error flag and errno included).
    pub header: Header,
    /// Everything after the header: `msg_size - 16` bytes.
    pub payload: Vec<u8>,
    /// File descriptors that came with the reply (`SCM_RIGHTS`).
    pub fds: Vec<OwnedFd>,
}

impl RawReply {
    /// The errno when the reply is an error.
    pub fn errno(&self) -> Option<i32> {
        self.header
            .is_error()
            .then_some(self.header.error_no as i32)
    }
}

/// What DEVICE_GET_REGION_INFO says about a region.
#[derive(Debug)]
pub struct RegionDesc {
    /// The region index.
    pub index: u32,
    /// `REGION_FLAG_*`.
    pub flags: u32,
    /// Region size in bytes (0: the device has no such region).
    pub size: u64,
    /// mmap offset of the region in `fd`.
    pub offset: u64,
    /// `(type, subtype)` from the type capability.
    pub region_type: Option<(u32, u32)>,
    /// `(offset, size)` areas from the sparse-mmap capability.
    pub sparse_areas: Vec<(u64, u64)>,
    /// The fd to mmap, when the region is mmap-able.
    pub fd: Option<OwnedFd>,
}

/// A connection to a vfio-user server.
pub struct Client {
    conn: Conn,
    name: String,
    config: ClientConfig,
    next_id: u16,
    peer: VersionCaps,
    scratch: Vec<u8>,
    probed: HashMap<u32, bool>,
    descriptor: Option<DeviceDescriptor>,
    mig_flags: Option<u64>,
    /// MIG_DATA_READ replies carry a checksum (`FEATURE_MIG_DATA_CRC`).
    mig_crc: bool,
    /// Opted in to pre-copy info with flags (`None`: not tried yet).
    precopy_v2: Option<bool>,
    /// MIG_DATA_READ requests sent ahead and not answered yet, oldest
    /// first, with their sizes (see [`Client::mig_data_read_spliced`]).
    ahead: std::collections::VecDeque<(Header, usize)>,
    /// Spliced MIG_DATA_WRITEs sent and not answered yet, oldest first
    /// (see [`Client::mig_data_write_spliced`]).
    writes: std::collections::VecDeque<Header>,
    /// The first refusal among writes answered while another command was
    /// sent; reported by [`Client::flush_writes`] or the next write.
    write_error: Option<BackendError>,
}

fn io_err(step: &str, e: std::io::Error) -> BackendError {
    BackendError::io(step, e)
}

mod ext_features;

#[cfg(test)]
mod tests;
