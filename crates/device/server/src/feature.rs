//! DEVICE_FEATURE: MIGRATION, MIG_DEVICE_STATE (all eight states the
//! device supports, P2P included), DMA_LOGGING_START/STOP/REPORT, and the
//! extensions MIG_DATA_SIZE and PRECOPY_INFO (see [`vfio_migrate_vfio_user::ext`]).
//!
//! GET replies carry `{argsz, flags}` + the feature data with `argsz` =
//! the full reply size; SET and PROBE replies echo the request (START
//! with the page size the device chose in place of the hint). Reports
//! may use any power-of-two page size, not only START's.

use std::os::fd::OwnedFd;
use vfio_migrate_abi::kernel::{
    bitmap_bytes, DeviceFeature, DmaLoggingRange, FeatureMigDataSize, FeatureMigState,
    FeatureMigration, MigState, FEATURE_DMA_LOGGING_REPORT, FEATURE_DMA_LOGGING_START,
    FEATURE_DMA_LOGGING_STOP, FEATURE_GET, FEATURE_MASK, FEATURE_MIGRATION,
    FEATURE_MIG_DEVICE_STATE, FEATURE_PROBE, FEATURE_SET,
};
use vfio_migrate_abi::Reader;
use vfio_migrate_backend::IovaRange;
use vfio_migrate_device::dma::{DmaSpace, MAX_LOG_RANGES};
use vfio_migrate_device::{Device, DeviceError, DeviceResult};

use super::dispatch::{decode, no_fds};
use super::session::{Reply, Session};
use vfio_migrate_vfio_user::ext::{
    FeatureThrottle, FEATURE_DEVICE_STATUS, FEATURE_MIG_DATA_CRC, FEATURE_MIG_DATA_SIZE,
    FEATURE_PRECOPY_INFO, FEATURE_PRECOPY_INFO_V2, FEATURE_THROTTLE, PRECOPY_FLAG_REINIT,
    STATUS_INCOMING, STATUS_MIGRATED_OUT, STATUS_PRISTINE,
};

/// Size of the vfio-user DMA_LOGGING_REPORT request (bitmap follows in the
/// reply).
pub const LOGGING_REPORT_HEAD: usize = 24;

/// Which operations a feature supports: `(get, set)`.
fn ops(feature: u32, migratable: bool, throttle: bool) -> Option<(bool, bool)> {
    // Device status is about the device, whatever protocol migrates it.
    if feature == FEATURE_DEVICE_STATUS {
        return Some((true, false));
    }
    if !migratable {
        return None;
    }
    Some(match feature {
        FEATURE_MIGRATION => (true, false),
        FEATURE_MIG_DEVICE_STATE => (true, true),
        FEATURE_DMA_LOGGING_START | FEATURE_DMA_LOGGING_STOP => (false, true),
        FEATURE_DMA_LOGGING_REPORT => (true, false),
        FEATURE_MIG_DATA_SIZE | FEATURE_PRECOPY_INFO => (true, false),
        FEATURE_MIG_DATA_CRC => (true, true),
        FEATURE_PRECOPY_INFO_V2 => (false, true),
        FEATURE_THROTTLE if throttle => (true, true),
        _ => return None,
    })
}

/// Smallest and largest page size DMA logging runs at.
const MIN_LOG_PAGE: u64 = 4096;
const MAX_LOG_PAGE: u64 = 1 << 30;

/// The page size logging runs at for a DMA_LOGGING_START hint. The spec
/// makes the requested page size a hint the device may replace (the reply
/// carries the one chosen), so nothing is refused: a power of two from
/// 4 KiB to 1 GiB is taken as asked, anything else is rounded down to a
/// power of two and clamped to that range (0 → 4 KiB).
fn chosen_page_size(hint: u64) -> u64 {
    let p = if hint == 0 {
        MIN_LOG_PAGE
    } else {
        1u64 << (63 - hint.leading_zeros())
    };
    p.clamp(MIN_LOG_PAGE, MAX_LOG_PAGE)
}

/// Reads and clears the dirty bits of `[iova, iova+length)` into `bitmap`
/// (bit n = report page n, LSB first) at `page` granularity, whatever page
/// size logging runs at (`log_page`): the spec lets the two differ. A
/// coarser report ORs the logged bits under each report page; a finer one
/// repeats each logged bit over the report pages it covers. The logged
/// bitmap read on the way is bounded by `limit` bytes.
fn report_at(
    dma: &DmaSpace,
    (iova, length, page): (u64, u64, u64),
    log_page: u64,
    bitmap: &mut [u8],
    limit: u64,
) -> DeviceResult<()> {
    if page == log_page {
        return dma.logging_report(iova, length, page, bitmap);
    }
    if !iova.is_multiple_of(page) {
        return Err(DeviceError::inval(format!(
            "DMA_LOGGING_REPORT iova {iova:#x} is not aligned to its page size {page}"
        )));
    }
    let outside = || {
        DeviceError::inval(format!(
            "DMA_LOGGING_REPORT range {iova:#x}+{length:#x} runs past the end of the IOVA space"
        ))
    };
    let end = iova.checked_add(length).ok_or_else(outside)?;
    let start = iova & !(log_page - 1);
    let stop = end.checked_next_multiple_of(log_page).ok_or_else(outside)?;
    let inner_bytes = bitmap_bytes(stop - start, log_page).unwrap_or(u64::MAX);
    if inner_bytes > limit {
        return Err(DeviceError::new(
            libc::E2BIG,
            format!(
                "DMA_LOGGING_REPORT over {length:#x} bytes needs a {inner_bytes}-byte bitmap at the \
                 logging page size {log_page}, above {limit}: report a smaller range"
            ),
        ));
    }
    let mut inner = vec![0u8; inner_bytes as usize];
    dma.logging_report(start, stop - start, log_page, &mut inner)?;
    let bit = |b: &[u8], n: u64| b[(n / 8) as usize] >> (n % 8) & 1 == 1;
    bitmap.fill(0);
    for p in 0..length.div_ceil(page) {
        let a = iova + p * page;
        let b = (a + page).min(end);
        let (first, last) = ((a - start) / log_page, (b - 1 - start) / log_page);
        if (first..=last).any(|q| bit(&inner, q)) {
            bitmap[(p / 8) as usize] |= 1 << (p % 8);
        }
    }
    Ok(())
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
    let migratable = core.migration_flags() != 0 && s.ext.v2_migration;
    let Some((can_get, can_set)) = ops(feature, migratable, core.throttle_offered()) else {
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
            // "The reply payload must be the same as the request payload"
            // for SET: echoed as sent (data_fd is unused in vfio-user).
            reply.put(data);
        }
        (FEATURE_DMA_LOGGING_START, false) => {
            let (hint, ranges) = logging_start(data)?;
            let page_size = chosen_page_size(hint);
            core.dma().logging_start(page_size, &ranges)?;
            tracing::info!(
                hint,
                page_size,
                ranges = ranges.len(),
                "DMA logging started"
            );
            // The request echoed, with the page size actually chosen.
            reply.put(&page_size.to_le_bytes());
            reply.put(&data[8..]);
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
            let log_page = core.dma().logging_page_size().ok_or_else(|| {
                DeviceError::inval("DMA_LOGGING_REPORT while logging is off: start it first")
            })?;
            reply.put(&data[..LOGGING_REPORT_HEAD]);
            let bitmap = reply.grow(bytes as usize);
            report_at(
                core.dma(),
                (iova, length, page_size),
                log_page,
                bitmap,
                limit.max(1 << 20),
            )?;
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
        (FEATURE_DEVICE_STATUS, true) => {
            need_reply(DeviceFeature::SIZE + 8)?;
            let st = core.status();
            let mut flags = 0;
            for (on, bit) in [
                (st.pristine, STATUS_PRISTINE),
                (st.incoming, STATUS_INCOMING),
                (st.migrated_out, STATUS_MIGRATED_OUT),
            ] {
                if on {
                    flags |= bit;
                }
            }
            reply.put(&flags.to_le_bytes());
            reply.put(&0u32.to_le_bytes());
        }
        (FEATURE_MIG_DATA_CRC, false) => {
            let on = data
                .get(..8)
                .map(|b| u32::from_le_bytes(b[..4].try_into().expect("4 bytes")))
                .ok_or_else(|| DeviceError::inval("MIG_DATA_CRC: 8 bytes of data expected"))?;
            if on > 1 {
                return Err(DeviceError::inval(format!(
                    "MIG_DATA_CRC: {on} is not 0 or 1"
                )));
            }
            s.mig_data_crc = on == 1;
            reply.put(&data[..8]);
        }
        (FEATURE_MIG_DATA_CRC, true) => {
            need_reply(DeviceFeature::SIZE + 8)?;
            reply.put(&u32::from(s.mig_data_crc).to_le_bytes());
            reply.put(&0u32.to_le_bytes());
        }
        (FEATURE_PRECOPY_INFO, true) => {
            // The second layout (with flags) once the client opted in.
            let v2 = s.precopy_info_v2;
            need_reply(DeviceFeature::SIZE + if v2 { 24 } else { 16 })?;
            let p = core.precopy_info()?;
            reply.put(&p.initial_bytes.to_le_bytes());
            reply.put(&p.dirty_bytes.to_le_bytes());
            if v2 {
                let flags = if p.reinit { PRECOPY_FLAG_REINIT } else { 0 };
                reply.put(&flags.to_le_bytes());
                reply.put(&0u32.to_le_bytes());
            }
        }
        (FEATURE_PRECOPY_INFO_V2, false) => {
            s.precopy_info_v2 = true;
            reply.put(data);
        }
        (FEATURE_THROTTLE, true) => {
            need_reply(DeviceFeature::SIZE + FeatureThrottle::SIZE)?;
            let t = FeatureThrottle {
                percent: core.throttle(),
                reserved: 0,
            };
            reply.put(&t.to_bytes());
        }
        (FEATURE_THROTTLE, false) => {
            let t = FeatureThrottle::decode(data).map_err(|e| {
                DeviceError::inval(format!("THROTTLE: {e} (want {{u32 percent, u32 0}})"))
            })?;
            core.set_throttle(t.percent)?;
            tracing::info!(percent = t.percent, "device throttle set");
            reply.put(data);
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
