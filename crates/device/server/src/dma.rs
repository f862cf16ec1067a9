//! DMA_MAP and DMA_UNMAP: guest memory windows in the device's
//! `DmaSpace`, mmap'ed from the client's fd when one is passed.

use std::os::fd::{AsFd, OwnedFd};
use vfio_migrate_abi::vfio_user::{DmaMap, DmaUnmap, DMA_FLAG_READ, DMA_FLAG_WRITE};
use vfio_migrate_device::{Device, DeviceError, DeviceResult};

use super::dispatch::{check_argsz, decode, no_fds};
use super::session::{Reply, Session};

/// Size of the file behind `fd`, or EBADF when it is not a regular file
/// (memfd, shm or plain file: the only fds that can back guest memory).
fn mappable_size(fd: &OwnedFd) -> DeviceResult<u64> {
    let st = vfio_migrate_sys::fd::fstat(fd.as_fd()).map_err(|e| {
        DeviceError::new(libc::EBADF, format!("DMA_MAP fd cannot be inspected: {e}"))
    })?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(DeviceError::new(
            libc::EBADF,
            "DMA_MAP fd is not a mappable file (pass a memfd, shm or regular file)",
        ));
    }
    Ok(st.st_size as u64)
}

/// DMA_MAP: with one fd the window is mmap'ed (it must lie inside the
/// file); without one it is registered without memory (offset must be 0).
pub(crate) fn map<D: Device>(
    s: &mut Session<'_, D>,
    payload: &[u8],
    mut fds: Vec<OwnedFd>,
) -> DeviceResult<()> {
    let req = decode(payload, "DMA_MAP", DmaMap::SIZE, DmaMap::decode)?;
    check_argsz("DMA_MAP", req.argsz, DmaMap::SIZE)?;
    if req.flags & !(DMA_FLAG_READ | DMA_FLAG_WRITE) != 0 {
        return Err(DeviceError::inval(format!(
            "DMA_MAP flags {:#x} has unknown bits",
            req.flags
        )));
    }
    if fds.len() > 1 {
        return Err(DeviceError::new(
            libc::E2BIG,
            format!("DMA_MAP takes one fd, {} were sent", fds.len()),
        ));
    }
    let fd = fds.pop();
    match &fd {
        Some(f) => {
            let file = mappable_size(f)?;
            let end = req.offset.checked_add(req.size);
            if !matches!(end, Some(e) if e <= file) {
                return Err(DeviceError::inval(format!(
                    "DMA window {:#x}+{:#x} at fd offset {:#x} extends past the end of its {file}-byte fd",
                    req.addr, req.size, req.offset
                )));
            }
        }
        None if req.offset != 0 => {
            return Err(DeviceError::inval(format!(
                "DMA_MAP offset {:#x} without an fd (offset must be 0 when no fd is passed)",
                req.offset
            )))
        }
        None => {}
    }
    let has_fd = fd.is_some();
    let core = s.lock();
    core.dma().map(
        req.addr,
        req.size,
        fd,
        req.offset,
        req.flags & DMA_FLAG_READ != 0,
        req.flags & DMA_FLAG_WRITE != 0,
    )?;
    tracing::debug!(
        iova = req.addr,
        size = req.size,
        has_fd,
        "DMA window mapped"
    );
    Ok(())
}

/// DMA_UNMAP flag `VFIO_DMA_UNMAP_FLAG_ALL` (the kernel's value 2). The
/// vfio-user spec calls DMA_UNMAP's flags unused, but QEMU's vfio-user
/// client sends this flag (with `addr` = `size` = 0) to drop every window
/// at once, and libvfio-user accepts it, so we do too.
pub const DMA_UNMAP_FLAG_ALL: u32 = 2;

/// DMA_UNMAP: the window must match a mapping exactly (or, with
/// [`DMA_UNMAP_FLAG_ALL`] and `addr` = `size` = 0, every window goes);
/// reply = the request.
pub(crate) fn unmap<D: Device>(
    s: &mut Session<'_, D>,
    payload: &[u8],
    fds: &[OwnedFd],
    reply: &mut Reply,
) -> DeviceResult<()> {
    no_fds("DMA_UNMAP", fds)?;
    let req = decode(payload, "DMA_UNMAP", DmaUnmap::SIZE, DmaUnmap::decode)?;
    check_argsz("DMA_UNMAP", req.argsz, DmaUnmap::SIZE)?;
    match req.flags {
        0 => s.lock().dma().unmap(req.addr, req.size)?,
        DMA_UNMAP_FLAG_ALL if req.addr == 0 && req.size == 0 => {
            let core = s.lock();
            for w in core.dma().windows() {
                core.dma().unmap(w.iova, w.length)?;
            }
        }
        DMA_UNMAP_FLAG_ALL => {
            return Err(DeviceError::inval(format!(
                "DMA_UNMAP with the ALL flag takes addr 0 and size 0, not {:#x}+{:#x}",
                req.addr, req.size
            )))
        }
        _ => {
            return Err(DeviceError::inval(format!(
                "DMA_UNMAP flags {:#x}: only 0 or ALL ({DMA_UNMAP_FLAG_ALL}) are supported",
                req.flags
            )))
        }
    }
    reply.put(&req.to_bytes());
    Ok(())
}
