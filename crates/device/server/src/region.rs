//! DEVICE_GET_REGION_INFO (with the region-type and sparse-mmap
//! capabilities and the region fd for mmap-able regions), REGION_READ and
//! REGION_WRITE, over the device's regions and the extension regions.

use std::os::fd::OwnedFd;
use vfio_migrate_abi::vfio_user::{
    CapHeader, CapSparseMmap, CapType, RegionAccess, RegionInfo, SparseMmapArea, REGION_FLAG_CAPS,
    REGION_FLAG_MMAP, REGION_FLAG_READ, REGION_FLAG_WRITE, REGION_INFO_CAP_SPARSE_MMAP,
    REGION_INFO_CAP_TYPE,
};
use vfio_migrate_device::{Device, DeviceError, DeviceResult, Region};

use super::dispatch::{check_argsz, decode, no_fds, num_regions};
use super::session::{Reply, Session};

/// Where a region index is served from.
enum Owner {
    Device(Region),
    Ext(usize, Region),
}

impl Owner {
    fn region(&self) -> &Region {
        match self {
            Owner::Device(r) | Owner::Ext(_, r) => r,
        }
    }
}

/// Finds region `index` (device regions first, then extensions); `None`
/// for an index inside the range that has no region (an absent BAR).
fn find<D: Device>(s: &Session<'_, D>, dev: &D, index: u32) -> DeviceResult<Option<Owner>> {
    let n = num_regions(s, dev);
    if index >= n {
        return Err(DeviceError::inval(format!(
            "region index {index} is out of range: the device has {n} regions"
        )));
    }
    if let Some(r) = dev.regions().into_iter().find(|r| r.index == index) {
        return Ok(Some(Owner::Device(r)));
    }
    Ok(s.ext
        .regions
        .iter()
        .enumerate()
        .map(|(i, h)| (i, h.region()))
        .find(|(_, r)| r.index == index)
        .map(|(i, r)| Owner::Ext(i, r)))
}

/// The capability chain for `r`, with `next` offsets counted from the
/// start of the region info (the chain starts right after it).
fn caps(r: &Region) -> Vec<u8> {
    let mut parts: Vec<(u16, Vec<u8>)> = Vec::new();
    if let Some(m) = &r.mmap {
        let mut body = CapSparseMmap {
            nr_areas: m.areas.len() as u32,
            reserved: 0,
        }
        .to_bytes();
        for &(offset, size) in &m.areas {
            SparseMmapArea { offset, size }.encode(&mut body);
        }
        parts.push((REGION_INFO_CAP_SPARSE_MMAP, body));
    }
    if let Some((ty, subtype)) = r.region_type {
        parts.push((REGION_INFO_CAP_TYPE, CapType { ty, subtype }.to_bytes()));
    }
    let mut out = Vec::new();
    let n = parts.len();
    for (i, (id, body)) in parts.into_iter().enumerate() {
        let this = RegionInfo::SIZE + out.len();
        let next = if i + 1 == n {
            0
        } else {
            (this + CapHeader::SIZE + body.len()) as u32
        };
        CapHeader {
            id,
            version: 1,
            next,
        }
        .encode(&mut out);
        out.extend_from_slice(&body);
    }
    out
}

/// DEVICE_GET_REGION_INFO. When `argsz` is too small for the capability
/// chain, the reply is the bare 32-byte info with `argsz` = the size
/// needed, not an error, and it describes only what it carries: no `CAPS`
/// flag and `cap_offset` 0 (QEMU refuses `CAPS` with an offset below 32,
/// the kernel's convention for this case), and no `MMAP` flag and no fd
/// (the spec sends the fd with every `MMAP` reply, and libvfio-user's
/// client cannot take an fd with its first, 32-byte request). A client
/// that sees `argsz` grow asks again with room for the chain and gets
/// `CAPS`, `MMAP` and the fd together. See `docs/qemu.md`.
pub(crate) fn info<D: Device>(
    s: &mut Session<'_, D>,
    payload: &[u8],
    fds: &[OwnedFd],
    reply: &mut Reply,
) -> DeviceResult<()> {
    no_fds("DEVICE_GET_REGION_INFO", fds)?;
    let req = decode(
        payload,
        "DEVICE_GET_REGION_INFO",
        RegionInfo::SIZE,
        RegionInfo::decode,
    )?;
    check_argsz("DEVICE_GET_REGION_INFO", req.argsz, RegionInfo::SIZE)?;
    let mut core = s.lock();
    let Some(owner) = find(s, core.device(), req.index)? else {
        reply.put(
            &RegionInfo {
                argsz: RegionInfo::SIZE as u32,
                index: req.index,
                ..Default::default()
            }
            .to_bytes(),
        );
        return Ok(());
    };
    let r = owner.region();
    let chain = caps(r);
    let mut flags = 0;
    if r.readable {
        flags |= REGION_FLAG_READ;
    }
    if r.writable {
        flags |= REGION_FLAG_WRITE;
    }
    let full = RegionInfo::SIZE + chain.len();
    let fits = req.argsz as usize >= full;
    // Only a reply that carries the chain says MMAP and passes the fd.
    let send_fd = fits && r.mmap.is_some() && s.client_max_fds() >= 1;
    if send_fd {
        flags |= REGION_FLAG_MMAP;
    }
    if fits && !chain.is_empty() {
        flags |= REGION_FLAG_CAPS;
    }
    reply.put(
        &RegionInfo {
            argsz: full as u32,
            flags,
            index: req.index,
            cap_offset: if fits && !chain.is_empty() {
                RegionInfo::SIZE as u32
            } else {
                0
            },
            size: r.size,
            offset: 0,
        }
        .to_bytes(),
    );
    if fits {
        reply.put(&chain);
    }
    if send_fd {
        if let Some(m) = &r.mmap {
            reply.fds.push(m.fd.clone());
        }
    }
    Ok(())
}

/// Checks an access against the region and the transfer limit.
fn check_access(
    r: &Region,
    offset: u64,
    count: u32,
    limit: usize,
    write: bool,
) -> DeviceResult<()> {
    if count as usize > limit {
        return Err(DeviceError::new(
            libc::E2BIG,
            format!("region access of {count} bytes exceeds max_data_xfer_size {limit}"),
        ));
    }
    if (write && !r.writable) || (!write && !r.readable) {
        return Err(DeviceError::inval(format!(
            "region {} is not {}",
            r.index,
            if write { "writable" } else { "readable" }
        )));
    }
    match offset.checked_add(count as u64) {
        Some(end) if end <= r.size => Ok(()),
        _ => Err(DeviceError::inval(format!(
            "access {offset:#x}+{count} is outside region {} ({} bytes)",
            r.index, r.size
        ))),
    }
}

/// REGION_READ: reply = the request head + the data.
pub(crate) fn read<D: Device>(
    s: &mut Session<'_, D>,
    payload: &[u8],
    fds: &[OwnedFd],
    reply: &mut Reply,
) -> DeviceResult<()> {
    no_fds("REGION_READ", fds)?;
    let req = decode(
        payload,
        "REGION_READ",
        RegionAccess::SIZE,
        RegionAccess::decode,
    )?;
    let limit = s.max_out();
    let mut core = s.lock();
    let owner = find(s, core.device(), req.region)?
        .ok_or_else(|| DeviceError::inval(format!("region {} does not exist", req.region)))?;
    check_access(owner.region(), req.offset, req.count, limit, false)?;
    reply.put(&req.to_bytes());
    let buf = reply.grow(req.count as usize);
    match owner {
        Owner::Device(_) => core.region_read(req.region, req.offset, buf),
        Owner::Ext(i, _) => s.ext.regions[i].read(&mut core, req.offset, buf),
    }
}

/// REGION_WRITE: the data must be exactly `count` bytes; reply = the head.
pub(crate) fn write<D: Device>(
    s: &mut Session<'_, D>,
    payload: &[u8],
    fds: &[OwnedFd],
    reply: &mut Reply,
) -> DeviceResult<()> {
    no_fds("REGION_WRITE", fds)?;
    let req = decode(
        payload,
        "REGION_WRITE",
        RegionAccess::SIZE,
        RegionAccess::decode,
    )?;
    let data = &payload[RegionAccess::SIZE..];
    if data.len() != req.count as usize {
        return Err(DeviceError::inval(format!(
            "REGION_WRITE count is {} but {} data bytes follow",
            req.count,
            data.len()
        )));
    }
    let limit = s.max_in();
    let mut core = s.lock();
    let owner = find(s, core.device(), req.region)?
        .ok_or_else(|| DeviceError::inval(format!("region {} does not exist", req.region)))?;
    check_access(owner.region(), req.offset, req.count, limit, true)?;
    match owner {
        Owner::Device(_) => core.region_write(req.region, req.offset, data)?,
        Owner::Ext(i, _) => s.ext.regions[i].write(&mut core, req.offset, data)?,
    }
    reply.put(&req.to_bytes());
    Ok(())
}
