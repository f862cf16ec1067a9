//! The older migration protocols served next to v2: the v1 (Linux 5.8)
//! migration region, the 2018 seed proposal's migration region (both
//! front-ends live in `vfio_migrate_device::region`), and the old vfio-user
//! `DIRTY_PAGES` command (14) that v1 clients use for DMA dirty logging.
//!
//! `DIRTY_PAGES` wire layout (old vfio-user spec, command 14):
//!
//! - request: `{argsz u32, flags u32}` with exactly one of START (1), STOP
//!   (2), GET_BITMAP (4); GET_BITMAP is followed by one bitmap range
//!   `{iova u64, size u64, pgsize u64, bitmap_size u64}`.
//! - reply: the `{argsz, flags}` head (argsz = the reply size); for
//!   GET_BITMAP the range again, then `bitmap_size` bytes of bitmap (bit n =
//!   page n from `iova`, LSB first in 64-bit little-endian words; read and
//!   cleared).
//!
//! START logs every mapped DMA window at 4096-byte pages (the VERSION
//! `migration.pgsize` default, the only size this server logs at for
//! DIRTY_PAGES); GET_BITMAP must use that page size. Errors: `EINVAL` for a short or inconsistent request (other
//! flags, `argsz` too small, `bitmap_size` not matching the range, a range
//! outside the log), `E2BIG` for a bitmap above `max_data_xfer_size`,
//! `EBUSY` for START while logging is on.

use std::os::fd::OwnedFd;
use vfio_migrate_abi::kernel::bitmap_bytes;
use vfio_migrate_abi::v1::{
    DirtyBitmapRange, DirtyPages, DIRTY_PAGES_GET_BITMAP, DIRTY_PAGES_START, DIRTY_PAGES_STOP,
};
use vfio_migrate_abi::vfio_user::Command;
use vfio_migrate_device::region::{SeedRegion, V1Region};
use vfio_migrate_device::{Device, DeviceCore, DeviceError, DeviceResult, Region};

use super::dispatch::{decode, no_fds};
use super::session::{CommandHandler, RegionHandler, Reply};

/// Region index of the v1 migration region when served.
pub const V1_REGION_INDEX: u32 = 9;
/// Region index of the seed migration region when served.
pub const SEED_REGION_INDEX: u32 = 10;
/// Page size of the old DIRTY_PAGES log (the VERSION default `pgsize`).
pub const DIRTY_PAGE_SIZE: u64 = 4096;

/// The v1 migration region as a server region.
pub struct V1Handler(pub V1Region);

impl<D: Device> RegionHandler<D> for V1Handler {
    fn region(&self) -> Region {
        self.0.region()
    }
    fn read(&mut self, core: &mut DeviceCore<D>, offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
        self.0.read(core, offset, buf)
    }
    fn write(&mut self, core: &mut DeviceCore<D>, offset: u64, data: &[u8]) -> DeviceResult<()> {
        self.0.write(core, offset, data)
    }
    fn reset(&mut self) {
        self.0.reset();
    }
    fn disconnected(&mut self, core: &mut DeviceCore<D>) {
        // Whatever was staged belongs to the client that left; the device
        // itself is put back by `DeviceCore::recover_orphaned`.
        let _ = core;
        self.0.reset();
    }
}

/// The seed migration region as a server region.
pub struct SeedHandler(pub SeedRegion);

impl<D: Device> RegionHandler<D> for SeedHandler {
    fn region(&self) -> Region {
        self.0.region()
    }
    fn read(&mut self, core: &mut DeviceCore<D>, offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
        self.0.read(core, offset, buf)
    }
    fn write(&mut self, core: &mut DeviceCore<D>, offset: u64, data: &[u8]) -> DeviceResult<()> {
        self.0.write(core, offset, data)
    }
    fn reset(&mut self) {
        self.0.reset();
    }
    fn disconnected(&mut self, core: &mut DeviceCore<D>) {
        // The session dropped the DMA windows and their log.
        self.0.logging_dropped();
        if let Some(what) = self.0.client_gone(core) {
            tracing::warn!("client gone mid-migration: {what}");
        }
    }
}

/// The old vfio-user `DIRTY_PAGES` command over the device's `DmaSpace`.
pub struct DirtyPagesHandler {
    /// Largest bitmap one reply may carry.
    pub max_bitmap: usize,
}

impl<D: Device> CommandHandler<D> for DirtyPagesHandler {
    fn command(&self) -> u16 {
        Command::DirtyPages as u16
    }

    fn handle(
        &mut self,
        core: &mut DeviceCore<D>,
        payload: &[u8],
        fds: Vec<OwnedFd>,
        reply: &mut Reply,
    ) -> DeviceResult<()> {
        no_fds("DIRTY_PAGES", &fds)?;
        let head = decode(payload, "DIRTY_PAGES", DirtyPages::SIZE, DirtyPages::decode)?;
        match head.flags {
            DIRTY_PAGES_START => {
                check_argsz(head.argsz, DirtyPages::SIZE)?;
                core.dma().logging_start(DIRTY_PAGE_SIZE, &[])?;
                reply.put(&payload[..DirtyPages::SIZE]);
                Ok(())
            }
            DIRTY_PAGES_STOP => {
                check_argsz(head.argsz, DirtyPages::SIZE)?;
                core.dma().logging_stop();
                reply.put(&payload[..DirtyPages::SIZE]);
                Ok(())
            }
            DIRTY_PAGES_GET_BITMAP => {
                let body = &payload[DirtyPages::SIZE..];
                let r = decode(
                    body,
                    "DIRTY_PAGES GET_BITMAP range",
                    DirtyBitmapRange::SIZE,
                    DirtyBitmapRange::decode,
                )?;
                if r.pgsize != DIRTY_PAGE_SIZE {
                    return Err(DeviceError::inval(format!(
                        "DIRTY_PAGES pgsize {} differs from the logging page size {DIRTY_PAGE_SIZE}",
                        r.pgsize
                    )));
                }
                let need = bitmap_bytes(r.size, r.pgsize).expect("page size checked");
                if r.bitmap_size != need {
                    return Err(DeviceError::inval(format!(
                        "DIRTY_PAGES bitmap_size {} does not match the {need} bytes {:#x}+{:#x} needs",
                        r.bitmap_size, r.iova, r.size
                    )));
                }
                if need as usize > self.max_bitmap {
                    return Err(DeviceError::new(
                        libc::E2BIG,
                        format!(
                            "DIRTY_PAGES bitmap of {need} bytes exceeds max_data_xfer_size {}; ask for a smaller range",
                            self.max_bitmap
                        ),
                    ));
                }
                let total = DirtyPages::SIZE + DirtyBitmapRange::SIZE + need as usize;
                check_argsz(head.argsz, total)?;
                reply.put(
                    &DirtyPages {
                        argsz: total as u32,
                        flags: head.flags,
                    }
                    .to_bytes(),
                );
                reply.put(&body[..DirtyBitmapRange::SIZE]);
                let bm = reply.grow(need as usize);
                bm.fill(0);
                core.dma().logging_report(r.iova, r.size, r.pgsize, bm)
            }
            other => Err(DeviceError::inval(format!(
                "DIRTY_PAGES flags {other:#x}: exactly one of START (1), STOP (2), GET_BITMAP (4)"
            ))),
        }
    }
}

fn check_argsz(argsz: u32, min: usize) -> DeviceResult<()> {
    if (argsz as usize) < min {
        return Err(DeviceError::inval(format!(
            "DIRTY_PAGES argsz {argsz} is smaller than the {min} bytes the reply needs"
        )));
    }
    Ok(())
}
