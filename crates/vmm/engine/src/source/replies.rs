//! The destination's answers on a live link: a reader thread turns the
//! back channel into [`Reply`]s on a channel, and the driver polls or waits
//! for them with a deadline. A snapshot has no back channel: that is the
//! whole difference between the two [`Mode`]s.

use super::Source;
use crate::error::EngineError;
use crate::format::{ReplyReader, StreamError};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;
use vfio_migrate_backend::MigrationDevice;

pub(super) use crate::format::Reply;

/// The reader thread and what it delivers.
pub(super) struct Replies {
    rx: mpsc::Receiver<Result<Reply, StreamError>>,
    thread: JoinHandle<()>,
    /// Pre-copy rounds sent / loaded by the destination.
    pub rounds_sent: u64,
    pub rounds_acked: u64,
}

/// How the source's stream is consumed.
pub(super) enum Mode {
    /// A destination reads it live and answers.
    Live(Replies),
    /// A file: nobody answers; checked when restored.
    Snapshot,
}

impl Mode {
    /// Live when the link has a back channel (its reader thread starts).
    pub fn for_link(
        rx: Option<Box<dyn std::io::Read + Send>>,
        peer: &str,
    ) -> Result<Self, StreamError> {
        let Some(r) = rx else {
            return Ok(Mode::Snapshot);
        };
        let (tx, rx) = mpsc::channel();
        let what = format!("the destination {peer}");
        let thread = std::thread::Builder::new()
            .name("migrate-replies".into())
            .spawn(move || {
                let mut rd = ReplyReader::new(r, what);
                if let Err(e) = rd.read_header() {
                    let _ = tx.send(Err(e));
                    return;
                }
                loop {
                    let item = rd.next_reply();
                    let stop = item.is_err();
                    if tx.send(item).is_err() || stop {
                        return;
                    }
                }
            })
            .map_err(|e| StreamError::Io {
                what: "starting the reply reader".into(),
                source: e,
            })?;
        Ok(Mode::Live(Replies {
            rx,
            thread,
            rounds_sent: 0,
            rounds_acked: 0,
        }))
    }

    /// True when a destination answers.
    pub fn is_live(&self) -> bool {
        matches!(self, Mode::Live(_))
    }

    /// After a failed write: the reason the destination gave before it
    /// closed, if it gave one within half a second.
    pub fn last_words(&mut self) -> Option<String> {
        let Mode::Live(r) = self else { return None };
        match r.rx.recv_timeout(Duration::from_millis(500)) {
            Ok(Ok(Reply::Failed(reason) | Reply::Refuse(reason))) => Some(reason),
            _ => None,
        }
    }

    /// Stops the reader thread (the link is closed first by the caller).
    pub fn join(self) {
        if let Mode::Live(r) = self {
            drop(r.rx);
            let _ = r.thread.join();
        }
    }
}

impl<D: MigrationDevice> Source<'_, D> {
    /// Turns a reply-channel failure into an engine error.
    fn reply_err(&self, e: StreamError) -> EngineError {
        match e {
            // Nothing at all came back: not a vfio-migrate receiver that
            // took us (one that expects TLS drops a plaintext sender).
            StreamError::Truncated { records: 0, offset, .. } if offset < 16 => EngineError::DestinationFailed {
                phase: self.phase,
                peer: self.peer.clone(),
                reason: "it closed the connection before answering: a receiver that expects TLS drops a plaintext sender (pass --tls-creds), or the process died".into(),
            },
            StreamError::Truncated { .. } => EngineError::DestinationFailed {
                phase: self.phase,
                peer: self.peer.clone(),
                reason:
                    "it closed the connection without saying why (did the destination process die?)"
                        .into(),
            },
            e => EngineError::stream(self.phase, self.peer.clone(), e),
        }
    }

    /// One item from the reader thread within `wait` (`None`: nothing
    /// came, or no back channel).
    fn recv(&mut self, wait: Duration) -> Option<Result<Reply, StreamError>> {
        let Mode::Live(r) = &mut self.mode else {
            return None;
        };
        let got = if wait.is_zero() {
            r.rx.try_recv()
                .map_err(|e| matches!(e, mpsc::TryRecvError::Disconnected))
        } else {
            r.rx.recv_timeout(wait)
                .map_err(|e| matches!(e, mpsc::RecvTimeoutError::Disconnected))
        };
        match got {
            Ok(item) => Some(item),
            Err(false) => None,
            // The reader ended after reporting why: nothing more will come.
            Err(true) => Some(Err(StreamError::Io {
                what: "reading the destination's answers".into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the reply channel is closed",
                ),
            })),
        }
    }

    /// Round acks are noted (`None`), failures become errors, any other
    /// reply is handed back.
    fn classify(&mut self, item: Result<Reply, StreamError>) -> Result<Option<Reply>, EngineError> {
        match item {
            Ok(Reply::RoundAck(n)) => {
                if let Mode::Live(r) = &mut self.mode {
                    r.rounds_acked = r.rounds_acked.max(n + 1);
                }
                Ok(None)
            }
            Ok(Reply::SwitchoverAck { device, generation }) => {
                self.note_switchover_ack(device, generation);
                Ok(None)
            }
            Ok(Reply::Caps(flags)) => {
                self.switch_ack =
                    self.opts.switchover_ack && flags & crate::format::CAP_SWITCHOVER_ACK != 0;
                Ok(None)
            }
            Ok(Reply::Failed(reason)) => {
                // A data channel that broke here is what the destination
                // saw end early: say that first.
                if let Some(Err(f)) = self.chans.as_ref().map(|c| c.check()) {
                    return Err(self.chan_err(f));
                }
                Err(EngineError::DestinationFailed {
                    phase: self.phase,
                    peer: self.peer.clone(),
                    reason,
                })
            }
            Ok(Reply::Refuse(reason)) => Err(EngineError::Refused {
                phase: self.phase,
                peer: self.peer.clone(),
                reason,
            }),
            Ok(reply) => Ok(Some(reply)),
            Err(e) => Err(self.reply_err(e)),
        }
    }

    /// Takes the answers that arrived, without waiting: round acks are
    /// noted, a failure report ends the migration, anything else is out of
    /// turn.
    pub(super) fn poll_replies(&mut self) -> Result<(), EngineError> {
        while let Some(item) = self.recv(Duration::ZERO) {
            if let Some(r) = self.classify(item)? {
                return Err(self.out_of_turn(&r));
            }
        }
        Ok(())
    }

    /// Waits for the next answer other than a round ack; cancellable while
    /// `cancellable`. The wait ends with the answer, a cancel, or the
    /// reader thread's failure — among them its stall deadline, which the
    /// destination's heartbeats keep off while it works.
    pub(super) fn wait_reply(
        &mut self,
        what: &'static str,
        cancellable: bool,
    ) -> Result<Reply, EngineError> {
        loop {
            if cancellable {
                self.check_cancel()?;
            }
            if let Some(item) = self.recv(Duration::from_millis(20)) {
                if let Some(r) = self.classify(item)? {
                    return Ok(r);
                }
            }
            if !self.mode.is_live() {
                return Err(EngineError::Timeout {
                    phase: self.phase,
                    peer: self.peer.clone(),
                    what,
                    secs: 0,
                });
            }
        }
    }

    /// A pre-copy round was sent.
    pub(super) fn round_sent(&mut self, iteration: u64) {
        if let Mode::Live(r) = &mut self.mode {
            r.rounds_sent = iteration + 1;
        }
    }

    /// Waits until the destination has loaded every pre-copy round sent,
    /// so the stop does not also pay for a backlog in socket buffers.
    pub(super) fn wait_drained(&mut self) -> Result<(), EngineError> {
        loop {
            let Mode::Live(r) = &self.mode else {
                return Ok(());
            };
            if r.rounds_acked >= r.rounds_sent {
                return Ok(());
            }
            self.check_cancel()?;
            if let Some(item) = self.recv(Duration::from_millis(1)) {
                if let Some(r) = self.classify(item)? {
                    return Err(self.out_of_turn(&r));
                }
            }
        }
    }
}
