//! Every failure before the destination runs leaves the source RUNNING,
//! its state intact, with a message naming what failed and where — and the
//! destination never runs on partial state. Real processes throughout.

mod support;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;
use vfio_migrate_backend::MigState;

/// A vgpu with state (memory rendered, registers set) but engines off, so
/// its digest stays put; returns that digest.
fn quiet_vgpu(s: &Server) -> u64 {
    s.with(|c| {
        write(c, vgpu::SEED, 99);
        write(c, vgpu::RENDER_RATE, 128 << 20);
        write(c, vgpu::SCRATCH, 0x1234);
        write(c, vgpu::CONTROL, 1);
        std::thread::sleep(Duration::from_millis(50));
        write(c, vgpu::CONTROL, 0);
        stopped_digest(c, vgpu::DIGEST)
    })
}

/// The source after a failure: RUNNING, same digest, engines work.
fn check_source_intact(s: &Server, digest: u64) {
    s.with(|c| {
        assert_eq!(
            state(c),
            MigState::Running,
            "the source must be RUNNING again"
        );
        assert_eq!(
            stopped_digest(c, vgpu::DIGEST),
            digest,
            "the source state changed"
        );
        write(c, vgpu::CONTROL, 1);
        let f = read(c, vgpu::FRAME);
        std::thread::sleep(Duration::from_millis(50));
        assert!(read(c, vgpu::FRAME) > f, "the source's engines do not run");
        write(c, vgpu::CONTROL, 0);
    });
}

/// `migrate` that never converges (downtime limit 0), so it stays in
/// pre-copy until something happens to it.
fn endless_migrate(src: &Server, dest: &str) -> std::process::Child {
    Command::new(BIN)
        .args(["migrate", "--source", &src.uri(), "--dest", dest])
        .args(["--downtime-limit", "0", "--max-iterations", "1000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn destination_server_killed_mid_migration() {
    let dir = Dir::new("kill");
    let src = Server::start("vgpu", Some("16M"), &dir.path("a.sock"));
    let mut dst = Server::start("vgpu", Some("16M"), &dir.path("b.sock"));
    let digest = quiet_vgpu(&src);
    let mut m = endless_migrate(&src, &dst.uri());
    let (seen, all) = wait_for_line(m.stderr.take().unwrap(), "pre-copy round 1", 30);
    assert!(seen.contains("pre-copy round 1"), "{seen}");
    dst.kill();
    let out = wait(m, 30);
    assert!(!out.status.success());
    let err = all.join().unwrap();
    assert!(
        err.contains(&dst.uri()),
        "the message must name the destination: {err}"
    );
    assert!(
        err.contains("pre-copy"),
        "the message must name the phase: {err}"
    );
    assert!(
        err.contains(&format!("rolled back: {} is RUNNING", src.uri())),
        "{err}"
    );
    check_source_intact(&src, digest);
}

#[test]
fn receiver_killed_mid_stream() {
    let dir = Dir::new("tcpkill");
    let src = Server::start("vgpu", Some("16M"), &dir.path("a.sock"));
    let dst = Server::start("vgpu", Some("16M"), &dir.path("b.sock"));
    let digest = quiet_vgpu(&src);
    let mut recv = Command::new(BIN)
        .args([
            "receive",
            "--listen",
            "tcp:127.0.0.1:0",
            "--dest",
            &dst.uri(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(recv.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let at = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    let mut m = endless_migrate(&src, &at);
    let _ = wait_for_line(m.stderr.take().unwrap(), "pre-copy round 1", 30);
    // The TCP connection closes mid-stream.
    recv.kill().unwrap();
    recv.wait().unwrap();
    let out = wait(m, 30);
    assert!(!out.status.success());
    check_source_intact(&src, digest);
    // The destination device never ran on what it had received.
    dst.with(|c| assert_ne!(state(c), MigState::Running));
}

#[test]
fn ctrl_c_cancels_and_rolls_back() {
    let dir = Dir::new("sigint");
    let src = Server::start("vgpu", Some("16M"), &dir.path("a.sock"));
    let dst = Server::start("vgpu", Some("16M"), &dir.path("b.sock"));
    let digest = quiet_vgpu(&src);
    let mut m = endless_migrate(&src, &dst.uri());
    let (seen, all) = wait_for_line(m.stderr.take().unwrap(), "pre-copy round 1", 30);
    assert!(seen.contains("pre-copy"), "{seen}");
    vfio_migrate_sys::signal::kill(&m, libc::SIGINT).unwrap();
    let out = wait(m, 30);
    assert_eq!(out.status.code(), Some(130));
    let err = all.join().unwrap();
    assert!(err.contains("cancelled by the user"), "{err}");
    check_source_intact(&src, digest);
    dst.with(|c| assert_ne!(state(c), MigState::Running));
}

#[test]
fn incompatible_destination_is_refused_before_the_source_stops() {
    let dir = Dir::new("incompat");
    let src = Server::start("vgpu", Some("16M"), &dir.path("a.sock"));
    let dst = Server::start("vgpu", Some("32M"), &dir.path("b.sock"));
    let digest = quiet_vgpu(&src);
    let dst_digest = dst.with(|c| stopped_digest(c, vgpu::DIGEST));
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
    assert!(!out.status.success());
    let v = json(&out);
    assert_eq!(v["status"], "failed");
    let e = v["error"].as_str().unwrap();
    assert!(e.starts_with("setup:"), "{e}");
    assert!(
        e.contains("region 2 is 16777216 bytes at the source, 33554432 bytes at the destination"),
        "{e}"
    );
    assert_eq!(v["precopy_iterations"], 0);
    check_source_intact(&src, digest);
    // The destination was not touched.
    dst.with(|c| {
        assert_eq!(state(c), MigState::Running);
        assert_eq!(stopped_digest(c, vgpu::DIGEST), dst_digest);
    });
}

/// Writes a snapshot of a 16 MiB vgpu; returns (path uri, digest).
fn snapshot(dir: &Dir, src: &Server) -> (String, std::path::PathBuf) {
    let p = dir.path("snap.vfm");
    let uri = format!("file:{}", p.display());
    let out = run(&["migrate", "--source", &src.uri(), "--dest", &uri], 60);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (uri, p)
}

#[test]
fn corrupted_snapshot_is_refused_before_the_device_is_touched() {
    let dir = Dir::new("corrupt");
    let src = Server::start("vgpu", Some("16M"), &dir.path("a.sock"));
    let dst = Server::start("vgpu", Some("16M"), &dir.path("b.sock"));
    let digest = quiet_vgpu(&src);
    let (uri, path) = snapshot(&dir, &src);
    check_source_intact(&src, digest);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();

    let out = run(&["inspect", &uri], 30);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("checksum mismatch"));
    let out = run(&["inspect", &uri, "--json"], 30);
    assert!(!out.status.success());
    assert_eq!(json(&out)["ok"], false);

    let dst_digest = dst.with(|c| stopped_digest(c, vgpu::DIGEST));
    let out = run(&["migrate", "--source", &uri, "--dest", &dst.uri()], 60);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("damaged") && err.contains("checksum mismatch"),
        "{err}"
    );
    dst.with(|c| {
        assert_eq!(state(c), MigState::Running);
        assert_eq!(stopped_digest(c, vgpu::DIGEST), dst_digest);
    });
}

#[test]
fn snapshot_into_a_device_with_another_memory_size_is_refused() {
    let dir = Dir::new("size");
    let src = Server::start("vgpu", Some("16M"), &dir.path("a.sock"));
    let dst = Server::start("vgpu", Some("32M"), &dir.path("b.sock"));
    quiet_vgpu(&src);
    let (uri, _) = snapshot(&dir, &src);
    let dst_digest = dst.with(|c| stopped_digest(c, vgpu::DIGEST));
    let out = run(&["migrate", "--source", &uri, "--dest", &dst.uri()], 60);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("region 2 is 16777216 bytes at the source, 33554432"),
        "{err}"
    );
    assert!(err.contains("not started"), "{err}");
    dst.with(|c| {
        assert_eq!(state(c), MigState::Running);
        assert_eq!(stopped_digest(c, vgpu::DIGEST), dst_digest);
    });
}
