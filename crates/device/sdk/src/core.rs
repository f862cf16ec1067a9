//! [`DeviceCore`]: what the SDK wraps around a [`Device`] — the current
//! state (its only home: the device is handed it, see [`Device`]), path
//! walking over single arcs, per-state checks on data access, and the DMA
//! space.

use crate::device::Device;
use crate::dma::DmaSpace;
use crate::error::{DeviceError, DeviceResult};
use crate::fsm;
use std::sync::Arc;
use vfio_migrate_abi::kernel::MigState;
use vfio_migrate_backend::{DeviceStatus, PrecopyInfo};

/// Region index of PCI config space (as in VFIO); writes there are VMM
/// setup, not the device's workload.
const CONFIG_REGION: u32 = 7;

/// A device plus the SDK state around it.
pub struct DeviceCore<D: Device> {
    dev: D,
    state: MigState,
    dma: Arc<DmaSpace>,
    /// Nothing done with it since it started or was reset.
    pristine: bool,
    /// Waiting for an incoming migration: workload refused until loaded.
    incoming: bool,
    /// Its save stream was read to the end in STOP_COPY and it has not run
    /// since.
    migrated_out: bool,
    /// The current STOP_COPY save stream has been read to its end.
    stream_done: bool,
    /// Throttle the device was last asked for (0: none).
    throttle: u32,
}

impl<D: Device> DeviceCore<D> {
    /// Wraps `dev`, which starts RUNNING, with the DMA space it was built
    /// with (the device's engines write guest memory through it).
    pub fn new(dev: D, dma: Arc<DmaSpace>) -> Self {
        Self {
            dev,
            state: MigState::Running,
            dma,
            pristine: true,
            incoming: false,
            migrated_out: false,
            stream_done: false,
            throttle: 0,
        }
    }

    /// Makes the device wait for an incoming migration: region writes
    /// (config space aside) are refused with `EAGAIN` until a state has
    /// been loaded and validated. `serve --incoming` sets it.
    pub fn set_incoming(&mut self, on: bool) {
        self.incoming = on;
    }

    /// What the device says about its use (see [`DeviceStatus`]).
    pub fn status(&self) -> DeviceStatus {
        DeviceStatus {
            pristine: self.pristine,
            incoming: self.incoming,
            migrated_out: self.migrated_out,
        }
    }

    /// Notes what one successful arc means for [`DeviceCore::status`].
    fn note_arc(&mut self, from: MigState, to: MigState) {
        match (from, to) {
            (MigState::StopCopy, MigState::Stop) => self.migrated_out = self.stream_done,
            (MigState::Resuming, MigState::Stop) => {
                self.incoming = false;
                self.pristine = false;
            }
            (_, MigState::Running | MigState::Resuming) => self.migrated_out = false,
            _ => {}
        }
        if to == MigState::StopCopy || from == MigState::StopCopy {
            self.stream_done = false;
        }
    }

    /// The client that drove a migration went away: puts the device where
    /// it is safe. Pre-copy (and a quiesced RUNNING_P2P) goes back to
    /// RUNNING: nothing was taken from it. RESUMING is reset: partial state
    /// never runs. STOP_COPY becomes STOP: the device stays stopped, since
    /// the destination may have taken over; a new client can resume it or
    /// migrate it again. DMA logging stops. Returns what was done, if
    /// anything.
    pub fn recover_orphaned(&mut self) -> Option<String> {
        self.dma.logging_stop();
        let from = self.state;
        let (what, r) = match from {
            MigState::PreCopy | MigState::PreCopyP2p | MigState::RunningP2p => {
                ("back to RUNNING", self.set_state(MigState::Running))
            }
            MigState::Resuming => (
                "reset and stopped (the partial state was discarded)",
                self.reset().and_then(|()| self.set_state(MigState::Stop)),
            ),
            MigState::StopCopy => ("left stopped (STOP)", self.set_state(MigState::Stop)),
            _ => return None,
        };
        Some(match r {
            Ok(()) => format!("the device was in {from}: {what}"),
            Err(e) => format!(
                "the device was in {from}; putting it {what} failed: {e}; it is in {}",
                self.state
            ),
        })
    }

    /// The device.
    pub fn device(&mut self) -> &mut D {
        &mut self.dev
    }

    /// The device, shared.
    pub fn device_ref(&self) -> &D {
        &self.dev
    }

    /// The DMA space.
    pub fn dma(&self) -> &Arc<DmaSpace> {
        &self.dma
    }

    /// Current state.
    pub fn state(&self) -> MigState {
        self.state
    }

    /// `VFIO_MIGRATION_*` flags.
    pub fn migration_flags(&self) -> u64 {
        self.dev.migration_flags()
    }

    /// Walks from the current state to `target`, one arc at a time. On a
    /// failed arc the device stays in the last state it reached (or ERROR
    /// when the device says it broke) and the error is returned.
    pub fn set_state(&mut self, target: MigState) -> DeviceResult<()> {
        let flags = self.dev.migration_flags();
        let path = fsm::path(flags, self.state, target)?;
        for hop in path {
            let from = self.state;
            match self.dev.transition(from, hop) {
                Ok(()) => {
                    tracing::debug!(%from, to = %hop, "migration arc");
                    self.state = hop;
                    self.note_arc(from, hop);
                    // A throttle lasts only as long as the pre-copy that
                    // asked for it.
                    if !matches!(hop, MigState::PreCopy | MigState::PreCopyP2p) {
                        self.release_throttle();
                    }
                }
                Err(e) => {
                    if e.errno == libc::EIO {
                        self.state = MigState::Error;
                    }
                    tracing::warn!(%from, to = %hop, error = %e, "migration arc failed");
                    return Err(DeviceError::new(
                        e.errno,
                        format!("{from} -> {hop} failed: {}", e.message),
                    ));
                }
            }
        }
        Ok(())
    }

    fn require(&self, ok: &[MigState], what: &str) -> DeviceResult<()> {
        if ok.contains(&self.state) {
            Ok(())
        } else {
            let names: Vec<_> = ok.iter().map(|s| s.name()).collect();
            Err(DeviceError::inval(format!(
                "{what} is only allowed in {}; the device is in {}",
                names.join("/"),
                self.state
            )))
        }
    }

    /// Reads `buf.len()` bytes of region `index` at `offset` of the device
    /// (the caller has checked the range), in the current state.
    pub fn region_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
        self.dev.region_read(self.state, index, offset, buf)
    }

    /// Writes region `index` of the device at `offset` (range checked by
    /// the caller), in the current state.
    pub fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> DeviceResult<()> {
        if index != CONFIG_REGION {
            if self.incoming {
                return Err(DeviceError::new(
                    libc::EAGAIN,
                    "the device waits for an incoming migration (serve --incoming): it takes no workload until a state is loaded",
                ));
            }
            self.dev.region_write(self.state, index, offset, data)?;
            self.pristine = false;
            return Ok(());
        }
        self.dev.region_write(self.state, index, offset, data)
    }

    /// Reads save data (PRE_COPY, PRE_COPY_P2P, STOP_COPY).
    pub fn read_data(&mut self, buf: &mut [u8]) -> DeviceResult<usize> {
        self.require(
            &[MigState::PreCopy, MigState::PreCopyP2p, MigState::StopCopy],
            "reading migration data",
        )?;
        let n = self.dev.save(self.state, buf)?;
        if n > buf.len() {
            return Err(DeviceError::new(
                libc::EIO,
                "device returned more data than asked",
            ));
        }
        if n == 0 && self.state == MigState::StopCopy && !buf.is_empty() {
            self.stream_done = true;
        }
        Ok(n)
    }

    /// Reads save data as pieces ([`Device::save_pieces`]) in STOP_COPY;
    /// `Ok(None)` in other states or when the device does not offer them
    /// (read with [`DeviceCore::read_data`]).
    pub fn read_data_pieces(
        &mut self,
        max: usize,
        out: &mut crate::pieces::SavePieces,
    ) -> DeviceResult<Option<usize>> {
        out.clear();
        if self.state != MigState::StopCopy {
            return Ok(None);
        }
        if !self.dev.save_pieces(self.state, max, out)? {
            out.clear();
            return Ok(None);
        }
        let n = out.len();
        if n > max {
            return Err(DeviceError::new(
                libc::EIO,
                "device described more data than asked",
            ));
        }
        if n == 0 && max > 0 {
            self.stream_done = true;
        }
        Ok(Some(n))
    }

    /// Writes load data (RESUMING).
    pub fn write_data(&mut self, data: &[u8]) -> DeviceResult<()> {
        self.require(&[MigState::Resuming], "writing migration data")?;
        self.dev.load(self.state, data)
    }

    /// Pre-copy estimate (PRE_COPY, PRE_COPY_P2P).
    pub fn precopy_info(&mut self) -> DeviceResult<PrecopyInfo> {
        self.require(&[MigState::PreCopy, MigState::PreCopyP2p], "pre-copy info")?;
        Ok(self.dev.precopy_info())
    }

    /// Stop-copy size estimate.
    pub fn stop_copy_size(&mut self) -> u64 {
        self.dev.stop_copy_size()
    }

    /// Whether the device offers a throttle ([`Device::set_throttle`]).
    pub fn throttle_offered(&self) -> bool {
        self.dev.throttle_offered()
    }

    /// The throttle last set (0: none).
    pub fn throttle(&self) -> u32 {
        self.throttle
    }

    /// Throttles the device's dirtying work by `percent` (at most
    /// [`vfio_migrate_backend::MAX_THROTTLE`]); only in pre-copy, where a
    /// migration asks for it (0, releasing it, in any state).
    pub fn set_throttle(&mut self, percent: u32) -> DeviceResult<()> {
        if !self.dev.throttle_offered() {
            return Err(DeviceError::unsupported("this device has no throttle"));
        }
        if percent > vfio_migrate_backend::MAX_THROTTLE {
            return Err(DeviceError::inval(format!(
                "throttle {percent}% is above the most a device withholds ({}%)",
                vfio_migrate_backend::MAX_THROTTLE
            )));
        }
        if percent > 0 {
            self.require(&[MigState::PreCopy, MigState::PreCopyP2p], "a throttle")?;
        }
        self.dev.set_throttle(percent)?;
        self.throttle = percent;
        Ok(())
    }

    fn release_throttle(&mut self) {
        if self.throttle != 0 {
            match self.dev.set_throttle(0) {
                Ok(()) => self.throttle = 0,
                Err(e) => tracing::warn!(error = %e, "releasing the device's throttle"),
            }
        }
    }

    /// Device reset: RUNNING again, DMA logging off.
    pub fn reset(&mut self) -> DeviceResult<()> {
        self.dma.logging_stop();
        self.release_throttle();
        self.dev.reset()?;
        self.state = MigState::Running;
        self.pristine = true;
        self.migrated_out = false;
        self.stream_done = false;
        Ok(())
    }
}

/// A guard for [`Device::transition`] implementations: checks that
/// `from -> to` is a single arc of the state machine for `flags`.
/// [`DeviceCore`] only ever hands out such arcs; the guard catches a device
/// driven by other code.
pub fn check_arc(flags: u64, from: MigState, to: MigState) -> DeviceResult<()> {
    if !fsm::is_valid_arc(flags, from, to) {
        return Err(DeviceError::inval(format!(
            "{from} -> {to} is not a single arc of the migration state machine"
        )));
    }
    Ok(())
}
