//! # vfio-migrate-handle
//!
//! Owns the **migratable device handle**: the single trait, [`MigrationDevice`],
//! that sits between the migration engine and every backend (vfio-user
//! client over v2, v1 region or seed region; kernel VFIO; an in-process
//! device). The engine only ever sees this trait, so a migration flow is one
//! walk through the device-state interface whatever carries it.
//!
//! ```text
//!  engine                         MigrationDevice                    device
//!    │ descriptor()/migration_flags() ─────────────────────────────▶ │ probe
//!    │ dma_logging_start(page, ranges) ────────────────────────────▶ │
//!    │ set_state(PRE_COPY) ────────────────────────────────────────▶ │ RUNNING→PRE_COPY
//!    │ precopy_info() / read_data(buf)… ◀──────────────────────────── │ initial + dirty bytes
//!    │ set_state(STOP_COPY) ───────────────────────────────────────▶ │ …→STOP_COPY
//!    │ read_data(buf) until 0 ◀─────────────────────────────────────── │ final state
//! ```
//!
//! It also owns the protocol-independent types every backend shares:
//! [`DeviceDescriptor`] (the compatibility descriptor the destination checks
//! before the source stops), [`PrecopyInfo`], [`IovaRange`] and
//! [`BackendError`].

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use std::os::fd::BorrowedFd;
use thiserror::Error;

pub use vfio_migrate_abi::kernel::{
    MigState, MIGRATION_P2P, MIGRATION_PRE_COPY, MIGRATION_STOP_COPY,
};

/// A failure reported by a device backend.
#[derive(Debug, Error)]
pub enum BackendError {
    /// The device (or its server/driver) refused the request with an errno.
    #[error("{step}: device refused: {} (errno {errno}){}", errno_name(*errno), detail_suffix(detail))]
    Refused {
        step: String,
        errno: i32,
        detail: String,
    },
    /// The channel to the device failed (socket closed, ioctl/read error).
    #[error("{step}: {source}")]
    Io {
        step: String,
        #[source]
        source: std::io::Error,
    },
    /// The peer answered something the protocol does not allow.
    #[error("{step}: protocol error: {detail}")]
    Protocol { step: String, detail: String },
    /// The operation is not offered by this device or backend.
    #[error("{step}: not supported by this device: {detail}")]
    Unsupported { step: String, detail: String },
}

fn detail_suffix(d: &str) -> String {
    if d.is_empty() {
        String::new()
    } else {
        format!(": {d}")
    }
}

/// Symbolic name of an errno value (`EINVAL`, …), or `errno N`.
pub fn errno_name(e: i32) -> String {
    let n = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ERANGE => "ERANGE",
        libc::ENOSYS => "ENOSYS",
        libc::ENOMSG => "ENOMSG",
        libc::EPROTO => "EPROTO",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::ENOTSUP => "ENOTSUP",
        libc::ENOTTY => "ENOTTY",
        libc::E2BIG => "E2BIG",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNRESET => "ECONNRESET",
        _ => return format!("errno {e}"),
    };
    n.to_string()
}

impl BackendError {
    /// A refusal with an errno.
    pub fn refused(step: impl Into<String>, errno: i32, detail: impl Into<String>) -> Self {
        BackendError::Refused {
            step: step.into(),
            errno,
            detail: detail.into(),
        }
    }
    /// A channel failure.
    pub fn io(step: impl Into<String>, source: std::io::Error) -> Self {
        BackendError::Io {
            step: step.into(),
            source,
        }
    }
    /// A protocol violation by the peer.
    pub fn protocol(step: impl Into<String>, detail: impl Into<String>) -> Self {
        BackendError::Protocol {
            step: step.into(),
            detail: detail.into(),
        }
    }
    /// Not offered.
    pub fn unsupported(step: impl Into<String>, detail: impl Into<String>) -> Self {
        BackendError::Unsupported {
            step: step.into(),
            detail: detail.into(),
        }
    }
    /// The errno when the device refused, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            BackendError::Refused { errno, .. } => Some(*errno),
            BackendError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Result type of the handle.
pub type Result<T, E = BackendError> = std::result::Result<T, E>;

/// Pre-copy estimate (`struct vfio_precopy_info`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrecopyInfo {
    /// Bytes of the initial state not read yet.
    pub initial_bytes: u64,
    /// Bytes dirtied since they were last read (an estimate).
    pub dirty_bytes: u64,
}

/// A range of I/O virtual addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IovaRange {
    pub iova: u64,
    pub length: u64,
}

/// What the destination must match before the source is stopped.
///
/// Built by each backend from what the device tells about itself (PCI IDs
/// from config space, region sizes, migration flags), so it does not depend
/// on the protocol that carried it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceDescriptor {
    /// Human-readable model, e.g. `vgpu` or `pci 1b36:0001`.
    pub model: String,
    /// Device model version string (device-defined; empty when unknown).
    pub version: String,
    pub vendor_id: u16,
    pub device_id: u16,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
    pub revision: u8,
    /// `VFIO_MIGRATION_*` flags.
    pub migration_flags: u64,
    /// Size of every region, by index (0 for absent ones).
    pub region_sizes: Vec<u64>,
}

impl DeviceDescriptor {
    /// The descriptor every backend builds from what any VFIO transport
    /// shows: PCI IDs from config space, revision, migration flags and the
    /// region sizes. `model` and `version` are derived from the IDs so that
    /// the same device gives the same descriptor over every protocol.
    pub fn from_pci(
        vendor_id: u16,
        device_id: u16,
        subsystem_vendor_id: u16,
        subsystem_id: u16,
        revision: u8,
        migration_flags: u64,
        region_sizes: Vec<u64>,
    ) -> Self {
        Self {
            model: format!("pci {vendor_id:04x}:{device_id:04x}"),
            version: format!(
                "subsys {subsystem_vendor_id:04x}:{subsystem_id:04x} rev {revision:02x}"
            ),
            vendor_id,
            device_id,
            subsystem_vendor_id,
            subsystem_id,
            revision,
            migration_flags,
            region_sizes,
        }
    }

    /// Checks that state saved from `self` can be loaded into `dest`.
    /// Returns every mismatch, in words a user understands.
    pub fn check_compatible(&self, dest: &DeviceDescriptor) -> std::result::Result<(), String> {
        let mut why = Vec::new();
        if (self.vendor_id, self.device_id) != (dest.vendor_id, dest.device_id) {
            why.push(format!(
                "PCI id {:04x}:{:04x} at the source, {:04x}:{:04x} at the destination",
                self.vendor_id, self.device_id, dest.vendor_id, dest.device_id
            ));
        }
        if (self.subsystem_vendor_id, self.subsystem_id)
            != (dest.subsystem_vendor_id, dest.subsystem_id)
        {
            why.push(format!(
                "subsystem id {:04x}:{:04x} at the source, {:04x}:{:04x} at the destination",
                self.subsystem_vendor_id,
                self.subsystem_id,
                dest.subsystem_vendor_id,
                dest.subsystem_id
            ));
        }
        if self.revision != dest.revision {
            why.push(format!(
                "revision {} at the source, {} at the destination",
                self.revision, dest.revision
            ));
        }
        if self.model != dest.model || self.version != dest.version {
            why.push(format!(
                "model '{} {}' at the source, '{} {}' at the destination",
                self.model, self.version, dest.model, dest.version
            ));
        }
        let n = self.region_sizes.len().max(dest.region_sizes.len());
        for i in 0..n {
            let a = self.region_sizes.get(i).copied().unwrap_or(0);
            let b = dest.region_sizes.get(i).copied().unwrap_or(0);
            if a != b {
                why.push(format!(
                    "region {i} is {a} bytes at the source, {b} bytes at the destination"
                ));
            }
        }
        if dest.migration_flags & MIGRATION_STOP_COPY == 0 {
            why.push("the destination device does not support migration (no STOP_COPY)".into());
        }
        if why.is_empty() {
            Ok(())
        } else if self.region_sizes != dest.region_sizes {
            Err(format!(
                "{} (the devices are configured differently, e.g. another port count or memory size: create the destination with the source's configuration)",
                why.join("; ")
            ))
        } else {
            Err(why.join("; "))
        }
    }
}

/// One guest-memory window handed to a device for DMA.
#[derive(Debug, Clone, Copy)]
pub struct DmaWindow<'a> {
    pub iova: u64,
    pub size: u64,
    /// The memory, shared by fd (memfd or file), when mappable.
    pub fd: Option<BorrowedFd<'a>>,
    /// Offset of the window in `fd`.
    pub offset: u64,
    pub readable: bool,
    pub writable: bool,
}

/// The migratable device handle: what the engine drives.
///
/// Every protocol generation and every backend implements it. Methods take
/// `&mut self` because each is one synchronous exchange with the device.
pub trait MigrationDevice: Send {
    /// Where the device is, for messages (e.g. `unix:/run/vgpu.sock`).
    fn name(&self) -> String;

    /// Which protocol carries the migration (`vfio-user v2`, `kernel v2`, …).
    fn protocol(&self) -> &'static str;

    /// The compatibility descriptor.
    fn descriptor(&mut self) -> Result<DeviceDescriptor>;

    /// `VFIO_MIGRATION_*` flags (0 = not migratable).
    fn migration_flags(&mut self) -> Result<u64>;

    /// The current device state.
    fn state(&mut self) -> Result<MigState>;

    /// Moves the device to `new` (the device walks the arcs).
    fn set_state(&mut self, new: MigState) -> Result<()>;

    /// Reads migration data into `buf`. In PRE_COPY, 0 means "nothing now";
    /// in STOP_COPY, 0 means the whole state has been read.
    fn read_data(&mut self, buf: &mut [u8]) -> Result<usize>;

    /// Writes migration data (RESUMING only).
    fn write_data(&mut self, data: &[u8]) -> Result<()>;

    /// Pre-copy estimate (PRE_COPY / PRE_COPY_P2P only).
    fn precopy_info(&mut self) -> Result<PrecopyInfo>;

    /// Estimated stop-copy size, `None` when the device cannot tell.
    fn stop_copy_size(&mut self) -> Result<Option<u64>>;

    /// Whether DMA dirty logging is offered.
    fn dma_logging_supported(&mut self) -> bool {
        false
    }

    /// Starts DMA dirty logging over `ranges` (empty = everything mapped).
    fn dma_logging_start(&mut self, page_size: u64, ranges: &[IovaRange]) -> Result<()> {
        let _ = (page_size, ranges);
        Err(BackendError::unsupported(
            "DMA logging start",
            "no DMA dirty logging",
        ))
    }

    /// Reads and clears the dirty bitmap of `[iova, iova+length)`; bit n of
    /// `bitmap` (LSB first in little-endian u64 words) is page n.
    fn dma_logging_report(
        &mut self,
        iova: u64,
        length: u64,
        page_size: u64,
        bitmap: &mut [u8],
    ) -> Result<()> {
        let _ = (iova, length, page_size, bitmap);
        Err(BackendError::unsupported(
            "DMA logging report",
            "no DMA dirty logging",
        ))
    }

    /// Stops DMA dirty logging.
    fn dma_logging_stop(&mut self) -> Result<()> {
        Err(BackendError::unsupported(
            "DMA logging stop",
            "no DMA dirty logging",
        ))
    }

    /// Maps guest memory for the device's DMA.
    fn dma_map(&mut self, window: DmaWindow<'_>) -> Result<()> {
        let _ = window;
        Err(BackendError::unsupported(
            "DMA map",
            "this backend does not map guest memory",
        ))
    }

    /// Unmaps a DMA window.
    fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<()> {
        let _ = (iova, size);
        Err(BackendError::unsupported(
            "DMA unmap",
            "this backend does not map guest memory",
        ))
    }

    /// Reads device region `index` at `offset`.
    fn region_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        let _ = (index, offset, buf);
        Err(BackendError::unsupported("region read", "no region access"))
    }

    /// Writes device region `index` at `offset`.
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<()> {
        let _ = (index, offset, data);
        Err(BackendError::unsupported(
            "region write",
            "no region access",
        ))
    }

    /// Best chunk size for `read_data`/`write_data`.
    fn preferred_chunk(&self) -> usize {
        1 << 20
    }
}

impl<T: MigrationDevice + ?Sized> MigrationDevice for Box<T> {
    fn name(&self) -> String {
        (**self).name()
    }
    fn protocol(&self) -> &'static str {
        (**self).protocol()
    }
    fn descriptor(&mut self) -> Result<DeviceDescriptor> {
        (**self).descriptor()
    }
    fn migration_flags(&mut self) -> Result<u64> {
        (**self).migration_flags()
    }
    fn state(&mut self) -> Result<MigState> {
        (**self).state()
    }
    fn set_state(&mut self, new: MigState) -> Result<()> {
        (**self).set_state(new)
    }
    fn read_data(&mut self, buf: &mut [u8]) -> Result<usize> {
        (**self).read_data(buf)
    }
    fn write_data(&mut self, data: &[u8]) -> Result<()> {
        (**self).write_data(data)
    }
    fn precopy_info(&mut self) -> Result<PrecopyInfo> {
        (**self).precopy_info()
    }
    fn stop_copy_size(&mut self) -> Result<Option<u64>> {
        (**self).stop_copy_size()
    }
    fn dma_logging_supported(&mut self) -> bool {
        (**self).dma_logging_supported()
    }
    fn dma_logging_start(&mut self, page_size: u64, ranges: &[IovaRange]) -> Result<()> {
        (**self).dma_logging_start(page_size, ranges)
    }
    fn dma_logging_report(
        &mut self,
        iova: u64,
        length: u64,
        page_size: u64,
        bitmap: &mut [u8],
    ) -> Result<()> {
        (**self).dma_logging_report(iova, length, page_size, bitmap)
    }
    fn dma_logging_stop(&mut self) -> Result<()> {
        (**self).dma_logging_stop()
    }
    fn dma_map(&mut self, window: DmaWindow<'_>) -> Result<()> {
        (**self).dma_map(window)
    }
    fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<()> {
        (**self).dma_unmap(iova, size)
    }
    fn region_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        (**self).region_read(index, offset, buf)
    }
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<()> {
        (**self).region_write(index, offset, data)
    }
    fn preferred_chunk(&self) -> usize {
        (**self).preferred_chunk()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc() -> DeviceDescriptor {
        DeviceDescriptor {
            model: "vgpu".into(),
            version: "1".into(),
            vendor_id: 0x1af4,
            device_id: 0x10f0,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
            revision: 1,
            migration_flags: 7,
            region_sizes: vec![4096, 1 << 28],
        }
    }

    #[test]
    fn compatible_when_equal() {
        assert!(desc().check_compatible(&desc()).is_ok());
    }

    #[test]
    fn region_size_mismatch_is_named() {
        let mut d = desc();
        d.region_sizes[1] = 1 << 27;
        let e = desc().check_compatible(&d).unwrap_err();
        assert!(
            e.contains("region 1 is 268435456 bytes at the source, 134217728"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_errno() {
        let e = BackendError::refused("set state STOP_COPY", libc::EINVAL, "bad arc");
        assert_eq!(
            e.to_string(),
            "set state STOP_COPY: device refused: EINVAL (errno 22): bad arc"
        );
        assert_eq!(e.errno(), Some(libc::EINVAL));
    }
}
