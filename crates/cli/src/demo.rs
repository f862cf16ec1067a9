//! `vfio-migrate demo`: the main job with no arguments. Starts a source and
//! a destination `serve --device vgpu` process, a source guest (memfd RAM
//! shared with the device by DMA_MAP, a vCPU thread dirtying it), turns on
//! the vgpu's render and DMA engines, live-migrates guest RAM and device
//! over loopback TCP with pre-copy, resumes at the destination, verifies
//! that destination RAM and device equal the source at the moment it
//! stopped, and reports.

use crate::digest::{read_digest, sample_verifier};
use crate::endpoint::ProtocolArg;
use crate::liveness::Liveness;
use crate::migrate::{Converge, OnOff, Tuning};
use crate::progress::Style;
use crate::report::{bytes, print_human, print_json};
use crate::serve::parse_size;
use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use vfio_migrate_backend::{DmaWindow, MigrationDevice};
use vfio_migrate_engine::{
    migrate_in, migrate_out, Cancel, DestOptions, GuestRam, MemfdRam, MigrationReport,
};
use vfio_migrate_harness::{Options, ServerProcess, SimGuest, TempDir, VcpuConfig};

/// vgpu BAR0 registers the demo programs.
mod reg {
    pub use vfio_migrate_samples::vgpu::regs::reg::*;
    /// CONTROL: render engine | DMA engine.
    pub const ENGINES_ON: u64 = 0b11;
}

/// Arguments of `vfio-migrate demo`.
#[derive(clap::Args)]
#[command(after_help = crate::exit::HELP)]
pub struct Args {
    /// Print one JSON object instead of the human report.
    #[arg(long)]
    pub(crate) json: bool,
    /// Stop and copy everything at once (no pre-copy), for comparison.
    #[arg(long)]
    pub(crate) no_precopy: bool,
    /// vgpu device memory (power of two; K/M/G suffix).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "256M")]
    pub(crate) device_mem: u64,
    /// Guest RAM (K/M/G suffix).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "1G")]
    pub(crate) guest_mem: u64,
    /// Switch over once the expected downtime is at most this many ms.
    #[arg(long, value_name = "MS", default_value_t = 300)]
    pub(crate) downtime_limit: u64,
    /// Switch over after this many pre-copy rounds whatever the estimate.
    #[arg(long, value_name = "N", default_value_t = 30)]
    pub(crate) max_iterations: u32,
    /// Bytes per second the vCPU dirties in guest RAM.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "64M")]
    pub(crate) vcpu_rate: u64,
    /// Bytes per second the vgpu render engine writes into device memory.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "64M")]
    pub(crate) render_rate: u64,
    /// Bytes per second the vgpu DMA engine writes into guest RAM.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "32M")]
    pub(crate) dma_rate: u64,
    /// Migration protocol: the servers offer only it (auto: all three,
    /// detected, v2 preferred).
    #[arg(long, value_enum, default_value = "auto")]
    pub(crate) protocol: ProtocolArg,
    /// Migrate over TLS 1.3 with mutual authentication, with credentials
    /// made for the run (what `vfio-migrate certs` makes).
    #[arg(long)]
    pub(crate) tls: bool,
    /// Send at most this many bytes per second (K/M/G suffixes).
    #[arg(long, value_name = "BYTES/S", value_parser = parse_size)]
    pub(crate) bandwidth_limit: Option<u64>,
    /// Move RAM and device data over this many parallel connections.
    #[arg(long, value_name = "N", default_value = "1", value_parser = crate::channels::parse)]
    pub(crate) channels: u32,
    #[command(flatten)]
    pub(crate) converge: Converge,
    #[command(flatten)]
    pub(crate) liveness: Liveness,
    /// Compare digests and RAM hashes (always, from the command line; the
    /// benchmark also measures without, to show what verification costs).
    #[arg(skip = true)]
    pub(crate) verify: bool,
}

/// The workload, as reported.
#[derive(Serialize)]
struct Workload {
    pub(crate) device_mem: u64,
    pub(crate) guest_mem: u64,
    pub(crate) vcpu_rate: u64,
    pub(crate) render_rate: u64,
    pub(crate) dma_rate: u64,
    dma_window: (u64, u64),
}

#[derive(Serialize)]
pub(crate) struct DemoReport {
    #[serde(flatten)]
    pub(crate) migration: MigrationReport,
    /// The destination device runs after the migration: its engines
    /// advanced (frames and DMA writes counted up).
    pub(crate) dest_running: bool,
    workload: Workload,
}

/// What one demo run gave.
pub(crate) struct Outcome {
    pub(crate) report: DemoReport,
    /// Why it failed, when it did.
    pub(crate) failure: Option<String>,
    /// The exit status of the failure.
    pub(crate) exit: Option<i32>,
}

/// Starts a `vfio-migrate serve --device vgpu` child process and waits
/// until its socket accepts; the child is stopped (SIGTERM, then SIGKILL
/// after 5 s) when the returned handle is dropped.
fn spawn_server(
    device_mem: u64,
    socket: &Path,
    protocol: ProtocolArg,
) -> anyhow::Result<ServerProcess> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let offered = match protocol {
        ProtocolArg::Auto => "all",
        ProtocolArg::V2 => "v2",
        ProtocolArg::V1 => "v1",
        ProtocolArg::Seed => "seed",
    };
    let mut cmd = Command::new(exe);
    cmd.args([
        "serve",
        "--device",
        "vgpu",
        "--protocol",
        offered,
        "--device-mem",
    ])
    .arg(device_mem.to_string())
    .arg("--socket")
    .arg(socket)
    // Own process group: Ctrl-C reaches the demo, which rolls back and
    // stops the servers itself.
    .process_group(0);
    let opts = Options {
        echo_stderr: true,
        ..Options::default()
    };
    ServerProcess::start_with(cmd, socket, &opts).context("starting `vfio-migrate serve`")
}

fn write_reg(c: &mut dyn MigrationDevice, off: u64, v: u64) -> anyhow::Result<()> {
    vfio_migrate_backend::regions_of(c)
        .and_then(|r| r.region_write(0, off, &v.to_le_bytes()))
        .with_context(|| format!("vgpu register {off:#x}"))
}

fn read_reg(c: &mut dyn MigrationDevice, off: u64) -> anyhow::Result<u64> {
    read_digest(c, off).with_context(|| format!("vgpu register {off:#x}"))
}

fn map_guest(c: &mut dyn MigrationDevice, ram: &MemfdRam) -> anyhow::Result<()> {
    vfio_migrate_backend::dma_mapping_of(c)?
        .dma_map(DmaWindow {
            iova: 0,
            size: ram.len(),
            fd: Some(ram.fd()),
            offset: 0,
            readable: true,
            writable: true,
        })
        .with_context(|| format!("mapping guest RAM into {}", c.name()))
}

/// Runs the command; returns the process exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let style = Style::detect(args.json);
    let cancel = crate::interrupt::install()?;
    let out = execute(&args, style, &cancel)?;
    let title = format!(
        "vfio-migrate demo: live migration of a running vgpu ({} device memory) and {} of guest RAM over loopback TCP{}",
        bytes(args.device_mem),
        bytes(args.guest_mem),
        if args.tls { " with TLS 1.3" } else { "" }
    );
    if let Some(path) = &args.converge.plot {
        if let Err(e) = crate::plot::draw(path, &title, &out.report.migration) {
            eprintln!("warning: --plot {}: {e:#}", path.display());
        }
    }
    if args.json {
        print_json(&out.report);
    } else if out.failure.is_none() {
        print_human(&title, &out.report.migration);
        println!(
            "  destination  {}",
            if out.report.dest_running {
                "running: render and DMA engines advance"
            } else {
                "NOT RUNNING: its engines did not advance"
            }
        );
    }
    if let Some(f) = &out.failure {
        eprintln!("error: {f}");
        return Ok(out.exit.unwrap_or(crate::exit::FAILED));
    }
    if !(out.report.migration.verified && out.report.dest_running) {
        eprintln!("error: the demo migration was not verified");
        return Ok(1);
    }
    Ok(0)
}

/// Sets up the servers, guest and workload, migrates, and checks the
/// destination runs.
pub(crate) fn execute(args: &Args, style: Style, cancel: &Cancel) -> anyhow::Result<Outcome> {
    if args.guest_mem < (1 << 20) {
        return Err(crate::exit::usage(format!(
            "--guest-mem {}: the demo guest needs at least 1M of RAM",
            args.guest_mem
        )));
    }
    let cancel = cancel.clone();
    let client = args.liveness.client_config(&cancel)?;
    let deadlines = args.liveness.deadlines(&cancel);
    let dir = TempDir::new("demo").context("creating a directory for the sockets")?;
    let (src_sock, dst_sock) = (dir.join("source.sock"), dir.join("dest.sock"));
    let src_server = spawn_server(args.device_mem, &src_sock, args.protocol)?;
    let dst_server = spawn_server(args.device_mem, &dst_sock, args.protocol)?;
    let mut src = vfio_migrate_client::open_with(&src_sock, args.protocol.into(), client.clone())
        .context("connecting to the source vgpu")?;
    let mut dst = vfio_migrate_client::open_with(&dst_sock, args.protocol.into(), client)
        .context("connecting to the destination vgpu")?;

    // Guests: the source runs, the destination's RAM waits empty. Both are
    // mapped for their device's DMA, as a VMM does at setup.
    let mut guest = SimGuest::new(args.guest_mem).context("source guest RAM")?;
    let dst_ram = MemfdRam::new("vfio-migrate-dest-guest", args.guest_mem)
        .context("destination guest RAM")?;
    map_guest(&mut *src, guest.ram())?;
    map_guest(&mut *dst, &dst_ram)?;

    // The vCPU dirties the lower half of RAM; the vgpu DMAs into a window
    // in the upper half and renders into its own memory.
    let half = guest.size() / 2 / 4096 * 4096;
    let window = (half, (guest.size() / 8).max(4096) / 4096 * 4096);
    write_reg(&mut *src, reg::SEED, 0x5eed_cafe)?;
    write_reg(&mut *src, reg::RENDER_RATE, args.render_rate)?;
    write_reg(&mut *src, reg::DMA_IOVA, window.0)?;
    write_reg(&mut *src, reg::DMA_SIZE, window.1)?;
    write_reg(&mut *src, reg::DMA_RATE, args.dma_rate)?;
    write_reg(&mut *src, reg::CONTROL, reg::ENGINES_ON)?;
    guest
        .start_vcpu(VcpuConfig {
            rate: args.vcpu_rate,
            offset: 0,
            length: half.max(4096),
            seed: 0x00c0_ffee,
        })
        .context("starting the vCPU")?;
    std::thread::sleep(Duration::from_millis(200));
    if read_reg(&mut *src, reg::FRAME)? == 0 {
        bail!("the source vgpu's render engine did not start");
    }

    let tuning = Tuning {
        precopy: if args.no_precopy {
            OnOff::Off
        } else {
            OnOff::On
        },
        downtime_limit: args.downtime_limit,
        max_iterations: args.max_iterations,
        bandwidth_limit: args.bandwidth_limit,
        channels: args.channels,
        converge: args.converge.clone(),
    };
    let listener = Arc::new(TcpListener::bind("127.0.0.1:0").context("listening on 127.0.0.1")?);
    let addr = listener.local_addr()?;
    let dest_name = format!("tcp:{addr} → {}", dst.name());
    let mut opts = tuning.source_options(src.name(), cancel.clone(), style, false, None);
    let full_verify = args.converge.full_verify;
    let verifier = args.verify.then(|| sample_verifier(full_verify));
    opts.verifier = verifier.clone();

    let tls_dir = if args.tls {
        let d = dir.join("tls");
        crate::certs::make(&d, &["127.0.0.1".to_string()], "vfio-migrate-demo", 1, true)
            .context("making TLS credentials")?;
        Some(d)
    } else {
        None
    };
    let admission = Arc::new(crate::secure::Admission {
        tls: match &tls_dir {
            Some(d) => Some((vfio_migrate_engine::tls::server_config(d, &[])?, Vec::new())),
            None => None,
        },
    });
    opts.channels = tuning.channels(Some(crate::channels::tcp_connector(
        addr.to_string(),
        dest_name.clone(),
        tls_dir.clone(),
        "127.0.0.1".into(),
        deadlines.clone(),
    )));
    let (dcancel, ddeadlines) = (cancel.clone(), deadlines.clone());
    let src_deadlines = deadlines;
    let (result, dest_result, mut dst) = std::thread::scope(|s| -> anyhow::Result<_> {
        let dst_ram = &dst_ram;
        let (cancel, deadlines) = (dcancel, ddeadlines);
        let receiver = s.spawn(move || {
            let r = (|| {
                let (link, _peer) = crate::secure::accept(
                    &listener,
                    &admission,
                    &deadlines,
                    Some(deadlines.connect),
                    &cancel,
                )
                .context("accepting the migration")?;
                let channels = Some(crate::channels::tcp_acceptor(
                    listener.clone(),
                    admission.clone(),
                    deadlines.clone(),
                    cancel.clone(),
                ));
                migrate_in(
                    std::slice::from_mut(&mut dst),
                    Some(dst_ram as &dyn GuestRam),
                    link,
                    DestOptions {
                        verifier,
                        hash_ram: args.verify,
                        full_verify,
                        cancel,
                        channels,
                        channel_wait: deadlines.connect,
                        ..Default::default()
                    },
                )
                .map_err(|e| anyhow!("{e}"))
            })();
            (r, dst)
        });
        let link = crate::secure::connect(
            &addr.to_string(),
            &dest_name,
            tls_dir.as_deref(),
            "127.0.0.1",
            &src_deadlines,
        )?;
        let r = migrate_out(
            std::slice::from_mut(&mut src),
            Some(&guest as &dyn GuestRam),
            link,
            opts,
        );
        let (d, dst) = receiver
            .join()
            .map_err(|_| anyhow!("the receiver thread panicked"))?;
        Ok((r, d, dst))
    })?;

    let workload = Workload {
        device_mem: args.device_mem,
        guest_mem: args.guest_mem,
        vcpu_rate: args.vcpu_rate,
        render_rate: args.render_rate,
        dma_rate: args.dma_rate,
        dma_window: window,
    };
    let rep = match result {
        Ok(r) => r,
        Err(f) => {
            let mut failure = f.to_string();
            if let Err(e) = dest_result {
                failure += &format!("\ndestination: {e:#}");
            }
            let exit = crate::exit::for_source_failure(&f, &cancel);
            return Ok(Outcome {
                report: DemoReport {
                    migration: *f.report,
                    dest_running: false,
                    workload,
                },
                failure: Some(failure),
                exit: Some(exit),
            });
        }
    };
    if let Err(e) = dest_result {
        bail!("the source finished but the destination reports: {e:#}");
    }

    // The destination runs on: its engines advance.
    let (f0, d0) = (
        read_reg(&mut *dst, reg::FRAME)?,
        read_reg(&mut *dst, reg::DMA_COUNT)?,
    );
    std::thread::sleep(Duration::from_millis(100));
    let dest_running =
        read_reg(&mut *dst, reg::FRAME)? > f0 && read_reg(&mut *dst, reg::DMA_COUNT)? > d0;
    drop((src, dst, src_server, dst_server));
    Ok(Outcome {
        report: DemoReport {
            migration: rep,
            dest_running,
            workload,
        },
        failure: None,
        exit: None,
    })
}
