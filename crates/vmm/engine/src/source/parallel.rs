//! The source's use of parallel data channels ([`crate::channels`]):
//! asking a live destination for them, opening them, sending device data
//! as offset-carrying chunks and RAM runs through them, and the epoch
//! marks around each pre-copy round and the stop-copy.

use super::Source;
use crate::channels::send::{ChannelFailed, ChannelSet};
use crate::channels::{token, CHUNK};
use crate::error::EngineError;
use crate::format::{ChannelsRequest, Epoch, Kind, FLAG_OPTIONAL, MAX_CHANNELS, NO_DEVICE};
use std::time::Duration;
use vfio_migrate_backend::MigrationDevice;

impl<D: MigrationDevice> Source<'_, D> {
    pub(super) fn chan_err(&self, f: ChannelFailed) -> EngineError {
        if self.opts.cancel.is_cancelled() {
            return EngineError::Cancelled { phase: self.phase };
        }
        EngineError::Channel {
            phase: self.phase,
            detail: format!(
                "data channel {} to {}: {}",
                f.index,
                if f.peer.is_empty() {
                    &self.peer
                } else {
                    &f.peer
                },
                f.reason
            ),
        }
    }

    /// Stream bytes sent so far, on every channel.
    pub(super) fn sent_bytes(&self) -> u64 {
        self.out.bytes() + self.chans.as_ref().map_or(0, |c| c.bytes())
    }

    /// Setup: a live source asks for its channels (an optional record:
    /// an older destination ignores it); a snapshot starts its writer
    /// threads.
    pub(super) fn ask_channels(&mut self) -> Result<(), EngineError> {
        let Some(want) = self.opts.channels.as_ref().map(|c| c.count) else {
            return Ok(());
        };
        if want < 2 {
            return Ok(());
        }
        let count = want.min(MAX_CHANNELS);
        if !self.mode.is_live() {
            let set = ChannelSet::into_file(&self.out, count as usize, self.devs.len(), CHUNK)
                .map_err(|e| EngineError::Channel {
                    phase: self.phase,
                    detail: format!("starting the channel writers: {e}"),
                })?;
            self.chans = Some(set);
            return Ok(());
        }
        if self
            .opts
            .channels
            .as_ref()
            .is_none_or(|c| c.connect.is_none())
        {
            return Ok(());
        }
        let t = token();
        let req = ChannelsRequest {
            count,
            flags: 0,
            token_lo: t.0,
            token_hi: t.1,
        };
        let r = self.out.with(|w| {
            w.write_raw(
                Kind::Channels as u16,
                FLAG_OPTIONAL,
                NO_DEVICE,
                &[&req.to_bytes()],
            )
        });
        if let Err(e) = r {
            return Err(self.stream_err(e));
        }
        self.chans_asked = Some((count, t));
        Ok(())
    }

    /// The destination waits for `n` channels: connect them.
    pub(super) fn open_channels(&mut self, n: u32) -> Result<(), EngineError> {
        let Some((count, t)) = self.chans_asked else {
            return Err(self.out_of_turn(&super::replies::Reply::ChannelsReady(n)));
        };
        if n != count {
            return Err(EngineError::Channel {
                phase: self.phase,
                detail: format!("the destination offers {n} data channels, {count} were asked"),
            });
        }
        let mut set = ChannelSet::live(n as usize, t, self.devs.len(), CHUNK);
        for i in 0..n {
            self.check_cancel()?;
            let connect = self
                .opts
                .channels
                .as_mut()
                .and_then(|c| c.connect.as_mut())
                .expect("asked only with a connector");
            let link = connect(i).map_err(|e| EngineError::Channel {
                phase: self.phase,
                detail: format!("connecting data channel {i} to {}: {e}", self.peer),
            })?;
            if let Err(f) = set.add_live(link) {
                set.abort();
                return Err(self.chan_err(f));
            }
        }
        tracing::info!(channels = n, "data channels open");
        self.chans = Some(set);
        Ok(())
    }

    /// ACCEPT came: if channels were asked and the destination did not
    /// offer them (an older receiver), everything goes on the main stream.
    pub(super) fn channels_declined(&mut self) {
        if let (Some((n, _)), None) = (self.chans_asked, &self.chans) {
            tracing::warn!(
                asked = n,
                "the destination does not offer data channels; sending on the main stream"
            );
            eprintln!("warning: {} does not offer parallel data channels (an older receiver?): the migration uses one connection", self.peer);
        }
    }

    /// Live: the main stream says that epoch data comes on the channels
    /// now (`last`: the stop-copy, after which they end).
    pub(super) fn channel_epoch_begin(&mut self, last: bool) -> Result<(), EngineError> {
        let Some(c) = self.chans.as_ref().filter(|c| c.is_live()) else {
            return Ok(());
        };
        let e = Epoch {
            epoch: c.epoch(),
            last: u32::from(last),
            reserved: 0,
        };
        match self.out.write(Kind::ChannelEpoch, NO_DEVICE, &e.to_bytes()) {
            Ok(()) => self.flush(),
            Err(e) => Err(self.stream_err(e)),
        }
    }

    /// The epoch's data is all queued: each channel ends it (live), or
    /// everything is written (a file).
    pub(super) fn channel_epoch_end(&mut self, last: bool) -> Result<(), EngineError> {
        let Some(mut c) = self.chans.take() else {
            return Ok(());
        };
        let r = c.end_epoch(last);
        self.chans = Some(c);
        r.map_err(|f| self.chan_err(f))
    }

    /// With channels: RAM runs go through them; any other record of a
    /// snapshot waits until the channels wrote theirs. Returns true when
    /// the record was sent.
    pub(super) fn write_via_channels(
        &mut self,
        kind: Kind,
        device: u32,
        parts: &[&[u8]],
    ) -> Result<bool, EngineError> {
        let mut c = self.chans.take().expect("checked");
        let r = if matches!(kind, Kind::RamPages | Kind::RamZero) {
            let n: usize = parts.iter().map(|p| p.len()).sum();
            let paced = match self.pacer.as_mut() {
                Some(p) => p.pace(n as u64, &self.opts.cancel),
                None => true,
            };
            if !paced {
                self.chans = Some(c);
                return Err(EngineError::Cancelled { phase: self.phase });
            }
            let cancel = self.opts.cancel.clone();
            let wait = move || {
                if cancel.is_cancelled() {
                    return Err(ChannelFailed {
                        index: 0,
                        peer: String::new(),
                        reason: "cancelled".into(),
                    });
                }
                Ok(())
            };
            c.record(kind, device, parts, &wait).map(|()| true)
        } else if !c.is_live() {
            c.drain().map(|()| false)
        } else {
            Ok(false)
        };
        self.chans = Some(c);
        r.map_err(|f| self.chan_err(f))
    }

    /// [`Source::send_device`] with channels: each read lands in a pool
    /// buffer that goes out as one chunk on the least busy channel.
    pub(super) fn send_device_chunks(
        &mut self,
        i: usize,
        kind: Kind,
        budget: u64,
    ) -> Result<(u64, bool), EngineError> {
        let stop_copy = kind == Kind::DeviceStopCopy;
        let chunk = self.read_size(i, CHUNK);
        let mut sent = 0u64;
        while sent < budget {
            self.check_cancel()?;
            self.poll_replies()?;
            let got = self
                .chans
                .as_ref()
                .expect("channels")
                .buffer(Duration::from_millis(100));
            let mut buf = match got {
                Ok(Some(b)) => b,
                Ok(None) => continue,
                Err(f) => return Err(self.chan_err(f)),
            };
            let n = match self.devs[i].h.read_data(&mut buf[..chunk]) {
                Ok(n) => n,
                Err(e) => {
                    self.chans.as_ref().expect("channels").give_back(buf);
                    return Err(self.dev_err(i, e));
                }
            };
            if n == 0 {
                self.chans.as_ref().expect("channels").give_back(buf);
                return Ok((sent, true));
            }
            if let Some(p) = self.pacer.as_mut() {
                if !p.pace(n as u64 + 32, &self.opts.cancel) {
                    return Err(EngineError::Cancelled { phase: self.phase });
                }
            }
            let r = self
                .chans
                .as_mut()
                .expect("channels")
                .device_chunk(i, stop_copy, buf, n);
            r.map_err(|f| self.chan_err(f))?;
            sent += n as u64;
            self.tick();
        }
        Ok((sent, false))
    }
}
