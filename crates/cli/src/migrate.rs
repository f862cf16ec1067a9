//! `vfio-migrate migrate`: moves a device's state from `--source` to
//! `--dest`: device to device on this host (`unix:` → `unix:`), to another
//! host (`unix:` → `tcp:`, where `vfio-migrate receive` listens), to a
//! snapshot (`unix:` → `file:`) or from one (`file:` → `unix:`).

use crate::control::{ControlServer, Status};
use crate::digest::sample_verifier;
use crate::endpoint::{Endpoint, ProtocolArg};
use crate::exit;
use crate::liveness::Liveness;
use crate::progress::{Printer, Style};
use crate::report::{print_human, print_json};
use anyhow::{bail, Context};
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;
use vfio_migrate_engine::{
    migrate_in, migrate_out, Cancel, DestLink, DestOptions, Link, MigrationReport, NoConverge,
    SourceFailure, SourceOptions,
};

/// `on` / `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// `abort` / `force`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnNoConverge {
    /// Fail; the source keeps running.
    Abort,
    /// Switch over anyway, with the longer downtime.
    Force,
}

/// When pre-copy switches over, and what it does when it cannot (shared
/// with `demo`).
#[derive(clap::Args, Debug, Clone)]
pub struct Converge {
    /// Give up pre-copy after this many seconds (with --max-iterations,
    /// whichever comes first); then --on-no-converge decides.
    #[arg(long, value_name = "SECS")]
    pub converge_timeout: Option<u64>,
    /// When pre-copy cannot bring the expected downtime under
    /// --downtime-limit: abort (the source keeps running, the message says
    /// the dirty rate and bandwidth that prevented it) or force (switch
    /// over anyway).
    #[arg(long, value_enum, default_value = "abort")]
    pub on_no_converge: OnNoConverge,
    /// Throttle devices that offer it (the vgpu slows its render engine)
    /// step by step while pre-copy rounds stop shrinking, and release the
    /// throttle at the end: the device-side analogue of QEMU's
    /// auto-converge.
    #[arg(long, value_enum, default_value = "on")]
    pub auto_converge: OnOff,
    /// Have the destination acknowledge that it loaded each device's
    /// initial pre-copy data, and never stop the source before (QEMU's
    /// switchover-ack; an older destination simply does not offer it).
    #[arg(long, value_enum, default_value = "on")]
    pub switchover_ack: OnOff,
    /// Verify with a full re-hash: device digests and guest RAM are hashed
    /// whole at both ends (besides the incremental digests, which must
    /// agree). Slower: the device re-hash is inside the downtime.
    #[arg(long)]
    pub full_verify: bool,
    /// Draw the pre-copy rounds (bytes sent, dirty bytes remaining,
    /// expected downtime, throttle) into this PNG file.
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<std::path::PathBuf>,
}

impl Default for Converge {
    fn default() -> Self {
        Self {
            converge_timeout: None,
            on_no_converge: OnNoConverge::Abort,
            auto_converge: OnOff::On,
            switchover_ack: OnOff::On,
            full_verify: false,
            plot: None,
        }
    }
}

/// How the source side migrates (shared with `demo`).
#[derive(clap::Args, Debug, Clone)]
pub struct Tuning {
    /// Pre-copy: send state while the device runs, stop only for the rest.
    #[arg(long, value_enum, default_value = "on")]
    pub precopy: OnOff,
    /// The downtime to stay under, ms: pre-copy switches over only when
    /// the expected downtime (what is left over the measured bandwidth,
    /// plus the measured fixed costs) fits, and the report says when the
    /// measured downtime did not.
    #[arg(long, value_name = "MS", default_value_t = 300)]
    pub downtime_limit: u64,
    /// Give up pre-copy after this many rounds unless the estimate fits
    /// (then --on-no-converge decides).
    #[arg(long, value_name = "N", default_value_t = 30)]
    pub max_iterations: u32,
    /// Send at most this many bytes per second (K/M/G suffixes: 100M is
    /// 100 MiB/s), so the migration leaves room for the host's other
    /// traffic. Default: as fast as the link goes.
    #[arg(long, value_name = "BYTES/S", value_parser = crate::serve::parse_size)]
    pub bandwidth_limit: Option<u64>,
    /// Move RAM and device data over this many parallel connections (each
    /// set up, deadlined and authenticated like the main one; the
    /// destination puts the data back in order). 1: everything on the one
    /// connection. Into a snapshot: this many writer threads.
    #[arg(long, value_name = "N", default_value = "1", value_parser = crate::channels::parse)]
    pub channels: u32,
    #[command(flatten)]
    pub converge: Converge,
}

impl Tuning {
    /// Engine options for these settings.
    pub fn source_options(
        &self,
        source_name: String,
        cancel: Cancel,
        progress: Style,
        force: bool,
        control: Option<&ControlServer>,
    ) -> SourceOptions {
        let printer = (progress != Style::Off).then(|| Printer::new(progress).callback());
        let progress = match control {
            Some(c) => Some(c.progress_fn(printer)),
            None => printer,
        };
        SourceOptions {
            precopy: self.precopy == OnOff::On,
            downtime_limit: Duration::from_millis(self.downtime_limit),
            max_iterations: self.max_iterations,
            verifier: Some(sample_verifier(self.converge.full_verify)),
            cancel,
            progress,
            source_name,
            force,
            bandwidth_limit: self.bandwidth_limit,
            channels: None,
            converge_timeout: self.converge.converge_timeout.map(Duration::from_secs),
            on_no_converge: match self.converge.on_no_converge {
                OnNoConverge::Abort => NoConverge::Abort,
                OnNoConverge::Force => NoConverge::Force,
            },
            auto_converge: self.converge.auto_converge == OnOff::On,
            switchover_ack: self.converge.switchover_ack == OnOff::On,
            full_verify: self.converge.full_verify,
        }
    }

    /// `--channels` above 1, with how to connect them.
    pub fn channels(
        &self,
        connect: Option<vfio_migrate_engine::Connector>,
    ) -> Option<vfio_migrate_engine::ChannelsOut> {
        (self.channels > 1).then(|| vfio_migrate_engine::ChannelsOut {
            count: self.channels,
            connect,
        })
    }
}

/// Arguments of `vfio-migrate migrate`.
#[derive(clap::Args)]
#[command(after_help = crate::exit::HELP)]
pub struct Args {
    /// Where the state comes from: unix:PATH (a vfio-user device server),
    /// kernel:DEVICE, or file:PATH (restore a snapshot).
    #[arg(long, value_name = "ENDPOINT")]
    source: String,
    /// Where it goes: unix:PATH or kernel:DEVICE (a device on this host),
    /// tcp:HOST:PORT (a `vfio-migrate receive` on another host), or
    /// file:PATH (write a snapshot; the source keeps running).
    #[arg(long, value_name = "ENDPOINT")]
    dest: String,
    #[command(flatten)]
    pub(crate) tuning: Tuning,
    /// Migration protocol for unix: devices (source and destination):
    /// auto prefers v2, then the v1 region, then the seed region. The
    /// stream does not depend on it.
    #[arg(long, value_enum, default_value = "auto")]
    pub(crate) protocol: ProtocolArg,
    /// Print one JSON object instead of the human report.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) liveness: Liveness,
    #[command(flatten)]
    control: crate::control::ControlArgs,
    /// TLS credentials directory (QEMU's x509 layout, made by `vfio-migrate
    /// certs`) for a tcp: destination: the receiver's certificate is
    /// checked against its CA and the host name dialled, and ours is shown
    /// to it. Without it a tcp: migration is plaintext (warned about
    /// unless the destination is loopback).
    #[arg(long, value_name = "DIR")]
    tls_creds: Option<std::path::PathBuf>,
    /// The name the receiver's certificate must carry, when not the host
    /// name dialled (as QEMU's tls-hostname).
    #[arg(long, value_name = "NAME", requires = "tls_creds")]
    tls_hostname: Option<String>,
    /// Override the safety checks: migrate a source that was migrated out
    /// already (two copies may run), load into a destination that is not
    /// expecting a migration (its state is overwritten).
    #[arg(long)]
    pub(crate) force: bool,
}

/// Runs the command; returns the process exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let src = Endpoint::parse(&args.source)
        .context("--source")
        .map_err(exit::usage)?;
    let dst = Endpoint::parse(&args.dest)
        .context("--dest")
        .map_err(exit::usage)?;
    let cancel = crate::interrupt::install()?;
    if args.force {
        eprintln!("warning: --force: the safety checks are off; a destination in use will be overwritten and a source already migrated out will be migrated again");
    }
    let style = Style::detect(args.json);
    let title = format!("vfio-migrate: {src} → {dst}");
    if let (Endpoint::File(path), true) = (&src, dst.is_device()) {
        return crate::restore::run(path, &src, &dst, &args, cancel);
    }
    let control = args.control.start(
        Status::new(
            "migrate",
            src.to_string(),
            dst.to_string(),
            Some(args.tuning.downtime_limit as f64),
        ),
        &cancel,
    )?;
    let ctl = control.as_ref();
    let client = args.liveness.client_config(&cancel)?;
    let deadlines = args.liveness.deadlines(&cancel);
    let result = match (&src, &dst) {
        (s, d) if s.is_device() && d.is_device() => {
            device_to_device(&src, &dst, &args, cancel.clone(), style, ctl)?
        }
        (s, Endpoint::Tcp { .. }) if s.is_device() => {
            let Endpoint::Tcp { host, .. } = &dst else {
                unreachable!("matched tcp")
            };
            if args.tls_creds.is_none() && !crate::secure::is_loopback(host) {
                eprintln!("warning: {dst} is not a loopback address and --tls-creds was not given: the device's state crosses the network in clear, and the receiver cannot tell who sends it (see `vfio-migrate certs`)");
            }
            let mut dev = src.open_device_with(args.protocol, &client)?;
            let addr = dst.socket_addr().expect("tcp");
            let server_name = args.tls_hostname.clone().unwrap_or_else(|| host.clone());
            let link = crate::secure::connect(
                &addr,
                &dst.to_string(),
                args.tls_creds.as_deref(),
                &server_name,
                &deadlines,
            )?;
            let mut opts = args
                .tuning
                .source_options(src.to_string(), cancel.clone(), style, args.force, ctl);
            opts.channels = args.tuning.channels(Some(crate::channels::tcp_connector(
                addr.clone(),
                dst.to_string(),
                args.tls_creds.clone(),
                server_name,
                deadlines.clone(),
            )));
            migrate_out(std::slice::from_mut(&mut dev), None, link, opts)
        }
        (s, Endpoint::File(path)) if s.is_device() => {
            let mut dev = src.open_device_with(args.protocol, &client)?;
            // Mode 0600: a snapshot holds device memory (and what the guest
            // put there).
            let f = File::options().write(true).create_new(true).mode(0o600).open(path).with_context(|| {
                format!("cannot create the snapshot {dst} (an existing file is never overwritten: remove it or pick another path)")
            })?;
            let sync = f.try_clone().context("snapshot file")?;
            let mut opts = args
                .tuning
                .source_options(src.to_string(), cancel.clone(), style, args.force, ctl);
            opts.channels = args.tuning.channels(None);
            let r = migrate_out(std::slice::from_mut(&mut dev), None, Link::file(f, dst.to_string()), opts);
            match r.as_ref().map(|_| sync.sync_all()) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let _ = std::fs::remove_file(path);
                    bail!("writing the snapshot {dst}: {e} (the partial file was removed)");
                }
                Err(_) => {
                    let _ = std::fs::remove_file(path);
                }
            }
            r
        }
        (Endpoint::Tcp { .. }, _) => {
            return Err(exit::usage(format!("--source {src}: a tcp endpoint can only be a destination; on the receiving host run `vfio-migrate receive --listen {src} --dest unix:PATH`")))
        }
        _ => return Err(exit::usage(format!("migrating from {src} to {dst} is not supported: the source must be a device or a snapshot file, the destination a device, tcp:HOST:PORT or file:PATH, and at least one of them a device"))),
    };
    let code = finish(
        &title,
        result,
        args.json,
        &cancel,
        ctl,
        args.tuning.converge.plot.as_deref(),
    );
    Ok(code)
}

/// Prints the outcome; returns the exit code.
pub fn finish(
    title: &str,
    r: Result<MigrationReport, SourceFailure>,
    json: bool,
    cancel: &Cancel,
    control: Option<&ControlServer>,
    plot: Option<&std::path::Path>,
) -> i32 {
    if let Some(path) = plot {
        let rep = match &r {
            Ok(rep) => rep,
            Err(f) => &*f.report,
        };
        if let Err(e) = crate::plot::draw(path, title, rep) {
            eprintln!("warning: --plot {}: {e:#}", path.display());
        }
    }
    if let Some(c) = control {
        c.finish(&outcome(&r, cancel));
    }
    match r {
        Ok(mut rep) => {
            rep.peak_rss_bytes = crate::procstat::peak_rss();
            rep.cpu_seconds = crate::procstat::cpu_seconds(None);
            if json {
                print_json(&rep);
            } else {
                print_human(title, &rep);
            }
            0
        }
        Err(f) => {
            if json {
                print_json(&Failed::new(&f));
            }
            eprintln!("error: {f}");
            exit::for_source_failure(&f, cancel)
        }
    }
}

/// What `vfio-migrate cancel` is told when the migration has ended.
fn outcome(r: &Result<MigrationReport, SourceFailure>, cancel: &Cancel) -> serde_json::Value {
    match r {
        Ok(_) => serde_json::json!({
            "status": "completed",
            "message": "the migration completed before the cancel took effect: the destination runs",
            "exit_code": 0,
            "devices": [],
        }),
        Err(f) => {
            let code = exit::for_source_failure(f, cancel);
            let cancelled = cancel.is_cancelled()
                && matches!(f.state, vfio_migrate_engine::SourceState::Restored);
            let devices: Vec<serde_json::Value> = f
                .devices
                .iter()
                .map(|(n, s)| serde_json::json!({ "name": n, "state": s.map(|s| s.to_string()) }))
                .collect();
            serde_json::json!({
                "status": if cancelled { "cancelled" } else { "failed" },
                "message": f.to_string(),
                "exit_code": code,
                "devices": devices,
            })
        }
    }
}

/// A failed migration's JSON: the figures up to the failure, what the
/// source was left as, and each source device's state read back.
#[derive(serde::Serialize)]
struct Failed<'a> {
    #[serde(flatten)]
    report: &'a MigrationReport,
    /// `restored` (rolled back, running), `rollback-incomplete` or
    /// `committed` (the destination was told to run: the source stays
    /// stopped).
    source_state: &'static str,
    source_devices: Vec<SourceDevice>,
}

#[derive(serde::Serialize)]
struct SourceDevice {
    name: String,
    /// Its state read back after the failure (`null`: it did not answer).
    state: Option<String>,
}

impl<'a> Failed<'a> {
    fn new(f: &'a SourceFailure) -> Self {
        use vfio_migrate_engine::SourceState as S;
        Self {
            report: &f.report,
            source_state: match &f.state {
                S::Restored => "restored",
                S::RollbackIncomplete(_) => "rollback-incomplete",
                S::Committed => "committed",
            },
            source_devices: f
                .devices
                .iter()
                .map(|(n, s)| SourceDevice {
                    name: n.clone(),
                    state: s.map(|s| s.to_string()),
                })
                .collect(),
        }
    }
}

/// Both ends are devices on this host: the destination loads on another
/// thread, over a UNIX socket pair.
fn device_to_device(
    src: &Endpoint,
    dst: &Endpoint,
    args: &Args,
    cancel: Cancel,
    style: Style,
    ctl: Option<&ControlServer>,
) -> anyhow::Result<Result<MigrationReport, SourceFailure>> {
    if src.same_as(dst) {
        let how = if src == dst {
            String::new()
        } else {
            format!(
                " ({src} and {dst} both reach {})",
                src.identity().unwrap_or_default()
            )
        };
        return Err(exit::usage(format!(
            "--source and --dest are the same device{how}: a device cannot migrate into itself; give the destination device's own endpoint"
        )));
    }
    let tuning = &args.tuning;
    let client = args.liveness.client_config(&cancel)?;
    let deadlines = args.liveness.deadlines(&cancel);
    let mut sdev = src.open_device_with(args.protocol, &client)?;
    let ddev = dst.open_device_with(args.protocol, &client)?;
    let (a, b) = UnixStream::pair().context("creating the socket pair")?;
    let dlink = DestLink::unix(b, src.to_string(), &deadlines)?;
    let slink = Link::unix(a, dst.to_string(), &deadlines)?;
    let (connect, accept) =
        crate::channels::local_pair(src.to_string(), dst.to_string(), deadlines.clone());
    let channel_wait = deadlines.connect;
    let dcancel = cancel.clone();
    let force = args.force;
    let full_verify = tuning.converge.full_verify;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("migrate-dest".into())
        .spawn(move || {
            let mut ddev = ddev;
            let r = migrate_in(
                std::slice::from_mut(&mut ddev),
                None,
                dlink,
                DestOptions {
                    verifier: Some(sample_verifier(full_verify)),
                    full_verify,
                    cancel: dcancel,
                    force,
                    channels: Some(accept),
                    channel_wait,
                    ..Default::default()
                },
            );
            let _ = tx.send(r);
        })
        .context("starting the destination thread")?;
    let mut opts = tuning.source_options(src.to_string(), cancel, style, args.force, ctl);
    opts.channels = tuning.channels(Some(connect));
    let r = migrate_out(std::slice::from_mut(&mut sdev), None, slink, opts);
    // After a success the destination is done (it answered RUNNING). After
    // a failure it may still be inside a slow device call: it gets a moment
    // to reset its device, and is otherwise left behind — when this process
    // exits, its device server sees the client go and recovers the device.
    let wait = if r.is_ok() {
        Duration::from_secs(args.liveness.stall_timeout)
    } else {
        Duration::from_millis(500)
    };
    match rx.recv_timeout(wait) {
        Ok(Err(e)) if r.is_ok() => {
            bail!("the source finished but the destination reports: {e}")
        }
        Err(_) if r.is_ok() => bail!("the source finished but the destination did not report"),
        _ => {}
    }
    Ok(r)
}
