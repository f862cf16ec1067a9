//! `vfio-migrate inspect`: what a snapshot holds (devices, their
//! compatibility descriptors, record counts and sizes, guest RAM) and
//! whether every checksum holds. Exits non-zero when anything is wrong.

use crate::endpoint::Endpoint;
use crate::report::{bytes, print_json};
use anyhow::{bail, Context};
use vfio_migrate_engine::snapshot;

/// Arguments of `vfio-migrate inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// The snapshot: file:PATH (a plain path works too).
    #[arg(value_name = "SNAPSHOT")]
    snapshot: String,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Runs the command; returns the process exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let path = match Endpoint::parse(&args.snapshot) {
        Ok(Endpoint::File(p)) => p,
        Ok(other) => bail!("{other} is not a snapshot: inspect reads file:PATH"),
        Err(_) => args.snapshot.clone().into(),
    };
    let name = format!("file:{}", path.display());
    let meta = std::fs::metadata(&path).with_context(|| format!("cannot open {name}"))?;
    if meta.is_dir() {
        bail!("{name} is a directory, not a migration stream: inspect reads a snapshot file (written by `migrate --dest file:PATH`)");
    }
    let f = std::fs::File::open(&path).with_context(|| format!("cannot open {name}"))?;
    let s = snapshot::check(f, &name);
    if args.json {
        print_json(&s);
    }
    let Some(version) = &s.format_version else {
        // Not ours at all: no version, no record table, no checksums.
        let why = if meta.len() == 0 {
            "the file is empty".to_string()
        } else {
            s.problems.join("; ")
        };
        if why.starts_with("not a ") {
            eprintln!("error: {name}: {why}");
        } else {
            eprintln!("error: {name} is not a migration stream: {why}");
        }
        return Ok(1);
    };
    if !args.json {
        println!(
            "{name}: vfio-migrate stream format {version}, {} in {} records",
            bytes(s.bytes),
            s.records
        );
        if s.skipped_records > 0 {
            println!(
                "  skipped      {} optional records of a newer format version",
                s.skipped_records
            );
        }
        for d in &s.devices {
            let x = &d.descriptor;
            println!(
                "  device {}: pci {:04x}:{:04x}, subsystem {:04x}:{:04x}, rev {}, migration flags {:#x}",
                d.index,
                x.vendor_id,
                x.device_id,
                x.subsystem_vendor_id,
                x.subsystem_id,
                x.revision,
                x.migration_flags
            );
            let regions: Vec<String> = x
                .region_sizes
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, n)| format!("{i}: {}", bytes(*n)))
                .collect();
            println!("    regions      {}", regions.join(", "));
            println!(
                "    state        pre-copy {} in {} records, stop-copy {} in {} records, {}",
                bytes(d.precopy.bytes),
                d.precopy.records,
                bytes(d.stopcopy.bytes),
                d.stopcopy.records,
                if d.complete { "complete" } else { "INCOMPLETE" }
            );
            println!("    digest       {}", d.digest.as_deref().unwrap_or("-"));
        }
        if let Some(r) = &s.ram {
            println!(
                "  guest RAM {} in {}-byte pages: {} runs, {} of page data, {} distinct pages",
                bytes(r.size),
                r.page_size,
                r.runs.records,
                bytes(r.runs.bytes),
                r.pages_present
            );
        }
        let kinds: Vec<String> = s
            .record_types
            .iter()
            .map(|(k, c)| format!("{k} {}", c.records))
            .collect();
        println!("  records      {}", kinds.join(", "));
        if s.ok {
            println!("  checksums    all {} records OK", s.records);
        } else {
            println!("  checksums    FAILED");
            for p in &s.problems {
                println!("    {p}");
            }
        }
    }
    if s.ok {
        Ok(0)
    } else {
        eprintln!("error: {name} is damaged: {}", s.problems.join("; "));
        Ok(1)
    }
}
