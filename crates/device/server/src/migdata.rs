//! MIG_DATA_READ and MIG_DATA_WRITE: the migration data stream, read
//! straight into the reply buffer and written straight from the request;
//! with `FEATURE_MIG_DATA_CRC` on, a read's reply also carries the data's
//! CRC32C, and a write carries one that is checked first.

use std::os::fd::OwnedFd;
use vfio_migrate_abi::vfio_user::MigData;
use vfio_migrate_device::{Device, DeviceError, DeviceResult};
use vfio_migrate_vfio_user::ext::MIG_DATA_CRC_SIZE;

use super::dispatch::{decode, no_fds};
use super::session::{Reply, Session};

/// MIG_DATA_READ: fills up to `size` bytes (asking the device until it has
/// nothing more right now), so a short reply in STOP_COPY means the end of
/// the state, as the spec says.
pub(crate) fn read<D: Device>(
    s: &mut Session<'_, D>,
    payload: &[u8],
    fds: &[OwnedFd],
    reply: &mut Reply,
) -> DeviceResult<()> {
    no_fds("MIG_DATA_READ", fds)?;
    let req = decode(payload, "MIG_DATA_READ", MigData::SIZE, MigData::decode)?;
    let limit = s.max_out();
    if req.size as usize > limit {
        return Err(DeviceError::new(
            libc::E2BIG,
            format!(
                "MIG_DATA_READ of {} bytes exceeds max_data_xfer_size {limit}",
                req.size
            ),
        ));
    }
    let crc = s.mig_data_crc;
    let extra = if crc { MIG_DATA_CRC_SIZE } else { 0 };
    let need = (MigData::SIZE + extra) as u64 + req.size as u64;
    if (req.argsz as u64) < need {
        return Err(DeviceError::inval(format!(
            "MIG_DATA_READ argsz {} is smaller than the {need}-byte reply",
            req.argsz
        )));
    }
    let mut core = s.lock();
    reply.grow(MigData::SIZE + extra);
    let buf = reply.grow(req.size as usize);
    let mut got = 0usize;
    while got < buf.len() {
        match core.read_data(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            // Keep what was read; the next read reports the error.
            Err(e) if got > 0 => {
                tracing::debug!(error = %e, got, "device save stopped mid-reply");
                break;
            }
            Err(e) => return Err(e),
        }
    }
    reply.truncate(MigData::SIZE + extra + got);
    let p = reply.payload_mut();
    p[..MigData::SIZE].copy_from_slice(
        &MigData {
            argsz: (MigData::SIZE + extra + got) as u32,
            size: got as u32,
        }
        .to_bytes(),
    );
    if crc {
        // While the data is still in cache: one pass, so the client need
        // not read it.
        let (head, data) = p.split_at_mut(MigData::SIZE + extra);
        let c = crc32c::crc32c(data);
        head[MigData::SIZE..MigData::SIZE + 4].copy_from_slice(&c.to_le_bytes());
        head[MigData::SIZE + 4..].fill(0);
    }
    Ok(())
}

/// MIG_DATA_WRITE: exactly `size` data bytes must follow the head.
pub(crate) fn write<D: Device>(
    s: &mut Session<'_, D>,
    payload: &[u8],
    fds: &[OwnedFd],
) -> DeviceResult<()> {
    no_fds("MIG_DATA_WRITE", fds)?;
    let req = decode(payload, "MIG_DATA_WRITE", MigData::SIZE, MigData::decode)?;
    let mut data = &payload[MigData::SIZE..];
    if s.mig_data_crc {
        // The data's checksum comes first: the client may not have read
        // the data (it spliced it), so it is checked here, before the
        // device takes any of it.
        if data.len() < MIG_DATA_CRC_SIZE {
            return Err(DeviceError::inval(
                "MIG_DATA_WRITE without its checksum block (checksummed transfers are on)",
            ));
        }
        let want = u32::from_le_bytes(data[..4].try_into().expect("4 bytes"));
        data = &data[MIG_DATA_CRC_SIZE..];
        let got = crc32c::crc32c(data);
        if got != want {
            return Err(DeviceError::new(
                libc::EILSEQ,
                format!(
                    "MIG_DATA_WRITE data does not match its checksum (sent {want:#010x}, computed {got:#010x}): corrupted in transit; nothing was loaded"
                ),
            ));
        }
    }
    if data.len() != req.size as usize {
        return Err(DeviceError::inval(format!(
            "MIG_DATA_WRITE size is {} but {} data bytes follow",
            req.size,
            data.len()
        )));
    }
    s.lock().write_data(data)
}
