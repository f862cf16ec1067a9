//! The destination's use of parallel data channels
//! ([`crate::channels`]): accepting them at setup, reading every channel
//! to the end of each epoch the main stream announces, and putting each
//! device's chunks back in order before they reach the device.

use super::{Dest, Loader};
use crate::channels::recv::{accept, ram_data, ChannelError, Inbound, Item, CHUNK_DATA};
use crate::channels::reorder::{PushError, Reassembly};
use crate::channels::REORDER_CAP;
use crate::error::EngineError;
use crate::format::Reply;
use std::time::Duration;
use vfio_migrate_backend::MigrationDevice;

/// Chunks waiting behind gaps beyond this fail the migration: a source
/// that keeps sending far ahead of a gap it never fills.
const HARD_CAP: u64 = 4 * REORDER_CAP;

impl<D: MigrationDevice> Loader<'_, D> {
    fn chan_err(&self, e: ChannelError) -> EngineError {
        match e {
            ChannelError::Cancelled => EngineError::Cancelled { phase: self.phase },
            e => EngineError::Channel {
                phase: self.phase,
                detail: e.to_string(),
            },
        }
    }

    fn waiting(&self) -> u64 {
        self.reasm.iter().map(Reassembly::pending_bytes).sum()
    }

    /// Writes `data`, device `i`'s bytes at `offset`, in order.
    pub(super) fn device_chunk(
        &mut self,
        i: usize,
        offset: u64,
        data: &[u8],
        stop_copy: bool,
    ) -> Result<(), EngineError> {
        let mut r = std::mem::take(&mut self.reasm[i]);
        let res = r.push(offset, data, &mut |b| self.write_device(i, b, stop_copy));
        self.reasm[i] = r;
        self.pushed(i, res)
    }

    fn pushed(&self, i: usize, r: Result<(), PushError<EngineError>>) -> Result<(), EngineError> {
        match r {
            Ok(()) => Ok(()),
            Err(PushError::Write(e)) => Err(e),
            Err(PushError::Chunk(c)) => Err(EngineError::Channel {
                phase: self.phase,
                detail: format!("device {i} ({}): {c}", self.devs[i].name),
            }),
        }
    }

    /// Chunks of one stream (a file) may wait behind a gap only so much.
    pub(super) fn check_waiting(&self, i: usize) -> Result<(), EngineError> {
        let w = self.waiting();
        if w > HARD_CAP {
            return Err(EngineError::Channel {
                phase: self.phase,
                detail: format!(
                    "device {i}: {w} bytes of data arrived ahead of offset {} without the bytes before them",
                    self.reasm[i].next()
                ),
            });
        }
        Ok(())
    }

    /// The device's end: every byte up to `bytes` was written in order.
    pub(super) fn device_ended(&self, i: usize, bytes: u64) -> Result<(), EngineError> {
        let r = &self.reasm[i];
        let gap = r.finish().err().or_else(|| {
            (r.next() != bytes).then_some(crate::channels::reorder::ChunkError::Gap {
                next: r.next(),
                waiting: 0,
            })
        });
        match gap {
            None => Ok(()),
            Some(g) => Err(EngineError::Channel {
                phase: self.phase,
                detail: format!(
                    "device {i} ({}): {g}; {bytes} bytes were announced",
                    self.devs[i].name
                ),
            }),
        }
    }
}

impl<D: MigrationDevice> Dest<'_, D> {
    /// The source asks for `count` channels: offer them (live, with an
    /// acceptor) and accept them. Otherwise say nothing: the source sends
    /// everything on the main stream.
    pub(super) fn accept_channels(
        &mut self,
        count: u32,
        token: (u64, u64),
    ) -> Result<(), EngineError> {
        if self.st.wr.is_none() {
            return Ok(());
        }
        let Some(mut acceptor) = self.st.opts.channels.take() else {
            return Ok(());
        };
        self.reply(&Reply::ChannelsReady(count))?;
        let wait = match self.st.opts.channel_wait {
            Duration::ZERO => Duration::from_secs(10),
            w => w,
        };
        let cancel = self.st.opts.cancel.clone();
        let r = accept(count as usize, token, &mut acceptor, wait, &cancel);
        self.st.opts.channels = Some(acceptor);
        let chans = r.map_err(|e| self.st.chan_err(e))?;
        let inb = Inbound::start(chans, self.st.devs.len(), self.st.ram).map_err(|e| {
            EngineError::Channel {
                phase: self.st.phase,
                detail: format!("starting the channel readers: {e}"),
            }
        })?;
        tracing::info!(channels = count, "data channels accepted");
        self.st.inbound = Some(inb);
        Ok(())
    }

    /// Reads every channel to the end of `epoch` (and with `last`, to its
    /// end), applying what they carry.
    pub(super) fn drain_channels(&mut self, epoch: u64, last: bool) -> Result<(), EngineError> {
        let Some(mut inb) = self.st.inbound.take() else {
            return Err(self.unexpected("(a channel epoch, but no data channels were agreed)"));
        };
        let r = self.drain_with(&mut inb, epoch, last);
        if r.is_ok() && !last {
            self.st.inbound = Some(inb);
        } else if r.is_err() {
            inb.abort();
        }
        r
    }

    fn drain_with(&mut self, inb: &mut Inbound, epoch: u64, last: bool) -> Result<(), EngineError> {
        loop {
            let blocked = (self.st.waiting() >= REORDER_CAP)
                .then(|| {
                    self.st
                        .reasm
                        .iter()
                        .position(|r| r.pending_bytes() > 0)
                        .map(|d| (d, self.st.reasm[d].next()))
                })
                .flatten();
            let item = {
                let reasm = &self.st.reasm;
                let in_order = |d: usize, o: u64| reasm.get(d).is_some_and(|r| r.next() == o);
                inb.next(epoch, last, &in_order, blocked, &self.st.opts.cancel)
            };
            let item = match item {
                Ok(Some(i)) => i,
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.st.chan_err(e)),
            };
            match item {
                Item::Chunk {
                    device,
                    offset,
                    stop_copy,
                    data,
                } => {
                    let len = (data.len() - CHUNK_DATA) as u64;
                    self.st.channel_bytes += data.len() as u64 + 16;
                    if let Err(e) = self.input.count_channel_data(device, len) {
                        return Err(EngineError::Channel {
                            phase: self.st.phase,
                            detail: e,
                        });
                    }
                    let mut r = std::mem::take(&mut self.st.reasm[device]);
                    let st = &mut self.st;
                    let res = r.push_owned(
                        offset,
                        data,
                        CHUNK_DATA,
                        &mut |b| st.write_device(device, b, stop_copy),
                        &mut |b| inb.recycle(b),
                    );
                    self.st.reasm[device] = r;
                    self.st.pushed(device, res)?;
                    self.st.check_waiting(device)?;
                }
                Item::RamPages { first_page, data } => {
                    self.st.channel_bytes += data.len() as u64 + 16;
                    let r = self.st.load_ram(first_page, ram_data(&data));
                    inb.recycle(data);
                    r?;
                }
                Item::RamZero { first_page, count } => {
                    self.st.channel_bytes += 32;
                    self.st.load_zero(first_page, count)?;
                }
                Item::Sync(_) | Item::End | Item::Failed(_) => {
                    unreachable!("Inbound::next handles these")
                }
            }
            let offset = self.input.offset() + self.st.channel_bytes;
            if offset >= self.st.next_progress {
                self.st.progress(offset);
                self.st.next_progress = offset + (64 << 20);
            }
        }
    }
}
