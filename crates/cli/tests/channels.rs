//! `--channels N` through the CLI with real `serve` processes: device to
//! device over N socket pairs, a snapshot written by N writer threads and
//! restored by one reader, and the usage errors. (Over TCP with TLS, each
//! channel authenticated: `tls.rs`; the failure paths: the engine's
//! `tests/channels.rs`.)

mod support;

use support::*;
use vfio_migrate_backend::{MigState, MigrationDevice};

#[test]
fn device_to_device_over_four_channels_is_verified() {
    let dir = Dir::new("chan-d2d");
    let src = Server::start("vgpu", Some("16M"), &dir.path("a.sock"));
    let dst = Server::start("vgpu", Some("16M"), &dir.path("b.sock"));
    let digest = src.with(|c| {
        write(c, vgpu::SEED, 5);
        stopped_digest(c, vgpu::DIGEST)
    });
    let out = run(
        &[
            "migrate",
            "--source",
            &src.uri(),
            "--dest",
            &dst.uri(),
            "--channels",
            "4",
            "--json",
        ],
        60,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = json(&out);
    assert_eq!(j["status"], "ok");
    assert_eq!(j["verified"], true);
    assert_eq!(j["channels"], 4);
    dst.with(|c| {
        assert_eq!(c.state().unwrap(), MigState::Running);
        assert_eq!(stopped_digest(c, vgpu::DIGEST), digest);
    });
}

#[test]
fn a_snapshot_written_with_channels_restores_with_one() {
    let dir = Dir::new("chan-snap");
    let src = Server::start("vgpu", Some("8M"), &dir.path("a.sock"));
    let dst = Server::start("vgpu", Some("8M"), &dir.path("b.sock"));
    let digest = src.with(|c| {
        write(c, vgpu::SEED, 11);
        stopped_digest(c, vgpu::DIGEST)
    });
    let snap = dir.path("s.snap");
    let file = format!("file:{}", snap.display());
    let out = run(
        &[
            "migrate",
            "--source",
            &src.uri(),
            "--dest",
            &file,
            "--channels",
            "3",
        ],
        60,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["inspect", &file], 30);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("device-chunk"), "{text}");
    let out = run(
        &["migrate", "--source", &file, "--dest", &dst.uri(), "--json"],
        60,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&out)["verified"], true);
    dst.with(|c| assert_eq!(stopped_digest(c, vgpu::DIGEST), digest));
}

#[test]
fn channel_counts_out_of_range_are_usage_errors() {
    for n in ["0", "17", "many"] {
        let out = cli(&[
            "migrate",
            "--source",
            "unix:/x",
            "--dest",
            "unix:/y",
            "--channels",
            n,
        ]);
        assert_eq!(out.status.code(), Some(2), "--channels {n}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("channels"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
