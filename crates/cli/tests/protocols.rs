//! The seed, v1 and v2 migration protocols end to end through the CLI:
//! `demo --protocol P` completes verified with pre-copy and DMA dirty
//! logging for each, a snapshot saved through the seed region restores
//! through v2, and a forced protocol the server does not offer is refused
//! with a clear error.

mod support;

use support::*;
use vfio_migrate_backend::MigrationDevice;
use vfio_migrate_client::{open, Protocol};

#[test]
fn demo_completes_verified_over_each_protocol() {
    for (p, name) in [
        ("seed", "vfio-user seed region"),
        ("v1", "vfio-user v1 region"),
        ("v2", "vfio-user v2"),
    ] {
        let o = cli(&[
            "demo",
            "--protocol",
            p,
            "--device-mem",
            "16M",
            "--guest-mem",
            "16M",
            "--json",
        ]);
        let j = json(&o);
        assert!(o.status.success(), "{p}: {j}");
        assert_eq!(j["verified"], true, "{p}: {j}");
        assert_eq!(j["dest_running"], true, "{p}: {j}");
        assert_eq!(j["precopy"], true, "{p}: {j}");
        assert!(j["precopy_iterations"].as_u64().unwrap() >= 1, "{p}: {j}");
        assert_eq!(j["devices"][0]["protocol"], name, "{p}: {j}");
        // The guest RAM the DMA engine wrote while pre-copy ran arrived
        // (the RAM hashes are part of `verified`).
        assert_eq!(j["ram_hash_source"], j["ram_hash_dest"], "{p}: {j}");
        assert!(j["ram_hash_source"].is_string(), "{p}: {j}");
    }
}

fn digest(ep: &std::path::Path, protocol: Protocol) -> u64 {
    let mut d = open(ep, protocol).unwrap();
    let mut b = [0u8; 8];
    d.regions()
        .expect("region access")
        .region_read(0, 0x38, &mut b)
        .unwrap();
    u64::from_le_bytes(b)
}

#[test]
fn snapshot_saved_through_seed_restores_through_v2() {
    let dir = Dir::new("snap");
    let src = Server::with_protocol("vgpu", Some("16M"), "seed", &dir.path("src.sock"));
    let dst = Server::with_protocol("vgpu", Some("16M"), "v2", &dir.path("dst.sock"));
    {
        // Some state: registers and rendered device memory, engines off.
        let mut d = open(&src.socket, Protocol::Seed).unwrap();
        d.regions()
            .expect("region access")
            .region_write(0, 0x30, &0x1234_5678u64.to_le_bytes())
            .unwrap();
        d.regions()
            .expect("region access")
            .region_write(0, 0x60, &0xfeed_beefu64.to_le_bytes())
            .unwrap();
        d.regions()
            .expect("region access")
            .region_write(0, 0x10, &(64u64 << 20).to_le_bytes())
            .unwrap();
        d.regions()
            .expect("region access")
            .region_write(0, 0x08, &1u64.to_le_bytes())
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        d.regions()
            .expect("region access")
            .region_write(0, 0x08, &0u64.to_le_bytes())
            .unwrap();
    }
    let before = digest(&src.socket, Protocol::Seed);
    assert_ne!(before, digest(&dst.socket, Protocol::V2));
    let snap = dir.path("snap.bin");
    let snap_ep = format!("file:{}", snap.display());
    let o = cli(&[
        "migrate",
        "--protocol",
        "seed",
        "--source",
        &src.uri(),
        "--dest",
        &snap_ep,
        "--json",
    ]);
    let j = json(&o);
    assert!(o.status.success(), "{j}");
    assert_eq!(j["devices"][0]["protocol"], "vfio-user seed region");
    // The source runs on after a snapshot (seed FAILED → RUNNING keeps its
    // state).
    {
        let mut d = open(&src.socket, Protocol::Seed).unwrap();
        assert_eq!(d.state().unwrap(), vfio_migrate_backend::MigState::Running);
    }
    assert_eq!(digest(&src.socket, Protocol::Seed), before);
    let o = cli(&[
        "migrate",
        "--protocol",
        "v2",
        "--source",
        &snap_ep,
        "--dest",
        &dst.uri(),
        "--json",
    ]);
    let j = json(&o);
    assert!(o.status.success(), "{j}");
    assert_eq!(j["verified"], true, "{j}");
    assert_eq!(j["devices"][0]["protocol"], "vfio-user v2");
    assert_eq!(digest(&dst.socket, Protocol::V2), before);
}

#[test]
fn forced_protocol_the_server_lacks_is_refused_clearly() {
    let dir = Dir::new("force");
    let s = Server::with_protocol("serial", None, "seed", &dir.path("s.sock"));
    let snap = format!("file:{}", dir.path("x.bin").display());
    for (p, want) in [
        ("v2", "does not offer the v2 migration interface"),
        ("v1", "no v1 migration region"),
    ] {
        let o = cli(&[
            "migrate",
            "--protocol",
            p,
            "--source",
            &s.uri(),
            "--dest",
            &snap,
        ]);
        assert!(!o.status.success());
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(want), "{p}: {e}");
        assert!(!dir.path("x.bin").exists(), "{p}: nothing written");
    }
    // Auto-detection falls back to the seed region, and works.
    let o = cli(&["migrate", "--source", &s.uri(), "--dest", &snap, "--json"]);
    let j = json(&o);
    assert!(o.status.success(), "{j}");
    assert_eq!(j["devices"][0]["protocol"], "vfio-user seed region");
}

#[test]
fn seed_source_to_v1_destination_over_tcp_loopback() {
    use std::io::{BufRead, BufReader};
    let dir = Dir::new("tcp");
    let src = Server::with_protocol("vgpu", Some("16M"), "seed", &dir.path("src.sock"));
    let dst = Server::with_protocol("vgpu", Some("16M"), "v1", &dir.path("dst.sock"));
    {
        let mut d = open(&src.socket, Protocol::Seed).unwrap();
        d.regions()
            .expect("region access")
            .region_write(0, 0x30, &0x77u64.to_le_bytes())
            .unwrap();
        d.regions()
            .expect("region access")
            .region_write(0, 0x60, &0x99u64.to_le_bytes())
            .unwrap();
    }
    let want = digest(&src.socket, Protocol::Seed);
    let mut recv = std::process::Command::new(env!("CARGO_BIN_EXE_vfio-migrate"))
        .args([
            "receive",
            "--protocol",
            "v1",
            "--json",
            "--listen",
            "tcp:127.0.0.1:0",
        ])
        .args(["--dest", &dst.uri()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = recv.stdout.take().unwrap();
    let mut line = String::new();
    let mut stderr = BufReader::new(recv.stderr.take().unwrap());
    while !line.starts_with("listening on") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "receive ended");
    }
    // Keep draining it: receive goes on writing progress there.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("receive said {line:?}"))
        .to_string();
    let o = cli(&[
        "migrate",
        "--protocol",
        "seed",
        "--source",
        &src.uri(),
        "--dest",
        &addr,
        "--json",
    ]);
    let j = json(&o);
    assert!(o.status.success(), "{j}");
    assert_eq!(j["devices"][0]["protocol"], "vfio-user seed region");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(recv.wait().unwrap().success(), "{rest}");
    let r: serde_json::Value = serde_json::from_str(&rest).unwrap();
    assert_eq!(r["status"], "ok", "{r}");
    // The destination runs the source's state (same digest once stopped).
    let mut d = open(&dst.socket, Protocol::V1).unwrap();
    assert_eq!(d.state().unwrap(), vfio_migrate_backend::MigState::Running);
    d.set_state(vfio_migrate_backend::MigState::Stop).unwrap();
    let mut b = [0u8; 8];
    d.regions()
        .expect("region access")
        .region_read(0, 0x38, &mut b)
        .unwrap();
    assert_eq!(u64::from_le_bytes(b), want);
}
