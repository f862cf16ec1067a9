//! The source side of a migration: [`migrate_out`].
//!
//! ```text
//! setup      descriptors + RAM layout → destination; wait ACCEPT (live);
//!            DMA logging on; devices → PRE_COPY
//! pre-copy   rounds: fetch vCPU + DMA dirty logs, send dirty pages
//!            interleaved with device pre-copy data; measure bandwidth;
//!            switch when the expected downtime is under the limit
//! stop-copy  pause vCPUs; devices → (PRE_COPY_)P2P, then STOP_COPY;
//!            final device data, digests, final dirty pages, END
//! resume     wait READY (loaded, validated, verified) → GO → RUNNING
//! cleanup    DMA logging off; source devices → STOP (snapshot: RUNNING)
//! ```
//!
//! Any failure before GO rolls the source back: devices to their original
//! state, logging off, vCPUs resumed, ABORT sent to the destination.

use crate::cancel::Cancel;
use crate::dest::ReadyInfo;
use crate::error::{EngineError, SourceFailure, SourceState};
use crate::format::{
    self, DeviceEnd, Digest, Kind, RamInfo, RamRun, RecordWriter, SetupEnd, StreamError,
    MAX_DEVICES, MAX_DEVICE_DATA, NO_DEVICE,
};
use crate::guest::GuestRam;
use crate::link::Link;
use crate::progress::{Phase, Progress, ProgressFn};
use crate::report::{digest_hex, DeviceReport, MigrationReport};
use crate::verify::{ram_hash, Verifier};
use std::io::BufWriter;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vfio_migrate_backend::{
    DeviceDescriptor, MigState, MigrationDevice, MIGRATION_P2P, MIGRATION_PRE_COPY,
};

/// Largest run of guest pages sent in one record.
const RAM_RUN_BYTES: u64 = 1 << 20;
/// Pause between pre-copy rounds that found nothing to send.
const IDLE_ROUND: Duration = Duration::from_millis(5);

/// How the source migrates.
pub struct SourceOptions {
    /// Run pre-copy rounds (otherwise stop at once and copy everything).
    pub precopy: bool,
    /// Switch over once the expected downtime is at most this.
    pub downtime_limit: Duration,
    /// Switch over after this many pre-copy rounds whatever the estimate.
    pub max_iterations: u32,
    /// Reads device digests for verification.
    pub verifier: Option<Verifier>,
    /// Cancels the migration (before the destination is told to run).
    pub cancel: Cancel,
    /// Called with progress at every round and phase change.
    pub progress: Option<ProgressFn>,
    /// How long to wait for each answer of the destination.
    pub reply_timeout: Duration,
    /// Names the source in the report (`unix:/…`).
    pub source_name: String,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            precopy: true,
            downtime_limit: Duration::from_millis(300),
            max_iterations: 30,
            verifier: None,
            cancel: Cancel::new(),
            progress: None,
            reply_timeout: Duration::from_secs(60),
            source_name: String::new(),
        }
    }
}

/// An answer from the destination.
enum Reply {
    Accept,
    Refuse(String),
    Ready(ReadyInfo),
    Failed(String),
    Running,
    RoundAck(u64),
}

struct Replies {
    rx: mpsc::Receiver<Result<Reply, StreamError>>,
    thread: JoinHandle<()>,
}

fn spawn_replies(r: Box<dyn std::io::Read + Send>, peer: String) -> std::io::Result<Replies> {
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("migrate-replies".into())
        .spawn(move || {
            let mut rd = format::RecordReader::new(r, format!("the destination {peer}"));
            if let Err(e) = rd.read_stream_header() {
                let _ = tx.send(Err(e));
                return;
            }
            loop {
                let item = rd.next_record().and_then(|rec| {
                    Ok(match rec.kind {
                        Kind::Accept => Reply::Accept,
                        Kind::Refuse => Reply::Refuse(rd.payload_text()),
                        Kind::Failed => Reply::Failed(rd.payload_text()),
                        Kind::Running => Reply::Running,
                        Kind::RoundAck => Reply::RoundAck(
                            format::Round::decode(rd.payload())
                                .expect("length checked")
                                .iteration,
                        ),
                        Kind::Ready => Reply::Ready(
                            serde_json::from_slice(rd.payload())
                                .map_err(|e| rd.invalid(&rec, format!("bad ready record: {e}")))?,
                        ),
                        k => return Err(rd.invalid(&rec, format!("a {k} record is not an answer"))),
                    })
                });
                let stop = item.is_err();
                if tx.send(item).is_err() || stop {
                    return;
                }
            }
        })?;
    Ok(Replies { rx, thread })
}

struct Dev<'a, D> {
    h: &'a mut D,
    name: String,
    desc: DeviceDescriptor,
    initial: MigState,
    precopy: bool,
    logging: bool,
    touched: bool,
    /// Pre-copy bytes pending at the last estimate.
    pending: u64,
    /// Stop-copy bytes expected at the last estimate.
    stop_estimate: u64,
    digest: Option<u64>,
    report: DeviceReport,
}

struct Source<'a, D> {
    devs: Vec<Dev<'a, D>>,
    guest: Option<&'a dyn GuestRam>,
    out: RecordWriter<BufWriter<Box<dyn std::io::Write + Send>>>,
    replies: Option<Replies>,
    close: Option<Box<dyn Fn() + Send>>,
    peer: String,
    opts: SourceOptions,
    phase: Phase,
    t0: Instant,
    buf: Vec<u8>,
    /// Guest pages still to send, one bit per page.
    pending: Vec<u64>,
    dma_scratch: Vec<u8>,
    /// Next page to look at when sending RAM (round-robin with devices).
    ram_cursor: u64,
    guest_paused: bool,
    committed: bool,
    /// Pre-copy rounds sent / loaded by the destination (live only).
    rounds_sent: u64,
    rounds_acked: u64,
    busy: Duration,
    busy_bytes: u64,
    last_sync: Instant,
    report: MigrationReport,
}

/// Migrates `devices` (and `guest` RAM, if given) out over `link`.
///
/// On success the source devices are left in STOP (live link) or back in
/// their original state (snapshot file), and the report says what was
/// measured and verified. On failure before the destination was told to
/// run, the source is rolled back; [`SourceFailure`] says what failed and
/// what the source was left as.
pub fn migrate_out<D: MigrationDevice>(
    devices: &mut [D],
    guest: Option<&dyn GuestRam>,
    link: Link,
    opts: SourceOptions,
) -> Result<MigrationReport, SourceFailure> {
    let t0 = Instant::now();
    let mut report = MigrationReport::new(opts.source_name.clone(), link.peer.clone());
    report.precopy = opts.precopy;
    report.downtime_limit_ms = ms(opts.downtime_limit);
    let replies = match link.rx {
        Some(r) => match spawn_replies(r, link.peer.clone()) {
            Ok(r) => Some(r),
            Err(e) => {
                return Err(SourceFailure {
                    error: EngineError::Stream {
                        phase: Phase::Setup,
                        peer: link.peer.clone(),
                        source: StreamError::Io {
                            what: "starting the reply reader".into(),
                            source: e,
                        },
                    },
                    state: SourceState::Restored,
                    report: Box::new(report),
                })
            }
        },
        None => None,
    };
    let pages = guest.map_or(0, |g| g.pages());
    let mut s = Source {
        devs: Vec::new(),
        guest,
        out: RecordWriter::new(
            BufWriter::with_capacity(256 << 10, link.tx),
            link.peer.clone(),
        ),
        replies,
        close: link.close,
        peer: link.peer,
        opts,
        phase: Phase::Setup,
        t0,
        buf: Vec::new(),
        pending: vec![0; pages.div_ceil(64) as usize],
        dma_scratch: Vec::new(),
        ram_cursor: 0,
        guest_paused: false,
        committed: false,
        rounds_sent: 0,
        rounds_acked: 0,
        busy: Duration::ZERO,
        busy_bytes: 0,
        last_sync: t0,
        report,
    };
    let r = s.run(devices);
    s.finish(r)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl<'a, D: MigrationDevice> Source<'a, D> {
    fn run(&mut self, devices: &'a mut [D]) -> Result<(), EngineError> {
        self.setup(devices)?;
        self.report.setup_ms = ms(self.t0.elapsed());
        let t_pre = Instant::now();
        if self.opts.precopy {
            self.precopy()?;
        }
        self.report.precopy_ms = ms(t_pre.elapsed());
        self.stop_and_copy()?;
        self.cleanup()
    }

    fn dev_err(&self, i: usize, e: vfio_migrate_backend::BackendError) -> EngineError {
        EngineError::device(self.phase, self.devs[i].name.clone(), e)
    }

    fn guest_err(&self, e: std::io::Error) -> EngineError {
        EngineError::Guest {
            phase: self.phase,
            source: e,
        }
    }

    /// A write to the stream failed: the destination most likely said why
    /// before closing; prefer its reason.
    fn stream_err(&mut self, e: StreamError) -> EngineError {
        if let Some(r) = &self.replies {
            if let Ok(Ok(Reply::Failed(reason) | Reply::Refuse(reason))) =
                r.rx.recv_timeout(Duration::from_millis(500))
            {
                return EngineError::DestinationFailed {
                    phase: self.phase,
                    peer: self.peer.clone(),
                    reason,
                };
            }
        }
        EngineError::Stream {
            phase: self.phase,
            peer: self.peer.clone(),
            source: e,
        }
    }

    fn write(&mut self, kind: Kind, device: u32, parts: &[&[u8]]) -> Result<(), EngineError> {
        match self.out.write_parts(kind, device, parts) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.stream_err(e)),
        }
    }

    fn flush(&mut self) -> Result<(), EngineError> {
        match self.out.flush() {
            Ok(()) => Ok(()),
            Err(e) => Err(self.stream_err(e)),
        }
    }

    fn check_cancel(&self) -> Result<(), EngineError> {
        if self.opts.cancel.is_cancelled() {
            return Err(EngineError::Cancelled { phase: self.phase });
        }
        Ok(())
    }

    /// Turns a reply-channel failure into an engine error.
    fn reply_err(&self, e: StreamError) -> EngineError {
        match e {
            StreamError::Truncated { .. } => EngineError::DestinationFailed {
                phase: self.phase,
                peer: self.peer.clone(),
                reason:
                    "it closed the connection without saying why (did the destination process die?)"
                        .into(),
            },
            e => EngineError::Stream {
                phase: self.phase,
                peer: self.peer.clone(),
                source: e,
            },
        }
    }

    /// Takes the answers that arrived, without waiting: round acks are
    /// noted, a failure report ends the migration.
    fn poll_replies(&mut self) -> Result<(), EngineError> {
        loop {
            let Some(r) = &self.replies else {
                return Ok(());
            };
            match r.rx.try_recv() {
                Ok(Ok(Reply::RoundAck(n))) => self.rounds_acked = self.rounds_acked.max(n + 1),
                Ok(Ok(Reply::Failed(reason))) => {
                    return Err(EngineError::DestinationFailed {
                        phase: self.phase,
                        peer: self.peer.clone(),
                        reason,
                    })
                }
                Ok(Ok(_)) => {
                    return Err(EngineError::invalid(
                        self.phase,
                        format!("the destination {} answered out of turn", self.peer),
                    ))
                }
                Ok(Err(e)) => return Err(self.reply_err(e)),
                Err(_) => return Ok(()),
            }
        }
    }

    /// Waits for the next answer other than a round ack; cancellable while
    /// `cancellable`.
    fn wait_reply(&mut self, what: &'static str, cancellable: bool) -> Result<Reply, EngineError> {
        let deadline = Instant::now() + self.opts.reply_timeout;
        loop {
            if cancellable {
                self.check_cancel()?;
            }
            let r = self.replies.as_ref().expect("live link");
            match r.rx.recv_timeout(Duration::from_millis(20)) {
                Ok(Ok(Reply::RoundAck(n))) => self.rounds_acked = self.rounds_acked.max(n + 1),
                Ok(Ok(Reply::Failed(reason))) => {
                    return Err(EngineError::DestinationFailed {
                        phase: self.phase,
                        peer: self.peer.clone(),
                        reason,
                    })
                }
                Ok(Ok(Reply::Refuse(reason))) => {
                    return Err(EngineError::Refused {
                        phase: self.phase,
                        peer: self.peer.clone(),
                        reason,
                    })
                }
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(e)) => return Err(self.reply_err(e)),
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(_) => {
                    return Err(EngineError::Timeout {
                        phase: self.phase,
                        peer: self.peer.clone(),
                        what,
                        secs: self.opts.reply_timeout.as_secs(),
                    })
                }
            }
        }
    }

    /// Waits until the destination has loaded every pre-copy round sent,
    /// so the stop does not also pay for a backlog in socket buffers.
    fn wait_drained(&mut self) -> Result<(), EngineError> {
        let deadline = Instant::now() + self.opts.reply_timeout;
        while self.replies.is_some() && self.rounds_acked < self.rounds_sent {
            self.check_cancel()?;
            self.poll_replies()?;
            if Instant::now() > deadline {
                return Err(EngineError::Timeout {
                    phase: self.phase,
                    peer: self.peer.clone(),
                    what: "the destination to load the pre-copy data",
                    secs: self.opts.reply_timeout.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }

    fn emit(&mut self, iteration: u32, remaining: u64, dirty_rate: f64, expected_ms: f64) {
        let p = Progress {
            phase: self.phase,
            iteration,
            remaining_bytes: remaining,
            transferred_bytes: self.out.bytes(),
            dirty_rate,
            bandwidth: self.bandwidth(),
            expected_downtime_ms: expected_ms,
            elapsed: self.t0.elapsed(),
        };
        if let Some(f) = self.opts.progress.as_mut() {
            f(&p);
        }
    }

    fn bandwidth(&self) -> f64 {
        if self.busy.is_zero() {
            0.0
        } else {
            self.busy_bytes as f64 / self.busy.as_secs_f64()
        }
    }

    fn setup(&mut self, devices: &'a mut [D]) -> Result<(), EngineError> {
        if devices.is_empty() {
            return Err(EngineError::invalid(Phase::Setup, "no device to migrate"));
        }
        if devices.len() > MAX_DEVICES {
            return Err(EngineError::invalid(
                Phase::Setup,
                format!(
                    "{} devices; one stream carries at most {MAX_DEVICES}",
                    devices.len()
                ),
            ));
        }
        self.emit(0, 0, 0.0, 0.0);
        let mut chunk = 1usize << 20;
        for h in devices.iter_mut() {
            let name = h.name();
            let desc = h
                .descriptor()
                .map_err(|e| EngineError::device(Phase::Setup, name.clone(), e))?;
            let initial = h
                .state()
                .map_err(|e| EngineError::device(Phase::Setup, name.clone(), e))?;
            if !matches!(initial, MigState::Running | MigState::Stop) {
                return Err(EngineError::invalid(
                    Phase::Setup,
                    format!("device {name} is in {initial}; a migration source must be RUNNING (or STOP)"),
                ));
            }
            chunk = chunk.max(h.preferred_chunk().min(MAX_DEVICE_DATA));
            let precopy = self.opts.precopy
                && desc.migration_flags & MIGRATION_PRE_COPY != 0
                && initial == MigState::Running;
            let report = DeviceReport::new(name.clone(), h.protocol(), &desc);
            self.devs.push(Dev {
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
            });
        }
        self.buf = vec![0u8; chunk.max(RAM_RUN_BYTES as usize)];

        // Descriptors and RAM layout go first; a live destination answers.
        if let Err(e) = self.out.write_stream_header() {
            return Err(self.stream_err(e));
        }
        for i in 0..self.devs.len() {
            let json = serde_json::to_vec(&self.devs[i].desc).expect("descriptor serializes");
            if json.len() > format::MAX_JSON {
                return Err(EngineError::invalid(
                    Phase::Setup,
                    format!(
                        "device {}: descriptor of {} bytes is too large",
                        self.devs[i].name,
                        json.len()
                    ),
                ));
            }
            self.write(Kind::Device, i as u32, &[&json])?;
        }
        if let Some(g) = self.guest {
            if g.page_size() == 0
                || g.page_size() > format::MAX_PAGE_SIZE
                || !g.page_size().is_power_of_two()
            {
                return Err(EngineError::invalid(
                    Phase::Setup,
                    format!(
                        "guest page size {} is not a power of two up to 2 MiB",
                        g.page_size()
                    ),
                ));
            }
            let info = RamInfo {
                size: g.size(),
                page_size: g.page_size(),
            };
            self.report.ram_size = g.size();
            self.write(Kind::Ram, NO_DEVICE, &[&info.to_bytes()])?;
        }
        let end = SetupEnd {
            devices: self.devs.len() as u32,
            flags: 0,
        };
        self.write(Kind::SetupEnd, NO_DEVICE, &[&end.to_bytes()])?;
        self.flush()?;
        if self.replies.is_some() {
            match self.wait_reply("the compatibility answer", true)? {
                Reply::Accept => {}
                _ => {
                    return Err(EngineError::invalid(
                        Phase::Setup,
                        format!("the destination {} answered out of turn", self.peer),
                    ))
                }
            }
        }
        self.check_cancel()?;

        // Every page goes at least once; vCPU writes from now on are logged.
        if let Some(g) = self.guest {
            let mut scratch = vec![0u64; self.pending.len()];
            g.take_dirty(&mut scratch);
            self.pending.fill(u64::MAX);
            let extra = (self.pending.len() as u64 * 64) - g.pages();
            if extra > 0 {
                let last = self.pending.len() - 1;
                self.pending[last] >>= extra;
            }
            if self.opts.precopy {
                self.start_dma_logging(g)?;
            }
        }
        for i in 0..self.devs.len() {
            if self.devs[i].precopy {
                self.devs[i].touched = true;
                self.devs[i]
                    .h
                    .set_state(MigState::PreCopy)
                    .map_err(|e| self.dev_err(i, e))?;
            }
        }
        Ok(())
    }

    fn start_dma_logging(&mut self, g: &dyn GuestRam) -> Result<(), EngineError> {
        let range = g.dma_range();
        self.dma_scratch = vec![0u8; (g.pages().div_ceil(64) * 8) as usize];
        for i in 0..self.devs.len() {
            let d = &mut self.devs[i];
            if !d.h.dma_logging_supported() {
                return Err(EngineError::invalid(
                    Phase::Setup,
                    format!(
                        "device {} cannot log its DMA writes, so guest RAM it writes during pre-copy would be lost; migrate it with pre-copy off",
                        d.name
                    ),
                ));
            }
            d.h.dma_logging_start(g.page_size(), &[range])
                .map_err(|e| self.dev_err(i, e))?;
            self.devs[i].logging = true;
        }
        Ok(())
    }

    /// Merges the vCPU dirty log and every device's DMA dirty report into
    /// the pending set.
    fn sync_dirty(&mut self) -> Result<(), EngineError> {
        let Some(g) = self.guest else { return Ok(()) };
        g.take_dirty(&mut self.pending);
        let range = g.dma_range();
        for i in 0..self.devs.len() {
            if !self.devs[i].logging {
                continue;
            }
            let d = &mut self.devs[i];
            d.h.dma_logging_report(
                range.iova,
                range.length,
                g.page_size(),
                &mut self.dma_scratch,
            )
            .map_err(|e| EngineError::device(self.phase, d.name.clone(), e))?;
            for (w, b) in self
                .pending
                .iter_mut()
                .zip(self.dma_scratch.chunks_exact(8))
            {
                *w |= u64::from_le_bytes(b.try_into().expect("8 bytes"));
            }
        }
        Ok(())
    }

    fn pending_pages(&self) -> u64 {
        self.pending.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Sends dirty pages from the cursor on, up to about `budget` bytes.
    /// Returns the stream bytes written (0: nothing was pending).
    fn send_ram(&mut self, budget: u64) -> Result<u64, EngineError> {
        let Some(g) = self.guest else { return Ok(0) };
        let ps = g.page_size();
        let pages = g.pages();
        let max_run = (RAM_RUN_BYTES / ps).max(1);
        let mut sent = 0u64;
        let mut p = self.ram_cursor;
        while sent < budget {
            // Next dirty page at or after p.
            let Some(first) = next_set(&self.pending, p, pages) else {
                p = pages;
                break;
            };
            // Never-written memory goes as a zero run, unread.
            let zeros = g.zero_pages_at(first);
            let cap = if zeros > 0 {
                zeros.min(u64::from(u32::MAX))
            } else {
                max_run.min(g.data_pages_at(first).max(1))
            };
            let mut n = 0u64;
            while n < cap && first + n < pages && bit(&self.pending, first + n) {
                clear(&mut self.pending, first + n);
                n += 1;
            }
            let bytes = (n * ps) as usize;
            let run = RamRun {
                first_page: first,
                count: n as u32,
                reserved: 0,
            };
            let zero = zeros > 0 || {
                g.read_pages(first, &mut self.buf[..bytes])
                    .map_err(|e| self.guest_err(e))?;
                is_zero(&self.buf[..bytes])
            };
            if zero {
                self.write(Kind::RamZero, NO_DEVICE, &[&run.to_bytes()])?;
                self.report.ram_zero_pages += n;
                sent += 32;
            } else {
                let data = std::mem::take(&mut self.buf);
                let r = self.write(
                    Kind::RamPages,
                    NO_DEVICE,
                    &[&run.to_bytes(), &data[..bytes]],
                );
                self.buf = data;
                r?;
                sent += 32 + bytes as u64;
                if self.guest_paused {
                    self.report.ram_bytes_stopped += bytes as u64;
                }
                self.report.ram_bytes += bytes as u64;
            }
            p = first + n;
        }
        self.ram_cursor = if p >= pages { 0 } else { p };
        Ok(sent)
    }

    /// Reads up to `budget` bytes of device `i`'s data into records of
    /// `kind`. Returns `(bytes, exhausted)`: exhausted when the device
    /// returned 0.
    fn send_device(
        &mut self,
        i: usize,
        kind: Kind,
        budget: u64,
    ) -> Result<(u64, bool), EngineError> {
        let chunk = self.devs[i]
            .h
            .preferred_chunk()
            .clamp(4096, MAX_DEVICE_DATA)
            .min(self.buf.len());
        let mut sent = 0u64;
        while sent < budget {
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
    fn estimate_devices(&mut self) -> Result<(), EngineError> {
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

    fn precopy(&mut self) -> Result<(), EngineError> {
        self.phase = Phase::PreCopy;
        let ps = self.guest.map_or(4096, |g| g.page_size());
        let mut iteration = 0u32;
        let mut prev_remaining = u64::MAX;
        loop {
            self.check_cancel()?;
            self.poll_replies()?;
            let since = self.last_sync.elapsed().as_secs_f64().max(1e-6);
            let before = self.pending_pages();
            self.sync_dirty()?;
            self.last_sync = Instant::now();
            let ram_remaining = self.pending_pages() * ps;
            let new_ram = (self.pending_pages() - before) * ps;
            self.estimate_devices()?;
            let dev_pending: u64 = self.devs.iter().map(|d| d.pending).sum();
            let stop_bytes: u64 =
                ram_remaining + self.devs.iter().map(|d| d.stop_estimate).sum::<u64>();
            let dirty_rate = if iteration == 0 {
                0.0
            } else {
                (new_ram
                    + self
                        .devs
                        .iter()
                        .filter(|d| d.precopy)
                        .map(|d| d.pending)
                        .sum::<u64>()) as f64
                    / since
            };
            let bw = self.bandwidth();
            let expected_ms = if bw > 0.0 {
                stop_bytes as f64 / bw * 1000.0
            } else {
                f64::INFINITY
            };
            let remaining = ram_remaining + dev_pending;
            self.emit(iteration, remaining, dirty_rate, expected_ms);
            let limit_ms = ms(self.opts.downtime_limit);
            // Under the limit: switch once more rounds stop paying off —
            // the remainder no longer shrinks, or is below a millisecond.
            if iteration >= 1
                && expected_ms <= limit_ms
                && (remaining as f64 >= prev_remaining as f64 * 0.8
                    || expected_ms < 1.0
                    || remaining == 0)
            {
                self.report.converged = true;
                self.report.expected_downtime_ms = expected_ms;
                break;
            }
            if iteration >= self.opts.max_iterations {
                self.report.expected_downtime_ms = expected_ms;
                break;
            }

            prev_remaining = remaining;

            // One round: RAM runs interleaved with device chunks.
            let t = Instant::now();
            let mut moved = 0u64;
            let mut dev_budget: Vec<u64> = self
                .devs
                .iter()
                .map(|d| if d.precopy { d.pending.max(1) } else { 0 })
                .collect();
            loop {
                let r = self.send_ram(4 * RAM_RUN_BYTES)?;
                moved += r;
                let mut dev_moved = 0;
                for (i, budget) in dev_budget.iter_mut().enumerate() {
                    if *budget == 0 {
                        continue;
                    }
                    let (n, exhausted) =
                        self.send_device(i, Kind::DevicePrecopy, (*budget).min(4 * RAM_RUN_BYTES))?;
                    self.devs[i].report.precopy_bytes += n;
                    self.report.device_bytes += n;
                    *budget = if exhausted {
                        0
                    } else {
                        budget.saturating_sub(n)
                    };
                    dev_moved += n;
                }
                moved += dev_moved;
                if r == 0 && dev_budget.iter().all(|b| *b == 0) {
                    break;
                }
                self.check_cancel()?;
            }
            let round = format::Round {
                iteration: u64::from(iteration),
            };
            self.write(Kind::Round, NO_DEVICE, &[&round.to_bytes()])?;
            self.rounds_sent = u64::from(iteration) + 1;
            self.flush()?;
            // One round in flight at most: the bandwidth is what the
            // destination took, and the stop never waits for a backlog.
            self.wait_drained()?;
            if moved > 0 {
                self.busy += t.elapsed();
                self.busy_bytes += moved;
            } else {
                std::thread::sleep(IDLE_ROUND);
            }
            iteration += 1;
            self.report.precopy_iterations = iteration;
        }
        Ok(())
    }

    fn stop_and_copy(&mut self) -> Result<(), EngineError> {
        self.wait_drained()?;
        self.check_cancel()?;
        self.phase = Phase::StopCopy;
        let t_stop = Instant::now();
        if let Some(g) = self.guest {
            g.pause();
            self.guest_paused = true;
        }
        // Quiesce every device first (no P2P DMA), then stop them all.
        for i in 0..self.devs.len() {
            let d = &mut self.devs[i];
            if d.desc.migration_flags & MIGRATION_P2P == 0 {
                continue;
            }
            let target = match d.initial {
                MigState::Running if d.precopy => MigState::PreCopyP2p,
                MigState::Running => MigState::RunningP2p,
                _ => continue,
            };
            d.touched = true;
            d.report.p2p = true;
            d.h.set_state(target).map_err(|e| self.dev_err(i, e))?;
        }
        for i in 0..self.devs.len() {
            self.devs[i].touched = true;
            self.devs[i]
                .h
                .set_state(MigState::StopCopy)
                .map_err(|e| self.dev_err(i, e))?;
        }
        let t_stopped = Instant::now();
        self.report.stop_ms = ms(t_stopped - t_stop);
        self.emit(self.report.precopy_iterations, 0, 0.0, 0.0);

        for i in 0..self.devs.len() {
            let (n, _) = self.send_device(i, Kind::DeviceStopCopy, u64::MAX)?;
            let d = &mut self.devs[i];
            d.report.stopcopy_bytes += n;
            self.report.device_bytes += n;
            self.report.device_bytes_stopped += n;
            let total = d.report.precopy_bytes + d.report.stopcopy_bytes;
            self.write(
                Kind::DeviceEnd,
                i as u32,
                &[&DeviceEnd { bytes: total }.to_bytes()],
            )?;
        }
        // A snapshot carries the digests for the restore to check; a live
        // source reads them below, while the destination loads.
        if self.replies.is_none() {
            for i in self.read_digests()? {
                let digest = self.devs[i].digest.expect("just read");
                self.write(Kind::Verify, i as u32, &[&Digest { digest }.to_bytes()])?;
            }
        }
        // The devices are stopped: their DMA reports are final.
        self.sync_dirty()?;
        while self.send_ram(u64::MAX)? > 0 {}
        if let Err(e) = self.out.write_end() {
            return Err(self.stream_err(e));
        }
        self.flush()?;
        let t_sent = Instant::now();
        self.report.final_transfer_ms = ms(t_sent - t_stopped);
        self.phase = Phase::Resume;
        self.emit(self.report.precopy_iterations, 0, 0.0, 0.0);

        if self.replies.is_some() {
            self.read_digests()?;
            let ready = match self.wait_reply("the destination to load and validate", true)? {
                Reply::Ready(r) => r,
                _ => {
                    return Err(EngineError::invalid(
                        self.phase,
                        format!("the destination {} answered out of turn", self.peer),
                    ))
                }
            };
            self.check_ready(&ready)?;
            self.check_cancel()?;
            // Past this point the destination may run: no rollback.
            self.committed = true;
            self.write(Kind::Go, NO_DEVICE, &[])?;
            self.flush()?;
            match self.wait_reply("the destination to start running", false)? {
                Reply::Running => {}
                _ => {
                    return Err(EngineError::invalid(
                        self.phase,
                        format!("the destination {} answered out of turn", self.peer),
                    ))
                }
            }
            self.report.downtime_ms = ms(t_stop.elapsed());
            self.report.resume_ms = ms(t_sent.elapsed());
            self.report.ram_hash_dest = ready.ram_hash.map(digest_hex);
            self.report.dest_digest_ms = ready.digest_ms;
            if let Some(g) = self.guest {
                if let Some(dest_hash) = ready.ram_hash {
                    // The source RAM is frozen for good: hash it now, off
                    // the critical path.
                    let t = Instant::now();
                    let h = ram_hash(g).map_err(|e| self.guest_err(e))?;
                    self.report.verify_ms = ms(t.elapsed());
                    self.report.ram_hash_source = Some(digest_hex(h.0));
                    if h.0 != dest_hash {
                        return Err(EngineError::invalid(
                            self.phase,
                            format!(
                                "guest RAM differs: source hash {}, destination hash {}",
                                digest_hex(h.0),
                                digest_hex(dest_hash)
                            ),
                        ));
                    }
                }
            }
        } else {
            // Snapshot: the source runs again.
            self.phase = Phase::Cleanup;
            self.restore_source()
                .map_err(|p| EngineError::invalid(Phase::Cleanup, p.join("; ")))?;
            self.report.downtime_ms = ms(t_stop.elapsed());
        }
        Ok(())
    }

    /// Reads every stopped device's digest through the verifier; returns
    /// the indices of the devices that have one.
    fn read_digests(&mut self) -> Result<Vec<usize>, EngineError> {
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

    /// The destination's digests must equal the source's.
    fn check_ready(&mut self, ready: &ReadyInfo) -> Result<(), EngineError> {
        if ready.digests.len() != self.devs.len() {
            return Err(EngineError::invalid(
                self.phase,
                format!(
                    "the destination reported {} device digests for {} devices",
                    ready.digests.len(),
                    self.devs.len()
                ),
            ));
        }
        for (d, dest) in self.devs.iter_mut().zip(&ready.digests) {
            d.report.digest_dest = dest.map(digest_hex);
            if let (Some(a), Some(b)) = (d.digest, *dest) {
                d.report.verified = Some(a == b);
                if a != b {
                    return Err(EngineError::invalid(
                        self.phase,
                        format!(
                            "device {}: digest {} at the source, {} at the destination",
                            d.name,
                            digest_hex(a),
                            digest_hex(b)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn cleanup(&mut self) -> Result<(), EngineError> {
        self.phase = Phase::Cleanup;
        let mut problems = Vec::new();
        for d in &mut self.devs {
            if d.logging {
                if let Err(e) = d.h.dma_logging_stop() {
                    problems.push(format!("{}: DMA logging stop: {e}", d.name));
                }
                d.logging = false;
            }
            if self.replies.is_some() {
                // The destination runs: park the source device.
                if let Err(e) = d.h.set_state(MigState::Stop) {
                    problems.push(format!("{}: {e}", d.name));
                }
            }
        }
        if !problems.is_empty() {
            // The migration itself succeeded; report, don't fail.
            tracing::warn!(problems = %problems.join("; "), "source cleanup");
        }
        self.phase = Phase::Done;
        Ok(())
    }

    /// Puts every source device back in its original state, logging off,
    /// vCPUs running. Returns what could not be restored.
    fn restore_source(&mut self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        for d in &mut self.devs {
            if d.touched {
                if let Err(e) = d.h.set_state(d.initial) {
                    problems.push(format!(
                        "device {} could not return to {}: {e}",
                        d.name, d.initial
                    ));
                }
            }
            if d.logging {
                if let Err(e) = d.h.dma_logging_stop() {
                    problems.push(format!("device {}: DMA logging stop: {e}", d.name));
                }
                d.logging = false;
            }
        }
        if self.guest_paused {
            if let Some(g) = self.guest {
                g.resume();
            }
            self.guest_paused = false;
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    fn finish(mut self, r: Result<(), EngineError>) -> Result<MigrationReport, SourceFailure> {
        let total = self.t0.elapsed();
        self.report.total_ms = ms(total);
        self.report.transferred_bytes = self.out.bytes();
        self.report.throughput_mbps =
            self.out.bytes() as f64 * 8.0 / 1e6 / total.as_secs_f64().max(1e-9);
        self.report.bandwidth_mbps = self.bandwidth() * 8.0 / 1e6;
        self.report.devices = self.devs.iter().map(|d| d.report.clone()).collect();
        let out = match r {
            Ok(()) => {
                let compared: Vec<bool> = self
                    .report
                    .devices
                    .iter()
                    .filter_map(|d| d.verified)
                    .chain(
                        self.report
                            .ram_hash_source
                            .as_ref()
                            .map(|s| Some(s) == self.report.ram_hash_dest.as_ref()),
                    )
                    .collect();
                self.report.verified = !compared.is_empty() && compared.iter().all(|v| *v);
                Ok(self.report.clone())
            }
            Err(error) => {
                let state = if self.committed {
                    SourceState::Committed
                } else {
                    if self.replies.is_some() {
                        let reason = error.to_string();
                        let _ =
                            self.out
                                .write(Kind::Abort, NO_DEVICE, format::reason_bytes(&reason));
                        let _ = self.out.flush();
                    }
                    match self.restore_source() {
                        Ok(()) => SourceState::Restored,
                        Err(p) => SourceState::RollbackIncomplete(p),
                    }
                };
                let mut report = self.report.clone();
                report.status = "failed".into();
                report.error = Some(error.to_string());
                Err(SourceFailure {
                    error,
                    state,
                    report: Box::new(report),
                })
            }
        };
        if let Some(close) = self.close.take() {
            close();
        }
        if let Some(r) = self.replies.take() {
            drop(r.rx);
            let _ = r.thread.join();
        }
        out
    }
}

/// True when every byte is zero. OR-folding 64-byte blocks lets the
/// compiler vectorise the test (several times faster than comparing
/// aligned u64 words one by one), while a non-zero block still stops it
/// early.
fn is_zero(b: &[u8]) -> bool {
    let blocks = b.chunks_exact(64);
    let tail = blocks.remainder();
    blocks
        .into_iter()
        .all(|blk| blk.iter().fold(0u8, |acc, x| acc | x) == 0)
        && tail.iter().all(|x| *x == 0)
}

fn bit(bm: &[u64], p: u64) -> bool {
    bm[(p / 64) as usize] & (1 << (p % 64)) != 0
}

fn clear(bm: &mut [u64], p: u64) {
    bm[(p / 64) as usize] &= !(1 << (p % 64));
}

/// First set bit at or after `from`, below `limit`.
fn next_set(bm: &[u64], from: u64, limit: u64) -> Option<u64> {
    let mut w = (from / 64) as usize;
    if w >= bm.len() {
        return None;
    }
    let mut word = bm[w] & (u64::MAX << (from % 64));
    loop {
        if word != 0 {
            let p = w as u64 * 64 + u64::from(word.trailing_zeros());
            return (p < limit).then_some(p);
        }
        w += 1;
        if w >= bm.len() {
            return None;
        }
        word = bm[w];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_set_finds_bits() {
        let mut bm = vec![0u64; 3];
        assert_eq!(next_set(&bm, 0, 192), None);
        bm[1] = 1 << 5;
        bm[2] = 1;
        assert_eq!(next_set(&bm, 0, 192), Some(69));
        assert_eq!(next_set(&bm, 70, 192), Some(128));
        assert_eq!(next_set(&bm, 70, 100), None);
        clear(&mut bm, 69);
        assert!(!bit(&bm, 69));
        let mut b = vec![0u8; 4099];
        assert!(is_zero(&b[1..]));
        b[4098] = 1;
        assert!(!is_zero(&b[1..]));
    }
}
