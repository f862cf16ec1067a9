//! `vfio-migrate serve`: serves one sample device over vfio-user on a UNIX
//! socket (mode 0600), client after client, until SIGTERM or SIGINT.
//! Prints `listening on unix:PATH` on stdout once clients can connect.
//! `--protocol` picks the migration interfaces offered (v2, the v1 region,
//! the seed region, or all).

use anyhow::Context;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use vfio_migrate_device::{Device, DeviceCore, DmaSpace};
use vfio_migrate_samples::serial::Serial;
use vfio_migrate_samples::vgpu::{Latency, Vgpu, VgpuConfig, DEFAULT_MEM_SIZE};
use vfio_migrate_server::{Listener, Server, Shutdown};

/// Which sample device to serve.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum DeviceKind {
    /// GPU-like device: registers, mmap-able device memory, render and DMA
    /// engines, pre-copy.
    Vgpu,
    /// 16550-like UART with a loopback FIFO, stop-copy only.
    Serial,
}

/// Arguments of `vfio-migrate serve`.
#[derive(clap::Args)]
pub struct Args {
    /// The device to serve.
    #[arg(long, value_enum)]
    device: DeviceKind,
    /// vgpu device memory (BAR2) size: a power of two, with an optional
    /// K/M/G suffix (e.g. 64M, 1G). Default 256M.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    device_mem: Option<u64>,
    /// UNIX socket path to listen on (created with mode 0600).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// Migration protocols offered: v2 (DEVICE_FEATURE + MIG_DATA_*), v1
    /// (the Linux 5.8 migration region at index 9 + DIRTY_PAGES), seed (the
    /// 2018 proposal's region at index 10), or all three. With v1 or seed
    /// alone the v2 features answer ENOTTY, so clients cannot use v2.
    #[arg(long, value_enum, default_value = "all")]
    protocol: ServeProtocol,
    /// Start as a migration destination: the device refuses a workload
    /// (region writes other than config space get EAGAIN) until a migrated
    /// state has been loaded into it, and `migrate` accepts it as a
    /// destination whatever was done with it. (A freshly started, unused
    /// device is accepted too, without this flag.)
    #[arg(long)]
    incoming: bool,
    /// vgpu: take this many ms to enter RESUMING (simulates a slow device;
    /// a migration waits for it, kept alive by heartbeats).
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 0,
        help_heading = "Simulated slowness (vgpu)"
    )]
    slow_resume: u64,
    /// vgpu: take this many ms to validate a loaded state (RESUMING →
    /// STOP).
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 0,
        help_heading = "Simulated slowness (vgpu)"
    )]
    slow_validate: u64,
    /// vgpu: take this many ms for each stop-copy size estimate.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 0,
        help_heading = "Simulated slowness (vgpu)"
    )]
    slow_estimate: u64,
}

/// `serve --protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ServeProtocol {
    V2,
    V1,
    Seed,
    All,
}

/// Data section size of the v1 and seed regions.
const SECTION: u64 = vfio_migrate_device::region::DEFAULT_DATA_SECTION;

/// Parses `4096`, `64K`, `64M`, `1G` (binary units, optional `iB`/`B`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let upper = t.to_ascii_uppercase();
    let body = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (num, shift) = match body.chars().last() {
        Some('K') => (&body[..body.len() - 1], 10),
        Some('M') => (&body[..body.len() - 1], 20),
        Some('G') => (&body[..body.len() - 1], 30),
        Some('T') => (&body[..body.len() - 1], 40),
        _ => (body, 0),
    };
    let n: u64 = num.trim().parse().map_err(|_| {
        format!("'{s}' is not a size: use a number with an optional K, M, G or T suffix, e.g. 64M")
    })?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// Runs the command; returns the process exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let dma = Arc::new(DmaSpace::new());
    match args.device {
        DeviceKind::Vgpu => {
            let mem_size = args.device_mem.unwrap_or(DEFAULT_MEM_SIZE);
            let ms = std::time::Duration::from_millis;
            let latency = Latency {
                resume: ms(args.slow_resume),
                validate: ms(args.slow_validate),
                estimate: ms(args.slow_estimate),
            };
            let dev = Vgpu::new(VgpuConfig { mem_size, latency }, dma.clone())
                .map_err(|e| anyhow::anyhow!("--device-mem {mem_size}: {}", e.message))?;
            serve(DeviceCore::new(dev, dma), &args)
        }
        DeviceKind::Serial => {
            if args.device_mem.is_some() {
                anyhow::bail!("--device-mem applies to --device vgpu only: the serial device has no device memory");
            }
            if args.slow_resume + args.slow_validate + args.slow_estimate > 0 {
                anyhow::bail!("--slow-* apply to --device vgpu only");
            }
            serve(DeviceCore::new(Serial::new(), dma), &args)
        }
    }
}

fn serve<D: Device>(mut core: DeviceCore<D>, args: &Args) -> anyhow::Result<i32> {
    let (socket, protocol) = (&args.socket, args.protocol);
    core.set_incoming(args.incoming);
    let shutdown = Shutdown::new().context("creating the shutdown pipe")?;
    shutdown
        .on_signals()
        .context("installing SIGTERM/SIGINT handlers")?;
    let listener = Listener::bind(socket)?;
    let mut server = Server::new(core);
    let err =
        |e: vfio_migrate_device::DeviceError| anyhow::anyhow!("migration region: {}", e.message);
    server.set_v2_migration(matches!(protocol, ServeProtocol::V2 | ServeProtocol::All));
    if matches!(protocol, ServeProtocol::V1 | ServeProtocol::All) {
        server.add_v1_region(SECTION).map_err(err)?;
    }
    if matches!(protocol, ServeProtocol::Seed | ServeProtocol::All) {
        server.add_seed_region(SECTION).map_err(err)?;
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on unix:{}", listener.path().display())?;
        out.flush()?;
    }
    server.serve(&listener, &shutdown).context("serving")?;
    tracing::info!("shut down");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("16KiB"), Ok(16 << 10));
        assert!(parse_size("12Q").unwrap_err().contains("not a size"));
        assert!(parse_size("99999999999T")
            .unwrap_err()
            .contains("too large"));
    }
}
