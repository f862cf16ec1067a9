//! The destination's setup: read the descriptors and the RAM layout, check
//! them against the local devices and RAM, put the devices in RESUMING and
//! answer ACCEPT — or REFUSE with every reason.

use super::{next_event, Dest, DevIn};
use crate::error::EngineError;
use crate::format::{Event, RamInfo, Reply, CAP_SWITCHOVER_ACK};
use crate::progress::Phase;
use crate::verify::{ram_hash, zero_page_crc};
use vfio_migrate_backend::{DeviceDescriptor, MigState, MigrationDevice};

impl<'a, D: MigrationDevice> Dest<'a, D> {
    /// Reads the setup section and answers it.
    pub(super) fn setup(&mut self, devices: &'a mut [D]) -> Result<(), EngineError> {
        let mut descs: Vec<DeviceDescriptor> = Vec::new();
        let mut ram: Option<RamInfo> = None;
        // Streams of minor 0 carry no run state: their sources ran.
        let mut running: Vec<bool> = Vec::new();
        let mut channels = None;
        loop {
            match next_event(&mut self.input, &self.st)? {
                Event::Device { descriptor, .. } => {
                    descs.push(descriptor);
                    running.push(true);
                }
                Event::RunState { index, running: r } => running[index] = r,
                Event::Ram(info) => ram = Some(info),
                Event::Channels { count, token } => channels = Some((count, token)),
                Event::Caps { flags } => {
                    self.st.switchover_ack = flags & CAP_SWITCHOVER_ACK != 0;
                }
                Event::SetupEnd { .. } => break,
                // The parser allows nothing else in the setup section.
                _ => return Err(self.unexpected("in the setup section")),
            }
        }
        let mut described_in_resuming = Vec::new();
        if let Err(reason) = self.check_compatible(devices, &descs, ram, &mut described_in_resuming)
        {
            // A device moved to RESUMING only to be described goes back to
            // STOP, where the operator left it.
            for &i in &described_in_resuming {
                let _ = devices[i].set_state(MigState::Stop);
            }
            let _ = self.reply(&Reply::Refuse(reason.clone()));
            self.st.refused = true;
            return Err(EngineError::Incompatible { reason });
        }
        for h in devices.iter_mut() {
            self.st.devs.push(DevIn {
                name: h.name(),
                h,
                written: 0,
                precopy_written: 0,
                spliced: 0,
                source_digest: None,
                dest_digest: None,
            });
        }
        self.st.reasm = descs.iter().map(|_| Default::default()).collect();
        self.st.descs = descs;
        self.st.ram = ram;
        self.st.final_running = running;
        self.st.resuming = true;
        for i in 0..self.st.devs.len() {
            let d = &mut self.st.devs[i];
            if let Err(e) = d.h.set_state(MigState::Resuming) {
                let err = EngineError::device(Phase::Setup, d.name.clone(), e);
                let _ = self.reply(&Reply::Refuse(err.to_string()));
                self.st.refused = true;
                return Err(err);
            }
        }
        if let (Some(g), true) = (self.st.guest, self.st.opts.hash_ram && ram.is_some()) {
            let h = ram_hash(g).map_err(|e| EngineError::Guest {
                phase: Phase::Setup,
                source: e,
            })?;
            self.st.hash = Some(h);
            self.st.old_page = vec![0u8; g.page_size() as usize];
            self.st.zero_crc = zero_page_crc(g.page_size());
        }
        if let Some((count, token)) = channels {
            self.accept_channels(count, token)?;
        }
        if self.st.switchover_ack {
            // Only a source that asked hears of it (older ones skip it
            // anyway: it is optional).
            self.reply(&Reply::Caps(CAP_SWITCHOVER_ACK))?;
        }
        self.prepare_splice();
        self.reply(&Reply::Accept)
    }

    /// Why state from `descs` cannot be loaded here, if it cannot. The
    /// indices of devices it moved to RESUMING to read their descriptors
    /// go into `described_in_resuming` (see [`describe`]).
    fn check_compatible(
        &self,
        devices: &mut [D],
        descs: &[DeviceDescriptor],
        ram: Option<RamInfo>,
        described_in_resuming: &mut Vec<usize>,
    ) -> Result<(), String> {
        if descs.len() != devices.len() {
            return Err(format!(
                "the stream carries {} device(s), the destination has {}",
                descs.len(),
                devices.len()
            ));
        }
        let mut why = Vec::new();
        for (i, (h, src)) in devices.iter_mut().zip(descs).enumerate() {
            let state = h.state();
            let may_load = match &state {
                Ok(s @ (MigState::Running | MigState::Stop)) => {
                    self.st.opts.force || expecting(h, *s).is_ok()
                }
                _ => false,
            };
            let stopped = matches!(state, Ok(MigState::Stop));
            match describe(h, stopped && may_load, i, described_in_resuming) {
                Ok(local) => {
                    if let Err(r) = src.check_compatible(&local) {
                        why.push(format!("device {i} ({}): {r}", h.name()));
                    }
                }
                Err(e) => why.push(format!(
                    "device {i} ({}): cannot read its descriptor: {e}",
                    h.name()
                )),
            }
            match state {
                Ok(s @ (MigState::Running | MigState::Stop)) => {
                    if !self.st.opts.force {
                        if let Err(r) = expecting(h, s) {
                            why.push(format!("device {i} ({}) {r}", h.name()));
                        }
                    }
                }
                Ok(s) => why.push(format!(
                    "device {i} ({}) is in {s}; a destination must be RUNNING or STOP to load (reset it: vfio-migrate device {} reset)",
                    h.name(),
                    h.name()
                )),
                Err(e) => why.push(format!(
                    "device {i} ({}): cannot read its state: {e}",
                    h.name()
                )),
            }
        }
        match (ram, self.st.guest) {
            (Some(r), Some(g)) if r.size != g.size() || r.page_size != g.page_size() => why.push(format!(
                "guest RAM is {} bytes in {}-byte pages at the source, {} bytes in {}-byte pages here",
                r.size,
                r.page_size,
                g.size(),
                g.page_size()
            )),
            (Some(r), None) => why.push(format!(
                "the stream carries {} bytes of guest RAM but the destination has no guest RAM",
                r.size
            )),
            _ => {}
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why.join("; "))
        }
    }
}

/// The destination device's descriptor. Some devices refuse
/// DEVICE_GET_INFO and DEVICE_GET_REGION_INFO while stopped
/// (libvfio-user's server allows only region access, DEVICE_FEATURE and
/// MIG_DATA_READ in STOP; the spec does not say which commands STOP
/// allows). When such a device is a stopped destination that may be
/// loaded (`detour`), it is moved to RESUMING, where it goes next anyway,
/// and described there; its index is noted so that a refusal puts it back
/// in STOP.
fn describe<D: MigrationDevice>(
    h: &mut D,
    detour: bool,
    index: usize,
    described_in_resuming: &mut Vec<usize>,
) -> vfio_migrate_backend::Result<DeviceDescriptor> {
    match h.descriptor() {
        Err(e @ vfio_migrate_backend::BackendError::Refused { .. }) if detour => {
            tracing::info!(device = %h.name(), error = %e, "the stopped destination cannot describe itself; asking again in RESUMING");
            if h.set_state(MigState::Resuming).is_err() {
                return Err(e);
            }
            described_in_resuming.push(index);
            h.descriptor()
        }
        r => r,
    }
}

/// Whether a device in `state` may be overwritten: it must be expecting a
/// migration — started for one (`serve --incoming`), untouched since it
/// started or was reset, migrated out and stopped, or (when its backend
/// cannot tell) stopped by the operator. Otherwise it may hold a live
/// workload, and the answer says how to prepare it.
fn expecting<D: MigrationDevice>(h: &mut D, state: MigState) -> Result<(), String> {
    let name = h.name();
    match h.status() {
        Ok(Some(st)) if st.incoming || st.pristine => Ok(()),
        Ok(Some(st)) if state == MigState::Stop && st.migrated_out => Ok(()),
        Ok(Some(_)) => Err(format!(
            "is {state} and has been used since it started: it may be a live device, and loading a state would overwrite it. A destination must expect a migration: start its server with `vfio-migrate serve --incoming`, or reset it (`vfio-migrate device {name} reset`); --force overwrites it anyway"
        )),
        Ok(None) if state == MigState::Stop => Ok(()),
        Ok(None) => Err(format!(
            "is RUNNING and its backend cannot tell whether it is in use, so it may be a live device that loading a state would overwrite. Stop it first to confirm it may be overwritten (`vfio-migrate device {name} set-state STOP`); --force overwrites it anyway"
        )),
        Err(e) => Err(format!("cannot tell whether it is in use: {e}")),
    }
}
