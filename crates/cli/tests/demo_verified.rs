//! `vfio-migrate demo` end to end: real server processes, a guest whose
//! vCPU and the vgpu's DMA engine dirty RAM, live migration over loopback
//! TCP, verified.

mod support;
use support::{json, run};

fn check_report(v: &serde_json::Value, precopy: bool) {
    for k in [
        "status",
        "verified",
        "downtime_ms",
        "total_ms",
        "setup_ms",
        "precopy_iterations",
        "transferred_bytes",
        "ram_bytes",
        "device_bytes",
        "throughput_bytes_per_sec",
        "devices",
    ] {
        assert!(v.get(k).is_some(), "no '{k}' in {v:#}");
    }
    assert_eq!(v["status"], "ok", "{v:#}");
    assert_eq!(v["verified"], true, "{v:#}");
    assert_eq!(v["dest_running"], true, "{v:#}");
    assert_eq!(v["precopy"], precopy);
    let d = &v["devices"][0];
    assert_eq!(d["pci_id"], "1b36:00f0");
    assert!(d["digest_source"].is_string());
    assert_eq!(d["digest_source"], d["digest_dest"]);
    assert_eq!(v["ram_hash_source"], v["ram_hash_dest"]);
    assert!(v["ram_hash_source"].is_string());
    assert!(v["downtime_ms"].as_f64().unwrap() > 0.0);
    assert!(v["downtime_ms"].as_f64().unwrap() <= v["total_ms"].as_f64().unwrap());
    // All of guest RAM went across: as data or as zero runs.
    let ram = v["ram_bytes"].as_u64().unwrap() + v["ram_zero_pages"].as_u64().unwrap() * 4096;
    assert!(ram >= 64 << 20, "{v:#}");
    assert!(v["device_bytes"].as_u64().unwrap() >= 16 << 20, "{v:#}");
}

#[test]
fn demo_with_precopy_is_verified() {
    let out = run(
        &[
            "demo",
            "--json",
            "--device-mem",
            "16M",
            "--guest-mem",
            "64M",
        ],
        120,
    );
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    check_report(&v, true);
    assert!(v["precopy_iterations"].as_u64().unwrap() >= 1);
    assert!(v["devices"][0]["precopy_bytes"].as_u64().unwrap() > 0);
    // --json prints nothing but the object: no progress on stderr.
    assert!(!String::from_utf8_lossy(&out.stderr).contains("pre-copy round"));
}

#[test]
fn demo_without_precopy_is_verified_and_human_report_reads() {
    let out = run(
        &[
            "demo",
            "--no-precopy",
            "--device-mem",
            "16M",
            "--guest-mem",
            "64M",
        ],
        120,
    );
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok, verified"), "{text}");
    assert!(text.contains("no pre-copy"), "{text}");
    assert!(text.contains("downtime"), "{text}");
    // Progress goes to stderr as plain lines when it is not a terminal.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stop-copy"), "{err}");
}

#[test]
fn demo_refuses_bad_sizes_clearly() {
    let out = run(&["demo", "--device-mem", "lots"], 30);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a size"));
}
