//! The 2018 seed proposal's migration region (type `1 << 30`, subtype 1)
//! over a [`DeviceCore`]. The exact trigger semantics are specified in
//! `docs/seed-protocol.md`; in short:
//!
//! | access | action |
//! |---|---|
//! | write `device_state` | Set state: synchronous, EINVAL on a transition the table forbids |
//! | read `pending.precopy_only` | Get pending bytes: computes all three pending fields at once |
//! | read `pending.compatible` / `postcopy_only` | the values of the last Get pending bytes |
//! | read/write `pending.threshold_size` | the user buffer size; staging never exceeds it |
//! | read `data.offset` (saving) | Get buffer: stages ≤ threshold bytes into the data section; returns its offset |
//! | read `data.size` (saving) | bytes staged by the last Get buffer |
//! | write `data.offset` (resuming) | where the user wrote the next buffer (a region offset in the data section) |
//! | write `data.size` (resuming) | Set buffer: the device consumes that many bytes at `data.offset` |
//! | write `dirty_pfns.start_addr` / `total` | the IOVA (page-aligned) and page count asked for |
//! | read `dirty_pfns.copied` | Get dirty pages bitmap: read-and-clears the bitmap of `min(total, 8 × section)` pages from `start_addr` into the data section; returns that count |
//!
//! States map onto v2: SETUP/PRECOPY → PRE_COPY (RUNNING on a device
//! without pre-copy) with DMA dirty logging on; STOPNCOPY → STOP_COPY;
//! SAVE_COMPLETED → STOP; RESUME → RESUMING; RESUME_COMPLETED → STOP
//! (validates the loaded state); RUNNING → RUNNING; FAILED and CANCELLED →
//! RUNNING with the state intact on the source side, and reset + STOP on the
//! resuming side (a partial state never runs).

use super::{field_at, region_desc, section_access, stage, DataSection, DATA_SECTION_OFFSET};
use crate::core::DeviceCore;
use crate::device::{Device, Region};
use crate::error::{DeviceError, DeviceResult};
use vfio_migrate_abi::kernel::{MigState, MIGRATION_PRE_COPY};
use vfio_migrate_abi::seed::{self as abi, SeedState};

/// Dirty-page granularity of the seed region.
pub const SEED_PAGE_SIZE: u64 = 4096;

const FIELDS: [(u64, usize); 10] = [
    (abi::OFF_DEVICE_STATE, 4),
    (abi::OFF_PENDING_PRECOPY_ONLY, 8),
    (abi::OFF_PENDING_COMPATIBLE, 8),
    (abi::OFF_PENDING_POSTCOPY_ONLY, 8),
    (abi::OFF_PENDING_THRESHOLD_SIZE, 8),
    (abi::OFF_DATA_OFFSET, 8),
    (abi::OFF_DATA_SIZE, 8),
    (abi::OFF_DIRTY_START_ADDR, 8),
    (abi::OFF_DIRTY_TOTAL, 8),
    (abi::OFF_DIRTY_COPIED, 8),
];

/// The seed migration region front-end.
pub struct SeedRegion {
    index: u32,
    section: DataSection,
    state: SeedState,
    threshold: u64,
    pending: [u64; 3],
    data_offset: u64,
    data_size: u64,
    end_seen: bool,
    dirty_start: u64,
    dirty_total: u64,
    dirty_copied: u64,
    /// DMA logging was started by SETUP (and is ours to stop).
    logging: bool,
}

use SeedState::*;

/// Whether the seed protocol allows `from → to` (same state: a no-op).
pub fn allowed(from: SeedState, to: SeedState) -> bool {
    if from == to {
        return to != None;
    }
    matches!(
        (from, to),
        (None, Running)
            | (None, Resume)
            | (Running, Setup)
            | (Running, Resume)
            | (Setup, Precopy)
            | (Setup, StopNCopy)
            | (Precopy, StopNCopy)
            | (StopNCopy, SaveCompleted)
            | (Resume, ResumeCompleted)
            | (ResumeCompleted, Running)
            | (Failed, Running)
            | (Failed, Setup)
            | (Failed, Resume)
            | (Cancelled, Running)
            | (Cancelled, Setup)
            | (Cancelled, Resume)
    ) || (matches!(to, Failed | Cancelled)
        && matches!(
            from,
            Running
                | Setup
                | Precopy
                | StopNCopy
                | SaveCompleted
                | Resume
                | ResumeCompleted
                | Failed
                | Cancelled
        ))
}

impl SeedRegion {
    /// A seed region at `index` with a data section of `section_size` bytes.
    pub fn new(index: u32, section_size: u64) -> DeviceResult<Self> {
        Ok(Self {
            index,
            section: DataSection::new("vfio-migrate-seed-data", section_size)?,
            state: Running,
            threshold: 0,
            pending: [0; 3],
            data_offset: DATA_SECTION_OFFSET,
            data_size: 0,
            end_seen: false,
            dirty_start: 0,
            dirty_total: 0,
            dirty_copied: 0,
            logging: false,
        })
    }

    /// The region description (type `1<<30` / subtype 1).
    pub fn region(&self) -> Region {
        region_desc(
            self.index,
            abi::MigrationInfo::SIZE as u64,
            &self.section,
            (abi::REGION_TYPE, abi::REGION_SUBTYPE),
        )
    }

    /// Region index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The seed state last set.
    pub fn seed_state(&self) -> SeedState {
        self.state
    }

    /// Back to RUNNING with nothing staged (device reset).
    pub fn reset(&mut self) {
        self.state = Running;
        self.pending = [0; 3];
        self.data_offset = DATA_SECTION_OFFSET;
        self.data_size = 0;
        self.end_seen = false;
        self.dirty_copied = 0;
        self.logging = false;
    }

    /// The DMA log this region started is gone (the client that mapped the
    /// windows disconnected and the server dropped windows and log): the
    /// next MIGRATION_SETUP starts a new one.
    pub fn logging_dropped(&mut self) {
        self.logging = false;
    }

    /// The client that drove a migration through this region went away:
    /// a source in SETUP or PRECOPY is CANCELLED (it runs on with its state
    /// intact), a destination in RESUME is CANCELLED (reset, stopped: the
    /// partial state never runs), a source in STOPNCOPY is left stopped as
    /// SAVE_COMPLETED (the destination may have taken over). Returns what
    /// was done, if anything.
    pub fn client_gone<D: Device>(&mut self, core: &mut DeviceCore<D>) -> Option<String> {
        let from = self.state;
        let r = match from {
            Setup | Precopy | Resume => self.set_state(core, Cancelled as u32),
            StopNCopy => {
                let r = core.set_state(MigState::Stop);
                self.stop_logging(core);
                self.state = SaveCompleted;
                self.pending = [0; 3];
                self.data_size = 0;
                r
            }
            _ => return Option::None,
        };
        Some(match r {
            Ok(()) => format!(
                "seed region: {} -> {} (the device is {})",
                from.name(),
                self.state.name(),
                core.state()
            ),
            Err(e) => format!(
                "seed region: leaving {} failed: {e}; the device is {}",
                from.name(),
                core.state()
            ),
        })
    }

    fn effective_threshold(&self) -> u64 {
        if self.threshold == 0 {
            self.section.len()
        } else {
            self.threshold.min(self.section.len())
        }
    }

    fn stop_logging<D: Device>(&mut self, core: &mut DeviceCore<D>) {
        if self.logging {
            core.dma().logging_stop();
            self.logging = false;
        }
    }

    fn set_state<D: Device>(&mut self, core: &mut DeviceCore<D>, v: u32) -> DeviceResult<()> {
        let to = SeedState::from_u32(v).map_err(|_| {
            DeviceError::inval(format!("seed device_state {v} is not a state (0..=9)"))
        })?;
        if to == None {
            return Err(DeviceError::inval(
                "NONE is the initial state; it cannot be requested",
            ));
        }
        let from = self.state;
        if !allowed(from, to) {
            return Err(DeviceError::inval(format!(
                "seed transition {} -> {} is not allowed",
                from.name(),
                to.name()
            )));
        }
        if from == to {
            return Ok(());
        }
        let precopy = core.migration_flags() & MIGRATION_PRE_COPY != 0;
        match to {
            Setup | Precopy => {
                core.set_state(if precopy {
                    MigState::PreCopy
                } else {
                    MigState::Running
                })?;
                if !self.logging && !core.dma().logging() && !core.dma().windows().is_empty() {
                    core.dma().logging_start(SEED_PAGE_SIZE, &[])?;
                    self.logging = true;
                }
            }
            StopNCopy => core.set_state(MigState::StopCopy)?,
            SaveCompleted => {
                core.set_state(MigState::Stop)?;
                self.stop_logging(core);
            }
            Resume => core.set_state(MigState::Resuming)?,
            ResumeCompleted => core.set_state(MigState::Stop)?,
            Running => core.set_state(MigState::Running)?,
            Failed | Cancelled => {
                self.stop_logging(core);
                if matches!(from, Resume | ResumeCompleted) {
                    // The loaded state may be partial: discard it, never run it.
                    core.reset()?;
                    core.set_state(MigState::Stop)?;
                } else {
                    core.set_state(MigState::Running)?;
                }
            }
            None => unreachable!("refused above"),
        }
        self.state = to;
        self.pending = [0; 3];
        self.data_size = 0;
        self.data_offset = DATA_SECTION_OFFSET;
        self.end_seen = false;
        Ok(())
    }

    fn get_pending<D: Device>(&mut self, core: &mut DeviceCore<D>) -> DeviceResult<()> {
        self.pending = match self.state {
            Setup | Precopy => {
                let compatible = match core.state() {
                    MigState::PreCopy | MigState::PreCopyP2p => {
                        let i = core.precopy_info()?;
                        i.initial_bytes + i.dirty_bytes
                    }
                    _ => 0,
                };
                let post = core.stop_copy_size().saturating_sub(compatible);
                [0, compatible, post]
            }
            StopNCopy => {
                let post = if self.end_seen {
                    0
                } else {
                    core.stop_copy_size().max(1)
                };
                [0, 0, post]
            }
            s => {
                return Err(DeviceError::inval(format!(
                    "pending bytes are only defined while saving; the device is in {}",
                    s.name()
                )))
            }
        };
        Ok(())
    }

    fn get_buffer<D: Device>(&mut self, core: &mut DeviceCore<D>) -> DeviceResult<()> {
        match self.state {
            Setup | Precopy | StopNCopy => {
                let staged = if core.state().is_saving() {
                    let max = self.effective_threshold();
                    let (n, end) = stage(core, &mut self.section, max)?;
                    if end && self.state == StopNCopy {
                        self.end_seen = true;
                    }
                    n
                } else {
                    0
                };
                self.data_offset = DATA_SECTION_OFFSET;
                self.data_size = staged;
                Ok(())
            }
            s => Err(DeviceError::inval(format!(
                "get buffer is only defined while saving; the device is in {}",
                s.name()
            ))),
        }
    }

    fn set_buffer<D: Device>(&mut self, core: &mut DeviceCore<D>, size: u64) -> DeviceResult<()> {
        if self.state != Resume {
            return Err(DeviceError::inval(format!(
                "set buffer is only defined in MIGRATION_RESUME; the device is in {}",
                self.state.name()
            )));
        }
        let rel = self.data_offset - DATA_SECTION_OFFSET;
        self.section.check(rel, size)?;
        self.data_size = size;
        core.write_data(&self.section.bytes()[rel as usize..(rel + size) as usize])
    }

    fn get_dirty<D: Device>(&mut self, core: &mut DeviceCore<D>) -> DeviceResult<u64> {
        if !core.dma().logging() {
            return Err(DeviceError::inval(
                "no dirty page log: logging runs from MIGRATION_SETUP until SAVE_COMPLETED, FAILED or CANCELLED",
            ));
        }
        if !self.dirty_start.is_multiple_of(SEED_PAGE_SIZE) {
            return Err(DeviceError::inval(format!(
                "dirty_pfns.start_addr {:#x} is not {SEED_PAGE_SIZE}-byte aligned",
                self.dirty_start
            )));
        }
        let copied = self.dirty_total.min(self.section.len() * 8);
        if copied == 0 {
            return Ok(0);
        }
        let length = copied
            .checked_mul(SEED_PAGE_SIZE)
            .filter(|l| self.dirty_start.checked_add(*l).is_some())
            .ok_or_else(|| DeviceError::inval("dirty_pfns range overflows"))?;
        let bytes = (copied.div_ceil(64) * 8) as usize;
        core.dma().logging_report(
            self.dirty_start,
            length,
            SEED_PAGE_SIZE,
            &mut self.section.bytes_mut()[..bytes],
        )?;
        Ok(copied)
    }

    /// A read of `buf.len()` bytes at region `offset`.
    pub fn read<D: Device>(
        &mut self,
        core: &mut DeviceCore<D>,
        offset: u64,
        buf: &mut [u8],
    ) -> DeviceResult<()> {
        if offset >= DATA_SECTION_OFFSET {
            return section_access(&mut self.section, offset, Some(buf), Option::None);
        }
        let f = field_at(&FIELDS, offset, buf.len(), "seed migration region")?;
        let v: u64 = match f {
            0 => self.state as u64,
            1 => {
                self.get_pending(core)?;
                self.pending[0]
            }
            2 => self.pending[1],
            3 => self.pending[2],
            4 => self.threshold,
            5 => {
                if self.state == Resume {
                    self.data_offset
                } else {
                    self.get_buffer(core)?;
                    self.data_offset
                }
            }
            6 => self.data_size,
            7 => self.dirty_start,
            8 => self.dirty_total,
            _ => {
                self.dirty_copied = self.get_dirty(core)?;
                self.dirty_copied
            }
        };
        buf.copy_from_slice(&v.to_le_bytes()[..buf.len()]);
        Ok(())
    }

    /// A write of `data` at region `offset`.
    pub fn write<D: Device>(
        &mut self,
        core: &mut DeviceCore<D>,
        offset: u64,
        data: &[u8],
    ) -> DeviceResult<()> {
        if offset >= DATA_SECTION_OFFSET {
            return section_access(&mut self.section, offset, Option::None, Some(data));
        }
        let f = field_at(&FIELDS, offset, data.len(), "seed migration region")?;
        let mut b = [0u8; 8];
        b[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(b);
        match f {
            0 => self.set_state(core, v as u32),
            4 => {
                self.threshold = v;
                Ok(())
            }
            5 => {
                if self.state != Resume {
                    return Err(DeviceError::inval(
                        "data.offset is an input only in MIGRATION_RESUME",
                    ));
                }
                if v < DATA_SECTION_OFFSET || v - DATA_SECTION_OFFSET >= self.section.len() {
                    return Err(DeviceError::inval(format!(
                        "data.offset {v:#x} is outside the data section [{DATA_SECTION_OFFSET:#x}, {:#x})",
                        DATA_SECTION_OFFSET + self.section.len()
                    )));
                }
                self.data_offset = v;
                Ok(())
            }
            6 => self.set_buffer(core, v),
            7 => {
                self.dirty_start = v;
                Ok(())
            }
            8 => {
                self.dirty_total = v;
                Ok(())
            }
            1..=3 => Err(DeviceError::inval(
                "pending fields are read-only (outputs of Get pending bytes)",
            )),
            _ => Err(DeviceError::inval(
                "dirty_pfns.copied is read-only (output of Get dirty pages bitmap)",
            )),
        }
    }
}
