//! Resuming: every device leaves RESUMING for STOP (the device validates
//! what it loaded), digests are compared, READY is answered; after GO (live)
//! the devices run and RUNNING is answered.

use super::{next_event, Dest};
use crate::error::EngineError;
use crate::format::{Event, ReadyInfo, Reply};
use crate::progress::Phase;
use std::time::Instant;
use vfio_migrate_backend::{MigState, MigrationDevice};

impl<D: MigrationDevice> Dest<'_, D> {
    /// Validates, verifies, and (after GO) runs.
    pub(super) fn resume(&mut self) -> Result<(), EngineError> {
        let t = Instant::now();
        for d in &mut self.st.devs {
            d.h.set_state(MigState::Stop)
                .map_err(|e| EngineError::device(Phase::Resume, d.name.clone(), e))?;
        }
        let validate_ms = t.elapsed().as_secs_f64() * 1000.0;
        let t = Instant::now();
        if let Some(v) = self.st.opts.verifier.clone() {
            for (d, desc) in self.st.devs.iter_mut().zip(&self.st.descs) {
                match v(desc, &mut *d.h) {
                    Some(Ok(x)) => d.dest_digest = Some(x),
                    Some(Err(e)) => {
                        return Err(EngineError::device(Phase::Resume, d.name.clone(), e))
                    }
                    None => {}
                }
                if let (Some(a), Some(b)) = (d.source_digest, d.dest_digest) {
                    if a != b {
                        return Err(EngineError::DigestMismatch {
                            phase: Phase::Resume,
                            device: d.name.clone(),
                            source_digest: a,
                            dest_digest: b,
                        });
                    }
                }
            }
        }
        if let (true, Some(g), Some(kept)) = (self.st.opts.full_verify, self.st.guest, self.st.hash)
        {
            let full = crate::verify::ram_hash(g)
                .map_err(|e| EngineError::Guest {
                    phase: Phase::Resume,
                    source: e,
                })?
                .0;
            if full != kept.0 {
                return Err(EngineError::IncrementalMismatch {
                    phase: Phase::Resume,
                    what: "guest RAM at the destination".into(),
                    incremental: kept.0,
                    full,
                });
            }
        }
        if self.st.wr.is_some() {
            let info = ReadyInfo {
                digests: self.st.devs.iter().map(|d| d.dest_digest).collect(),
                ram_hash: self.st.hash.map(|h| h.0),
                digest_ms: t.elapsed().as_secs_f64() * 1000.0,
                validate_ms,
                after_end_ms: self
                    .st
                    .ended_at
                    .map_or(0.0, |e| e.elapsed().as_secs_f64() * 1000.0),
            };
            self.reply(&Reply::Ready(info))?;
            loop {
                match next_event(&mut self.input, &self.st)? {
                    Event::Go => break,
                    Event::Verified { compared, devices } => {
                        self.st.sender_verified = Some((compared, devices));
                    }
                    // The parser allows only verified, go (or abort) after
                    // the end.
                    _ => return Err(self.unexpected("after the end marker")),
                }
            }
        }
        // Each device ends in the run state its source had: a stopped
        // source gives a stopped destination.
        self.st.started = true;
        for (d, running) in self.st.devs.iter_mut().zip(&self.st.final_running) {
            if *running {
                d.h.set_state(MigState::Running)
                    .map_err(|e| EngineError::device(Phase::Resume, d.name.clone(), e))?;
            }
        }
        self.reply(&Reply::Running)?;
        self.st.phase = Phase::Done;
        self.st.progress(self.input.offset());
        Ok(())
    }
}
