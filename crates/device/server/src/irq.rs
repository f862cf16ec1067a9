//! DEVICE_GET_IRQ_INFO and DEVICE_SET_IRQS: interrupt indices the device
//! offers; eventfds attached and torn down, masks, client triggers.

use std::os::fd::{AsRawFd, OwnedFd};
use vfio_migrate_abi::vfio_user::{
    IrqInfo, IrqSet, IRQ_SET_ACTION_MASK, IRQ_SET_ACTION_TRIGGER, IRQ_SET_ACTION_UNMASK,
    IRQ_SET_DATA_BOOL, IRQ_SET_DATA_EVENTFD, IRQ_SET_DATA_NONE,
};
use vfio_migrate_device::{Device, DeviceError, DeviceResult, IrqRequest};

use super::dispatch::{check_argsz, decode, no_fds, num_irqs};
use super::session::{Reply, Session};

/// DEVICE_GET_IRQ_INFO: an index inside the range but not offered by the
/// device reads as count 0, flags 0.
pub(crate) fn info<D: Device>(
    s: &mut Session<'_, D>,
    payload: &[u8],
    fds: &[OwnedFd],
    reply: &mut Reply,
) -> DeviceResult<()> {
    no_fds("DEVICE_GET_IRQ_INFO", fds)?;
    let req = decode(
        payload,
        "DEVICE_GET_IRQ_INFO",
        IrqInfo::SIZE,
        IrqInfo::decode,
    )?;
    check_argsz("DEVICE_GET_IRQ_INFO", req.argsz, IrqInfo::SIZE)?;
    let mut core = s.lock();
    let n = num_irqs(core.device());
    if req.index >= n {
        return Err(DeviceError::inval(format!(
            "IRQ index {} is out of range: the device has {n} IRQ indices",
            req.index
        )));
    }
    let d = core
        .device()
        .irqs()
        .into_iter()
        .find(|i| i.index == req.index);
    reply.put(
        &IrqInfo {
            argsz: IrqInfo::SIZE as u32,
            flags: d.map(|d| d.flags).unwrap_or(0),
            index: req.index,
            count: d.map(|d| d.count).unwrap_or(0),
        }
        .to_bytes(),
    );
    Ok(())
}

/// True when `fd` is an eventfd.
fn is_eventfd(fd: &OwnedFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.as_os_str() == "anon_inode:[eventfd]")
        .unwrap_or(false)
}

/// DEVICE_SET_IRQS, decoded into one [`IrqRequest`] per affected range and
/// handed to the device:
///
/// | data | action | request |
/// |---|---|---|
/// | EVENTFD, `count` fds | TRIGGER | `Attach` |
/// | EVENTFD, no fds | TRIGGER | `Detach` of those vectors (count 0: all) |
/// | NONE, count 0 | TRIGGER | `Detach` of every vector |
/// | NONE | TRIGGER / MASK / UNMASK | `Trigger` / `Mask` / `Unmask` |
/// | BOOL (`count` bytes) | any | the same, for each vector whose byte is not 0 |
/// | EVENTFD | MASK / UNMASK | `ENOTSUP` (eventfd-signalled mask events: KVM's resampler) |
///
/// Vectors must lie inside the index; `count` 0 is only the disable.
pub(crate) fn set<D: Device>(
    s: &mut Session<'_, D>,
    payload: &[u8],
    fds: Vec<OwnedFd>,
) -> DeviceResult<()> {
    let req = decode(payload, "DEVICE_SET_IRQS", IrqSet::SIZE, IrqSet::decode)?;
    check_argsz("DEVICE_SET_IRQS", req.argsz, IrqSet::SIZE)?;
    let data = req.flags & (IRQ_SET_DATA_NONE | IRQ_SET_DATA_BOOL | IRQ_SET_DATA_EVENTFD);
    let action = req.flags & (IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK | IRQ_SET_ACTION_TRIGGER);
    if req.flags & !(data | action) != 0 || data.count_ones() != 1 || action.count_ones() != 1 {
        return Err(DeviceError::inval(format!(
            "DEVICE_SET_IRQS flags {:#x}: exactly one DATA and one ACTION flag are needed",
            req.flags
        )));
    }
    let mut core = s.lock();
    let n = num_irqs(core.device());
    if req.index >= n {
        return Err(DeviceError::inval(format!(
            "IRQ index {} is out of range: the device has {n} IRQ indices",
            req.index
        )));
    }
    if data != IRQ_SET_DATA_EVENTFD {
        no_fds("DEVICE_SET_IRQS without DATA_EVENTFD", &fds)?;
    } else {
        if action != IRQ_SET_ACTION_TRIGGER {
            return Err(DeviceError::new(
                libc::ENOTSUP,
                format!(
                    "IRQ index {}: eventfds signalled on mask/unmask (KVM's resampler) are not \
                     offered",
                    req.index
                ),
            ));
        }
        if let Some(i) = fds.iter().position(|f| !is_eventfd(f)) {
            return Err(DeviceError::new(
                libc::EBADF,
                format!("fd #{i} is not an eventfd"),
            ));
        }
        if !fds.is_empty() && fds.len() != req.count as usize {
            return Err(DeviceError::inval(format!(
                "DEVICE_SET_IRQS count is {} but {} eventfds were sent",
                req.count,
                fds.len()
            )));
        }
    }
    let desc = core
        .device()
        .irqs()
        .into_iter()
        .find(|i| i.index == req.index)
        .ok_or_else(|| {
            DeviceError::inval(format!(
                "IRQ index {} is not offered by the device",
                req.index
            ))
        })?;
    // The disable: DATA_NONE | TRIGGER with count 0 (the spec), or
    // DATA_EVENTFD | TRIGGER with count 0 and no fds (de-assign all).
    let disable_all = req.count == 0
        && action == IRQ_SET_ACTION_TRIGGER
        && (data == IRQ_SET_DATA_NONE || (data == IRQ_SET_DATA_EVENTFD && fds.is_empty()));
    if !disable_all {
        if req.count == 0 {
            return Err(DeviceError::inval(format!(
                "DEVICE_SET_IRQS count 0 is only the disable (DATA_NONE | ACTION_TRIGGER), \
                 flags {:#x}",
                req.flags
            )));
        }
        match req.start.checked_add(req.count) {
            Some(end) if end <= desc.count => {}
            _ => {
                return Err(DeviceError::inval(format!(
                    "IRQ vectors {}+{} are outside index {} ({} vectors)",
                    req.start, req.count, req.index, desc.count
                )))
            }
        }
    }
    let (start, count) = (req.start, req.count);
    let one = |start, count| match action {
        IRQ_SET_ACTION_MASK => IrqRequest::Mask { start, count },
        IRQ_SET_ACTION_UNMASK => IrqRequest::Unmask { start, count },
        _ => IrqRequest::Trigger { start, count },
    };
    match data {
        _ if disable_all => {
            core.device()
                .set_irqs(req.index, IrqRequest::Detach { start: 0, count: 0 })?;
            s.irqs.remove(&req.index);
        }
        IRQ_SET_DATA_EVENTFD if fds.is_empty() => {
            core.device()
                .set_irqs(req.index, IrqRequest::Detach { start, count })?;
        }
        IRQ_SET_DATA_EVENTFD => {
            core.device()
                .set_irqs(req.index, IrqRequest::Attach { start, fds })?;
            s.irqs.insert(req.index);
        }
        IRQ_SET_DATA_NONE => core.device().set_irqs(req.index, one(start, count))?,
        _ => {
            let bools = &payload[IrqSet::SIZE..];
            if bools.len() != count as usize {
                return Err(DeviceError::inval(format!(
                    "DEVICE_SET_IRQS with DATA_BOOL: count is {count} but {} bytes follow",
                    bools.len()
                )));
            }
            for (i, b) in bools.iter().enumerate() {
                if *b != 0 {
                    core.device()
                        .set_irqs(req.index, one(start + i as u32, 1))?;
                }
            }
        }
    }
    Ok(())
}
