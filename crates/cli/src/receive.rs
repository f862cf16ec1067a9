//! `vfio-migrate receive`: the destination side across hosts. Listens on
//! TCP, serves one migration into a local device, exits 0 once that device
//! runs.

use crate::digest::sample_verifier;
use crate::endpoint::{Endpoint, ProtocolArg};
use crate::exit;
use crate::liveness::Liveness;
use crate::report::{bytes, print_json};
use anyhow::Context;
use serde::Serialize;
use std::io::Write;
use std::net::TcpListener;
use vfio_migrate_engine::{migrate_in, DestOptions, DestReport, DeviceLeft, Phase};

/// Arguments of `vfio-migrate receive`.
#[derive(clap::Args)]
#[command(after_help = crate::exit::HELP)]
pub struct Args {
    /// Where to listen: tcp:ADDR:PORT (port 0 picks a free one; the
    /// address in use is printed).
    #[arg(long, value_name = "ENDPOINT")]
    listen: String,
    /// The device to load into: unix:PATH (a vfio-user device server) or
    /// kernel:DEVICE.
    #[arg(long, value_name = "ENDPOINT")]
    dest: String,
    /// Print one JSON object instead of the human report.
    #[arg(long)]
    json: bool,
    /// Migration protocol for a unix: destination (auto prefers v2, then
    /// the v1 region, then the seed region).
    #[arg(long, value_enum, default_value = "auto")]
    protocol: ProtocolArg,
    #[command(flatten)]
    liveness: Liveness,
    /// Give up when no sender has connected after this many seconds (0:
    /// wait until interrupted).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    wait: u64,
    /// Load even into a device that is not expecting a migration (it is in
    /// use, or its server cannot tell): its state is overwritten.
    #[arg(long)]
    force: bool,
    /// TLS credentials directory (QEMU's x509 layout, made by `vfio-migrate
    /// certs`): the sender must present a certificate signed by its CA.
    #[arg(long, value_name = "DIR")]
    tls_creds: Option<std::path::PathBuf>,
    /// Admit only senders whose certificate's subject CN or a SAN is one of
    /// these (comma-separated), as QEMU's tls-authz.
    #[arg(
        long,
        value_name = "NAME[,NAME...]",
        value_delimiter = ',',
        requires = "tls_creds"
    )]
    tls_authz: Vec<String>,
    /// Listen on a non-loopback address without TLS: anyone who can reach
    /// the port could then write a device's state.
    #[arg(long, conflicts_with = "tls_creds")]
    insecure: bool,
    #[command(flatten)]
    control: crate::control::ControlArgs,
}

#[derive(Serialize)]
struct Out<'a> {
    status: &'a str,
    listen: String,
    source: String,
    dest: String,
    #[serde(flatten)]
    report: Option<DestReport>,
    error: Option<String>,
    /// After a failure: what each destination device was left as.
    devices_left: Vec<DeviceLeft>,
    /// This process's peak resident memory (VmHWM).
    peak_rss_bytes: Option<u64>,
    /// CPU seconds this process used (user + system).
    cpu_seconds: Option<f64>,
}

/// Runs the command; returns the process exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let listen = Endpoint::parse(&args.listen)
        .context("--listen")
        .map_err(exit::usage)?;
    let Some(addr) = listen.socket_addr() else {
        return Err(exit::usage(format!(
            "--listen {listen}: receive listens on TCP only, e.g. --listen tcp:127.0.0.1:4444"
        )));
    };
    let dst = Endpoint::parse(&args.dest)
        .context("--dest")
        .map_err(exit::usage)?;
    if !dst.is_device() {
        return Err(exit::usage(format!(
            "--dest {dst}: receive loads into a device (unix:PATH or kernel:DEVICE)"
        )));
    }
    let Endpoint::Tcp { host, .. } = &listen else {
        unreachable!("a tcp endpoint")
    };
    if args.tls_creds.is_none() && !args.insecure && !crate::secure::is_loopback(host) {
        return Err(exit::usage(format!(
            "--listen {listen} is not a loopback address and --tls-creds was not given: anyone who can reach the port could read and write a device's state. Give --tls-creds DIR (make it with `vfio-migrate certs DIR --host NAME`), or --insecure if the network is trusted"
        )));
    }
    let adm = std::sync::Arc::new(crate::secure::Admission {
        tls: match &args.tls_creds {
            Some(dir) => Some((
                vfio_migrate_engine::tls::server_config(dir, &args.tls_authz)?,
                args.tls_authz.clone(),
            )),
            None => None,
        },
    });
    let cancel = crate::interrupt::install()?;
    if args.force {
        eprintln!("warning: --force: the destination device is overwritten even if it is in use");
    }
    let deadlines = args.liveness.deadlines(&cancel);
    // Connect to the device first: a missing server is reported before
    // anyone connects to us.
    let mut dev = dst.open_device_with(args.protocol, &args.liveness.client_config(&cancel)?)?;
    let l = std::sync::Arc::new(
        TcpListener::bind(&addr).with_context(|| format!("cannot listen on {listen}"))?,
    );
    let local = format!("tcp:{}", l.local_addr().context("listening address")?);
    let mut status = crate::control::Status::new("receive", String::new(), dst.to_string(), None);
    status.phase = "waiting".into();
    let control = args.control.start(status, &cancel)?;
    // With --json, stdout carries the one report object only.
    if args.json {
        eprintln!("listening on {local}");
    } else {
        println!("listening on {local}");
        std::io::stdout().flush()?;
    }
    let wait = (args.wait > 0).then(|| std::time::Duration::from_secs(args.wait));
    let (link, peer) = match crate::secure::accept(&l, &adm, &deadlines, wait, &cancel) {
        Ok(x) => x,
        Err(e) => {
            let code = exit::cancelled(&cancel).unwrap_or(exit::FAILED);
            eprintln!("error: waiting for a sender on {local}: {e:#}; {dst} was not touched");
            return Ok(code);
        }
    };
    let source = peer;
    if let Some(c) = &control {
        let s = source.clone();
        c.update(|st| {
            st.source = s;
            st.phase = "setup".into();
        });
    }
    let ctl_status = control.as_ref().map(|c| c.shared_status());
    eprintln!("receiving from {source} into {dst}");
    let show = !args.json || crate::verbosity() > 0;
    let opts = DestOptions {
        verifier: Some(sample_verifier(false)),
        cancel: cancel.clone(),
        force: args.force,
        progress: (show || ctl_status.is_some()).then(|| {
            let t0 = std::time::Instant::now();
            Box::new(move |phase: Phase, n: u64| {
                if let Some(st) = &ctl_status {
                    let mut st = st.lock().unwrap_or_else(|p| p.into_inner());
                    st.phase = phase.to_string();
                    st.transferred_bytes = n;
                    st.total_bytes = n;
                    st.elapsed_ms = t0.elapsed().as_secs_f64() * 1000.0;
                }
                if show {
                    eprintln!("{phase}: {} received", bytes(n));
                }
            }) as Box<dyn FnMut(Phase, u64) + Send>
        }),
        // Data channels (`migrate --channels N`) come to the same port and
        // are admitted like the main connection.
        channels: Some(crate::channels::tcp_acceptor(
            l.clone(),
            adm.clone(),
            deadlines.clone(),
            cancel.clone(),
        )),
        channel_wait: deadlines.connect,
        ..Default::default()
    };
    let r = migrate_in(std::slice::from_mut(&mut dev), None, link, opts);
    let (code, out) = match r {
        Ok(rep) => (
            0,
            Out {
                status: "ok",
                listen: local,
                source,
                dest: dst.to_string(),
                report: Some(rep),
                error: None,
                devices_left: Vec::new(),
                peak_rss_bytes: crate::procstat::peak_rss(),
                cpu_seconds: crate::procstat::cpu_seconds(None),
            },
        ),
        Err(f) => {
            eprintln!(
                "error: receiving into {dst}: {f}; the destination did not run the incoming state"
            );
            for d in &f.devices {
                eprintln!("  {}", crate::report::left_as(d));
            }
            (
                exit::cancelled(&cancel).unwrap_or(exit::FAILED),
                Out {
                    status: "failed",
                    listen: local,
                    source,
                    dest: dst.to_string(),
                    report: None,
                    error: Some(f.error.to_string()),
                    devices_left: f.devices,
                    peak_rss_bytes: crate::procstat::peak_rss(),
                    cpu_seconds: crate::procstat::cpu_seconds(None),
                },
            )
        }
    };
    if let Some(c) = &control {
        c.finish(&serde_json::json!({
            "status": if code == 0 { "completed" } else if cancel.is_cancelled() { "cancelled" } else { "failed" },
            "message": out.error.clone().unwrap_or_else(|| "the destination runs the received state".into()),
            "exit_code": code,
            "devices": out.devices_left.iter().map(|d| serde_json::json!({
                "name": d.name,
                "state": d.state.map(|s| s.to_string()),
            })).collect::<Vec<_>>(),
        }));
    }
    if args.json {
        print_json(&out);
    } else if let Some(rep) = &out.report {
        println!(
            "received {} from {} into {}: {} device(s) running",
            bytes(rep.bytes),
            out.source,
            out.dest,
            rep.devices.len()
        );
        let verdict = match (rep.verified_by, rep.sender_compared) {
            (Some("sender"), Some(n)) => format!(
                "verified by the sender: it compared {n} device digest(s) with its own, taken when its devices stopped, before telling this side to run"
            ),
            (Some(_), _) => "verified: every device digest equals the sender's".to_string(),
            _ => "not verified: no digest was compared (a sender of an older version, or a device without a digest)".to_string(),
        };
        println!("  {verdict}");
        for d in &rep.devices {
            println!(
                "  {} ({}): {} of state, digest {}",
                d.name,
                d.model,
                bytes(d.data_bytes),
                d.digest_dest.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(code)
}
