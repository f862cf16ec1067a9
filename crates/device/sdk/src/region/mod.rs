//! Migration regions: the v1 (Linux 5.8) region and the 2018 seed proposal's
//! region, served over the same [`DeviceCore`] as the v2 interface.
//!
//! Each front-end is a device region with a trapped header (the
//! `vfio_device_migration_info` of its generation) at offset 0 and a data
//! section at [`DATA_SECTION_OFFSET`]. The data section is backed by a memfd
//! so a client may mmap it (region fd + sparse-mmap capability covering only
//! the data section); staging copies device state straight into it.
//!
//! Field access rules, for both generations: every access must cover exactly
//! one header field at its offset with its width (the seed's packed `u64`s
//! are unaligned by design; v1's are naturally aligned). Anything else —
//! another width, a misaligned offset, a span over two fields, a write to a
//! read-only field — is `EINVAL` and changes nothing.

pub mod seed;
pub mod v1;

use crate::core::DeviceCore;
use crate::device::{Device, Region, RegionMmap};
use crate::error::{DeviceError, DeviceResult};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use vfio_migrate_sys::{memfd, MmapRegion};

pub use seed::SeedRegion;
pub use v1::V1Region;

/// Where the data section starts inside a migration region.
pub const DATA_SECTION_OFFSET: u64 = 4096;
/// Default data section size.
pub const DEFAULT_DATA_SECTION: u64 = 1 << 20;

/// The memfd-backed data section of a migration region.
pub struct DataSection {
    fd: Arc<OwnedFd>,
    map: MmapRegion,
}

impl DataSection {
    /// A zeroed data section of `len` bytes (the memfd covers the header
    /// page too, so fd offsets equal region offsets).
    pub fn new(name: &str, len: u64) -> DeviceResult<Self> {
        let len_us =
            usize::try_from(len).map_err(|_| DeviceError::inval("data section too large"))?;
        let total = DATA_SECTION_OFFSET + len;
        let cname =
            std::ffi::CString::new(name).map_err(|_| DeviceError::inval("bad memfd name"))?;
        let fd = memfd::create(&cname).map_err(|e| {
            DeviceError::new(
                e.raw_os_error().unwrap_or(libc::ENOMEM),
                format!("memfd_create: {e}"),
            )
        })?;
        memfd::set_len(fd.as_fd(), total)
            .map_err(|e| DeviceError::new(libc::ENOMEM, format!("sizing data section: {e}")))?;
        let map = MmapRegion::shared(fd.as_fd(), DATA_SECTION_OFFSET, len_us, true)
            .map_err(|e| DeviceError::new(libc::ENOMEM, format!("mapping data section: {e}")))?;
        Ok(Self {
            fd: Arc::new(fd),
            map,
        })
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// True when empty (never, for a built section).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The whole section (`&mut self`: a slice view of the mapping needs
    /// exclusive access; a client mapping the same memfd may still change
    /// the bytes, which is the protocol's intent: the device reads what the
    /// client wrote).
    pub fn bytes(&mut self) -> &[u8] {
        self.map.as_mut_slice()
    }

    /// The whole section, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        self.map.as_mut_slice()
    }

    /// The region's mmap description (data section only).
    pub fn mmap(&self) -> RegionMmap {
        RegionMmap {
            fd: self.fd.clone(),
            areas: vec![(DATA_SECTION_OFFSET, self.len())],
        }
    }

    /// Checks that `[off, off+len)` (relative to the section) lies inside.
    pub fn check(&self, off: u64, len: u64) -> DeviceResult<()> {
        match off.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(DeviceError::inval(format!(
                "data section access {off:#x}+{len:#x} is outside the {}-byte data section",
                self.len()
            ))),
        }
    }
}

/// Builds the [`Region`] of a migration front-end.
pub(crate) fn region_desc(
    index: u32,
    header: u64,
    section: &DataSection,
    ty: (u32, u32),
) -> Region {
    let _ = header;
    Region {
        index,
        size: DATA_SECTION_OFFSET + section.len(),
        readable: true,
        writable: true,
        mmap: Some(section.mmap()),
        region_type: Some(ty),
    }
}

/// Reads/writes the data section through region offsets.
pub(crate) fn section_access(
    section: &mut DataSection,
    offset: u64,
    read: Option<&mut [u8]>,
    write: Option<&[u8]>,
) -> DeviceResult<()> {
    let rel = offset - DATA_SECTION_OFFSET;
    if let Some(buf) = read {
        section.check(rel, buf.len() as u64)?;
        buf.copy_from_slice(&section.bytes()[rel as usize..rel as usize + buf.len()]);
    }
    if let Some(data) = write {
        section.check(rel, data.len() as u64)?;
        section.bytes_mut()[rel as usize..rel as usize + data.len()].copy_from_slice(data);
    }
    Ok(())
}

/// One field of a trapped header: `(offset, width)`.
pub(crate) fn field_at(
    fields: &[(u64, usize)],
    offset: u64,
    len: usize,
    what: &str,
) -> DeviceResult<usize> {
    fields
        .iter()
        .position(|&(o, w)| o == offset && w == len)
        .ok_or_else(|| {
            let near = fields.iter().find(|&&(o, w)| offset >= o && offset < o + w as u64);
            match near {
                Some(&(o, w)) => DeviceError::inval(format!(
                    "{what} header access {offset:#x}+{len}: the field at {o:#x} must be accessed whole, {w} bytes at its offset"
                )),
                None => DeviceError::inval(format!(
                    "{what} header access {offset:#x}+{len} does not match a field"
                )),
            }
        })
}

/// Stages the next save chunk of at most `max` bytes into the section.
/// Returns the staged byte count and whether the device signalled the end
/// of its stream (a 0-byte read).
pub(crate) fn stage<D: Device>(
    core: &mut DeviceCore<D>,
    section: &mut DataSection,
    max: u64,
) -> DeviceResult<(u64, bool)> {
    let cap = max.min(section.len()) as usize;
    let buf = &mut section.bytes_mut()[..cap];
    let mut filled = 0usize;
    while filled < cap {
        let n = core.read_data(&mut buf[filled..])?;
        if n == 0 {
            return Ok((filled as u64, true));
        }
        filled += n;
    }
    Ok((filled as u64, false))
}

#[cfg(test)]
mod tests;
