//! The source side of a migration: [`migrate_out`].
//!
//! ```text
//! setup      descriptors + RAM layout → destination; wait ACCEPT (live);
//!            DMA logging on; devices → PRE_COPY               (mod.rs)
//! pre-copy   rounds: fetch vCPU + DMA dirty logs, send dirty pages
//!            interleaved with device pre-copy data; measure bandwidth;
//!            switch when the expected downtime is under the limit
//!                                                  (precopy.rs, ram.rs)
//! stop-copy  pause vCPUs; devices → (PRE_COPY_)P2P, then STOP_COPY;
//!            final device data, final dirty pages, END  (switchover.rs)
//! resume     live: READY (loaded, validated, verified) → GO → RUNNING;
//!            snapshot: digests in the stream, the source runs again
//! cleanup    DMA logging off; live source devices → STOP  (rollback.rs)
//! ```
//!
//! A live migration and a snapshot are two `Mode`s (`replies.rs`) of the
//! same driver: they differ only in whether a destination answers.
//! Any failure before GO rolls the source back: devices to their original
//! state, logging off, vCPUs resumed, ABORT sent to the destination.

mod converge;
mod devices;
mod initial;
mod parallel;
mod precopy;
mod ram;
mod replies;
mod rollback;
mod spliced;
mod switchover;

use crate::cancel::Cancel;
use crate::error::{EngineError, SourceFailure, SourceState};
use crate::format::{
    self, Caps, Kind, RamInfo, RecordWriter, RunState, SetupEnd, StreamError, CAP_SWITCHOVER_ACK,
    FLAG_OPTIONAL, MAX_DEVICES, NO_DEVICE,
};
use crate::guest::GuestRam;
use crate::heartbeat::{Heartbeat, SharedWriter};
use crate::link::Link;
use crate::metrics::{ms, Metrics};
use crate::pacing::Pacer;
use crate::progress::{Phase, Progress, ProgressFn};
use crate::report::{DeviceReport, MigrationReport};
use crate::verify::Verifier;
use devices::Dev;
use ram::RamWalk;
use replies::{Mode, Reply};
use std::io::BufWriter;
use std::time::Duration;
use vfio_migrate_backend::{MigState, MigrationDevice, MIGRATION_PRE_COPY};

pub use converge::{Convergence, Decision, NoConverge};

/// Largest run of guest pages sent in one record.
const RAM_RUN_BYTES: u64 = 1 << 20;

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
    /// Names the source in the report (`unix:/…`).
    pub source_name: String,
    /// Migrate even a device that was migrated out already (it may run
    /// elsewhere: two copies).
    pub force: bool,
    /// Send at most this many bytes per second (`None`: as fast as the
    /// link goes).
    pub bandwidth_limit: Option<u64>,
    /// Parallel data channels (`None`: everything on the main stream).
    pub channels: Option<crate::channels::ChannelsOut>,
    /// Give up pre-copy after this long (with `max_iterations`, whichever
    /// comes first).
    pub converge_timeout: Option<Duration>,
    /// What happens when pre-copy does not converge.
    pub on_no_converge: NoConverge,
    /// Throttle devices that offer it while rounds stop shrinking.
    pub auto_converge: bool,
    /// Ask a live destination to acknowledge each device's initial
    /// pre-copy data, and do not stop before it did.
    pub switchover_ack: bool,
    /// After the migration, hash all guest RAM again and check the
    /// incremental hash against it.
    pub full_verify: bool,
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
            source_name: String::new(),
            force: false,
            bandwidth_limit: None,
            channels: None,
            converge_timeout: None,
            on_no_converge: NoConverge::Abort,
            auto_converge: true,
            switchover_ack: true,
            full_verify: false,
        }
    }
}

type Out = SharedWriter<BufWriter<Box<dyn std::io::Write + Send>>>;

/// One source-side migration in progress.
struct Source<'a, D> {
    devs: Vec<Dev<'a, D>>,
    guest: Option<&'a dyn GuestRam>,
    ram: Option<RamWalk<'a>>,
    out: Out,
    mode: Mode,
    /// Keeps a quiet live link alive (stopped before the link closes).
    heartbeat: Option<Heartbeat>,
    heartbeat_every: Option<std::time::Duration>,
    close: Option<Box<dyn Fn() + Send>>,
    peer: String,
    opts: SourceOptions,
    phase: Phase,
    /// Device data buffer (one chunk).
    buf: Vec<u8>,
    guest_paused: bool,
    /// GO was sent: the destination may run, no rollback any more.
    committed: bool,
    metrics: Metrics,
    report: MigrationReport,
    /// Holds writes to `--bandwidth-limit`.
    pacer: Option<Pacer>,
    /// The data channels, once open (`parallel.rs`).
    chans: Option<crate::channels::send::ChannelSet>,
    /// Channels asked of a live destination, and their token.
    chans_asked: Option<(u32, (u64, u64))>,
    /// A plaintext link device data may be spliced to (`spliced.rs`).
    splice: Option<crate::link::SpliceSink>,
    /// The pipe spliced data goes through.
    pipe: Option<crate::link::Pipe>,
    /// Device throttle in force, percent.
    throttle: u32,
    /// The destination acknowledges devices' initial data (negotiated).
    switch_ack: bool,
    /// In-between progress reports.
    ticker: crate::progress::Ticker,
}

/// Migrates `devices` (and `guest` RAM, if given) out over `link`.
///
/// On success the source devices are left in STOP (live link) or back in
/// their original state (snapshot file), and the report says what was
/// measured and verified. On failure before the destination was told to
/// run, the source is rolled back; [`SourceFailure`] says what failed and
/// what the source was left as.
// A failure is built once per migration and carries what the caller needs
// (error, rollback outcome, device states, report): its size costs nothing.
#[allow(clippy::result_large_err)]
pub fn migrate_out<D: MigrationDevice>(
    devices: &mut [D],
    guest: Option<&dyn GuestRam>,
    link: Link,
    opts: SourceOptions,
) -> Result<MigrationReport, SourceFailure> {
    let metrics = Metrics::start();
    let mut report = MigrationReport::new(opts.source_name.clone(), link.peer.clone());
    report.precopy = opts.precopy;
    report.downtime_limit_ms = ms(opts.downtime_limit);
    let mode = match Mode::for_link(link.rx, &link.peer) {
        Ok(m) => m,
        Err(e) => {
            return Err(SourceFailure {
                error: EngineError::stream(Phase::Setup, link.peer.clone(), e),
                state: SourceState::Restored,
                devices: Vec::new(),
                report: Box::new(report),
            })
        }
    };
    let mut s = Source {
        devs: Vec::new(),
        guest,
        ram: guest.map(RamWalk::new),
        out: SharedWriter::new(RecordWriter::new(
            BufWriter::with_capacity(256 << 10, link.tx),
            link.peer.clone(),
        )),
        mode,
        heartbeat: None,
        heartbeat_every: link.heartbeat,
        close: link.close,
        peer: link.peer,
        opts,
        phase: Phase::Setup,
        buf: Vec::new(),
        guest_paused: false,
        committed: false,
        metrics,
        report,
        pacer: None,
        chans: None,
        chans_asked: None,
        splice: link.splice,
        pipe: None,
        throttle: 0,
        switch_ack: false,
        ticker: crate::progress::Ticker::new(),
    };
    s.pacer = s.opts.bandwidth_limit.map(Pacer::new);
    let r = s.run(devices);
    s.finish(r)
}

impl<'a, D: MigrationDevice> Source<'a, D> {
    /// The whole migration, phase after phase.
    fn run(&mut self, devices: &'a mut [D]) -> Result<(), EngineError> {
        self.setup(devices)?;
        self.metrics.precopy_start = Some(std::time::Instant::now());
        // Pre-copy moves guest RAM and pre-copy capable devices' data
        // while they run; with neither, rounds would only wait.
        let movable = self.ram.is_some() || self.devs.iter().any(|d| d.precopy);
        if self.opts.precopy && movable {
            self.precopy()?;
        } else {
            self.report.precopy = false;
        }
        self.stop_and_copy()?;
        self.resume()?;
        self.cleanup();
        Ok(())
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
        let err = EngineError::stream(self.phase, self.peer.clone(), e);
        if self.opts.cancel.is_cancelled() {
            return EngineError::Cancelled { phase: self.phase };
        }
        if matches!(err, EngineError::Stream { .. }) {
            if let Some(reason) = self.mode.last_words() {
                return EngineError::DestinationFailed {
                    phase: self.phase,
                    peer: self.peer.clone(),
                    reason,
                };
            }
        }
        err
    }

    fn write(&mut self, kind: Kind, device: u32, parts: &[&[u8]]) -> Result<(), EngineError> {
        if self.chans.is_some() && self.write_via_channels(kind, device, parts)? {
            self.tick();
            return Ok(());
        }
        if let Some(p) = self.pacer.as_mut() {
            let n: usize = parts.iter().map(|p| p.len()).sum();
            if !p.pace(n as u64, &self.opts.cancel) {
                return Err(EngineError::Cancelled { phase: self.phase });
            }
        }
        match self.out.write_parts(kind, device, parts) {
            Ok(()) => {
                self.tick();
                Ok(())
            }
            Err(e) => Err(self.stream_err(e)),
        }
    }

    /// Writes a record older readers skip (a kind a newer minor added).
    fn write_optional(
        &mut self,
        kind: Kind,
        device: u32,
        payload: &[u8],
    ) -> Result<(), EngineError> {
        let r = self
            .out
            .with(|w| w.write_raw(kind as u16, FLAG_OPTIONAL, device, &[payload]));
        r.map_err(|e| self.stream_err(e))
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

    fn emit(&mut self, remaining: u64, dirty_rate: f64, expected_ms: f64) {
        let p = Progress {
            phase: self.phase,
            iteration: self.metrics.rounds,
            remaining_bytes: remaining,
            transferred_bytes: self.sent_bytes(),
            dirty_rate,
            bandwidth: self.metrics.bandwidth(),
            expected_downtime_ms: expected_ms,
            throttle_percent: self.throttle,
            elapsed: self.metrics.t0.elapsed(),
            tick: false,
        };
        self.ticker.boundary(&p);
        if let Some(f) = self.opts.progress.as_mut() {
            f(&p);
        }
    }

    /// Reports bytes moved inside a round or phase, every
    /// [`crate::progress::TICK_INTERVAL`].
    fn tick(&mut self) {
        if self.opts.progress.is_none() {
            return;
        }
        let sent = self.sent_bytes();
        if let Some(p) = self.ticker.due(sent, self.metrics.t0.elapsed()) {
            if let Some(f) = self.opts.progress.as_mut() {
                f(&p);
            }
        }
    }

    /// Opens every device, writes the setup section, waits for the
    /// destination's answer (live), then starts logging and pre-copy.
    fn setup(&mut self, devices: &'a mut [D]) -> Result<(), EngineError> {
        if devices.is_empty() {
            return Err(EngineError::NoDevices);
        }
        if devices.len() > MAX_DEVICES {
            return Err(EngineError::TooManyDevices {
                count: devices.len(),
                max: MAX_DEVICES,
            });
        }
        self.emit(0, 0.0, 0.0);
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
                return Err(EngineError::NotASource {
                    device: name,
                    state: initial,
                });
            }
            let status = h.status();
            // Devices that report their status are ours: they may leave
            // STOP_COPY at any point. Others may not (see `Dev`).
            let drain_on_rollback = !matches!(status, Ok(Some(_)));
            if !self.opts.force {
                let st = status.map_err(|e| EngineError::device(Phase::Setup, name.clone(), e))?;
                if initial == MigState::Stop && st.is_some_and(|s| s.migrated_out) {
                    return Err(EngineError::AlreadyMigrated { device: name });
                }
            }
            chunk = chunk.max(h.preferred_chunk().min(devices::DEVICE_CHUNK));
            let precopy = self.opts.precopy
                && desc.migration_flags & MIGRATION_PRE_COPY != 0
                && initial == MigState::Running;
            let report = DeviceReport::new(name.clone(), h.protocol(), &desc);
            let mut dev = Dev::new(h, name, desc, initial, precopy, report);
            dev.drain_on_rollback = drain_on_rollback;
            self.devs.push(dev);
        }
        self.buf = vec![0u8; chunk];

        // Descriptors and RAM layout go first; a live destination answers.
        if let Err(e) = self.out.write_stream_header() {
            return Err(self.stream_err(e));
        }
        if let Some(every) = self.heartbeat_every {
            self.heartbeat = Some(Heartbeat::start(self.out.clone(), every));
        }
        for i in 0..self.devs.len() {
            let json = serde_json::to_vec(&self.devs[i].desc).expect("descriptor serializes");
            if json.len() > format::MAX_JSON {
                return Err(EngineError::DescriptorTooLarge {
                    device: self.devs[i].name.clone(),
                    bytes: json.len(),
                });
            }
            self.write(Kind::Device, i as u32, &[&json])?;
            // Optional (minor 1): readers of minor 0 skip it and run the
            // destination, as before.
            let rs = RunState {
                state: self.devs[i].initial as u32,
                reserved: 0,
            };
            self.write_optional(Kind::RunState, i as u32, &rs.to_bytes())?;
        }
        if let Some(g) = self.guest {
            let page_size = g.page_size();
            if page_size == 0 || page_size > format::MAX_PAGE_SIZE || !page_size.is_power_of_two() {
                return Err(EngineError::BadPageSize { page_size });
            }
            let info = RamInfo {
                size: g.size(),
                page_size,
            };
            self.report.ram_size = g.size();
            self.write(Kind::Ram, NO_DEVICE, &[&info.to_bytes()])?;
        }
        self.ask_channels()?;
        let end = SetupEnd {
            devices: self.devs.len() as u32,
            flags: 0,
        };
        if self.mode.is_live() && self.opts.switchover_ack {
            // Optional (minor 3): an older destination skips it and never
            // answers caps-reply, so the source does not wait for acks.
            let caps = Caps {
                flags: CAP_SWITCHOVER_ACK,
            };
            let r = self.out.with(|w| {
                w.write_raw(
                    Kind::Caps as u16,
                    FLAG_OPTIONAL,
                    NO_DEVICE,
                    &[&caps.to_bytes()],
                )
            });
            if let Err(e) = r {
                return Err(self.stream_err(e));
            }
        }
        self.write(Kind::SetupEnd, NO_DEVICE, &[&end.to_bytes()])?;
        self.flush()?;
        if self.mode.is_live() {
            let mut answer = self.wait_reply("the compatibility answer", true)?;
            if let Reply::ChannelsReady(n) = answer {
                self.open_channels(n)?;
                answer = self.wait_reply("the compatibility answer", true)?;
            }
            match answer {
                Reply::Accept => self.channels_declined(),
                r => return Err(self.out_of_turn(&r)),
            }
        }
        self.check_cancel()?;

        // Every page goes at least once; vCPU writes from now on are logged.
        if let Some(ram) = self.ram.as_mut() {
            ram.mark_all();
            if self.opts.precopy {
                self.start_dma_logging()?;
            }
        }
        for i in 0..self.devs.len() {
            if self.devs[i].precopy {
                self.devs[i].touched = true;
                let t = std::time::Instant::now();
                self.devs[i]
                    .h
                    .set_state(MigState::PreCopy)
                    .map_err(|e| self.dev_err(i, e))?;
                // What one state change costs: the switchover's fixed
                // costs are counted in them.
                self.metrics.fixed.device_change_ms += ms(t.elapsed());
            }
        }
        Ok(())
    }

    fn out_of_turn(&self, r: &Reply) -> EngineError {
        EngineError::OutOfTurn {
            phase: self.phase,
            peer: self.peer.clone(),
            got: r.kind(),
        }
    }
}
