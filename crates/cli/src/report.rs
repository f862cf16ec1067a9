//! The final report: a short human summary on stdout, or one JSON object
//! with `--json`.

use serde::Serialize;
use vfio_migrate_engine::metrics::DowntimeBreakdown;
use vfio_migrate_engine::MigrationReport;

/// `1.5 GiB`, `12.0 MiB`, `512 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A byte rate: `1.2 GiB/s`.
pub fn rate(bps: f64) -> String {
    if bps <= 0.0 || !bps.is_finite() {
        return "-".into();
    }
    format!("{}/s", bytes(bps as u64))
}

/// What a destination device was left as after a failed load, in words.
pub fn left_as(d: &vfio_migrate_engine::DeviceLeft) -> String {
    let state = match d.state {
        Some(s) => format!("is {s}"),
        None => "did not answer (its state is unknown)".into(),
    };
    let reset = if d.reset {
        " (reset: the partial state is gone)"
    } else {
        ""
    };
    match &d.problem {
        Some(p) => format!("{} {state}{reset}; {p}", d.name),
        None => format!("{} {state}{reset}", d.name),
    }
}

/// Prints `value` as one JSON object on stdout.
pub fn print_json(value: &impl Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("report serializes")
    );
}

/// Where the downtime went, ms, in the order it happened.
pub fn breakdown(b: &DowntimeBreakdown) -> String {
    format!(
        "stop {:.2} + device stop-copy {:.2} + final dirty set {:.2} + final RAM {:.2} + source digests {:.2} + destination load {:.2} + validate {:.2} + digests {:.2} + resume {:.2}",
        b.stop_ms,
        b.device_stop_copy_ms,
        b.final_dirty_ms,
        b.final_ram_ms,
        b.source_digest_ms,
        b.dest_load_ms,
        b.dest_validate_ms,
        b.dest_digest_ms,
        b.resume_ms
    )
}

/// The human summary of a migration.
pub fn print_human(title: &str, r: &MigrationReport) {
    println!("{title}");
    let verdict = if r.status != "ok" {
        format!("FAILED: {}", r.error.as_deref().unwrap_or("unknown error"))
    } else if r.verified {
        "ok, verified (destination equals the source at the moment it stopped)".into()
    } else if r.dest.starts_with("file:") {
        "ok, snapshot written (its digests are checked when it is restored)".into()
    } else {
        "ok (not verified: nothing to compare)".into()
    };
    println!("  status       {verdict}");
    let expected = if r.precopy && r.expected_downtime_ms.is_finite() && r.precopy_iterations > 0 {
        format!(
            ", expected {:.1} ms = {:.1} transfer + {:.1} fixed",
            r.expected_downtime_ms, r.expected_transfer_ms, r.expected_fixed_ms
        )
    } else {
        String::new()
    };
    println!(
        "  downtime     {:.1} ms   (limit {:.0} ms{expected})",
        r.downtime_ms, r.downtime_limit_ms
    );
    println!("               {}", breakdown(&r.downtime_breakdown));
    if r.downtime_limit_exceeded {
        println!(
            "  WARNING      the measured downtime ({:.1} ms) exceeded the limit ({:.0} ms){}",
            r.downtime_ms,
            r.downtime_limit_ms,
            if r.forced {
                ": the switchover was forced (--on-no-converge force) without the estimate fitting"
            } else {
                ": the estimate the switchover was decided on was too low"
            }
        );
    }
    let pre = if r.precopy {
        format!(
            "pre-copy {:.0} ms in {} round(s){}{}{}",
            r.precopy_ms,
            r.precopy_iterations,
            if r.converged { ", converged" } else { "" },
            if r.forced { ", forced" } else { "" },
            if r.max_throttle_percent > 0 {
                format!(", devices throttled up to {}%", r.max_throttle_percent)
            } else {
                String::new()
            }
        )
    } else {
        "no pre-copy".into()
    };
    println!(
        "  total        {:.0} ms   (setup {:.0} ms, {pre})",
        r.total_ms, r.setup_ms
    );
    println!(
        "  transferred  {}   (guest RAM {}, device state {}; while stopped: {} + {}) at {}",
        bytes(r.transferred_bytes),
        bytes(r.ram_bytes),
        bytes(r.device_bytes),
        bytes(r.ram_bytes_stopped),
        bytes(r.device_bytes_stopped),
        rate(r.throughput_bytes_per_sec)
    );
    if let (Some(a), Some(b)) = (&r.ram_hash_source, &r.ram_hash_dest) {
        println!(
            "  guest RAM    {}, hash {a} at the source, {b} at the destination",
            bytes(r.ram_size)
        );
    }
    for d in &r.devices {
        let digest = match (&d.digest_source, &d.digest_dest) {
            (Some(a), Some(b)) => format!("digest {a} → {b}"),
            (Some(a), None) => format!("digest {a}"),
            _ => "no digest".into(),
        };
        println!(
            "  device       {} ({}, {}, {}): pre-copy {}, stop-copy {}, {digest}",
            d.source,
            d.model,
            d.version,
            d.protocol,
            bytes(d.precopy_bytes),
            bytes(d.stopcopy_bytes)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(1 << 30), "1.0 GiB");
        assert_eq!(rate(0.0), "-");
    }
}
