//! The dispatcher: one decoded message in, one reply out, no sockets.
//! The socket loop ([`super::Server`]) does framing; unit tests and the
//! fuzz target drive [`dispatch`] directly.
//!
//! # Errnos
//!
//! Every refusal is an error reply with one of these errnos; the
//! connection stays usable unless noted.
//!
//! | errno | when |
//! |---|---|
//! | `EINVAL` | header `msg_size` < 16 (taken as a bare header); a reply or unknown message type sent to the server; payload shorter than the command's struct; `argsz` smaller than the struct or than the reply needs; a data length that disagrees with `count`/`size`; region or IRQ index out of range, absent region, access outside the region or in a direction it does not allow; unknown flag bits; invalid JSON or a bad `pgsize` in VERSION; a second VERSION; an invalid or unsupported device state or arc; MIG_DATA_READ/WRITE or pre-copy info in the wrong state; DMA logging ranges that are bad, a report page size that is not a power of two, a report outside the logged ranges or while logging is off (a START page size is a hint: never refused, the reply carries the one chosen); fds sent with a command that takes none; a DMA window with an `offset` but no fd, or past the end of its fd |
//! | `EMSGSIZE` | header `msg_size` above the cap (`max_data_xfer_size` + 64 KiB); the connection is closed after the reply, since the stream cannot be re-synchronised without reading the claimed bytes |
//! | `E2BIG` | more fds than `max_msg_fds` (or than fit in one control message); a data count above `max_data_xfer_size` (REGION_READ/WRITE, MIG_DATA_READ, a DMA logging bitmap); more than 1024 DMA logging ranges |
//! | `ENOTSUP` | MIG_DATA_READ/WRITE when the v2 interface is off; VERSION with another major version; a SET_IRQS action the device does not offer (mask/unmask, bool/none triggers); a known command this server does not implement (REGION_IO_FDS, REGION_WRITE_MULTI, DMA_READ/WRITE, which go server → client) |
//! | `ENOSYS` | an unknown command number (the payload is read and dropped) |
//! | `ENOTTY` | DEVICE_FEATURE for a feature the device does not have; the migration features (MIGRATION, MIG_DEVICE_STATE, DMA logging, the extensions) when the server offers only the v1/seed regions ([`super::Server::set_v2_migration`]) |
//! | `EEXIST` | DMA_MAP overlapping a mapped window |
//! | `ENOENT` | DMA_UNMAP of a window that is not mapped exactly so |
//! | `EBADF` | a DMA_MAP fd that is not a mappable file; a SET_IRQS fd that is not an eventfd |
//! | `EBUSY` | DMA_LOGGING_START while logging is on; a connection attempt while another client is served (then closed) |
//! | device errnos | whatever the device reports for its own refusals (e.g. `EIO` for a broken device) |

use std::os::fd::OwnedFd;
use vfio_migrate_abi::vfio_user::{
    Command, DeviceInfo, Header, Version, DEVICE_FLAGS_PCI, DEVICE_FLAGS_RESET, FLAGS_TYPE_MASK,
    PCI_NUM_IRQS, PCI_NUM_REGIONS, TYPE_COMMAND, VERSION_MAJOR, VERSION_MINOR,
};
use vfio_migrate_device::{Device, DeviceError, DeviceResult};

use super::session::{Reply, Session};
use super::{feature, irq, migdata, region};
use vfio_migrate_vfio_user::ext::{VersionCaps, EXT_VERSION};
use vfio_migrate_vfio_user::sock::RecvFds;

/// Decodes a fixed struct from the start of `payload`, or EINVAL saying
/// what was short.
pub(crate) fn decode<T>(
    payload: &[u8],
    what: &str,
    size: usize,
    f: impl FnOnce(&[u8]) -> Result<T, vfio_migrate_abi::WireError>,
) -> DeviceResult<T> {
    if payload.len() < size {
        return Err(DeviceError::inval(format!(
            "{what}: payload is {} bytes, shorter than its {size}-byte struct",
            payload.len()
        )));
    }
    f(payload).map_err(|e| DeviceError::inval(format!("{what}: {e}")))
}

/// Checks `argsz` against the struct size.
pub(crate) fn check_argsz(what: &str, argsz: u32, min: usize) -> DeviceResult<()> {
    if (argsz as usize) < min {
        return Err(DeviceError::inval(format!(
            "{what}: argsz {argsz} is smaller than the {min}-byte struct"
        )));
    }
    Ok(())
}

/// Refuses fds on a command that takes none.
pub(crate) fn no_fds(what: &str, fds: &[OwnedFd]) -> DeviceResult<()> {
    if fds.is_empty() {
        Ok(())
    } else {
        Err(DeviceError::inval(format!(
            "{what} takes no file descriptors, {} were sent",
            fds.len()
        )))
    }
}

/// Number of region indices the device shows (at least the PCI nine).
pub(crate) fn num_regions<D: Device>(s: &Session<'_, D>, dev: &D) -> u32 {
    let own = dev.regions().iter().map(|r| r.index + 1).max().unwrap_or(0);
    let ext = s
        .ext
        .regions
        .iter()
        .map(|h| h.region().index + 1)
        .max()
        .unwrap_or(0);
    own.max(ext).max(PCI_NUM_REGIONS)
}

/// Number of IRQ indices the device shows (at least the PCI five).
pub(crate) fn num_irqs<D: Device>(dev: &D) -> u32 {
    dev.irqs()
        .iter()
        .map(|i| i.index + 1)
        .max()
        .unwrap_or(0)
        .max(PCI_NUM_IRQS)
}

/// Handles one message and fills `reply`. Never panics on any input; the
/// fds not taken by the command are closed when this returns.
pub fn dispatch<D: Device>(
    s: &mut Session<'_, D>,
    hdr: &Header,
    payload: &[u8],
    fds: RecvFds,
    reply: &mut Reply,
) {
    reply.reset();
    let r = route(s, hdr, payload, fds, reply);
    if let Err(e) = r {
        tracing::debug!(cmd = hdr.cmd, msg_id = hdr.msg_id, errno = e.errno, error = %e.message, "command refused");
        reply.fail(e.errno, e.message);
    }
}

fn route<D: Device>(
    s: &mut Session<'_, D>,
    hdr: &Header,
    payload: &[u8],
    fds: RecvFds,
    reply: &mut Reply,
) -> DeviceResult<()> {
    if hdr.flags & FLAGS_TYPE_MASK != TYPE_COMMAND {
        return Err(DeviceError::inval(format!(
            "message type {} is not a command (flags {:#x})",
            hdr.flags & FLAGS_TYPE_MASK,
            hdr.flags
        )));
    }
    let max_fds = s.config.max_msg_fds as usize;
    if fds.truncated || fds.fds.len() > max_fds {
        return Err(DeviceError::new(
            libc::E2BIG,
            format!(
                "{}{} fds sent, this server takes at most {max_fds} per message",
                fds.fds.len(),
                if fds.truncated { "+" } else { "" }
            ),
        ));
    }
    let fds = fds.fds;
    let Some(cmd) = Command::from_u16(hdr.cmd) else {
        if let Some(h) = s.ext.commands.iter_mut().find(|h| h.command() == hdr.cmd) {
            let mut core = s.core.lock().unwrap_or_else(|p| p.into_inner());
            return h.handle(&mut core, payload, fds, reply);
        }
        return Err(DeviceError::new(
            libc::ENOSYS,
            format!(
                "unknown command {} ({} payload bytes dropped)",
                hdr.cmd,
                payload.len()
            ),
        ));
    };
    match cmd {
        Command::Version => version(s, payload, &fds, reply),
        Command::DmaMap => super::dma::map(s, payload, fds),
        Command::DmaUnmap => super::dma::unmap(s, payload, &fds, reply),
        Command::DeviceGetInfo => device_info(s, payload, &fds, reply),
        Command::DeviceGetRegionInfo => region::info(s, payload, &fds, reply),
        Command::DeviceGetIrqInfo => irq::info(s, payload, &fds, reply),
        Command::DeviceSetIrqs => irq::set(s, payload, fds),
        Command::RegionRead => region::read(s, payload, &fds, reply),
        Command::RegionWrite => region::write(s, payload, &fds, reply),
        Command::DeviceReset => {
            no_fds("DEVICE_RESET", &fds)?;
            s.lock().reset()?;
            for r in s.ext.regions.iter_mut() {
                r.reset();
            }
            Ok(())
        }
        Command::DeviceFeature => feature::handle(s, payload, &fds, reply),
        Command::MigDataRead | Command::MigDataWrite if !s.ext.v2_migration => {
            Err(DeviceError::new(
                libc::ENOTSUP,
                "the v2 migration interface is not offered by this server (it serves the v1/seed migration regions)",
            ))
        }
        Command::MigDataRead => migdata::read(s, payload, &fds, reply),
        Command::MigDataWrite => migdata::write(s, payload, &fds),
        other => {
            if let Some(h) = s.ext.commands.iter_mut().find(|h| h.command() == hdr.cmd) {
                let mut core = s.core.lock().unwrap_or_else(|p| p.into_inner());
                return h.handle(&mut core, payload, fds, reply);
            }
            Err(DeviceError::new(
                libc::ENOTSUP,
                format!("{other:?} is not served by this server"),
            ))
        }
    }
}

/// VERSION: checks the major version and the client's JSON, answers with
/// our limits (only capabilities the client proposed, plus ours if it
/// proposed the extension).
fn version<D: Device>(
    s: &mut Session<'_, D>,
    payload: &[u8],
    fds: &[OwnedFd],
    reply: &mut Reply,
) -> DeviceResult<()> {
    no_fds("VERSION", fds)?;
    if s.negotiated() {
        return Err(DeviceError::inval(
            "VERSION was already negotiated on this connection",
        ));
    }
    let v = decode(payload, "VERSION", Version::SIZE, Version::decode)?;
    if v.major != VERSION_MAJOR {
        return Err(DeviceError::new(
            libc::ENOTSUP,
            format!(
                "protocol major version {} is not supported (this server speaks {VERSION_MAJOR})",
                v.major
            ),
        ));
    }
    let theirs = VersionCaps::from_json_bytes(&payload[Version::SIZE..])
        .map_err(|e| DeviceError::inval(format!("VERSION capabilities: {e}")))?;
    if let Some(m) = &theirs.caps.migration {
        if m.pgsize != 0 && (!m.pgsize.is_power_of_two() || !(4096..=1 << 30).contains(&m.pgsize)) {
            return Err(DeviceError::inval(format!(
                "VERSION migration.pgsize {} is not a power of two between 4096 and 1 GiB",
                m.pgsize
            )));
        }
    }
    if theirs.caps.max_data_xfer_size == 0 {
        return Err(DeviceError::inval("VERSION max_data_xfer_size is 0"));
    }
    let ours = VersionCaps {
        caps: vfio_migrate_abi::vfio_user::Capabilities {
            max_msg_fds: s.config.max_msg_fds,
            max_data_xfer_size: s.config.max_data_xfer_size,
            migration: theirs.caps.migration.as_ref().map(|m| {
                vfio_migrate_abi::vfio_user::MigrationCaps {
                    pgsize: if m.pgsize == 0 { 4096 } else { m.pgsize },
                    max_bitmap_size: None,
                }
            }),
        },
        ext: theirs.ext.map(|v| v.min(EXT_VERSION)),
    };
    reply.put(
        &Version {
            major: VERSION_MAJOR,
            minor: v.minor.min(VERSION_MINOR),
        }
        .to_bytes(),
    );
    reply.put(&ours.to_json_bytes());
    tracing::info!(
        client_max_fds = theirs.caps.max_msg_fds,
        client_max_xfer = theirs.caps.max_data_xfer_size,
        ext = ?theirs.ext,
        "VERSION negotiated"
    );
    s.client = Some(theirs.caps);
    Ok(())
}

fn device_info<D: Device>(
    s: &mut Session<'_, D>,
    payload: &[u8],
    fds: &[OwnedFd],
    reply: &mut Reply,
) -> DeviceResult<()> {
    no_fds("DEVICE_GET_INFO", fds)?;
    let req = decode(
        payload,
        "DEVICE_GET_INFO",
        DeviceInfo::SIZE,
        DeviceInfo::decode,
    )?;
    check_argsz("DEVICE_GET_INFO", req.argsz, DeviceInfo::SIZE)?;
    let mut core = s.lock();
    let (nr, ni) = (num_regions(s, core.device()), num_irqs(core.device()));
    reply.put(
        &DeviceInfo {
            argsz: DeviceInfo::SIZE as u32,
            flags: DEVICE_FLAGS_PCI | DEVICE_FLAGS_RESET,
            num_regions: nr,
            num_irqs: ni,
        }
        .to_bytes(),
    );
    Ok(())
}
