//! The switchover: stop the guest and the devices (through the P2P states
//! first, so no device DMAs into a stopped peer), send what is left, then
//! either hand over to a live destination (READY → compare digests → GO →
//! RUNNING) or, for a snapshot, record the digests and let the source run
//! again.

use super::replies::Reply;
use super::Source;
use crate::error::EngineError;
use crate::format::{DeviceEnd, Digest, Kind, ReadyInfo};
use crate::metrics::Part;
use crate::progress::Phase;
use crate::report::digest_hex;
use crate::verify::ram_hash;
use std::time::Instant;
use vfio_migrate_backend::{MigState, MigrationDevice, MIGRATION_P2P};

impl<D: MigrationDevice> Source<'_, D> {
    /// Stops everything and sends the rest of the state and the end marker.
    pub(super) fn stop_and_copy(&mut self) -> Result<(), EngineError> {
        self.wait_drained()?;
        self.check_cancel()?;
        self.phase = Phase::StopCopy;
        self.metrics.stop_now();
        if let Some(g) = self.guest {
            g.pause();
            self.guest_paused = true;
        }
        // Quiesce every device first (no P2P DMA), then stop them all.
        for i in 0..self.devs.len() {
            let d = &mut self.devs[i];
            if d.desc.migration_flags & MIGRATION_P2P == 0 {
                continue;
            }
            let target = match d.initial {
                MigState::Running if d.precopy => MigState::PreCopyP2p,
                MigState::Running => MigState::RunningP2p,
                _ => continue,
            };
            d.touched = true;
            d.report.p2p = true;
            d.h.set_state(target).map_err(|e| self.dev_err(i, e))?;
        }
        for i in 0..self.devs.len() {
            self.devs[i].touched = true;
            self.devs[i]
                .h
                .set_state(MigState::StopCopy)
                .map_err(|e| self.dev_err(i, e))?;
            self.devs[i].in_stop_copy = true;
            self.devs[i].stream_ended = false;
        }
        self.metrics.stopped = Some(Instant::now());
        self.metrics.lap(Part::Stop);
        self.emit(0, 0.0, 0.0);

        self.channel_epoch_begin(true)?;
        for i in 0..self.devs.len() {
            let (n, ended) = self.send_device(i, Kind::DeviceStopCopy, u64::MAX)?;
            let d = &mut self.devs[i];
            d.stream_ended = ended;
            d.report.stopcopy_bytes += n;
            self.metrics.device_bytes += n;
            self.metrics.device_bytes_stopped += n;
            let total = d.report.precopy_bytes + d.report.stopcopy_bytes;
            self.write(
                Kind::DeviceEnd,
                i as u32,
                &[&DeviceEnd { bytes: total }.to_bytes()],
            )?;
        }
        self.metrics.lap(Part::DeviceStopCopy);
        // A snapshot carries the digests for the restore to check; a live
        // source reads them in `resume`, while the destination loads.
        if !self.mode.is_live() {
            for i in self.read_digests()? {
                let digest = self.devs[i].digest.expect("just read");
                self.write(Kind::Verify, i as u32, &[&Digest { digest }.to_bytes()])?;
            }
            self.metrics.lap(Part::SourceDigest);
        }
        // The devices are stopped: their DMA reports are final.
        self.sync_dirty()?;
        self.metrics.lap(Part::FinalDirty);
        while self.send_ram(u64::MAX)? > 0 {}
        self.channel_epoch_end(true)?;
        if let Err(e) = self.out.write_end() {
            return Err(self.stream_err(e));
        }
        self.flush()?;
        self.metrics.sent = Some(Instant::now());
        self.metrics.lap(Part::FinalRam);
        self.phase = Phase::Resume;
        self.emit(0, 0.0, 0.0);
        Ok(())
    }

    /// Live: waits for the destination to be loaded and verified, compares,
    /// tells it to run. Snapshot: the source runs again.
    pub(super) fn resume(&mut self) -> Result<(), EngineError> {
        if !self.mode.is_live() {
            self.phase = Phase::Cleanup;
            self.restore_source()
                .map_err(|problems| EngineError::RestoreFailed { problems })?;
            self.metrics.resumed = Some(Instant::now());
            self.metrics.lap(Part::Resume);
            return Ok(());
        }
        self.read_digests()?;
        self.metrics.lap(Part::SourceDigest);
        let ready = match self.wait_reply("the destination to load and validate", true)? {
            Reply::Ready(r) => r,
            r => return Err(self.out_of_turn(&r)),
        };
        self.metrics.lap(Part::Destination);
        self.metrics
            .breakdown
            .split_destination(ready.validate_ms, ready.digest_ms);
        self.check_ready(&ready)?;
        self.check_cancel()?;
        // Optional (minor 2): tells the destination its state was verified
        // here; readers of older minors skip it.
        let compared = self
            .devs
            .iter()
            .filter(|d| d.report.verified == Some(true))
            .count();
        if compared > 0 {
            let v = crate::format::Verdict {
                compared: compared as u32,
                devices: self.devs.len() as u32,
            };
            let r = self.out.with(|w| {
                w.write_raw(
                    Kind::Verified as u16,
                    crate::format::FLAG_OPTIONAL,
                    crate::format::NO_DEVICE,
                    &[&v.to_bytes()],
                )
            });
            if let Err(e) = r {
                return Err(self.stream_err(e));
            }
        }
        // Past this point the destination may run: no rollback.
        self.committed = true;
        self.write(Kind::Go, crate::format::NO_DEVICE, &[])?;
        self.flush()?;
        match self.wait_reply("the destination to start running", false)? {
            Reply::Running => {}
            r => return Err(self.out_of_turn(&r)),
        }
        self.metrics.resumed = Some(Instant::now());
        self.metrics.lap(Part::Resume);
        self.report.ram_hash_dest = ready.ram_hash.map(digest_hex);
        self.metrics.dest_digest_ms = ready.digest_ms;
        if let (Some(g), Some(dest_hash)) = (self.guest, ready.ram_hash) {
            // The hash kept as pages were sent (every page went at least
            // once, and every later write was in the dirty logs); with
            // --full-verify the frozen RAM is hashed whole, off the
            // critical path, and must agree.
            let t = Instant::now();
            let kept = self.ram.as_ref().and_then(|r| r.hash());
            let h = match kept {
                Some(h) if !self.opts.full_verify => h,
                _ => {
                    let full = ram_hash(g).map_err(|e| self.guest_err(e))?.0;
                    if let Some(k) = kept.filter(|k| *k != full) {
                        return Err(EngineError::IncrementalMismatch {
                            phase: self.phase,
                            what: "guest RAM at the source".into(),
                            incremental: k,
                            full,
                        });
                    }
                    full
                }
            };
            self.metrics.verify_ms = crate::metrics::ms(t.elapsed());
            self.report.ram_hash_source = Some(digest_hex(h));
            if h != dest_hash {
                return Err(EngineError::RamMismatch {
                    phase: self.phase,
                    source_hash: h,
                    dest_hash,
                });
            }
        }
        Ok(())
    }

    /// The destination's digests must equal the source's.
    fn check_ready(&mut self, ready: &ReadyInfo) -> Result<(), EngineError> {
        if ready.digests.len() != self.devs.len() {
            return Err(EngineError::DigestCount {
                phase: self.phase,
                expected: self.devs.len(),
                got: ready.digests.len(),
            });
        }
        for (d, dest) in self.devs.iter_mut().zip(&ready.digests) {
            d.report.digest_dest = dest.map(digest_hex);
            if let (Some(a), Some(b)) = (d.digest, *dest) {
                d.report.verified = Some(a == b);
                if a != b {
                    return Err(EngineError::DigestMismatch {
                        phase: self.phase,
                        device: d.name.clone(),
                        source_digest: a,
                        dest_digest: b,
                    });
                }
            }
        }
        Ok(())
    }
}
