//! Loading: every event of the body is applied as it arrives — device
//! data written into the RESUMING devices, RAM runs into guest RAM (the
//! RAM hash kept up to date page by page), source digests remembered,
//! round markers acknowledged — until the end marker.

use super::{next_event_deferring, Dest, Loader};
use crate::error::EngineError;
use crate::format::{Event, Reply};
use crate::progress::Phase;
use std::time::{Duration, Instant};
use vfio_migrate_backend::{BackendError, MigState, MigrationDevice};

impl<D: MigrationDevice> Dest<'_, D> {
    /// Loads records until the end marker.
    pub(super) fn load(&mut self) -> Result<(), EngineError> {
        loop {
            let offset = self.input.offset();
            if offset >= self.st.next_progress {
                self.st.progress(offset);
                self.st.next_progress = offset + (64 << 20);
            }
            // Small records are read: a splice pays off from ~a quarter
            // MiB (fewer calls inside the downtime).
            let min = super::spliced::SPLICE_MIN;
            let defer = self.st.pipe.as_ref().map(|p| min..=p.cap.max(min));
            let ack = match next_event_deferring(&mut self.input, &self.st, defer)? {
                Event::DeviceDataDeferred {
                    index,
                    stop_copy,
                    len,
                    data_crc,
                } => {
                    if stop_copy {
                        self.st.phase = Phase::StopCopy;
                    }
                    self.splice_device(index, stop_copy, len, data_crc)?;
                    None
                }
                Event::DeviceData {
                    index,
                    stop_copy,
                    data,
                } => {
                    if stop_copy {
                        self.st.phase = Phase::StopCopy;
                    }
                    let at = self.st.reasm[index].next();
                    self.st.device_chunk(index, at, data, stop_copy)?;
                    None
                }
                Event::DeviceChunk {
                    index,
                    offset,
                    stop_copy,
                    data,
                } => {
                    if stop_copy {
                        self.st.phase = Phase::StopCopy;
                    }
                    self.st.device_chunk(index, offset, data, stop_copy)?;
                    self.st.check_waiting(index)?;
                    None
                }
                Event::ChannelEpoch { epoch, last } => {
                    if last {
                        self.st.phase = Phase::StopCopy;
                    }
                    self.drain_channels(epoch, last)?;
                    None
                }
                Event::Verify { index, digest } => {
                    self.st.devs[index].source_digest = Some(digest);
                    None
                }
                Event::Round { iteration } => {
                    self.settle_writes(None)?;
                    self.st.check_devices()?;
                    Some(iteration)
                }
                Event::RamPages {
                    first_page, data, ..
                } => {
                    self.st.load_ram(first_page, data)?;
                    None
                }
                Event::RamZero { first_page, count } => {
                    self.st.load_zero(first_page, count)?;
                    None
                }
                Event::InitialSent { index, generation } => {
                    // Everything before it was written into the device
                    // (write_data returns once the device took it; spliced
                    // writes are answered here).
                    self.settle_writes(Some(index))?;
                    if self.st.switchover_ack {
                        self.reply(&Reply::SwitchoverAck {
                            device: index as u32,
                            generation,
                        })?;
                    }
                    None
                }
                Event::DeviceEnd { index, bytes } => {
                    self.settle_writes(Some(index))?;
                    self.st.device_ended(index, bytes)?;
                    None
                }
                Event::End => {
                    self.settle_writes(None)?;
                    self.st.ended_at = Some(Instant::now());
                    return Ok(());
                }
                // The parser allows nothing else in the body.
                _ => return Err(self.unexpected("in the body of the stream")),
            };
            if let Some(n) = ack {
                self.reply(&Reply::RoundAck(n))?;
            }
        }
    }
}

impl<D: MigrationDevice> Loader<'_, D> {
    fn guest_err(&self, e: std::io::Error) -> EngineError {
        EngineError::Guest {
            phase: self.phase,
            source: e,
        }
    }

    /// Writes a chunk of device `i`'s state, in the device's preferred
    /// chunk size.
    pub(super) fn write_device(
        &mut self,
        i: usize,
        data: &[u8],
        stop_copy: bool,
    ) -> Result<(), EngineError> {
        let d = &mut self.devs[i];
        let chunk = d.h.preferred_chunk().max(1);
        for part in data.chunks(chunk) {
            d.h.write_data(part).map_err(|e| {
                let e = match e {
                    // A device that restarts its stream when its source
                    // enters STOP_COPY (libvfio-user's sample server) takes
                    // the pre-copy bytes as the start of its state and
                    // refuses what goes past its end.
                    BackendError::Refused {
                        step,
                        errno,
                        detail,
                    } if stop_copy && d.precopy_written > 0 => BackendError::Refused {
                        step,
                        errno,
                        detail: format!(
                            "{detail}{}refused stop-copy data after {} bytes of pre-copy data; a device whose stop-copy data restarts its state from the beginning cannot take pre-copy data: migrate it with --precopy off",
                            if detail.is_empty() { "" } else { "; " },
                            d.precopy_written
                        ),
                    },
                    e => e,
                };
                EngineError::device(self.phase, d.name.clone(), e)
            })?;
        }
        d.took(data.len(), stop_copy);
        Ok(())
    }

    /// Between pre-copy rounds (at most every 100 ms): every device must
    /// still answer and be RESUMING, so a dead destination is found before
    /// the source stops.
    fn check_devices(&mut self) -> Result<(), EngineError> {
        if self.last_check.elapsed() < Duration::from_millis(100) {
            return Ok(());
        }
        self.last_check = Instant::now();
        for d in &mut self.devs {
            match d.h.state() {
                Ok(MigState::Resuming) => {}
                Ok(state) => {
                    return Err(EngineError::LeftResuming {
                        phase: self.phase,
                        device: d.name.clone(),
                        state,
                    })
                }
                Err(e) => return Err(EngineError::device(self.phase, d.name.clone(), e)),
            }
        }
        Ok(())
    }

    /// Whole pages from `first` on (the parser checked they fit).
    pub(super) fn load_ram(&mut self, first: u64, data: &[u8]) -> Result<(), EngineError> {
        let g = self.guest.ok_or_else(|| self.no_guest())?;
        let ps = g.page_size() as usize;
        if let Some(h) = self.hash.as_mut() {
            for (k, new) in data.chunks_exact(ps).enumerate() {
                let page = first + k as u64;
                if let Err(e) = g.read_pages(page, &mut self.old_page) {
                    return Err(EngineError::Guest {
                        phase: self.phase,
                        source: e,
                    });
                }
                h.replace(page, &self.old_page, new);
            }
        }
        g.write_pages(first, data).map_err(|e| self.guest_err(e))?;
        self.ram_bytes += data.len() as u64;
        Ok(())
    }

    /// A zero run: pages that are holes here already read as zero; the
    /// others are cleared.
    pub(super) fn load_zero(&mut self, first: u64, count: u32) -> Result<(), EngineError> {
        let g = self.guest.ok_or_else(|| self.no_guest())?;
        let ps = g.page_size();
        let end = first + u64::from(count);
        let per = ((1u64 << 20) / ps).max(1);
        if self.zeros.is_empty() {
            self.zeros = vec![0u8; (per * ps) as usize];
        }
        let mut p = first;
        while p < end {
            let holes = g.zero_pages_at(p);
            if holes > 0 {
                p += holes.min(end - p);
                continue;
            }
            let n = g.data_pages_at(p).max(1).min(end - p).min(per);
            if let Some(h) = self.hash.as_mut() {
                for page in p..p + n {
                    if let Err(e) = g.read_pages(page, &mut self.old_page) {
                        return Err(EngineError::Guest {
                            phase: self.phase,
                            source: e,
                        });
                    }
                    h.replace_with_zero(page, &self.old_page, self.zero_crc);
                }
            }
            g.write_pages(p, &self.zeros[..(n * ps) as usize])
                .map_err(|e| self.guest_err(e))?;
            p += n;
        }
        Ok(())
    }

    /// RAM arrived but there is no guest RAM here (setup refuses that, so
    /// this is defensive).
    fn no_guest(&self) -> EngineError {
        EngineError::Incompatible {
            reason: "the stream carries guest RAM but the destination has no guest RAM".into(),
        }
    }
}
