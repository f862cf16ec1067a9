//! [`MigrationDevice`] over the 2018 seed proposal's migration region of a
//! vfio-user device, driven exactly as `docs/seed-protocol.md` specifies.
//!
//! v2 requests map onto seed states:
//!
//! | v2 request | from seed state | writes |
//! |---|---|---|
//! | PRE_COPY(_P2P) | RUNNING, FAILED, CANCELLED / SETUP | SETUP, PRECOPY / PRECOPY |
//! | STOP_COPY | SETUP, PRECOPY / RUNNING | STOPNCOPY / SETUP, STOPNCOPY |
//! | STOP | STOPNCOPY / RESUME / SETUP, PRECOPY / RUNNING | SAVE_COMPLETED / RESUME_COMPLETED / STOPNCOPY, SAVE_COMPLETED / SETUP, STOPNCOPY, SAVE_COMPLETED |
//! | RESUMING | RUNNING, FAILED, CANCELLED / anything else | RESUME / CANCELLED, RESUME |
//! | RUNNING(_P2P) | a saving state or SAVE_COMPLETED (rollback) / RESUME / RESUME_COMPLETED, FAILED, CANCELLED | FAILED, RUNNING / RESUME_COMPLETED, RUNNING / RUNNING |
//!
//! The seed has no P2P states: the migration flags reported are
//! STOP_COPY|PRE_COPY without P2P, so the engine never asks for them.
//! FAILED keeps the source's state and runs it on; on a resuming device it
//! discards the partial state (the server resets it).
//!
//! Saving: write `threshold_size` = the caller's buffer size (when it
//! changes), then Get pending bytes (read `precopy_only`, `compatible`,
//! `postcopy_only`), Get buffer (read `data.offset`), read `data.size` and
//! the data. Resuming: write the data at the section start, then
//! `data.size` (Set buffer). DMA dirty logging runs from MIGRATION_SETUP on
//! (the seed has no separate start: starting the log enters SETUP) and is
//! read with `dirty_pfns` (`start_addr`/`total` in, `copied` out, the
//! bitmap at the section start, repeated while `copied < total`).

use vfio_migrate_abi::seed::{self as abi, SeedState};
use vfio_migrate_backend::{
    BackendError, DeviceDescriptor, DeviceStatus, DmaDirtyLog, DmaMapping, DmaWindow, IovaRange,
    MigState, MigrationDevice, PrecopyInfo, RegionAccess, Result, MIGRATION_PRE_COPY,
    MIGRATION_STOP_COPY,
};

use super::{Client, MigRegion};

/// Dirty page size of the seed's `dirty_pfns` (VERSION `pgsize`).
const PAGE: u64 = 4096;

/// A device driven through its seed migration region.
pub struct SeedDevice {
    c: Client,
    r: MigRegion,
    /// The seed state as last read or written.
    state: SeedState,
    /// `threshold_size` as last written.
    threshold: Option<u64>,
    /// The last migration on this device was a resume (FAILED/CANCELLED
    /// then mean a stopped, reset device).
    resuming_side: bool,
    logging: bool,
    descriptor: Option<DeviceDescriptor>,
}

use SeedState::*;

impl SeedDevice {
    /// Uses the seed region of `c`, through its mmap when `mmap` and the
    /// server passes the region fd. Fails when the device has none.
    pub fn new(mut c: Client, mmap: bool) -> Result<Self> {
        let r = MigRegion::find(&mut c, (abi::REGION_TYPE, abi::REGION_SUBTYPE), mmap)?
            .ok_or_else(|| {
                BackendError::unsupported(
                    format!("{}: seed migration", c.name),
                    "the server offers no seed migration region (type 1<<30, subtype 1): serve it with --protocol seed or all",
                )
            })?;
        let mut d = Self {
            c,
            r,
            state: Running,
            threshold: Option::None,
            resuming_side: false,
            logging: false,
            descriptor: Option::None,
        };
        d.read_state()?;
        Ok(d)
    }

    /// The connection (for raw requests).
    pub fn client(&mut self) -> &mut Client {
        &mut self.c
    }

    /// The region in use.
    pub fn region(&self) -> &MigRegion {
        &self.r
    }

    /// Reads `device_state`.
    pub fn read_state(&mut self) -> Result<SeedState> {
        let v = self.r.read_u32(&mut self.c, abi::OFF_DEVICE_STATE)?;
        self.state = SeedState::from_u32(v)
            .map_err(|e| BackendError::protocol("seed device_state", e.to_string()))?;
        Ok(self.state)
    }

    /// Writes `device_state` (one seed transition).
    pub fn go(&mut self, s: SeedState) -> Result<()> {
        self.r
            .write_u32(&mut self.c, abi::OFF_DEVICE_STATE, s as u32)
            .map_err(|e| {
                super::migration::rename(
                    e,
                    format!("seed transition {} -> {}", self.state.name(), s.name()),
                )
            })?;
        self.state = s;
        match s {
            Resume => self.resuming_side = true,
            Setup => self.resuming_side = false,
            SaveCompleted | Failed | Cancelled => self.logging = false,
            _ => {}
        }
        Ok(())
    }

    fn field(&mut self, off: u64) -> Result<u64> {
        self.r.read_u64(&mut self.c, off)
    }

    /// Get pending bytes: `[precopy_only, compatible, postcopy_only]`.
    pub fn pending(&mut self) -> Result<[u64; 3]> {
        Ok([
            self.field(abi::OFF_PENDING_PRECOPY_ONLY)?,
            self.field(abi::OFF_PENDING_COMPATIBLE)?,
            self.field(abi::OFF_PENDING_POSTCOPY_ONLY)?,
        ])
    }

    fn path_to(&self, new: MigState) -> Result<Vec<SeedState>> {
        let s = self.state;
        let v = match new {
            MigState::PreCopy | MigState::PreCopyP2p => match s {
                None | Running | Failed | Cancelled => vec![Setup, Precopy],
                Setup => vec![Precopy],
                Precopy => vec![],
                _ => return Err(self.no_path(new)),
            },
            MigState::StopCopy => match s {
                Setup | Precopy => vec![StopNCopy],
                None | Running | Failed | Cancelled => vec![Setup, StopNCopy],
                StopNCopy => vec![],
                _ => return Err(self.no_path(new)),
            },
            MigState::Stop => match s {
                StopNCopy => vec![SaveCompleted],
                Resume => vec![ResumeCompleted],
                Setup | Precopy => vec![StopNCopy, SaveCompleted],
                None | Running => vec![Setup, StopNCopy, SaveCompleted],
                Failed | Cancelled if self.resuming_side => vec![],
                Failed | Cancelled => vec![Setup, StopNCopy, SaveCompleted],
                SaveCompleted | ResumeCompleted => vec![],
            },
            MigState::Resuming => match s {
                None | Running | Failed | Cancelled => vec![Resume],
                Resume => vec![],
                _ => vec![Cancelled, Resume],
            },
            MigState::Running | MigState::RunningP2p => match s {
                None | ResumeCompleted | Failed | Cancelled => vec![Running],
                Running => vec![],
                Resume => vec![ResumeCompleted, Running],
                Setup | Precopy | StopNCopy | SaveCompleted => vec![Failed, Running],
            },
            MigState::Error => return Err(self.no_path(new)),
        };
        Ok(v)
    }

    fn no_path(&self, new: MigState) -> BackendError {
        BackendError::refused(
            format!("set state {new}"),
            libc::EINVAL,
            format!(
                "the seed protocol has no way from {} to {new}",
                self.state.name()
            ),
        )
    }
}

impl MigrationDevice for SeedDevice {
    fn name(&self) -> String {
        self.c.name.clone()
    }
    fn protocol(&self) -> &'static str {
        "vfio-user seed region"
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
        Ok(match self.read_state()? {
            None | Running => MigState::Running,
            Setup | Precopy => MigState::PreCopy,
            StopNCopy => MigState::StopCopy,
            SaveCompleted | ResumeCompleted => MigState::Stop,
            Resume => MigState::Resuming,
            Failed | Cancelled if self.resuming_side => MigState::Stop,
            Failed | Cancelled => MigState::Running,
        })
    }
    fn set_state(&mut self, new: MigState) -> Result<()> {
        for s in self.path_to(new)? {
            self.go(s)?;
        }
        Ok(())
    }
    fn read_data(&mut self, buf: &mut [u8]) -> Result<usize> {
        let want = (buf.len() as u64).min(self.r.section_len);
        if want == 0 {
            return Ok(0);
        }
        if self.threshold != Some(want) {
            self.r
                .write_u64(&mut self.c, abi::OFF_PENDING_THRESHOLD_SIZE, want)?;
            self.threshold = Some(want);
        }
        for _ in 0..2 {
            let [pre, compat, post] = self.pending()?;
            let saving_now = if matches!(self.state, Setup | Precopy) {
                pre + compat
            } else {
                pre + compat + post
            };
            if saving_now == 0 {
                return Ok(0);
            }
            let off = self.field(abi::OFF_DATA_OFFSET)?;
            let size = self.field(abi::OFF_DATA_SIZE)?;
            let (so, sl) = (self.r.section_offset, self.r.section_len);
            if size > want || off < so || off.checked_add(size).is_none_or(|e| e > so + sl) {
                return Err(BackendError::protocol(
                    "seed get buffer",
                    format!("{size} bytes at {off:#x} for a {want}-byte threshold in the section {so:#x}+{sl:#x}"),
                ));
            }
            if size > 0 {
                self.r
                    .read_data(&mut self.c, off, &mut buf[..size as usize])?;
                return Ok(size as usize);
            }
            // 0 bytes staged: nothing right now, or the end (pending reads
            // 0 next in STOPNCOPY).
        }
        Ok(0)
    }
    fn write_data(&mut self, data: &[u8]) -> Result<()> {
        let at = self.r.section_offset;
        for piece in data.chunks(self.r.section_len as usize) {
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
        let [pre, compat, _] = self.pending()?;
        Ok(PrecopyInfo {
            initial_bytes: pre + compat,
            dirty_bytes: 0,
            reinit: false,
        })
    }
    fn stop_copy_size(&mut self) -> Result<Option<u64>> {
        if !matches!(self.state, Setup | Precopy | StopNCopy) {
            return Ok(Option::None);
        }
        let p = self.pending()?;
        Ok(Some(p.iter().sum()))
    }
    fn preferred_chunk(&self) -> usize {
        self.r.section_len as usize
    }

    fn reset(&mut self) -> Result<()> {
        self.c.reset()?;
        self.threshold = Option::None;
        self.resuming_side = false;
        self.logging = false;
        self.read_state()?;
        Ok(())
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

impl DmaDirtyLog for SeedDevice {
    fn dma_logging_start(&mut self, page_size: u64, ranges: &[IovaRange]) -> Result<()> {
        let _ = ranges; // the seed logs every window mapped at SETUP
        if page_size != PAGE {
            return Err(BackendError::unsupported(
                "seed dirty logging",
                format!("page size {page_size}: the seed's dirty_pfns use {PAGE}-byte pages"),
            ));
        }
        match self.state {
            Setup | Precopy | StopNCopy => {}
            None | Running | Failed | Cancelled => self.go(Setup)?,
            s => {
                return Err(BackendError::refused(
                    "seed dirty logging",
                    libc::EINVAL,
                    format!("logging starts with MIGRATION_SETUP, not from {}", s.name()),
                ))
            }
        }
        self.logging = true;
        Ok(())
    }
    fn dma_logging_report(
        &mut self,
        iova: u64,
        length: u64,
        page_size: u64,
        bitmap: &mut [u8],
    ) -> Result<()> {
        let step = "seed get dirty pages bitmap";
        if !self.logging {
            return Err(BackendError::refused(
                step,
                libc::EINVAL,
                "dirty logging is off (it runs from MIGRATION_SETUP)",
            ));
        }
        if page_size != PAGE || !iova.is_multiple_of(PAGE) {
            return Err(BackendError::refused(
                step,
                libc::EINVAL,
                format!("{iova:#x} with {page_size}-byte pages: the seed logs {PAGE}-byte pages from page-aligned addresses"),
            ));
        }
        let total = length.div_ceil(PAGE);
        let need = (total.div_ceil(64) * 8) as usize;
        if bitmap.len() < need {
            return Err(BackendError::refused(
                step,
                libc::EINVAL,
                format!("bitmap has {} bytes, {need} needed", bitmap.len()),
            ));
        }
        let mut done = 0u64;
        let mut scratch = Vec::new();
        while done < total {
            self.r
                .write_u64(&mut self.c, abi::OFF_DIRTY_START_ADDR, iova + done * PAGE)?;
            self.r
                .write_u64(&mut self.c, abi::OFF_DIRTY_TOTAL, total - done)?;
            let copied = self.field(abi::OFF_DIRTY_COPIED)?;
            if copied == 0 || copied > total - done {
                return Err(BackendError::protocol(
                    step,
                    format!("copied {copied} of {} pages", total - done),
                ));
            }
            let bytes = (copied.div_ceil(64) * 8) as usize;
            scratch.resize(bytes, 0);
            let at = self.r.section_offset;
            self.r.read_data(&mut self.c, at, &mut scratch)?;
            // `copied` is a multiple of 64 except for the last piece.
            let o = (done / 8) as usize;
            let n = bytes.min(bitmap.len() - o);
            bitmap[o..o + n].copy_from_slice(&scratch[..n]);
            done += copied;
        }
        Ok(())
    }
    fn dma_logging_stop(&mut self) -> Result<()> {
        // The log stops at SAVE_COMPLETED, FAILED or CANCELLED. Stopping it
        // during pre-copy cancels the migration (the device runs on).
        if self.logging && matches!(self.state, Setup | Precopy) {
            self.go(Cancelled)?;
            self.go(Running)?;
        }
        self.logging = false;
        Ok(())
    }
}

impl RegionAccess for SeedDevice {
    fn region_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.c.region_read(index, offset, buf)
    }
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<()> {
        self.c.region_write(index, offset, data)
    }
}

impl DmaMapping for SeedDevice {
    fn dma_map(&mut self, w: DmaWindow<'_>) -> Result<()> {
        DmaMapping::dma_map(&mut self.c, w)
    }
    fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<()> {
        self.c.dma_unmap_window(iova, size)
    }
}
