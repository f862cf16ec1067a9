//! `vfio-migrate migrate`: moves a device's state from `--source` to
//! `--dest`: device to device on this host (`unix:` → `unix:`), to another
//! host (`unix:` → `tcp:`, where `vfio-migrate receive` listens), to a
//! snapshot (`unix:` → `file:`) or from one (`file:` → `unix:`).

use crate::digest::sample_verifier;
use crate::endpoint::{Endpoint, ProtocolArg};
use crate::exit;
use crate::liveness::Liveness;
use crate::progress::{Printer, Style};
use crate::report::{print_human, print_json};
use anyhow::{bail, Context};
use std::fs::File;
use std::os::unix::net::UnixStream;
use std::time::Duration;
use vfio_migrate_backend::MigrationDevice;
use vfio_migrate_engine::snapshot;
use vfio_migrate_engine::{
    migrate_in, migrate_out, Cancel, DestLink, DestOptions, Link, MigrationReport, SourceFailure,
    SourceOptions,
};

/// `on` / `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// How the source side migrates (shared with `demo`).
#[derive(clap::Args, Debug, Clone)]
pub struct Tuning {
    /// Pre-copy: send state while the device runs, stop only for the rest.
    #[arg(long, value_enum, default_value = "on")]
    pub precopy: OnOff,
    /// Switch over once the expected downtime is at most this many ms.
    #[arg(long, value_name = "MS", default_value_t = 300)]
    pub downtime_limit: u64,
    /// Switch over after this many pre-copy rounds whatever the estimate.
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
}

impl Tuning {
    /// Engine options for these settings.
    pub fn source_options(
        &self,
        source_name: String,
        cancel: Cancel,
        progress: Style,
        force: bool,
    ) -> SourceOptions {
        SourceOptions {
            precopy: self.precopy == OnOff::On,
            downtime_limit: Duration::from_millis(self.downtime_limit),
            max_iterations: self.max_iterations,
            verifier: Some(sample_verifier()),
            cancel,
            progress: (progress != Style::Off).then(|| Printer::new(progress).callback()),
            source_name,
            force,
            bandwidth_limit: self.bandwidth_limit,
            channels: None,
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
    tuning: Tuning,
    /// Migration protocol for unix: devices (source and destination):
    /// auto prefers v2, then the v1 region, then the seed region. The
    /// stream does not depend on it.
    #[arg(long, value_enum, default_value = "auto")]
    protocol: ProtocolArg,
    /// Print one JSON object instead of the human report.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    liveness: Liveness,
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
    force: bool,
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
    let client = args.liveness.client_config(&cancel)?;
    let deadlines = args.liveness.deadlines(&cancel);
    let result = match (&src, &dst) {
        (s, d) if s.is_device() && d.is_device() => {
            device_to_device(&src, &dst, &args, cancel.clone(), style)?
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
                .source_options(src.to_string(), cancel.clone(), style, args.force);
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
            let f = File::options().write(true).create_new(true).open(path).with_context(|| {
                format!("cannot create the snapshot {dst} (an existing file is never overwritten: remove it or pick another path)")
            })?;
            let sync = f.try_clone().context("snapshot file")?;
            let mut opts = args
                .tuning
                .source_options(src.to_string(), cancel.clone(), style, args.force);
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
        (Endpoint::File(path), d) if d.is_device() => {
            return restore(path, &src, &dst, &args, cancel)
        }
        (Endpoint::Tcp { .. }, _) => {
            return Err(exit::usage(format!("--source {src}: a tcp endpoint can only be a destination; on the receiving host run `vfio-migrate receive --listen {src} --dest unix:PATH`")))
        }
        _ => return Err(exit::usage(format!("migrating from {src} to {dst} is not supported: the source must be a device or a snapshot file, the destination a device, tcp:HOST:PORT or file:PATH, and at least one of them a device"))),
    };
    Ok(finish(&title, result, args.json, &cancel))
}

/// Prints the outcome; returns the exit code.
pub fn finish(
    title: &str,
    r: Result<MigrationReport, SourceFailure>,
    json: bool,
    cancel: &Cancel,
) -> i32 {
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
                print_json(&f.report);
            }
            eprintln!("error: {f}");
            exit::for_source_failure(&f, cancel)
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
) -> anyhow::Result<Result<MigrationReport, SourceFailure>> {
    if src == dst {
        return Err(exit::usage(format!(
            "--source and --dest are the same device ({src})"
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
                    verifier: Some(sample_verifier()),
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
    let mut opts = tuning.source_options(src.to_string(), cancel, style, args.force);
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

/// `file:` → device: the whole snapshot is checked before the device is
/// touched, then loaded, validated, verified and started.
fn restore(
    path: &std::path::Path,
    src: &Endpoint,
    dst: &Endpoint,
    args: &Args,
    cancel: Cancel,
) -> anyhow::Result<i32> {
    let json = args.json;
    let t0 = std::time::Instant::now();
    let f = File::open(path).with_context(|| format!("cannot open the snapshot {src}"))?;
    let sum = snapshot::check(f, &src.to_string());
    if !sum.ok {
        bail!(
            "the snapshot {src} is damaged, nothing was loaded into {dst}: {}",
            sum.problems.join("; ")
        );
    }
    let client = args.liveness.client_config(&cancel)?;
    let mut dev: Box<dyn MigrationDevice> = dst.open_device_with(args.protocol, &client)?;
    let f = File::open(path).with_context(|| format!("cannot open the snapshot {src}"))?;
    let r = migrate_in(
        std::slice::from_mut(&mut dev),
        None,
        DestLink::file(f, src.to_string()),
        DestOptions {
            verifier: Some(sample_verifier()),
            cancel: cancel.clone(),
            force: args.force,
            ..Default::default()
        },
    );
    let mut rep = MigrationReport::new(src.to_string(), dst.to_string());
    rep.total_ms = t0.elapsed().as_secs_f64() * 1000.0;
    rep.downtime_ms = rep.total_ms;
    rep.transferred_bytes = sum.bytes;
    rep.device_bytes = sum
        .devices
        .iter()
        .map(|d| d.precopy.bytes + d.stopcopy.bytes)
        .sum();
    rep.throughput_mbps = sum.bytes as f64 * 8.0 / 1e6 / t0.elapsed().as_secs_f64().max(1e-9);
    match r {
        Ok(d) => {
            rep.verified = d.verified;
            rep.devices = sum
                .devices
                .iter()
                .zip(&d.devices)
                .map(|(s, x)| {
                    let mut dr = vfio_migrate_engine::DeviceReport::new(
                        dst.to_string(),
                        dev.protocol(),
                        &s.descriptor,
                    );
                    dr.precopy_bytes = s.precopy.bytes;
                    dr.stopcopy_bytes = s.stopcopy.bytes;
                    dr.digest_source = x.digest_source.clone();
                    dr.digest_dest = x.digest_dest.clone();
                    dr.verified = x.verified;
                    dr
                })
                .collect();
            if json {
                print_json(&rep);
            } else {
                print_human(&format!("vfio-migrate: restored {src} into {dst}"), &rep);
            }
            Ok(0)
        }
        Err(e) => {
            rep.status = "failed".into();
            rep.error = Some(e.to_string());
            if json {
                print_json(&rep);
            }
            eprintln!("error: restoring {src} into {dst}: {e}; the device was not started");
            Ok(exit::cancelled(&cancel).unwrap_or(exit::FAILED))
        }
    }
}
