//! `vfio-migrate device ENDPOINT ACTION`: look at and poke one device —
//! its compatibility descriptor and migration state, state changes, and
//! region reads and writes — over any device endpoint (`unix:` vfio-user
//! server or `kernel:` VFIO device).

use crate::endpoint::{Busy, Endpoint};
use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use vfio_migrate_backend::{MigState, MigrationDevice};

/// Arguments of `vfio-migrate device`.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  vfio-migrate device unix:/tmp/vgpu.sock info
  vfio-migrate device kernel:83b8f4f2-509f-382f-3c1e-e6bfe0fa1001 state
  vfio-migrate device kernel:0000:65:00.1 set-state STOP
  vfio-migrate device unix:/tmp/vgpu.sock reset
  vfio-migrate device unix:/tmp/vgpu.sock read 0 0x38 --u64        # the vgpu's DIGEST register
  vfio-migrate device unix:/tmp/vgpu.sock write 0 0x60 --u64 42    # its SCRATCH register
  vfio-migrate device unix:/tmp/serial.sock write 0 7 41           # the UART's scratch byte
  vfio-migrate device unix:/tmp/serial.sock read 0 7 1             # prints 41

Registers are device-specific: a region access must match a register's width and
be allowed by the device (the sample devices' registers: docs/devices.md).")]
pub struct Args {
    /// The device: unix:PATH (vfio-user server) or kernel:DEVICE (mdev UUID,
    /// PCI address or sysfs path).
    endpoint: String,
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Print the compatibility descriptor, migration flags and state.
    Info {
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print the migration state (e.g. RUNNING), or, when another client
    /// (a running migration) holds the device, BUSY and who holds it.
    State,
    /// Move the device to a state: STOP, RUNNING, STOP_COPY, RESUMING,
    /// RUNNING_P2P, PRE_COPY or PRE_COPY_P2P (the device walks the arcs).
    SetState {
        /// Target state name (ERROR is passed on: the device must refuse it).
        state: String,
    },
    /// Reset the device: power-on state, RUNNING, any migration in
    /// progress abandoned (a destination left in RESUMING becomes usable
    /// again; a reset device is a valid migration destination).
    Reset,
    /// Read LEN bytes of region REGION at OFFSET as one access; print them
    /// as hex, or as a little-endian integer with --u32/--u64.
    Read {
        /// Region index (0-5: BAR0-BAR5, 7: PCI config space).
        region: u32,
        /// Byte offset in the region (decimal or 0x-hex).
        #[arg(value_parser = parse_u64)]
        offset: u64,
        /// Bytes to read (1 to 1048576); implied by --u32/--u64.
        #[arg(required_unless_present_any = ["u32", "u64"])]
        len: Option<usize>,
        /// Read 4 bytes and print them as a little-endian integer.
        #[arg(long, conflicts_with_all = ["u64", "len"])]
        u32: bool,
        /// Read 8 bytes and print them as a little-endian integer.
        #[arg(long, conflicts_with = "len")]
        u64: bool,
    },
    /// Write to region REGION at OFFSET as one access: the bytes given in
    /// hex, or an integer with --u32/--u64 (little-endian).
    Write {
        /// Region index (0-5: BAR0-BAR5, 7: PCI config space).
        region: u32,
        /// Byte offset in the region (decimal or 0x-hex).
        #[arg(value_parser = parse_u64)]
        offset: u64,
        /// The bytes as hex digits (68656c6c6f is "hello"), or with
        /// --u32/--u64 an integer (decimal or 0x-hex).
        value: String,
        /// VALUE is an integer written as 4 little-endian bytes.
        #[arg(long, conflicts_with = "u64")]
        u32: bool,
        /// VALUE is an integer written as 8 little-endian bytes.
        #[arg(long)]
        u64: bool,
    },
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("'{s}' is not a number (decimal or 0x-hex)"))
}

fn parse_state(s: &str) -> anyhow::Result<MigState> {
    let up = s.to_ascii_uppercase().replace('-', "_");
    MigState::ALL
        .into_iter()
        .find(|m| m.name() == up)
        .ok_or_else(|| {
            let names: Vec<_> = MigState::ALL.iter().map(|m| m.name()).collect();
            anyhow!(
                "'{s}' is not a migration state; use one of {}",
                names.join(", ")
            )
        })
}

fn parse_hex(s: &str) -> anyhow::Result<Vec<u8>> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    if s.is_empty() || !s.len().is_multiple_of(2) {
        bail!("'{s}' is not an even number of hex digits (e.g. 68656c6c6f)");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| anyhow!("'{s}' is not hex")))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs the command; returns the process exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let ep = Endpoint::parse(&args.endpoint)?;
    if !ep.is_device() {
        bail!("{ep} is not a device; use unix:PATH or kernel:DEVICE");
    }
    let mut dev = match ep.open_device() {
        Ok(d) => d,
        // `state` of a device a migration holds: who holds it and how far
        // the migration is, rather than an error.
        Err(e) if matches!(args.action, Action::State) => match e.downcast::<Busy>() {
            Ok(b) => {
                println!(
                    "BUSY: held by {}",
                    b.holder.as_deref().unwrap_or("another client")
                );
                if let Some(d) = b.doing() {
                    println!("  {d}");
                }
                if let Some(c) = &b.control {
                    println!("  vfio-migrate status {}", c.display());
                }
                return Ok(0);
            }
            Err(e) => return Err(e),
        },
        Err(e) => return Err(e),
    };
    match args.action {
        Action::Info { json } => {
            let state = dev.state().with_context(|| format!("{ep}: state"))?;
            // Some devices (libvfio-user's) refuse DEVICE_GET_INFO and
            // DEVICE_GET_REGION_INFO while stopped: say so and show the rest.
            let (d, unavailable) = match dev.descriptor() {
                Ok(d) => (Some(d), None),
                Err(e @ vfio_migrate_backend::BackendError::Refused { .. })
                    if state == MigState::Stop =>
                {
                    (None, Some(format!("the device refuses to describe itself while stopped ({e}); it answers in RUNNING or RESUMING")))
                }
                Err(e) => return Err(anyhow!(e).context(format!("{ep}: descriptor"))),
            };
            let flags = match &d {
                Some(d) => d.migration_flags,
                None => dev
                    .migration_flags()
                    .with_context(|| format!("{ep}: migration flags"))?,
            };
            let status = dev.status().with_context(|| format!("{ep}: status"))?;
            if json {
                let v = serde_json::json!({
                    "endpoint": ep.to_string(),
                    "protocol": dev.protocol(),
                    "state": state.name(),
                    "status": status,
                    "migration_flags": flags,
                    "descriptor": d,
                    "descriptor_unavailable": unavailable,
                });
                println!("{v}");
            } else {
                println!("endpoint:        {ep}");
                println!("protocol:        {}", dev.protocol());
                match &d {
                    Some(d) => println!(
                        "model:           {} ({}){}",
                        d.model,
                        d.version,
                        d.known_kind().map(|k| format!(", {k}")).unwrap_or_default()
                    ),
                    None => println!(
                        "model:           unknown: {}",
                        unavailable.as_deref().unwrap_or("")
                    ),
                }
                println!("migration flags: {flags:#x}{}", flag_names(flags));
                println!("state:           {state}");
                println!("use:             {}", describe_status(status));
                if let Some(d) = &d {
                    println!("regions:         {:?}", d.region_sizes);
                }
            }
        }
        Action::Reset => {
            dev.reset()
                .with_context(|| format!("{ep}: the device refused the reset"))?;
            println!("{}", dev.state().with_context(|| format!("{ep}: state"))?);
        }
        Action::State => {
            println!("{}", dev.state().with_context(|| format!("{ep}: state"))?);
        }
        Action::SetState { state } => {
            let s = parse_state(&state)?;
            dev.set_state(s)
                .with_context(|| format!("{ep}: the device refused {s}"))?;
            println!("{}", dev.state().with_context(|| format!("{ep}: state"))?);
        }
        Action::Read {
            region,
            offset,
            len,
            u32,
            u64,
        } => {
            let len = match (u32, u64) {
                (true, _) => 4,
                (_, true) => 8,
                _ => len.unwrap_or(0),
            };
            if len == 0 || len > 1 << 20 {
                bail!("read length {len}: give 1 to 1048576 bytes");
            }
            let mut b = vec![0u8; len];
            vfio_migrate_backend::regions_of(&mut *dev)
                .and_then(|r| r.region_read(region, offset, &mut b))
                .with_context(|| format!("{ep}: read region {region} at {offset:#x} ({len} bytes)"))
                .map_err(|e| access_hint(e, len))?;
            if u32 || u64 {
                let mut le = [0u8; 8];
                le[..len].copy_from_slice(&b);
                let v = u64::from_le_bytes(le);
                println!("{v} ({v:#x})");
            } else {
                println!("{}", hex(&b));
            }
        }
        Action::Write {
            region,
            offset,
            value,
            u32,
            u64,
        } => {
            let b = if u32 || u64 {
                let v = parse_u64(&value).map_err(|e| anyhow!(e))?;
                if u32 && v > u64::from(u32::MAX) {
                    bail!("{value} does not fit in 32 bits");
                }
                let n = if u32 { 4 } else { 8 };
                v.to_le_bytes()[..n].to_vec()
            } else {
                parse_hex(&value)?
            };
            vfio_migrate_backend::regions_of(&mut *dev)
                .and_then(|r| r.region_write(region, offset, &b))
                .with_context(|| {
                    format!(
                        "{ep}: write region {region} at {offset:#x} ({} bytes)",
                        b.len()
                    )
                })
                .map_err(|e| access_hint(e, b.len()))?;
        }
    }
    Ok(0)
}

/// An EINVAL on a region access is almost always a width or offset that
/// is not a register, or a read-only register: say so.
fn access_hint(e: anyhow::Error, len: usize) -> anyhow::Error {
    let einval = e
        .chain()
        .filter_map(|c| c.downcast_ref::<vfio_migrate_backend::BackendError>())
        .any(|b| b.errno() == Some(libc::EINVAL));
    if einval {
        anyhow!(
            "{e:#}. A {len}-byte access is refused there: registers take accesses of their own width at their own offset, and some are read-only (the sample devices' registers are listed in docs/devices.md)"
        )
    } else {
        e
    }
}

fn describe_status(s: Option<vfio_migrate_backend::DeviceStatus>) -> String {
    let Some(s) = s else {
        return "unknown (the backend cannot tell whether the device is in use)".into();
    };
    let mut v = Vec::new();
    if s.incoming {
        v.push("waiting for an incoming migration");
    }
    if s.pristine {
        v.push("unused since it started or was reset");
    } else {
        v.push("used");
    }
    if s.migrated_out {
        v.push("migrated out, not run since");
    }
    v.join(", ")
}

fn flag_names(f: u64) -> String {
    let mut v = Vec::new();
    for (bit, n) in [(1u64, "STOP_COPY"), (2, "P2P"), (4, "PRE_COPY")] {
        if f & bit != 0 {
            v.push(n);
        }
    }
    if v.is_empty() {
        " (not migratable)".into()
    } else {
        format!(" ({})", v.join("|"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_states_and_hex() {
        assert_eq!(parse_state("stop-copy").unwrap(), MigState::StopCopy);
        assert_eq!(parse_state("ERROR").unwrap(), MigState::Error);
        assert!(parse_state("paused")
            .unwrap_err()
            .to_string()
            .contains("PRE_COPY_P2P"));
        assert_eq!(parse_hex("0x6869").unwrap(), b"hi");
        assert!(parse_hex("abc").is_err());
        assert!(parse_hex("zz").is_err());
        assert_eq!(parse_u64("0x10").unwrap(), 16);
        assert!(parse_u64("x").is_err());
    }
}
