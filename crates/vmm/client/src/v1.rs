//! [`MigrationDevice`] over the v1 (Linux 5.8) migration region of a
//! vfio-user device, with DMA dirty logging through the old `DIRTY_PAGES`
//! command.
//!
//! The engine speaks v2 states; they map onto v1 `device_state` bits:
//! RUNNING (and RUNNING_P2P) → `RUNNING`, PRE_COPY (and PRE_COPY_P2P) →
//! `SAVING|RUNNING`, STOP_COPY → `SAVING`, STOP → 0, RESUMING →
//! `RESUMING`. v1 has no P2P states, so the migration flags reported are
//! STOP_COPY|PRE_COPY without P2P and the engine never asks for them.
//!
//! Saving: read `pending_bytes`; 0 = nothing (the end in `SAVING`); else
//! read `data_offset` (the server stages the next chunk), `data_size`, then
//! the data. A staged chunk larger than the caller's buffer is handed out
//! over several calls. Resuming: read `data_offset`, write a section's
//! worth of data there, write `data_size` (the server consumes it), repeat.

use vfio_migrate_abi::kernel::bitmap_bytes;
use vfio_migrate_abi::v1 as abi;
use vfio_migrate_abi::v1::{DirtyBitmapRange, DirtyPages};
use vfio_migrate_abi::vfio_user::Command;
use vfio_migrate_backend::{
    BackendError, DeviceDescriptor, DeviceStatus, DmaDirtyLog, DmaMapping, DmaWindow, IovaRange,
    MigState, MigrationDevice, PrecopyInfo, RegionAccess, Result, MIGRATION_PRE_COPY,
    MIGRATION_STOP_COPY,
};

use super::{Client, MigRegion};

/// Dirty page size of the old `DIRTY_PAGES` log (VERSION `pgsize`).
const PAGE: u64 = 4096;

/// A device driven through its v1 migration region.
pub struct V1Device {
    c: Client,
    r: MigRegion,
    /// Region offset and length of the staged chunk not yet handed out.
    staged: (u64, u64),
    /// `data_offset` while resuming (read once per RESUMING).
    resume_at: Option<u64>,
    descriptor: Option<DeviceDescriptor>,
}

impl V1Device {
    /// Uses the v1 region of `c`, through its mmap when `mmap` and the
    /// server passes the region fd. Fails when the device has none.
    pub fn new(mut c: Client, mmap: bool) -> Result<Self> {
        let r = MigRegion::find(&mut c, (abi::REGION_TYPE, abi::REGION_SUBTYPE), mmap)?
            .ok_or_else(|| {
                BackendError::unsupported(
                    format!("{}: v1 migration", c.name),
                    "the server offers no v1 migration region (type 3, subtype 1): serve it with --protocol v1 or all",
                )
            })?;
        Ok(Self {
            c,
            r,
            staged: (0, 0),
            resume_at: None,
            descriptor: None,
        })
    }

    /// The connection (for raw requests).
    pub fn client(&mut self) -> &mut Client {
        &mut self.c
    }

    /// The region in use.
    pub fn region(&self) -> &MigRegion {
        &self.r
    }

    fn field(&mut self, off: u64) -> Result<u64> {
        self.r.read_u64(&mut self.c, off)
    }

    fn dirty_pages(&mut self, flags: u32, range: Option<DirtyBitmapRange>) -> Result<Vec<u8>> {
        let step = match flags {
            abi::DIRTY_PAGES_START => "DIRTY_PAGES START",
            abi::DIRTY_PAGES_STOP => "DIRTY_PAGES STOP",
            _ => "DIRTY_PAGES GET_BITMAP",
        };
        let extra = range.map_or(0, |r| DirtyBitmapRange::SIZE + r.bitmap_size as usize);
        let mut req = DirtyPages {
            argsz: (DirtyPages::SIZE + extra) as u32,
            flags,
        }
        .to_bytes()
        .to_vec();
        if let Some(r) = range {
            req.extend_from_slice(&r.to_bytes());
        }
        let (_, n, _) = self
            .c
            .call(step, Command::DirtyPages as u16, &[&req], &[])?;
        Ok(self.c.scratch[..n].to_vec())
    }
}

/// v1 bits for a v2 state (P2P states map to their nearest v1 state).
fn bits(s: MigState) -> Result<u32> {
    Ok(match s {
        MigState::Running | MigState::RunningP2p => abi::STATE_RUNNING,
        MigState::PreCopy | MigState::PreCopyP2p => abi::STATE_SAVING | abi::STATE_RUNNING,
        MigState::StopCopy => abi::STATE_SAVING,
        MigState::Stop => 0,
        MigState::Resuming => abi::STATE_RESUMING,
        MigState::Error => {
            return Err(BackendError::refused(
                "set state ERROR",
                libc::EINVAL,
                "the error state cannot be requested",
            ))
        }
    })
}

impl MigrationDevice for V1Device {
    fn name(&self) -> String {
        self.c.name.clone()
    }
    fn protocol(&self) -> &'static str {
        "vfio-user v1 region"
    }
    fn descriptor(&mut self) -> Result<DeviceDescriptor> {
        super::migregion::cached_descriptor(
            &mut self.c,
            &mut self.descriptor,
            MIGRATION_STOP_COPY | MIGRATION_PRE_COPY,
        )
    }
    fn migration_flags(&mut self) -> Result<u64> {
        Ok(MIGRATION_STOP_COPY | MIGRATION_PRE_COPY)
    }
    fn state(&mut self) -> Result<MigState> {
        let v = self.r.read_u32(&mut self.c, abi::OFF_DEVICE_STATE)?;
        Ok(match v {
            0 => MigState::Stop,
            abi::STATE_RUNNING => MigState::Running,
            3 => MigState::PreCopy,
            abi::STATE_SAVING => MigState::StopCopy,
            abi::STATE_RESUMING => MigState::Resuming,
            abi::STATE_ERROR => MigState::Error,
            other => {
                return Err(BackendError::protocol(
                    "v1 device_state",
                    format!("undefined state bits {other:#x}"),
                ))
            }
        })
    }
    fn set_state(&mut self, new: MigState) -> Result<()> {
        let b = bits(new)?;
        self.staged = (0, 0);
        self.resume_at = None;
        self.r
            .write_u32(&mut self.c, abi::OFF_DEVICE_STATE, b)
            .map_err(|e| super::migration::rename(e, format!("set state {new} (v1 bits {b:#x})")))
    }
    fn read_data(&mut self, buf: &mut [u8]) -> Result<usize> {
        // size 0: nothing right now (pre-copy), or the end was just seen
        // (stop-and-copy: pending reads 0 next). Ask twice at most.
        let mut tries = 0;
        while self.staged.1 == 0 && tries < 2 {
            tries += 1;
            if self.field(abi::OFF_PENDING_BYTES)? == 0 {
                return Ok(0);
            }
            let off = self.field(abi::OFF_DATA_OFFSET)?;
            let size = self.field(abi::OFF_DATA_SIZE)?;
            let (so, sl) = (self.r.section_offset, self.r.section_len);
            if off < so || off.checked_add(size).is_none_or(|e| e > so + sl) {
                return Err(BackendError::protocol(
                    "v1 save",
                    format!("staged data {off:#x}+{size:#x} is outside the data section {so:#x}+{sl:#x}"),
                ));
            }
            self.staged = (off, size);
        }
        if self.staged.1 == 0 {
            return Ok(0);
        }
        let n = (self.staged.1 as usize).min(buf.len());
        self.r
            .read_data(&mut self.c, self.staged.0, &mut buf[..n])?;
        self.staged.0 += n as u64;
        self.staged.1 -= n as u64;
        Ok(n)
    }
    fn write_data(&mut self, data: &[u8]) -> Result<()> {
        let at = match self.resume_at {
            Some(a) => a,
            None => {
                let a = self.field(abi::OFF_DATA_OFFSET)?;
                self.resume_at = Some(a);
                a
            }
        };
        let room = (self.r.section_offset + self.r.section_len).saturating_sub(at);
        if room == 0 {
            return Err(BackendError::protocol(
                "v1 resume",
                format!("data_offset {at:#x} leaves no room in the data section"),
            ));
        }
        for piece in data.chunks(room as usize) {
            self.r.write_data(&mut self.c, at, piece)?;
            self.r
                .write_u64(&mut self.c, abi::OFF_DATA_SIZE, piece.len() as u64)?;
        }
        Ok(())
    }
    fn precopy_initial_known(&self) -> bool {
        // One pending count: initial and dirty data together.
        false
    }
    fn precopy_info(&mut self) -> Result<PrecopyInfo> {
        let p = self.field(abi::OFF_PENDING_BYTES)?;
        Ok(PrecopyInfo {
            initial_bytes: p + self.staged.1,
            dirty_bytes: 0,
            reinit: false,
        })
    }
    fn stop_copy_size(&mut self) -> Result<Option<u64>> {
        // v1 tells pending bytes of the current phase only.
        Ok(None)
    }
    fn preferred_chunk(&self) -> usize {
        self.r.section_len as usize
    }

    fn reset(&mut self) -> Result<()> {
        self.staged = (0, 0);
        self.resume_at = None;
        self.c.reset()
    }

    fn status(&mut self) -> Result<Option<DeviceStatus>> {
        self.c.device_status()
    }

    fn dma_log(&mut self) -> Option<&mut dyn DmaDirtyLog> {
        Some(self)
    }

    fn regions(&mut self) -> Option<&mut dyn RegionAccess> {
        Some(self)
    }

    fn dma_mapping(&mut self) -> Option<&mut dyn DmaMapping> {
        Some(self)
    }
}

impl DmaDirtyLog for V1Device {
    fn dma_logging_start(&mut self, page_size: u64, ranges: &[IovaRange]) -> Result<()> {
        let _ = ranges; // DIRTY_PAGES logs every mapped window
        if page_size != PAGE {
            return Err(BackendError::unsupported(
                "DIRTY_PAGES START",
                format!("page size {page_size}: the v1 dirty log uses {PAGE}-byte pages"),
            ));
        }
        self.dirty_pages(abi::DIRTY_PAGES_START, None)?;
        Ok(())
    }
    fn dma_logging_report(
        &mut self,
        iova: u64,
        length: u64,
        page_size: u64,
        bitmap: &mut [u8],
    ) -> Result<()> {
        let step = "DIRTY_PAGES GET_BITMAP";
        if page_size != PAGE {
            return Err(BackendError::unsupported(
                step,
                format!("page size {page_size}: the v1 dirty log uses {PAGE}-byte pages"),
            ));
        }
        let need = bitmap_bytes(length, PAGE).expect("page size") as usize;
        if bitmap.len() < need {
            return Err(BackendError::refused(
                step,
                libc::EINVAL,
                format!("bitmap has {} bytes, {need} needed", bitmap.len()),
            ));
        }
        let limit = self.c.max_recv_chunk().saturating_sub(64).max(8);
        let pages_per = ((limit / 8) * 64) as u64;
        let total = length.div_ceil(PAGE);
        let mut page = 0u64;
        while page < total {
            let n = (total - page).min(pages_per);
            let size = if page + n == total {
                length - page * PAGE
            } else {
                n * PAGE
            };
            let bytes = bitmap_bytes(size, PAGE).expect("page size");
            let r = DirtyBitmapRange {
                iova: iova + page * PAGE,
                size,
                pgsize: PAGE,
                bitmap_size: bytes,
            };
            let reply = self.dirty_pages(abi::DIRTY_PAGES_GET_BITMAP, Some(r))?;
            let head = DirtyPages::SIZE + DirtyBitmapRange::SIZE;
            if reply.len() < head + bytes as usize {
                return Err(BackendError::protocol(
                    step,
                    format!(
                        "reply of {} bytes, {} expected",
                        reply.len(),
                        head + bytes as usize
                    ),
                ));
            }
            let at = (page / 8) as usize;
            bitmap[at..at + bytes as usize].copy_from_slice(&reply[head..head + bytes as usize]);
            page += n;
        }
        Ok(())
    }
    fn dma_logging_stop(&mut self) -> Result<()> {
        self.dirty_pages(abi::DIRTY_PAGES_STOP, None)?;
        Ok(())
    }
}

impl RegionAccess for V1Device {
    fn region_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.c.region_read(index, offset, buf)
    }
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<()> {
        self.c.region_write(index, offset, data)
    }
}

impl DmaMapping for V1Device {
    fn dma_map(&mut self, w: DmaWindow<'_>) -> Result<()> {
        DmaMapping::dma_map(&mut self.c, w)
    }
    fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<()> {
        self.c.dma_unmap_window(iova, size)
    }
}
