//! How a source migration ends: cleanup after success (logging off, a live
//! source parked in STOP), rollback after a failure before GO (devices back
//! to their original state, logging off, vCPUs resumed, ABORT sent), and
//! the report either way.

use super::Source;
use crate::error::{EngineError, SourceFailure, SourceState};
use crate::format::{self, Kind, NO_DEVICE};
use crate::progress::Phase;
use crate::report::MigrationReport;
use vfio_migrate_backend::{MigState, MigrationDevice};

impl<D: MigrationDevice> Source<'_, D> {
    /// After a successful migration: DMA logging off; a live source's
    /// devices are parked in STOP (the destination runs them now).
    pub(super) fn cleanup(&mut self) {
        self.phase = Phase::Cleanup;
        self.release_throttle();
        let live = self.mode.is_live();
        let mut problems = Vec::new();
        for d in &mut self.devs {
            if d.logging {
                if let Some(Err(e)) = d.h.dma_log().map(|l| l.dma_logging_stop()) {
                    problems.push(format!("{}: DMA logging stop: {e}", d.name));
                }
                d.logging = false;
            }
            if live {
                if let Err(e) = d.h.set_state(MigState::Stop) {
                    problems.push(format!("{}: {e}", d.name));
                }
            }
        }
        if !problems.is_empty() {
            // The migration itself succeeded; report, don't fail.
            tracing::warn!(problems = %problems.join("; "), "source cleanup");
        }
        self.phase = Phase::Done;
    }

    /// Puts every source device back in its original state, logging off,
    /// vCPUs running. Returns what could not be restored.
    pub(super) fn restore_source(&mut self) -> Result<(), Vec<String>> {
        self.release_throttle();
        let mut problems = Vec::new();
        let mut buf = std::mem::take(&mut self.buf);
        if buf.is_empty() {
            buf = vec![0u8; 1 << 20];
        }
        for d in &mut self.devs {
            if d.touched && d.in_stop_copy && !d.stream_ended && d.drain_on_rollback {
                let chunk = d.h.preferred_chunk().clamp(4096, buf.len());
                let (n, ended) = d.drain_stop_copy(&mut buf[..chunk]);
                tracing::info!(device = %d.name, bytes = n, ended, "read the rest of the stop-copy stream before the rollback");
            }
            if d.touched {
                if let Err(e) = d.h.set_state(d.initial) {
                    problems.push(format!(
                        "device {} could not return to {}: {e}",
                        d.name, d.initial
                    ));
                } else {
                    d.in_stop_copy = false;
                }
            }
            if d.logging {
                if let Some(Err(e)) = d.h.dma_log().map(|l| l.dma_logging_stop()) {
                    problems.push(format!("device {}: DMA logging stop: {e}", d.name));
                }
                d.logging = false;
            }
        }
        self.buf = buf;
        if self.guest_paused {
            if let Some(g) = self.guest {
                g.resume();
            }
            self.guest_paused = false;
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Builds the report; after a failure, rolls back (unless committed)
    /// and tells a live destination why.
    // Built once per migration; its size costs nothing.
    #[allow(clippy::result_large_err)]
    pub(super) fn finish(
        mut self,
        r: Result<(), EngineError>,
    ) -> Result<MigrationReport, SourceFailure> {
        let sent = self.sent_bytes();
        self.metrics.fill(&mut self.report, sent);
        self.report.channels = self.chans.as_ref().map_or(1, |c| c.count() as u32);
        self.report.switchover_ack = self.switch_ack;
        self.report.devices = self.devs.iter().map(|d| d.report.clone()).collect();
        let out = match r {
            Ok(()) => {
                let compared: Vec<bool> = self
                    .report
                    .devices
                    .iter()
                    .filter_map(|d| d.verified)
                    .chain(
                        self.report
                            .ram_hash_source
                            .as_ref()
                            .map(|s| Some(s) == self.report.ram_hash_dest.as_ref()),
                    )
                    .collect();
                self.report.verified = !compared.is_empty() && compared.iter().all(|v| *v);
                Ok(self.report.clone())
            }
            Err(error) => {
                let state = if self.committed {
                    // Park the source: stopped either way, never runnable
                    // by accident.
                    for d in &mut self.devs {
                        if let Err(e) = d.h.set_state(MigState::Stop) {
                            tracing::warn!(device = %d.name, error = %e, "parking the source");
                        }
                    }
                    SourceState::Committed
                } else {
                    if self.mode.is_live() {
                        let reason = error.to_string();
                        let _ =
                            self.out
                                .write(Kind::Abort, NO_DEVICE, format::reason_bytes(&reason));
                        let _ = self.out.flush();
                    }
                    // The destination sees every channel end at once.
                    if let Some(c) = self.chans.as_mut() {
                        c.abort();
                    }
                    match self.restore_source() {
                        Ok(()) => SourceState::Restored,
                        Err(p) => SourceState::RollbackIncomplete(p),
                    }
                };
                let devices = self
                    .devs
                    .iter_mut()
                    .map(|d| (d.name.clone(), d.h.state().ok()))
                    .collect();
                let mut report = self.report.clone();
                report.status = "failed".into();
                report.error = Some(error.to_string());
                Err(SourceFailure {
                    error,
                    state,
                    devices,
                    report: Box::new(report),
                })
            }
        };
        if let Some(c) = self.chans.as_mut() {
            c.close();
        }
        if let Some(close) = self.close.take() {
            close();
        }
        self.heartbeat = None;
        std::mem::replace(&mut self.mode, super::replies::Mode::Snapshot).join();
        out
    }
}
