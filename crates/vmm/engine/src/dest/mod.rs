//! The destination side of a migration: [`migrate_in`].
//!
//! ```text
//! setup     read descriptors + RAM layout; check them against the local
//!           devices and RAM; devices → RESUMING; answer ACCEPT / REFUSE
//!                                                         (setup.rs)
//! load      device data → write_data, RAM runs → guest RAM (RAM hash kept
//!           up to date page by page), digests remembered, until END
//!                                                         (load.rs)
//! resume    devices → STOP (validates); compare digests; answer READY;
//!           wait for GO (live); devices → RUNNING; answer RUNNING
//!                                                         (resume.rs)
//! ```
//!
//! What may follow what is decided by [`crate::format::StreamParser`], the
//! same parser a snapshot check uses. The destination never runs on
//! partial or unverified state: any failure leaves its devices out of
//! RUNNING and is answered with FAILED (live).

mod load;
mod parallel;
mod resume;
mod setup;
mod spliced;

use crate::cancel::Cancel;
use crate::error::EngineError;
use crate::format::{self, Event, RamInfo, RecordWriter, Reply, StreamParser};
use crate::guest::GuestRam;
use crate::heartbeat::{Heartbeat, SharedWriter};
use crate::link::DestLink;
use crate::progress::Phase;
use crate::report::digest_hex;
use crate::verify::{RamHash, Verifier};
use serde::Serialize;
use std::io::{BufReader, Read, Write};
use std::time::{Duration, Instant};
use vfio_migrate_backend::{DeviceDescriptor, MigState, MigrationDevice};

pub use crate::format::ReadyInfo;

/// How the destination loads.
#[derive(Default)]
pub struct DestOptions {
    /// Reads device digests to compare with the source's.
    pub verifier: Option<Verifier>,
    /// Keep a hash of guest RAM as pages arrive, for the source to compare.
    pub hash_ram: bool,
    /// Cancels the load (the destination then never runs).
    pub cancel: Cancel,
    /// Called with the stream bytes read so far, about every 64 MiB and at
    /// phase changes.
    pub progress: Option<Box<dyn FnMut(Phase, u64) + Send>>,
    /// Load even into a device that is not expecting a migration (in use,
    /// or its backend cannot tell).
    pub force: bool,
    /// Accepts parallel data channels when the source asks for them
    /// (`None`: the destination does not offer them, and the source sends
    /// everything on the main stream).
    pub channels: Option<crate::channels::Acceptor>,
    /// How long the data channels may take to connect (zero: 10 s).
    pub channel_wait: Duration,
    /// Before answering READY, hash all guest RAM again and check the hash
    /// kept page by page against it.
    pub full_verify: bool,
}

/// What a destination device was left as after a failed load.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceLeft {
    /// The device.
    pub name: String,
    /// It was reset out of RESUMING (or out of a loaded, unstarted STOP),
    /// so the partial state is gone.
    pub reset: bool,
    /// Its state now, when it could be read.
    pub state: Option<MigState>,
    /// What went wrong putting it there, if anything.
    pub problem: Option<String>,
}

/// A failed load: what failed, and what each device was left as (never
/// RUNNING on the incoming state).
#[derive(Debug)]
pub struct DestFailure {
    /// What failed.
    pub error: EngineError,
    /// Each touched device.
    pub devices: Vec<DeviceLeft>,
}

impl std::fmt::Display for DestFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.error)?;
        for d in &self.devices {
            let state = d
                .state
                .map_or("in an unknown state".to_string(), |s| s.to_string());
            match (&d.problem, d.reset) {
                (Some(p), _) => write!(f, "; {} is {state} ({p})", d.name)?,
                (None, true) => write!(
                    f,
                    "; {} was reset (the partial state was discarded) and is {state}",
                    d.name
                )?,
                (None, false) => write!(f, "; {} is {state}", d.name)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for DestFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// What the destination loaded.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DestReport {
    /// Each device's part.
    pub devices: Vec<DestDevice>,
    /// Stream bytes read.
    pub bytes: u64,
    /// Guest RAM page bytes written.
    pub ram_bytes: u64,
    /// Guest RAM hash as loaded, when kept.
    pub ram_hash: Option<String>,
    /// Every device digest compared and equal, and at least one compared
    /// (here, or by the sender before it said go).
    pub verified: bool,
    /// Who compared: `destination` (a snapshot's digests, checked here),
    /// `sender` (a live source compared ours with its own and said so), or
    /// `null` (nothing was compared).
    pub verified_by: Option<&'static str>,
    /// Device digests the sender compared, when it said (live, format
    /// minor 2 and later).
    pub sender_compared: Option<u32>,
    /// Time from the first byte to RUNNING.
    pub total_ms: f64,
}

/// One destination device's part.
#[derive(Debug, Clone, Serialize)]
pub struct DestDevice {
    /// Where the device is.
    pub name: String,
    /// Its model, from the source's descriptor.
    pub model: String,
    /// State bytes written into it.
    pub data_bytes: u64,
    /// Of `data_bytes`, those spliced from the link into the device's
    /// server without passing through this process (`dest/spliced.rs`).
    pub spliced_bytes: u64,
    /// The source's digest, when sent.
    pub digest_source: Option<String>,
    /// Its digest after loading, when read.
    pub digest_dest: Option<String>,
    /// Digests compared and equal (None: nothing to compare).
    pub verified: Option<bool>,
}

/// One destination device.
struct DevIn<'a, D> {
    h: &'a mut D,
    name: String,
    written: u64,
    /// Of `written`, the bytes spliced.
    spliced: u64,
    /// Of `written`, the pre-copy bytes.
    precopy_written: u64,
    source_digest: Option<u64>,
    dest_digest: Option<u64>,
}

impl<D> DevIn<'_, D> {
    /// Counts `len` bytes the device took (pre-copy or stop-copy data).
    fn took(&mut self, len: usize, stop_copy: bool) {
        self.written += len as u64;
        if !stop_copy {
            self.precopy_written += len as u64;
        }
    }
}

type Input = StreamParser<BufReader<Box<dyn Read + Send>>>;

/// Everything the destination keeps besides the parser, so that an event
/// borrowed from the parser can be applied to it.
struct Loader<'a, D> {
    devs: Vec<DevIn<'a, D>>,
    descs: Vec<DeviceDescriptor>,
    guest: Option<&'a dyn GuestRam>,
    /// The guest RAM layout the stream announced.
    ram: Option<RamInfo>,
    wr: Option<SharedWriter<Box<dyn Write + Send>>>,
    /// Keeps the reply channel alive while loading or validating.
    heartbeat: Option<Heartbeat>,
    heartbeat_every: Option<Duration>,
    peer: String,
    opts: DestOptions,
    phase: Phase,
    hash: Option<RamHash>,
    old_page: Vec<u8>,
    ram_bytes: u64,
    next_progress: u64,
    /// REFUSE was sent already.
    refused: bool,
    /// Zeros to clear pages with (allocated on first use).
    zeros: Vec<u8>,
    /// CRC32C of a zero page, for the RAM hash.
    zero_crc: u32,
    /// Last time the devices were checked between rounds.
    last_check: Instant,
    /// The devices were moved to RESUMING (a failure resets them).
    resuming: bool,
    /// The devices were told to run: no reset any more.
    started: bool,
    /// The source said it compared `(compared, devices)` device digests
    /// and all were equal ([`crate::format::Kind::Verified`]).
    sender_verified: Option<(u32, u32)>,
    /// Per device: the source ran (the destination ends RUNNING), else it
    /// was stopped (the destination ends in STOP).
    final_running: Vec<bool>,
    /// Per device: its stream put back in order (chunks may come out of
    /// order, from several channels).
    reasm: Vec<crate::channels::reorder::Reassembly>,
    /// The data channels, while open.
    inbound: Option<crate::channels::recv::Inbound>,
    /// Data bytes read from the channels.
    channel_bytes: u64,
    /// The source asked for switchover acks (and was told they come).
    switchover_ack: bool,
    /// When the end marker was read (the destination's part of the
    /// downtime is measured from it).
    ended_at: Option<Instant>,
    /// A plaintext link device data may be spliced from (`spliced.rs`).
    splice: Option<crate::link::SpliceSink>,
    /// The pipe spliced data goes through, once set up.
    pipe: Option<crate::link::Pipe>,
}

struct Dest<'a, D> {
    input: Input,
    st: Loader<'a, D>,
}

/// Loads a migration from `link` into `devices` (and `guest` RAM), and
/// starts them. Live links are answered at every step; a snapshot file is
/// checked record by record (use [`crate::snapshot::check`] first to refuse
/// a damaged file before any device is touched).
pub fn migrate_in<D: MigrationDevice>(
    devices: &mut [D],
    guest: Option<&dyn GuestRam>,
    link: DestLink,
    opts: DestOptions,
) -> Result<DestReport, DestFailure> {
    let t0 = Instant::now();
    let peer = link.peer.clone();
    // Small: a record's payload is read past it (or spliced), so it only
    // holds headers and what was read ahead of one.
    let buffer = if link.splice.is_some() {
        16 << 10
    } else {
        256 << 10
    };
    let mut d = Dest {
        input: StreamParser::new(
            BufReader::with_capacity(buffer, link.rx),
            format!("the source {peer}"),
        ),
        st: Loader {
            devs: Vec::new(),
            descs: Vec::new(),
            guest,
            ram: None,
            wr: link
                .tx
                .map(|w| SharedWriter::new(RecordWriter::new(w, format!("the source {peer}")))),
            heartbeat: None,
            heartbeat_every: link.heartbeat,
            peer,
            opts,
            phase: Phase::Setup,
            hash: None,
            old_page: Vec::new(),
            ram_bytes: 0,
            next_progress: 0,
            refused: false,
            zeros: Vec::new(),
            zero_crc: 0,
            last_check: t0,
            resuming: false,
            started: false,
            sender_verified: None,
            final_running: Vec::new(),
            reasm: Vec::new(),
            inbound: None,
            channel_bytes: 0,
            switchover_ack: false,
            ended_at: None,
            splice: link.splice,
            pipe: None,
        },
    };
    let r = match d.run(devices) {
        Ok(()) => Ok(d.st.report(d.input.offset() + d.st.channel_bytes, t0)),
        Err(error) => {
            if let Some(mut c) = d.st.inbound.take() {
                c.abort();
            }
            d.fail(&error);
            let devices = d.st.release();
            Err(DestFailure { error, devices })
        }
    };
    if let Some(close) = link.close {
        close();
    }
    d.st.heartbeat = None;
    r
}

impl<'a, D: MigrationDevice> Dest<'a, D> {
    fn run(&mut self, devices: &'a mut [D]) -> Result<(), EngineError> {
        if let Some(w) = self.st.wr.as_ref() {
            w.write_stream_header()
                .and_then(|()| w.flush())
                .map_err(|e| EngineError::stream(Phase::Setup, &self.st.peer, e))?;
            if let Some(every) = self.st.heartbeat_every {
                self.st.heartbeat = Some(Heartbeat::start(w.clone(), every));
            }
        }
        self.input
            .read_header()
            .map_err(|e| EngineError::stream(Phase::Setup, &self.st.peer, e))?;
        self.setup(devices)?;
        self.st.phase = Phase::PreCopy;
        self.load()?;
        self.st.phase = Phase::Resume;
        self.st.progress(self.input.offset());
        self.resume()
    }

    /// An event the parser should not have let through here.
    fn unexpected(&self, place: &str) -> EngineError {
        EngineError::stream(
            self.st.phase,
            &self.st.peer,
            self.input.invalid(format!("unexpected record {place}")),
        )
    }

    /// Sends a reply (live only); a failed write prefers the reason the
    /// source gave in what is still unread.
    fn reply(&mut self, reply: &Reply) -> Result<(), EngineError> {
        match self.st.send(reply) {
            Ok(()) => Ok(()),
            Err(e) => Err(self
                .closed_early()
                .unwrap_or_else(|| EngineError::stream(self.st.phase, &self.st.peer, e))),
        }
    }

    /// The source closed its side: if it said why (ABORT) in what is still
    /// unread, that is the error to report.
    fn closed_early(&mut self) -> Option<EngineError> {
        for _ in 0..1024 {
            match self.input.read_event() {
                Ok(Event::Abort { reason }) => {
                    return Some(EngineError::SourceAborted {
                        phase: self.st.phase,
                        peer: self.st.peer.clone(),
                        reason,
                    })
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    /// After a failure: tell the source, and let it finish sending so the
    /// reason is not lost to a connection reset.
    fn fail(&mut self, e: &EngineError) {
        if self.st.refused {
            return;
        }
        if self.st.wr.is_none() {
            return;
        }
        if self.st.send(&Reply::Failed(e.to_string())).is_err() {
            return;
        }
        self.st.heartbeat = None;
        self.st.wr = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut sink = [0u8; 64 << 10];
        while Instant::now() < deadline {
            match self.input.get_mut().read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

/// The next event; an ABORT from the source ends the load. A free
/// function so that the event borrows only the parser, and can be applied
/// to the [`Loader`].
fn next_event<'p, D>(input: &'p mut Input, st: &Loader<'_, D>) -> Result<Event<'p>, EngineError> {
    next_event_deferring(input, st, None)
}

/// [`next_event`], with device-data records whose length is in `defer`
/// left for the caller to splice ([`Event::DeviceDataDeferred`]).
fn next_event_deferring<'p, D>(
    input: &'p mut Input,
    st: &Loader<'_, D>,
    defer: Option<std::ops::RangeInclusive<usize>>,
) -> Result<Event<'p>, EngineError> {
    if st.opts.cancel.is_cancelled() {
        return Err(EngineError::Cancelled { phase: st.phase });
    }
    match input.read_event_deferring(defer) {
        Ok(Event::Abort { reason }) => Err(EngineError::SourceAborted {
            phase: st.phase,
            peer: st.peer.clone(),
            reason,
        }),
        Ok(ev) => Ok(ev),
        Err(e) => Err(EngineError::stream(st.phase, st.peer.clone(), e)),
    }
}

impl<D: MigrationDevice> Loader<'_, D> {
    /// Writes and flushes a reply on a live link; nothing for a file.
    fn send(&mut self, reply: &Reply) -> Result<(), format::StreamError> {
        let Some(w) = self.wr.as_ref() else {
            return Ok(());
        };
        w.with(|w| format::write_reply(w, reply).and_then(|()| w.flush()))
    }

    /// After a failure: every device that took state and did not start is
    /// reset, so it never runs a partial or unconfirmed state and is a
    /// valid destination again.
    fn release(&mut self) -> Vec<DeviceLeft> {
        let reset = self.resuming && !self.started;
        self.devs
            .iter_mut()
            .map(|d| {
                let mut problem = None;
                if reset {
                    // Reset (the partial state is gone), then stopped:
                    // nothing runs until someone decides.
                    problem = reset_and_stop(&mut *d.h);
                }
                let state = d.h.state().ok();
                if reset && problem.is_none() {
                    tracing::warn!(device = %d.name, "load failed: device reset");
                }
                DeviceLeft {
                    name: d.name.clone(),
                    reset: reset && problem.is_none(),
                    state,
                    problem,
                }
            })
            .collect()
    }

    fn progress(&mut self, offset: u64) {
        if let Some(f) = self.opts.progress.as_mut() {
            f(self.phase, offset);
        }
    }

    fn report(&self, bytes: u64, t0: Instant) -> DestReport {
        let devices: Vec<DestDevice> = self
            .devs
            .iter()
            .zip(&self.descs)
            .map(|(x, desc)| DestDevice {
                name: x.name.clone(),
                model: desc.model.clone(),
                data_bytes: x.written,
                spliced_bytes: x.spliced,
                digest_source: x.source_digest.map(digest_hex),
                digest_dest: x.dest_digest.map(digest_hex),
                verified: match (x.source_digest, x.dest_digest) {
                    (Some(a), Some(b)) => Some(a == b),
                    _ => None,
                },
            })
            .collect();
        let compared: Vec<bool> = devices.iter().filter_map(|x| x.verified).collect();
        let here = !compared.is_empty() && compared.iter().all(|v| *v);
        let by_sender = self.sender_verified.is_some_and(|(n, _)| n > 0);
        DestReport {
            verified: here || by_sender,
            verified_by: if here {
                Some("destination")
            } else if by_sender {
                Some("sender")
            } else {
                None
            },
            sender_compared: self.sender_verified.map(|(n, _)| n),
            devices,
            bytes,
            ram_bytes: self.ram_bytes,
            ram_hash: self.hash.map(|h| digest_hex(h.0)),
            total_ms: t0.elapsed().as_secs_f64() * 1000.0,
        }
    }
}

/// Resets a destination device that took part of a state, then stops it.
/// Returns what went differently. Not every device's reset ends a
/// migration: libvfio-user's server refuses DEVICE_RESET in STOP, and in
/// RESUMING it accepts it but stays in RESUMING (its reset callback
/// decides what is reset, the sample's does nothing). Either way the
/// device is moved to STOP and never started, and the answer says that it
/// may still hold the incoming state.
fn reset_and_stop<D: MigrationDevice + ?Sized>(h: &mut D) -> Option<String> {
    let before = h.state().ok();
    match h.reset() {
        Err(e) => {
            let stopped = match before {
                Some(MigState::Resuming) => h.set_state(MigState::Stop).is_ok(),
                Some(MigState::Stop) => true,
                _ => false,
            };
            Some(format!(
                "the device refused the reset ({e}){}; it may hold part of the incoming state",
                if stopped { ", it was left stopped" } else { "" }
            ))
        }
        Ok(()) => {
            let after = h.state().ok();
            let stop = h.set_state(MigState::Stop);
            match (after, stop) {
                (_, Err(e)) => Some(format!("reset, but stopping it failed: {e}")),
                (Some(MigState::Resuming), Ok(())) => Some(
                    "its reset left it in RESUMING (the device's reset does not end a migration), so it may hold part of the incoming state; it was moved to STOP and not started".into(),
                ),
                _ => None,
            }
        }
    }
}
