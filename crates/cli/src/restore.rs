//! `migrate --source file:SNAP --dest DEVICE`: a restore. The whole
//! snapshot is checked before the device is touched, then loaded,
//! validated, verified and started.
//!
//! Its report is not a migration's: nothing ran at a source, so there is no
//! pre-copy, no downtime limit and no switchover; what it says is how long
//! the device took to run the snapshot's state and where that time went.

use crate::digest::sample_verifier;
use crate::endpoint::Endpoint;
use crate::exit;
use crate::migrate::Args;
use crate::report::{bytes, print_json, rate};
use anyhow::{bail, Context};
use serde::Serialize;
use std::fs::File;
use std::path::Path;
use std::time::Instant;
use vfio_migrate_backend::MigrationDevice;
use vfio_migrate_engine::{
    migrate_in, snapshot, Cancel, DestDevice, DestLink, DestOptions, DeviceLeft,
};

/// What a restore did.
#[derive(Serialize)]
struct RestoreReport {
    /// `ok` or `failed`.
    status: &'static str,
    /// Every device digest in the snapshot equals the device's after
    /// loading.
    verified: bool,
    source: String,
    dest: String,
    /// From start to a running device (or to the failure).
    total_ms: f64,
    /// Reading the whole snapshot once to check every checksum, before the
    /// device is touched.
    check_ms: f64,
    /// Loading, validating, verifying and starting the device.
    load_ms: f64,
    /// Snapshot bytes.
    snapshot_bytes: u64,
    /// Device state bytes loaded.
    device_bytes: u64,
    /// Snapshot bytes over `load_ms` (0 after a failure).
    load_bytes_per_sec: f64,
    devices: Vec<Restored>,
    /// On failure: what each device was left as.
    devices_left: Vec<DeviceLeft>,
    error: Option<String>,
}

/// One device restored.
#[derive(Serialize)]
struct Restored {
    #[serde(flatten)]
    device: DestDevice,
    /// The protocol that loaded it.
    protocol: String,
}

/// Restores the snapshot at `path` (`src`) into the device `dst`.
pub fn run(
    path: &Path,
    src: &Endpoint,
    dst: &Endpoint,
    args: &Args,
    cancel: Cancel,
) -> anyhow::Result<i32> {
    let t0 = Instant::now();
    let f = File::open(path).with_context(|| format!("cannot open the snapshot {src}"))?;
    let sum = snapshot::check(f, &src.to_string());
    if !sum.ok {
        bail!(
            "the snapshot {src} is damaged, nothing was loaded into {dst}: {}",
            sum.problems.join("; ")
        );
    }
    let check_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let client = args.liveness.client_config(&cancel)?;
    let mut dev: Box<dyn MigrationDevice> = dst.open_device_with(args.protocol, &client)?;
    let f = File::open(path).with_context(|| format!("cannot open the snapshot {src}"))?;
    let t1 = Instant::now();
    let r = migrate_in(
        std::slice::from_mut(&mut dev),
        None,
        DestLink::file(f, src.to_string()),
        DestOptions {
            verifier: Some(sample_verifier(args.tuning.converge.full_verify)),
            cancel: cancel.clone(),
            force: args.force,
            ..Default::default()
        },
    );
    let load_ms = t1.elapsed().as_secs_f64() * 1000.0;
    let mut rep = RestoreReport {
        status: "ok",
        verified: false,
        source: src.to_string(),
        dest: dst.to_string(),
        total_ms: t0.elapsed().as_secs_f64() * 1000.0,
        check_ms,
        load_ms,
        snapshot_bytes: sum.bytes,
        device_bytes: 0,
        load_bytes_per_sec: sum.bytes as f64 / (load_ms / 1000.0).max(1e-9),
        devices: Vec::new(),
        devices_left: Vec::new(),
        error: None,
    };
    let code = match r {
        Ok(d) => {
            rep.verified = d.verified;
            rep.device_bytes = d.devices.iter().map(|x| x.data_bytes).sum();
            let protocol = dev.protocol().to_string();
            rep.devices = d
                .devices
                .into_iter()
                .map(|device| Restored {
                    device,
                    protocol: protocol.clone(),
                })
                .collect();
            0
        }
        Err(f) => {
            rep.status = "failed";
            rep.load_bytes_per_sec = 0.0;
            rep.error = Some(f.error.to_string());
            rep.devices_left = f.devices;
            exit::cancelled(&cancel).unwrap_or(exit::FAILED)
        }
    };
    if args.json {
        print_json(&rep);
    } else if code == 0 {
        print_human(&rep);
    }
    if let Some(e) = &rep.error {
        if rep.devices_left.is_empty() {
            eprintln!("error: restoring {src} into {dst}: {e}; the device was not touched and not started with the snapshot's state");
        } else {
            eprintln!("error: restoring {src} into {dst}: {e}; the device was not started with the snapshot's state:");
            for d in &rep.devices_left {
                eprintln!("  {}", crate::report::left_as(d));
            }
        }
    }
    Ok(code)
}

fn print_human(r: &RestoreReport) {
    println!("vfio-migrate: restored {} into {}", r.source, r.dest);
    let verdict = if r.verified {
        "ok, verified (the device's digest equals the one the snapshot recorded)"
    } else {
        "ok (not verified: the snapshot carries no digest to compare)"
    };
    println!("  status       {verdict}");
    println!(
        "  time         {:.0} ms to a running device   (checking the snapshot {:.0} ms, then loading, validating, verifying and starting {:.0} ms)",
        r.total_ms, r.check_ms, r.load_ms
    );
    println!(
        "  read         {} of snapshot, {} of device state, loaded at {}",
        bytes(r.snapshot_bytes),
        bytes(r.device_bytes),
        rate(r.load_bytes_per_sec)
    );
    for Restored {
        device: d,
        protocol,
    } in &r.devices
    {
        let digest = match (&d.digest_source, &d.digest_dest) {
            (Some(a), Some(b)) => format!("digest {a} (snapshot) → {b} (device)"),
            (None, Some(b)) => format!("digest {b}"),
            _ => "no digest".into(),
        };
        println!(
            "  device       {} ({}, {protocol}): {} of state, {digest}",
            d.name,
            d.model,
            bytes(d.data_bytes)
        );
    }
}
