//! DEVICE_FEATURE: MIGRATION, MIG_DEVICE_STATE (all eight states the
//! device supports, P2P included), DMA_LOGGING_START/STOP/REPORT, and the
//! extensions MIG_DATA_SIZE and PRECOPY_INFO (see [`crate::ext`]).
//!
//! GET replies carry `{argsz, flags}` + the feature data with `argsz` =
//! the full reply size; SET and PROBE replies echo the request.

use std::os::fd::OwnedFd;
use vfio_migrate_abi::kernel::{
    bitmap_bytes, DeviceFeature, DmaLoggingRange, FeatureMigDataSize, FeatureMigState,
    FeatureMigration, MigState, FEATURE_DMA_LOGGING_REPORT, FEATURE_DMA_LOGGING_START,
    FEATURE_DMA_LOGGING_STOP, FEATURE_GET, FEATURE_MASK, FEATURE_MIGRATION,
    FEATURE_MIG_DEVICE_STATE, FEATURE_PROBE, FEATURE_SET,
};
use vfio_migrate_abi::Reader;
use vfio_migrate_device::dma::MAX_LOG_RANGES;
use vfio_migrate_device::{Device, DeviceError, DeviceResult};
use vfio_migrate_handle::IovaRange;

use super::dispatch::{decode, no_fds};
use super::session::{Reply, Session};
use crate::ext::{FEATURE_MIG_DATA_SIZE, FEATURE_PRECOPY_INFO};

/// Size of the vfio-user DMA_LOGGING_REPORT request (bitmap follows in the
/// reply).
pub const LOGGING_REPORT_HEAD: usize = 24;

/// Which operations a feature supports: `(get, set)`.
fn ops(feature: u32, migratable: bool) -> Option<(bool, bool)> {
    if !migratable {
        return None;
    }
    Some(match feature {
        FEATURE_MIGRATION => (true, false),
        FEATURE_MIG_DEVICE_STATE => (true, true),
        FEATURE_DMA_LOGGING_START | FEATURE_DMA_LOGGING_STOP => (false, true),
        FEATURE_DMA_LOGGING_REPORT => (true, false),
        FEATURE_MIG_DATA_SIZE | FEATURE_PRECOPY_INFO => (true, false),
        _ => return None,
    })
}

/// Parses a DMA_LOGGING_START body: page size and the inline ranges.
fn logging_start(data: &[u8]) -> DeviceResult<(u64, Vec<IovaRange>)> {
    let mut r = Reader::new(data, "DMA_LOGGING_START");
    let bad = |e: vfio_migrate_abi::WireError| DeviceError::inval(e.to_string());
    let page_size: u64 = r.int().map_err(bad)?;
    let num: u32 = r.int().map_err(bad)?;
    let _rsvd: u32 = r.int().map_err(bad)?;
    if num as usize > MAX_LOG_RANGES {
        return Err(DeviceError::new(
            libc::E2BIG,
            format!("DMA_LOGGING_START names {num} ranges, at most {MAX_LOG_RANGES}"),
        ));
    }
    let need = num as usize * DmaLoggingRange::SIZE;
    if r.remaining() < need {
        return Err(DeviceError::inval(format!(
            "DMA_LOGGING_START names {num} ranges ({need} bytes) but {} bytes follow",
            r.remaining()
        )));
    }
    let mut ranges = Vec::with_capacity(num as usize);
    for _ in 0..num {
        let g =
            DmaLoggingRange::decode(r.take(DmaLoggingRange::SIZE).map_err(bad)?).map_err(bad)?;
        ranges.push(IovaRange {
            iova: g.iova,
            length: g.length,
        });
    }
    Ok((page_size, ranges))
}

/// DEVICE_FEATURE.
pub(crate) fn handle<D: Device>(
    s: &mut Session<'_, D>,
    payload: &[u8],
    fds: &[OwnedFd],
    reply: &mut Reply,
) -> DeviceResult<()> {
    no_fds("DEVICE_FEATURE", fds)?;
    let head = decode(
        payload,
        "DEVICE_FEATURE",
        DeviceFeature::SIZE,
        DeviceFeature::decode,
    )?;
    let data = &payload[DeviceFeature::SIZE..];
    let feature = head.flags & FEATURE_MASK;
    let op = head.flags & !FEATURE_MASK;
    if op & !(FEATURE_GET | FEATURE_SET | FEATURE_PROBE) != 0 {
        return Err(DeviceError::inval(format!(
            "DEVICE_FEATURE flags {:#x} has unknown bits",
            head.flags
        )));
    }
    let (get, set, probe) = (
        op & FEATURE_GET != 0,
        op & FEATURE_SET != 0,
        op & FEATURE_PROBE != 0,
    );
    // PROBE alone or with GET/SET; otherwise exactly one of GET and SET.
    if !(probe || get != set) {
        return Err(DeviceError::inval(format!(
            "DEVICE_FEATURE flags {:#x}: need exactly one of GET/SET, or PROBE",
            head.flags
        )));
    }
    if (head.argsz as usize) < DeviceFeature::SIZE {
        return Err(DeviceError::inval(format!(
            "DEVICE_FEATURE argsz {} is smaller than the 8-byte head",
            head.argsz
        )));
    }
    let mut core = s.lock();
    let migratable = core.migration_flags() != 0;
    let Some((can_get, can_set)) = ops(feature, migratable) else {
        return Err(DeviceError::new(
            libc::ENOTTY,
            format!("device feature {feature} is not offered by this device"),
        ));
    };
    if (get && !can_get) || (set && !can_set) {
        return Err(DeviceError::inval(format!(
            "device feature {feature} does not support {}",
            if get { "GET" } else { "SET" }
        )));
    }
    if probe {
        reply.put(payload);
        return Ok(());
    }
    // The reply starts with the request head; GET patches argsz at the end.
    reply.put(&payload[..DeviceFeature::SIZE]);
    let need_reply = |len: usize| -> DeviceResult<()> {
        if (head.argsz as usize) < len {
            Err(DeviceError::inval(format!(
                "DEVICE_FEATURE {feature}: argsz {} is smaller than the {len}-byte reply",
                head.argsz
            )))
        } else {
            Ok(())
        }
    };
    match (feature, get) {
        (FEATURE_MIGRATION, true) => {
            need_reply(DeviceFeature::SIZE + FeatureMigration::SIZE)?;
            reply.put(
                &FeatureMigration {
                    flags: core.migration_flags(),
                }
                .to_bytes(),
            );
        }
        (FEATURE_MIG_DEVICE_STATE, true) => {
            need_reply(DeviceFeature::SIZE + FeatureMigState::SIZE)?;
            reply.put(
                &FeatureMigState {
                    device_state: core.state() as u32,
                    data_fd: -1,
                }
                .to_bytes(),
            );
        }
        (FEATURE_MIG_DEVICE_STATE, false) => {
            let req = decode(
                data,
                "MIG_DEVICE_STATE",
                FeatureMigState::SIZE,
                FeatureMigState::decode,
            )?;
            let target = MigState::from_u32(req.device_state).map_err(|_| {
                DeviceError::inval(format!("device state {} does not exist", req.device_state))
            })?;
            let from = core.state();
            core.set_state(target)?;
            tracing::info!(%from, to = %target, "device state changed");
            reply.put(
                &FeatureMigState {
                    device_state: target as u32,
                    data_fd: -1,
                }
                .to_bytes(),
            );
        }
        (FEATURE_DMA_LOGGING_START, false) => {
            let (page_size, ranges) = logging_start(data)?;
            core.dma().logging_start(page_size, &ranges)?;
            tracing::info!(page_size, ranges = ranges.len(), "DMA logging started");
            reply.put(data);
        }
        (FEATURE_DMA_LOGGING_STOP, false) => {
            core.dma().logging_stop();
            tracing::info!("DMA logging stopped");
            reply.put(data);
        }
        (FEATURE_DMA_LOGGING_REPORT, true) => {
            let mut r = Reader::new(data, "DMA_LOGGING_REPORT");
            let bad = |e: vfio_migrate_abi::WireError| DeviceError::inval(e.to_string());
            let iova: u64 = r.int().map_err(bad)?;
            let length: u64 = r.int().map_err(bad)?;
            let page_size: u64 = r.int().map_err(bad)?;
            if !page_size.is_power_of_two() || length == 0 {
                return Err(DeviceError::inval(format!(
                    "DMA_LOGGING_REPORT page size {page_size} is not a power of two or length is 0"
                )));
            }
            let bytes = bitmap_bytes(length, page_size).unwrap_or(u64::MAX);
            let limit = s.max_out() as u64;
            if bytes > limit {
                return Err(DeviceError::new(
                    libc::E2BIG,
                    format!("DMA_LOGGING_REPORT bitmap of {bytes} bytes exceeds max_data_xfer_size {limit}: report a smaller range"),
                ));
            }
            need_reply(DeviceFeature::SIZE + LOGGING_REPORT_HEAD + bytes as usize)?;
            reply.put(&data[..LOGGING_REPORT_HEAD]);
            let bitmap = reply.grow(bytes as usize);
            core.dma().logging_report(iova, length, page_size, bitmap)?;
        }
        (FEATURE_MIG_DATA_SIZE, true) => {
            need_reply(DeviceFeature::SIZE + FeatureMigDataSize::SIZE)?;
            reply.put(
                &FeatureMigDataSize {
                    stop_copy_length: core.stop_copy_size(),
                }
                .to_bytes(),
            );
        }
        (FEATURE_PRECOPY_INFO, true) => {
            need_reply(DeviceFeature::SIZE + 16)?;
            let p = core.precopy_info()?;
            reply.put(&p.initial_bytes.to_le_bytes());
            reply.put(&p.dirty_bytes.to_le_bytes());
        }
        _ => {
            return Err(DeviceError::inval(format!(
                "device feature {feature}: operation {op:#x} is not offered"
            )))
        }
    }
    if get {
        let len = reply.payload().len() as u32;
        reply.payload_mut()[..4].copy_from_slice(&len.to_le_bytes());
    }
    Ok(())
}
