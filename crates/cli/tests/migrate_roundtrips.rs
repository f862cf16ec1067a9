//! `vfio-migrate migrate` / `receive` / `inspect` round trips between real
//! `serve` processes: unix→unix, unix→tcp→unix and unix→file→unix, each
//! verified (the destination's digest equals the source's at the stop).

mod support;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use support::*;
use vfio_migrate_backend::MigState;

/// A vgpu with its render engine on.
fn running_vgpu(s: &Server) {
    s.with(|c| {
        write(c, vgpu::SEED, 77);
        write(c, vgpu::RENDER_RATE, 32 << 20);
        write(c, vgpu::SCRATCH, 0xabcd);
        write(c, vgpu::CONTROL, 1);
    });
}

/// After a live migration: the source is parked in STOP with the digest
/// that was sent, the destination runs.
fn check_after_live(v: &serde_json::Value, src: &Server, dst: &Server) {
    assert_eq!(v["status"], "ok", "{v:#}");
    assert_eq!(v["verified"], true, "{v:#}");
    let d = &v["devices"][0];
    assert_eq!(d["digest_source"], d["digest_dest"], "{v:#}");
    let sd = src.with(|c| {
        assert_eq!(state(c), MigState::Stop);
        read(c, vgpu::DIGEST)
    });
    assert_eq!(d["digest_source"].as_str().unwrap(), format!("{sd:#018x}"));
    dst.with(|c| {
        assert_eq!(state(c), MigState::Running);
        let f = read(c, vgpu::FRAME);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            read(c, vgpu::FRAME) > f,
            "the destination's render engine does not run"
        );
        assert_eq!(read(c, vgpu::SCRATCH), 0xabcd);
    });
}

#[test]
fn unix_to_unix() {
    let dir = Dir::new("u2u");
    let src = Server::start("vgpu", Some("16M"), &dir.path("a.sock"));
    let dst = Server::start("vgpu", Some("16M"), &dir.path("b.sock"));
    running_vgpu(&src);
    let out = run(
        &[
            "migrate",
            "--source",
            &src.uri(),
            "--dest",
            &dst.uri(),
            "--json",
        ],
        60,
    );
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    assert!(v["precopy_iterations"].as_u64().unwrap() >= 1);
    check_after_live(&v, &src, &dst);
}

#[test]
fn unix_to_tcp_to_unix() {
    let dir = Dir::new("u2t");
    let src = Server::start("vgpu", Some("16M"), &dir.path("a.sock"));
    let dst = Server::start("vgpu", Some("16M"), &dir.path("b.sock"));
    running_vgpu(&src);
    let mut recv = Command::new(BIN)
        .args([
            "receive",
            "--listen",
            "tcp:127.0.0.1:0",
            "--dest",
            &dst.uri(),
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // With --json, stdout is the report alone: the address is on stderr.
    let mut stdout = recv.stdout.take().unwrap();
    let mut line = String::new();
    let mut stderr = BufReader::new(recv.stderr.take().unwrap());
    while !line.starts_with("listening on") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "receive ended");
    }
    // Keep draining it: receive goes on writing progress there.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let at = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("receive said {line:?}"));
    assert!(at.starts_with("tcp:127.0.0.1:"), "{at}");
    let out = run(
        &["migrate", "--source", &src.uri(), "--dest", at, "--json"],
        60,
    );
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = wait(recv, 30);
    assert!(
        r.status.success(),
        "receive: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let rv: serde_json::Value = serde_json::from_str(&rest)
        .unwrap_or_else(|e| panic!("receive --json stdout is not one JSON object ({e}): {rest}"));
    assert_eq!(rv["status"], "ok");
    let v = json(&out);
    assert_eq!(
        rv["devices"][0]["digest_dest"],
        v["devices"][0]["digest_dest"]
    );
    check_after_live(&v, &src, &dst);
}

#[test]
fn unix_to_file_to_unix() {
    let dir = Dir::new("u2f");
    let src = Server::start("vgpu", Some("16M"), &dir.path("a.sock"));
    let dst = Server::start("vgpu", Some("16M"), &dir.path("b.sock"));
    // Engines off so both ends can be compared directly after the restore.
    src.with(|c| {
        write(c, vgpu::SEED, 5);
        write(c, vgpu::RENDER_RATE, 64 << 20);
        write(c, vgpu::CONTROL, 1);
        std::thread::sleep(std::time::Duration::from_millis(50));
        write(c, vgpu::CONTROL, 0);
    });
    let before = src.with(|c| stopped_digest(c, vgpu::DIGEST));
    let snap = dir.path("snap.vfm");
    let file = format!("file:{}", snap.display());
    let out = run(
        &["migrate", "--source", &src.uri(), "--dest", &file, "--json"],
        60,
    );
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    assert_eq!(v["status"], "ok");
    assert_eq!(
        v["devices"][0]["digest_source"].as_str().unwrap(),
        format!("{before:#018x}")
    );
    // A snapshot leaves the source running.
    src.with(|c| assert_eq!(state(c), MigState::Running));

    // inspect: what the file holds, every checksum good.
    let out = run(&["inspect", &file, "--json"], 30);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let iv = json(&out);
    assert_eq!(iv["ok"], true);
    assert_eq!(iv["devices"][0]["descriptor"]["device_id"], 0xf0);
    assert_eq!(iv["devices"][0]["digest"], v["devices"][0]["digest_source"]);
    assert!(
        iv["devices"][0]["stopcopy"]["bytes"].as_u64().unwrap()
            + iv["devices"][0]["precopy"]["bytes"].as_u64().unwrap()
            >= 16 << 20
    );
    let out = run(&["inspect", &file], 30);
    assert!(String::from_utf8_lossy(&out.stdout).contains("records OK"));

    // An existing snapshot is never overwritten.
    let out = run(&["migrate", "--source", &src.uri(), "--dest", &file], 60);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("never overwritten"));

    // Restore.
    let out = run(
        &["migrate", "--source", &file, "--dest", &dst.uri(), "--json"],
        60,
    );
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rv = json(&out);
    assert_eq!(rv["verified"], true, "{rv:#}");
    let after = dst.with(|c| {
        assert_eq!(state(c), MigState::Running);
        stopped_digest(c, vgpu::DIGEST)
    });
    assert_eq!(after, before);
}

#[test]
fn serial_round_trip_keeps_its_fifo() {
    let dir = Dir::new("ser");
    let src = Server::start("serial", None, &dir.path("a.sock"));
    let dst = Server::start("serial", None, &dir.path("b.sock"));
    src.with(|c| {
        for b in b"hello" {
            write_byte(c, serial::DATA, *b);
        }
        write_byte(c, serial::SCR, 0x5a);
    });
    let before = src.with(|c| read(c, serial::DIGEST));
    let out = run(
        &[
            "migrate",
            "--source",
            &src.uri(),
            "--dest",
            &dst.uri(),
            "--json",
        ],
        60,
    );
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    assert_eq!(v["verified"], true, "{v:#}");
    // No pre-copy for a STOP_COPY-only device.
    assert_eq!(v["devices"][0]["precopy_bytes"], 0);
    dst.with(|c| {
        assert_eq!(state(c), MigState::Running);
        assert_eq!(read(c, serial::DIGEST), before);
        let mut got = Vec::new();
        for _ in 0..5 {
            let mut b = [0u8; 1];
            vfio_migrate_backend::RegionAccess::region_read(c, 0, serial::DATA, &mut b).unwrap();
            got.push(b[0]);
        }
        assert_eq!(&got, b"hello");
    });
}

#[test]
fn bad_endpoints_are_explained() {
    for (args, want) in [
        (
            vec![
                "migrate",
                "--source",
                "tcp:127.0.0.1:1",
                "--dest",
                "unix:/x",
            ],
            "can only be a destination",
        ),
        (
            vec!["migrate", "--source", "/x.sock", "--dest", "unix:/y"],
            "is not an endpoint",
        ),
        (
            vec![
                "migrate",
                "--source",
                "unix:/nonexistent/a.sock",
                "--dest",
                "file:/tmp/x",
            ],
            "is `vfio-migrate serve` running",
        ),
        (
            vec!["migrate", "--source", "file:/a", "--dest", "file:/b"],
            "not supported",
        ),
        (
            vec!["receive", "--listen", "unix:/x", "--dest", "unix:/y"],
            "listens on TCP only",
        ),
        (vec!["inspect", "file:/nonexistent/snap"], "cannot open"),
    ] {
        let out = run(&args, 30);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
