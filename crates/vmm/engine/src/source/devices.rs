//! The source's devices: what is known about each ([`Dev`]), moving their
//! data into records, their pre-copy and stop-copy estimates, DMA logging
//! and digests.

use super::Source;
use crate::error::EngineError;
use crate::format::Kind;
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
    /// It cannot tell its pending pre-copy bytes.
    pub unsized_precopy: bool,
    /// Pre-copy bytes its last round moved.
    pub last_round_bytes: u64,
    /// Its last pre-copy round ended on an empty read: nothing more to
    /// send right now.
    pub precopy_dry: bool,
    /// It is in STOP_COPY.
    pub in_stop_copy: bool,
    /// Its STOP_COPY stream was read to the end (a 0-byte read).
    pub stream_ended: bool,
    /// Its initial pre-copy data and the destination's acknowledgement.
    pub init_data: super::initial::Initial,
    /// A throttle was set on it (released at the end).
    pub throttled: bool,
    /// Before a rollback moves it out of STOP_COPY, the rest of its stream
    /// is read (bounded by [`DRAIN_BYTES`] and [`DRAIN_TIME`]): the uAPI
    /// lets a device leave STOP_COPY at any point, but libvfio-user's
    /// sample server aborts (an assertion) when it leaves STOP_COPY before
    /// its stream was read whole. Set for every device that does not
    /// report the status extension (foreign servers, kernel devices);
    /// ours are rolled back at once.
    pub drain_on_rollback: bool,
}

/// Most device data read at once (one MIG_DATA_READ, one record). Larger
/// reads do not pay: at 1 MiB the bytes stay in the CPU's caches from the
/// server's copy out of device memory through this process's receive
/// copy, checksum and send copy to the destination server's copy into its
/// device memory; with 8 MiB they fall out of the caches between the
/// steps and the whole move costs about 25 % more CPU (BENCHMARKS.md).
pub(super) const DEVICE_CHUNK: usize = 1 << 20;

/// Most bytes read from a device's STOP_COPY stream before a rollback.
pub(super) const DRAIN_BYTES: u64 = 256 << 20;
/// Longest time spent reading a device's STOP_COPY stream before a
/// rollback.
pub(super) const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(3);

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
            unsized_precopy: false,
            last_round_bytes: 0,
            precopy_dry: false,
            in_stop_copy: false,
            stream_ended: false,
            drain_on_rollback: false,
            init_data: Default::default(),
            throttled: false,
        }
    }
}

impl<D: MigrationDevice> Dev<'_, D> {
    /// Reads and drops the rest of the STOP_COPY stream, within the
    /// bounds; returns the bytes dropped and whether the stream ended.
    pub fn drain_stop_copy(&mut self, buf: &mut [u8]) -> (u64, bool) {
        let t = std::time::Instant::now();
        let mut n = 0u64;
        while n < DRAIN_BYTES && t.elapsed() < DRAIN_TIME {
            match self.h.read_data(buf) {
                Ok(0) => {
                    self.stream_ended = true;
                    return (n, true);
                }
                Ok(k) => n += k as u64,
                Err(e) => {
                    tracing::warn!(device = %self.name, error = %e, "reading the rest of the stop-copy stream before the rollback");
                    return (n, false);
                }
            }
        }
        (n, false)
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
        if self.chans.is_some() {
            return self.send_device_chunks(i, kind, budget);
        }
        if let Some(r) = self.send_device_spliced(i, kind, budget)? {
            return Ok(r);
        }
        let chunk = self.read_size(i, self.buf.len());
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

    /// How much to read from device `i` at a time: what it prefers,
    /// within 4 KiB and [`DEVICE_CHUNK`] and `cap`; when paced, at most
    /// ~50 ms of the rate, so that a destination's failure or a cancel is
    /// seen between reads.
    pub(super) fn read_size(&mut self, i: usize, cap: usize) -> usize {
        let chunk = self.devs[i]
            .h
            .preferred_chunk()
            .clamp(4096, DEVICE_CHUNK)
            .min(cap);
        match self.opts.bandwidth_limit {
            Some(rate) => chunk.min((rate / 20).max(64 << 10) as usize),
            None => chunk,
        }
    }

    /// Refreshes every device's pending and stop-copy estimates.
    pub(super) fn estimate_devices(&mut self) -> Result<(), EngineError> {
        for i in 0..self.devs.len() {
            let phase = self.phase;
            let d = &mut self.devs[i];
            if d.precopy {
                match d.h.precopy_info() {
                    Ok(info) => {
                        d.pending = info.initial_bytes + info.dirty_bytes;
                        d.init_data.left = info.initial_bytes;
                        if info.reinit {
                            tracing::info!(device = %d.name, initial_bytes = info.initial_bytes, "the device re-initialised its pre-copy data");
                            d.init_data.reinit();
                            self.metrics.reinits += 1;
                        }
                    }
                    // vfio-user has no pre-copy size report (ours is an
                    // extension): the device's data tells instead. Until
                    // a round found it empty, count what the last round
                    // moved (at least a byte, so each round asks).
                    Err(vfio_migrate_backend::BackendError::Unsupported { .. }) => {
                        d.unsized_precopy = true;
                        d.pending = if d.precopy_dry {
                            0
                        } else {
                            d.last_round_bytes.max(1)
                        };
                    }
                    Err(e) => return Err(EngineError::device(phase, d.name.clone(), e)),
                }
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
