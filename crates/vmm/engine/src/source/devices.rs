//! The source's devices: what is known about each ([`Dev`]), moving their
//! data into records, their pre-copy and stop-copy estimates, DMA logging
//! and digests.

use super::Source;
use crate::error::EngineError;
use crate::format::{Kind, MAX_DEVICE_DATA};
use crate::progress::Phase;
use crate::report::{digest_hex, DeviceReport};
use vfio_migrate_backend::{DeviceDescriptor, MigState, MigrationDevice};

/// One source device.
pub(super) struct Dev<'a, D> {
    pub h: &'a mut D,
    pub name: String,
    pub desc: DeviceDescriptor,
    /// Its state when the migration started (restored on rollback).
    pub initial: MigState,
    /// It goes through PRE_COPY.
    pub precopy: bool,
    /// DMA logging is on.
    pub logging: bool,
    /// Its state was changed (rollback must restore it).
    pub touched: bool,
    /// Pre-copy bytes pending at the last estimate.
    pub pending: u64,
    /// Stop-copy bytes expected at the last estimate.
    pub stop_estimate: u64,
    /// Its digest while stopped, when a verifier knows how.
    pub digest: Option<u64>,
    pub report: DeviceReport,
}

impl<'a, D> Dev<'a, D> {
    pub fn new(
        h: &'a mut D,
        name: String,
        desc: DeviceDescriptor,
        initial: MigState,
        precopy: bool,
        report: DeviceReport,
    ) -> Self {
        Self {
            h,
            name,
            desc,
            initial,
            precopy,
            logging: false,
            touched: false,
            pending: 0,
            stop_estimate: 0,
            digest: None,
            report,
        }
    }
}

impl<D: MigrationDevice> Source<'_, D> {
    /// Turns DMA dirty logging on for every device over guest RAM; a device
    /// that cannot log its DMA writes cannot be pre-copied with guest RAM.
    pub(super) fn start_dma_logging(&mut self) -> Result<(), EngineError> {
        let Some(g) = self.guest else { return Ok(()) };
        let range = g.dma_range();
        for i in 0..self.devs.len() {
            let d = &mut self.devs[i];
            let Some(log) = d.h.dma_log() else {
                return Err(EngineError::NoDmaLogging {
                    phase: Phase::Setup,
                    device: d.name.clone(),
                });
            };
            log.dma_logging_start(g.page_size(), &[range])
                .map_err(|e| self.dev_err(i, e))?;
            self.devs[i].logging = true;
        }
        Ok(())
    }

    /// Reads up to `budget` bytes of device `i`'s data into records of
    /// `kind`. Returns `(bytes, exhausted)`: exhausted when the device
    /// returned 0.
    pub(super) fn send_device(
        &mut self,
        i: usize,
        kind: Kind,
        budget: u64,
    ) -> Result<(u64, bool), EngineError> {
        let mut chunk = self.devs[i]
            .h
            .preferred_chunk()
            .clamp(4096, MAX_DEVICE_DATA)
            .min(self.buf.len());
        if let Some(rate) = self.opts.bandwidth_limit {
            // Paced: chunks of at most ~50 ms of the rate, so that a
            // destination's failure or a cancel is seen between them.
            chunk = chunk.min((rate / 20).max(64 << 10) as usize);
        }
        let mut sent = 0u64;
        while sent < budget {
            self.check_cancel()?;
            // A destination that failed says so on the back channel: stop
            // sending at once rather than after the whole state.
            self.poll_replies()?;
            let n = {
                let d = &mut self.devs[i];
                d.h.read_data(&mut self.buf[..chunk])
                    .map_err(|e| EngineError::device(self.phase, d.name.clone(), e))?
            };
            if n == 0 {
                return Ok((sent, true));
            }
            let data = std::mem::take(&mut self.buf);
            let r = self.write(kind, i as u32, &[&data[..n]]);
            self.buf = data;
            r?;
            sent += n as u64;
        }
        Ok((sent, false))
    }

    /// Refreshes every device's pending and stop-copy estimates.
    pub(super) fn estimate_devices(&mut self) -> Result<(), EngineError> {
        for i in 0..self.devs.len() {
            let phase = self.phase;
            let d = &mut self.devs[i];
            if d.precopy {
                let info =
                    d.h.precopy_info()
                        .map_err(|e| EngineError::device(phase, d.name.clone(), e))?;
                d.pending = info.initial_bytes + info.dirty_bytes;
            }
            d.stop_estimate = match d.h.stop_copy_size() {
                Ok(Some(n)) => n,
                // Not told: everything still pending at least.
                Ok(None) | Err(_) => d.pending,
            };
        }
        Ok(())
    }

    /// Reads every stopped device's digest through the verifier; returns
    /// the indices of the devices that have one.
    pub(super) fn read_digests(&mut self) -> Result<Vec<usize>, EngineError> {
        let Some(v) = self.opts.verifier.clone() else {
            return Ok(Vec::new());
        };
        let mut have = Vec::new();
        for i in 0..self.devs.len() {
            let d = &mut self.devs[i];
            match v(&d.desc, &mut *d.h) {
                Some(Ok(digest)) => {
                    d.digest = Some(digest);
                    d.report.digest_source = Some(digest_hex(digest));
                    have.push(i);
                }
                Some(Err(e)) => return Err(self.dev_err(i, e)),
                None => {}
            }
        }
        Ok(have)
    }
}
