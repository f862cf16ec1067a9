//! Switchover acknowledgement (QEMU's switchover-ack is the model): a
//! destination that offers it (`caps` / `caps-reply` at setup) answers
//! each device's `initial-sent` marker once it has loaded that device's
//! initial pre-copy data, and the source does not stop before every
//! device was acknowledged — so the stop never waits for a destination
//! still digesting the bulk of a device's state. A device that
//! re-initialises its pre-copy data (REINIT) starts a new generation: its
//! new initial data is sent, marked and acknowledged again.

use super::Source;
use crate::error::EngineError;
use crate::format::{InitialGen, Kind};
use vfio_migrate_backend::MigrationDevice;

/// Where one device's initial pre-copy data stands.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Initial {
    /// Generation: 0, then one more per REINIT.
    pub generation: u64,
    /// Bytes of initial data the device still has to hand out.
    pub left: u64,
    /// The marker of this generation was sent.
    pub sent: bool,
    /// The destination acknowledged this generation.
    pub acked: bool,
    /// Pre-copy rounds completed in this generation.
    pub rounds: u32,
}

impl Initial {
    /// The device re-initialised its pre-copy data.
    pub fn reinit(&mut self) {
        self.generation += 1;
        self.sent = false;
        self.acked = false;
        self.rounds = 0;
    }
}

impl<D: MigrationDevice> Source<'_, D> {
    /// After an estimate: marks the end of each pre-copy device's initial
    /// data once it was all sent (live, acknowledgements negotiated).
    pub(super) fn send_initial_markers(&mut self) -> Result<(), EngineError> {
        if !self.switch_ack {
            return Ok(());
        }
        for i in 0..self.devs.len() {
            let d = &self.devs[i];
            let all_sent = if d.unsized_precopy {
                // Read until empty in a round, or found empty.
                d.precopy_dry
                    || (d.init_data.rounds >= 1
                        && d.last_round_bytes < super::precopy::UNSIZED_ROUND_BYTES)
            } else if d.h.precopy_initial_known() {
                d.init_data.left == 0
            } else {
                // One pending count: the first whole round took it all.
                d.init_data.rounds >= 1
            };
            if !d.precopy || d.init_data.sent || !all_sent {
                continue;
            }
            let g = InitialGen {
                generation: d.init_data.generation,
            };
            self.write_optional(Kind::InitialSent, i as u32, &g.to_bytes())?;
            self.devs[i].init_data.sent = true;
        }
        self.flush()
    }

    /// Every pre-copy device's initial data was acknowledged (or nobody
    /// acknowledges).
    pub(super) fn initial_acked(&self) -> bool {
        !self.switch_ack
            || self
                .devs
                .iter()
                .filter(|d| d.precopy)
                .all(|d| d.init_data.acked)
    }

    /// The destination loaded device `device`'s initial data of
    /// `generation` (an older generation's acknowledgement is stale).
    pub(super) fn note_switchover_ack(&mut self, device: u32, generation: u64) {
        if let Some(d) = self.devs.get_mut(device as usize) {
            if d.init_data.generation == generation {
                d.init_data.acked = true;
            }
        }
    }
}
