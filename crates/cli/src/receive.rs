//! `vfio-migrate receive`: the destination side across hosts. Listens on
//! TCP, serves one migration into a local device, exits 0 once that device
//! runs.

use crate::digest::sample_verifier;
use crate::endpoint::{Endpoint, ProtocolArg};
use crate::report::{bytes, print_json};
use anyhow::{bail, Context};
use serde::Serialize;
use std::io::Write;
use std::net::TcpListener;
use vfio_migrate_engine::{migrate_in, DestLink, DestOptions, DestReport, Phase};

/// Arguments of `vfio-migrate receive`.
#[derive(clap::Args)]
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
}

/// Runs the command; returns the process exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let listen = Endpoint::parse(&args.listen).context("--listen")?;
    let Some(addr) = listen.socket_addr() else {
        bail!("--listen {listen}: receive listens on TCP only, e.g. --listen tcp:127.0.0.1:4444");
    };
    let dst = Endpoint::parse(&args.dest).context("--dest")?;
    if !dst.is_device() {
        bail!("--dest {dst}: receive loads into a device (unix:PATH or kernel:DEVICE)");
    }
    // Connect to the device first: a missing server is reported before
    // anyone connects to us.
    let mut dev = dst.open_device_with(args.protocol)?;
    let l = TcpListener::bind(&addr).with_context(|| format!("cannot listen on {listen}"))?;
    let local = format!("tcp:{}", l.local_addr().context("listening address")?);
    println!("listening on {local}");
    std::io::stdout().flush()?;
    let (stream, peer) = l
        .accept()
        .with_context(|| format!("accepting on {local}"))?;
    drop(l);
    let source = format!("tcp:{peer}");
    eprintln!("receiving from {source} into {dst}");
    let show = !args.json || crate::verbosity() > 0;
    let opts = DestOptions {
        verifier: Some(sample_verifier()),
        progress: show.then(|| {
            Box::new(|phase: Phase, n: u64| eprintln!("{phase}: {} received", bytes(n)))
                as Box<dyn FnMut(Phase, u64) + Send>
        }),
        ..Default::default()
    };
    let link = DestLink::tcp(stream, source.clone()).context("setting up the TCP connection")?;
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
            },
        ),
        Err(e) => {
            eprintln!("error: receiving into {dst}: {e}; the destination device was not started");
            (
                1,
                Out {
                    status: "failed",
                    listen: local,
                    source,
                    dest: dst.to_string(),
                    report: None,
                    error: Some(e.to_string()),
                },
            )
        }
    };
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
