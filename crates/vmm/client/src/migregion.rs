//! Client side of a migration region (v1 or seed): finding it by its
//! region-type capability, header field access at exact widths, and the
//! data section — through an mmap of the region fd's sparse area when the
//! server provides one, else REGION_READ/WRITE in chunks within
//! `max_data_xfer_size`.

use std::os::fd::{AsFd, BorrowedFd};
use vfio_migrate_backend::{BackendError, DeviceDescriptor, Result};
use vfio_migrate_sys::MmapRegion;

use super::Client;

/// Where the data section starts when the server gives no sparse area.
const DEFAULT_SECTION_OFFSET: u64 = 4096;

/// A migration region of the connected device.
pub struct MigRegion {
    /// Region index.
    pub index: u32,
    /// Region offset of the data section.
    pub section_offset: u64,
    /// Data section size in bytes.
    pub section_len: u64,
    map: Option<MmapRegion>,
}

impl MigRegion {
    /// Finds the region with type `ty` (region-type capability); maps its
    /// data section when `mmap` and the server passed the region fd with a
    /// sparse area. `Ok(None)` when the device has no such region.
    pub fn find(c: &mut Client, ty: (u32, u32), mmap: bool) -> Result<Option<Self>> {
        let n = c.device_info()?.num_regions.min(64);
        for i in 0..n {
            let d = c.region_info(i)?;
            if d.region_type != Some(ty) || d.size == 0 {
                continue;
            }
            let (section_offset, section_len) = match d.sparse_areas.first() {
                Some(&(o, l)) => (o, l),
                None => (
                    DEFAULT_SECTION_OFFSET,
                    d.size.saturating_sub(DEFAULT_SECTION_OFFSET),
                ),
            };
            if section_len == 0 || section_offset.checked_add(section_len) > Some(d.size) {
                return Err(BackendError::protocol(
                    format!("migration region {i}"),
                    format!(
                        "data section {section_offset:#x}+{section_len:#x} does not fit the {}-byte region",
                        d.size
                    ),
                ));
            }
            let map = match (&d.fd, mmap && !d.sparse_areas.is_empty()) {
                (Some(fd), true) => Some(map_section(
                    fd.as_fd(),
                    d.offset + section_offset,
                    section_len,
                )?),
                _ => None,
            };
            return Ok(Some(Self {
                index: i,
                section_offset,
                section_len,
                map,
            }));
        }
        Ok(None)
    }

    /// True when the data section is accessed through the mmap.
    pub fn mapped(&self) -> bool {
        self.map.is_some()
    }

    /// Reads a 4-byte header field.
    pub fn read_u32(&self, c: &mut Client, off: u64) -> Result<u32> {
        let mut b = [0u8; 4];
        c.region_read(self.index, off, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Reads an 8-byte header field.
    pub fn read_u64(&self, c: &mut Client, off: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        c.region_read(self.index, off, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a 4-byte header field.
    pub fn write_u32(&self, c: &mut Client, off: u64, v: u32) -> Result<()> {
        c.region_write(self.index, off, &v.to_le_bytes())
    }

    /// Writes an 8-byte header field.
    pub fn write_u64(&self, c: &mut Client, off: u64, v: u64) -> Result<()> {
        c.region_write(self.index, off, &v.to_le_bytes())
    }

    /// The mapping and the offset in it of region range `[off, off+len)`
    /// when the range lies in the mapping.
    fn mapped_range(&self, off: u64, len: usize) -> Option<(&MmapRegion, usize)> {
        let m = self.map.as_ref()?;
        let rel = off.checked_sub(self.section_offset)?;
        let end = rel.checked_add(len as u64)?;
        (end <= m.len() as u64).then_some((m, rel as usize))
    }

    /// Reads `buf.len()` bytes of the data section at region offset `off`
    /// (from the mapping, which the server wrote before answering the
    /// request that staged it).
    pub fn read_data(&mut self, c: &mut Client, off: u64, buf: &mut [u8]) -> Result<()> {
        if let Some((m, rel)) = self.mapped_range(off, buf.len()) {
            return m
                .read(rel, buf)
                .map_err(|e| BackendError::io("reading the mapped data section", e));
        }
        c.region_read(self.index, off, buf)
    }

    /// Writes `data` into the data section at region offset `off` (into
    /// the mapping, which the server reads only when the next header write
    /// tells it to).
    pub fn write_data(&mut self, c: &mut Client, off: u64, data: &[u8]) -> Result<()> {
        if let Some((m, rel)) = self.mapped_range(off, data.len()) {
            return m
                .write(rel, data)
                .map_err(|e| BackendError::io("writing the mapped data section", e));
        }
        c.region_write(self.index, off, data)
    }
}

fn map_section(fd: BorrowedFd<'_>, offset: u64, len: u64) -> Result<MmapRegion> {
    let step = "mapping the migration data section";
    let len_us = usize::try_from(len)
        .map_err(|_| BackendError::protocol(step, format!("{len} bytes do not fit in memory")))?;
    MmapRegion::shared(fd, offset, len_us, true).map_err(|e| BackendError::io(step, e))
}

/// The descriptor of a device driven through a migration region: read once
/// (config space, region sizes without the migration regions, `flags`),
/// then served from `cache`.
pub(crate) fn cached_descriptor(
    c: &mut Client,
    cache: &mut Option<DeviceDescriptor>,
    flags: u64,
) -> Result<DeviceDescriptor> {
    if let Some(d) = cache {
        return Ok(d.clone());
    }
    let d = c.read_descriptor_with(flags)?;
    *cache = Some(d.clone());
    Ok(d)
}
