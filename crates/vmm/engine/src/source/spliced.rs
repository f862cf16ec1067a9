//! Device data that never passes through this process: when the device's
//! backend can put its data into a pipe with its checksum (our vfio-user
//! servers, [`vfio_migrate_backend::DataSplice`]) and the link is a
//! plaintext socket, each read goes device server → pipe → link by
//! `splice`, and the record's checksum is combined from the header's and
//! the one the server computed while the data was in its cache. No copy
//! into or out of this process, no checksum pass here.

use super::devices::DEVICE_CHUNK;
use super::Source;
use crate::error::EngineError;
use crate::format::Kind;
use crate::link::Pipe;
use std::os::fd::AsFd;
use vfio_migrate_backend::{MigrationDevice, Spliced};

/// Devices expected to hand out less are read and written as usual.
const SPLICE_MIN: u64 = 256 << 10;
/// Reads kept in flight behind the one being spliced on: the device
/// server fills the next replies while this process moves one.
const READ_AHEAD: u64 = 2;

impl<D: MigrationDevice> Source<'_, D> {
    /// [`Source::send_device`] by splice. `Ok(None)`: not possible for
    /// this device or link (nothing was read): use the copying path.
    pub(super) fn send_device_spliced(
        &mut self,
        i: usize,
        kind: Kind,
        budget: u64,
    ) -> Result<Option<(u64, bool)>, EngineError> {
        let Some(sink) = self.splice.clone() else {
            return Ok(None);
        };
        // Little data (a few dirty pages in the downtime) is copied: a
        // splice pays off from ~a quarter MiB (fewer calls).
        let d = &self.devs[i];
        let expected = if kind == Kind::DeviceStopCopy {
            d.stop_estimate
        } else {
            d.pending
        };
        // (0: not estimated, as without pre-copy: splice.)
        if (1..SPLICE_MIN).contains(&expected)
            || self.chans.is_some()
            || self.devs[i].h.data_splice().is_none()
        {
            return Ok(None);
        }
        if self.pipe.is_none() {
            match Pipe::new(DEVICE_CHUNK) {
                Ok(p) => self.pipe = Some(p),
                Err(e) => {
                    tracing::debug!(error = %e, "no pipe for splicing: copying instead");
                    self.splice = None;
                    return Ok(None);
                }
            }
        }
        let cap = self.pipe.as_ref().expect("made").cap;
        let chunk = self.read_size(i, cap);
        let mut sent = 0u64;
        // A short reply: the device has nothing more now; stop reading
        // ahead, collect what is in flight, then read until it says 0.
        let mut short = false;
        loop {
            let in_flight = self.devs[i].h.data_splice().map_or(0, |s| s.reads_ahead());
            if sent >= budget && in_flight == 0 {
                break;
            }
            self.check_cancel()?;
            self.poll_replies()?;
            // Never more in flight than the budget takes: every reply is
            // stream data that must go out in this call.
            let room = budget.saturating_sub(sent) / chunk as u64;
            let ahead = if short {
                0
            } else {
                room.saturating_sub(1).min(READ_AHEAD) as usize
            };
            let pipe = self.pipe.as_ref().expect("made");
            // The record's header goes when the reply's head is read, its
            // payload a pipeful at a time (all under the link's lock: no
            // heartbeat inside a record).
            let mut link_err = None;
            let got = {
                let d = &mut self.devs[i];
                let s = d.h.data_splice().expect("checked");
                let r = self.out.with(|w| {
                    let mut each = |ev: Spliced| -> std::io::Result<()> {
                        let r = match ev {
                            Spliced::Head { len, crc } => w.begin_spliced(kind, i as u32, len, crc),
                            Spliced::Data(k) => sink
                                .splice_in(pipe.r.as_fd(), k)
                                .map_err(|e| w.channel_error(e)),
                        };
                        r.map_err(|e| {
                            let told = std::io::Error::other(e.to_string());
                            link_err = Some(e);
                            told
                        })
                    };
                    let r = s.read_data_spliced(pipe.w.as_fd(), chunk, ahead, &mut each);
                    if let Ok(Some((n, _))) = &r {
                        if *n > 0 {
                            w.end_spliced(*n);
                        }
                    }
                    r
                });
                if let Some(e) = link_err {
                    // The pipe may hold part of the record: never reuse it.
                    self.pipe = None;
                    return Err(self.stream_err(e));
                }
                r.map_err(|e| EngineError::device(self.phase, d.name.clone(), e))?
            };
            let Some((n, _)) = got else {
                if sent == 0 {
                    return Ok(None);
                }
                return Ok(Some((sent, false)));
            };
            if n == 0 {
                let left = self.devs[i].h.data_splice().map_or(0, |s| s.reads_ahead());
                if left == 0 {
                    return Ok(Some((sent, true)));
                }
                short = true;
                continue;
            }
            short |= n < chunk;
            if let Some(p) = self.pacer.as_mut() {
                if !p.pace(n as u64 + 16, &self.opts.cancel) {
                    return Err(EngineError::Cancelled { phase: self.phase });
                }
            }
            sent += n as u64;
            self.devs[i].report.spliced_bytes += n as u64;
            self.tick();
        }
        Ok(Some((sent, false)))
    }
}
