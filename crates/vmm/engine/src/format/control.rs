//! The back channel of a live migration: the destination's [`Reply`]s
//! (accept, refuse, ready, failed, running, round-ack, caps-reply,
//! switchover-ack), with their own
//! stream header and the same record framing, read by [`ReplyReader`] and
//! written by [`write_reply`].

use super::codec::{RecordReader, RecordWriter};
use super::error::{RecordProblem, StreamError};
use super::records::{
    reason_bytes, Caps, ChannelsReady, InitialGen, Kind, Round, FLAG_OPTIONAL, NO_DEVICE,
};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};

/// What the destination reports when it is loaded and validated.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReadyInfo {
    /// Each device's digest after RESUMING → STOP, when known.
    pub digests: Vec<Option<u64>>,
    /// Guest RAM hash as loaded, when kept.
    pub ram_hash: Option<u64>,
    /// Time spent reading digests (part of the downtime), ms.
    #[serde(default)]
    pub digest_ms: f64,
    /// Time the devices took to leave RESUMING for STOP (validating what
    /// they loaded), ms (minor 3; 0 from older destinations).
    #[serde(default)]
    pub validate_ms: f64,
    /// From the end marker read to this answer, ms: validation, digests
    /// and the rest of the destination's work after the load (minor 3).
    #[serde(default)]
    pub after_end_ms: f64,
}

/// An answer from the destination.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The devices are compatible and RESUMING.
    Accept,
    /// Refused at setup, with the reason.
    Refuse(String),
    /// Loaded, validated and verified.
    Ready(ReadyInfo),
    /// The destination failed, with the reason.
    Failed(String),
    /// The destination devices are RUNNING.
    Running,
    /// Everything up to this pre-copy round is loaded.
    RoundAck(u64),
    /// The destination waits for this many data channels now.
    ChannelsReady(u32),
    /// What the destination does (`CAP_*` bits), before accept.
    Caps(u64),
    /// Device `device`'s initial pre-copy data of `generation` is loaded.
    SwitchoverAck {
        /// Device index.
        device: u32,
        /// Which initial data.
        generation: u64,
    },
}

impl Reply {
    /// Its record type.
    pub fn kind(&self) -> Kind {
        match self {
            Reply::Accept => Kind::Accept,
            Reply::Refuse(_) => Kind::Refuse,
            Reply::Ready(_) => Kind::Ready,
            Reply::Failed(_) => Kind::Failed,
            Reply::Running => Kind::Running,
            Reply::RoundAck(_) => Kind::RoundAck,
            Reply::ChannelsReady(_) => Kind::ChannelsReady,
            Reply::Caps(_) => Kind::CapsReply,
            Reply::SwitchoverAck { .. } => Kind::SwitchoverAck,
        }
    }
}

/// Writes `reply` as one record (not flushed).
pub fn write_reply<W: Write>(w: &mut RecordWriter<W>, reply: &Reply) -> Result<(), StreamError> {
    match reply {
        Reply::Accept | Reply::Running => w.write(reply.kind(), NO_DEVICE, &[]),
        Reply::Refuse(r) | Reply::Failed(r) => w.write(reply.kind(), NO_DEVICE, reason_bytes(r)),
        Reply::Ready(info) => {
            let json = serde_json::to_vec(info).expect("ready info serializes");
            w.write(Kind::Ready, NO_DEVICE, &json)
        }
        Reply::RoundAck(n) => w.write(
            Kind::RoundAck,
            NO_DEVICE,
            &Round { iteration: *n }.to_bytes(),
        ),
        Reply::ChannelsReady(n) => w.write(
            Kind::ChannelsReady,
            NO_DEVICE,
            &ChannelsReady {
                count: *n,
                reserved: 0,
            }
            .to_bytes(),
        ),
        // Optional: a source of an older minor skips them.
        Reply::Caps(flags) => w.write_raw(
            Kind::CapsReply as u16,
            FLAG_OPTIONAL,
            NO_DEVICE,
            &[&Caps { flags: *flags }.to_bytes()],
        ),
        Reply::SwitchoverAck { device, generation } => w.write_raw(
            Kind::SwitchoverAck as u16,
            FLAG_OPTIONAL,
            *device,
            &[&InitialGen {
                generation: *generation,
            }
            .to_bytes()],
        ),
    }
}

/// Reads the destination's replies.
pub struct ReplyReader<R: Read> {
    rd: RecordReader<R>,
}

impl<R: Read> ReplyReader<R> {
    /// A reader over `r`; `what` names the channel in errors.
    pub fn new(r: R, what: impl Into<String>) -> Self {
        Self {
            rd: RecordReader::new(r, what),
        }
    }

    /// Reads and checks the back channel's stream header.
    pub fn read_header(&mut self) -> Result<(), StreamError> {
        self.rd.read_stream_header().map(|_| ())
    }

    /// The next reply; forward records here are refused.
    pub fn next_reply(&mut self) -> Result<Reply, StreamError> {
        let mut rec = self.rd.next_record()?;
        // Heartbeats only prove the destination lives.
        while rec.kind == Kind::Heartbeat {
            rec = self.rd.next_record()?;
        }
        Ok(match rec.kind {
            Kind::Accept => Reply::Accept,
            Kind::Refuse => Reply::Refuse(self.rd.payload_text()),
            Kind::Failed => Reply::Failed(self.rd.payload_text()),
            Kind::Running => Reply::Running,
            Kind::RoundAck => Reply::RoundAck(
                Round::decode(self.rd.payload())
                    .expect("length checked")
                    .iteration,
            ),
            Kind::ChannelsReady => Reply::ChannelsReady(
                ChannelsReady::decode(self.rd.payload())
                    .expect("length checked")
                    .count,
            ),
            Kind::CapsReply => Reply::Caps(
                Caps::decode(self.rd.payload())
                    .expect("length checked")
                    .flags,
            ),
            Kind::SwitchoverAck => Reply::SwitchoverAck {
                device: rec.device,
                generation: InitialGen::decode(self.rd.payload())
                    .expect("length checked")
                    .generation,
            },
            Kind::Ready => Reply::Ready(
                serde_json::from_slice(self.rd.payload())
                    .map_err(|e| self.rd.invalid(&rec, format!("bad ready record: {e}")))?,
            ),
            k => {
                return Err(self.rd.refuse(
                    &rec,
                    RecordProblem::OutOfPlace {
                        kind: k,
                        place: "on the reply channel",
                    },
                ))
            }
        })
    }
}
