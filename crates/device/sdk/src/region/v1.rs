//! The Linux 5.8 "v1" migration region (type 3, subtype 1) over a
//! [`DeviceCore`].
//!
//! Header (`vfio_migrate_abi::v1::MigrationInfo`, native-width aligned
//! fields only) and what each access does:
//!
//! | field | read | write |
//! |---|---|---|
//! | `device_state` u32 @0 | current state bits | synchronous transition; EINVAL on an invalid value or arc |
//! | `reserved` u32 @4 | 0 | EINVAL |
//! | `pending_bytes` u64 @8 | bytes still to save (saving states only) | EINVAL |
//! | `data_offset` u64 @16 | saving: stages the next chunk into the data section; returns the section offset. RESUMING: the section offset | EINVAL |
//! | `data_size` u64 @24 | saving: bytes staged by the last `data_offset` read | RESUMING: the device consumes that many bytes from the section start |
//!
//! State bits map onto the v2 machine: `RUNNING` → RUNNING, `SAVING|RUNNING`
//! → PRE_COPY (on a device without pre-copy: RUNNING with nothing pending),
//! `SAVING` → STOP_COPY, `0` → STOP, `RESUMING` → RESUMING. `SAVING|RESUMING`
//! (the v1 error state) and the undefined values cannot be written.

use super::{field_at, region_desc, section_access, stage, DataSection, DATA_SECTION_OFFSET};
use crate::core::DeviceCore;
use crate::device::{Device, Region};
use crate::error::{DeviceError, DeviceResult};
use vfio_migrate_abi::kernel::{MigState, MIGRATION_PRE_COPY};
use vfio_migrate_abi::v1 as abi;

const FIELDS: [(u64, usize); 5] = [
    (abi::OFF_DEVICE_STATE, 4),
    (abi::OFF_RESERVED, 4),
    (abi::OFF_PENDING_BYTES, 8),
    (abi::OFF_DATA_OFFSET, 8),
    (abi::OFF_DATA_SIZE, 8),
];

/// The v1 migration region front-end.
pub struct V1Region {
    index: u32,
    section: DataSection,
    staged: u64,
    end_seen: bool,
    /// `SAVING|RUNNING` on a device without PRE_COPY.
    saving_running: bool,
}

/// v1 state bits for a v2 state.
pub fn bits_of(s: MigState) -> u32 {
    match s {
        MigState::Running | MigState::RunningP2p => abi::STATE_RUNNING,
        MigState::PreCopy | MigState::PreCopyP2p => abi::STATE_SAVING | abi::STATE_RUNNING,
        MigState::StopCopy => abi::STATE_SAVING,
        MigState::Stop => 0,
        MigState::Resuming => abi::STATE_RESUMING,
        MigState::Error => abi::STATE_ERROR,
    }
}

impl V1Region {
    /// A v1 region at `index` with a data section of `section_size` bytes.
    pub fn new(index: u32, section_size: u64) -> DeviceResult<Self> {
        Ok(Self {
            index,
            section: DataSection::new("vfio-migrate-v1-data", section_size)?,
            staged: 0,
            end_seen: false,
            saving_running: false,
        })
    }

    /// The region description (type 3 / subtype 1, data section mmap-able).
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

    /// Forgets staging state (device reset).
    pub fn reset(&mut self) {
        self.staged = 0;
        self.end_seen = false;
        self.saving_running = false;
    }

    fn state_bits<D: Device>(&self, core: &DeviceCore<D>) -> u32 {
        if self.saving_running && core.state() == MigState::Running {
            abi::STATE_SAVING | abi::STATE_RUNNING
        } else {
            bits_of(core.state())
        }
    }

    fn set_state<D: Device>(&mut self, core: &mut DeviceCore<D>, v: u32) -> DeviceResult<()> {
        let target =
            match v {
                0 => MigState::Stop,
                abi::STATE_RUNNING => MigState::Running,
                3 => {
                    if core.migration_flags() & MIGRATION_PRE_COPY != 0 {
                        MigState::PreCopy
                    } else {
                        MigState::Running
                    }
                }
                abi::STATE_SAVING => MigState::StopCopy,
                abi::STATE_RESUMING => MigState::Resuming,
                abi::STATE_ERROR => return Err(DeviceError::inval(
                    "v1 device_state SAVING|RESUMING is the error state; it cannot be requested",
                )),
                other => {
                    return Err(DeviceError::inval(format!(
                        "v1 device_state {other:#x} is not a valid state (valid: 0, 1, 2, 3, 4)"
                    )))
                }
            };
        // v1 forbids going back from stop-and-copy to pre-copy, even on a
        // device without pre-copy support.
        if core.state() == MigState::StopCopy && v == 3 {
            return Err(DeviceError::inval(
                "v1: SAVING -> SAVING|RUNNING is not allowed",
            ));
        }
        core.set_state(target)?;
        self.saving_running = v == 3 && target == MigState::Running;
        self.staged = 0;
        self.end_seen = false;
        Ok(())
    }

    fn pending<D: Device>(&mut self, core: &mut DeviceCore<D>) -> DeviceResult<u64> {
        match core.state() {
            MigState::PreCopy | MigState::PreCopyP2p => {
                let i = core.precopy_info()?;
                Ok(i.initial_bytes + i.dirty_bytes)
            }
            MigState::StopCopy => {
                if self.end_seen {
                    Ok(0)
                } else {
                    Ok(core.stop_copy_size().max(1))
                }
            }
            MigState::Running if self.saving_running => Ok(0),
            s => Err(DeviceError::inval(format!(
                "pending_bytes is only valid while saving; the device is in {s}"
            ))),
        }
    }

    /// A read of `buf.len()` bytes at region `offset`.
    pub fn read<D: Device>(
        &mut self,
        core: &mut DeviceCore<D>,
        offset: u64,
        buf: &mut [u8],
    ) -> DeviceResult<()> {
        if offset >= DATA_SECTION_OFFSET {
            return section_access(&mut self.section, offset, Some(buf), None);
        }
        let f = field_at(&FIELDS, offset, buf.len(), "v1 migration region")?;
        let v: u64 = match f {
            0 => self.state_bits(core) as u64,
            1 => 0,
            2 => self.pending(core)?,
            3 => match core.state() {
                MigState::PreCopy | MigState::PreCopyP2p | MigState::StopCopy => {
                    let (n, end) = stage(core, &mut self.section, u64::MAX)?;
                    self.staged = n;
                    if end && core.state() == MigState::StopCopy {
                        self.end_seen = true;
                    }
                    DATA_SECTION_OFFSET
                }
                MigState::Running if self.saving_running => {
                    self.staged = 0;
                    DATA_SECTION_OFFSET
                }
                MigState::Resuming => DATA_SECTION_OFFSET,
                s => {
                    return Err(DeviceError::inval(format!(
                        "data_offset is only valid while saving or resuming; the device is in {s}"
                    )))
                }
            },
            _ => match core.state() {
                MigState::PreCopy | MigState::PreCopyP2p | MigState::StopCopy => self.staged,
                MigState::Running if self.saving_running => 0,
                MigState::Resuming => 0,
                s => {
                    return Err(DeviceError::inval(format!(
                        "data_size is only valid while saving or resuming; the device is in {s}"
                    )))
                }
            },
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
            return section_access(&mut self.section, offset, None, Some(data));
        }
        let f = field_at(&FIELDS, offset, data.len(), "v1 migration region")?;
        let mut b = [0u8; 8];
        b[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(b);
        match f {
            0 => self.set_state(core, v as u32),
            4 => {
                if core.state() != MigState::Resuming {
                    return Err(DeviceError::inval(format!(
                        "data_size can only be written while RESUMING; the device is in {}",
                        core.state()
                    )));
                }
                self.section.check(0, v)?;
                let n = v as usize;
                core.write_data(&self.section.bytes()[..n])
            }
            1 => Err(DeviceError::inval("reserved is read-only")),
            2 => Err(DeviceError::inval("pending_bytes is read-only")),
            _ => Err(DeviceError::inval("data_offset is read-only")),
        }
    }
}
