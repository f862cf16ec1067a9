//! The operator's view, through the CLI: status and cancel from another
//! shell, progress inside a round, who holds a busy device, reports that
//! tell the truth, errors that point the right way, shell habits.

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::*;
use vfio_migrate_backend::MigState;

/// A command with its own control-socket directory (so `status` without
/// a path sees this test's migrations only).
fn cmd(rt: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("XDG_RUNTIME_DIR", rt)
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    c
}

fn output(rt: &std::path::Path, args: &[&str]) -> Output {
    let child = cmd(rt, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait(child, 60)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A vgpu pair and a slow migration between them (paced to 64 MiB/s, so
/// it takes seconds), its stderr read until the control socket is named.
struct Slow {
    src: Server,
    dst: Server,
    child: Child,
    control: String,
    stderr: std::thread::JoinHandle<String>,
    digest: u64,
}

fn slow(dir: &Dir, rt: &std::path::Path, extra: &[&str]) -> Slow {
    let src = Server::start("vgpu", Some("512M"), &dir.path("src.sock"));
    let dst = Server::start("vgpu", Some("512M"), &dir.path("dst.sock"));
    let digest = src.with(|c| {
        write(c, vgpu::SEED, 41);
        stopped_digest(c, vgpu::DIGEST)
    });
    let (s, d) = (src.uri(), dst.uri());
    let mut args = vec![
        "migrate",
        "--source",
        &s,
        "--dest",
        &d,
        "--bandwidth-limit",
        "64M",
    ];
    args.extend_from_slice(extra);
    let mut child = cmd(rt, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (seen, stderr) = wait_for_line(child.stderr.take().unwrap(), "control socket:", 20);
    let control = seen
        .lines()
        .find_map(|l| l.strip_prefix("control socket: "))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_else(|| panic!("no control socket named: {seen}"))
        .to_string();
    Slow {
        src,
        dst,
        child,
        control,
        stderr,
        digest,
    }
}

/// Waits until the status shows `n` bytes moved at least.
fn status_after(rt: &std::path::Path, path: &str, n: u64) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let o = output(rt, &["status", path, "--json"]);
        assert!(o.status.success(), "status: {}", text(&o.stderr));
        let v = json(&o);
        if v["transferred_bytes"].as_u64().unwrap_or(0) >= n {
            return v;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "no progress: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn status_and_cancel_from_another_shell() {
    let dir = Dir::new("op-status");
    let rt = dir.path("rt");
    std::fs::create_dir_all(&rt).unwrap();
    let m = slow(&dir, &rt, &[]);
    assert!(m.control.starts_with(rt.to_str().unwrap()), "{}", m.control);
    let mode = std::fs::metadata(&m.control).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "control socket mode {mode:o}");

    // Inside round 0 the status moves (not only at round boundaries).
    let a = status_after(&rt, &m.control, 32 << 20);
    let b = status_after(
        &rt,
        &m.control,
        a["transferred_bytes"].as_u64().unwrap() + (32 << 20),
    );
    assert_eq!(a["phase"], "pre-copy", "{a}");
    assert_eq!(a["role"], "migrate");
    assert_eq!(a["rounds"], 0, "{a}");
    assert!(
        b["remaining_bytes"].as_u64() < a["remaining_bytes"].as_u64(),
        "{a} then {b}"
    );
    assert_eq!(
        b["total_bytes"].as_u64().unwrap(),
        b["transferred_bytes"].as_u64().unwrap() + b["remaining_bytes"].as_u64().unwrap()
    );
    assert_eq!(a["downtime_limit_ms"], 300.0);
    assert_eq!(a["source"], m.src.uri());

    // Without a path: every migration of this runtime directory.
    let o = output(&rt, &["status"]);
    let s = text(&o.stdout);
    for want in [
        "status             active: pre-copy, round 0",
        "transferred",
        "remaining",
        "dirty rate",
        "bandwidth",
        "expected downtime",
        "total time",
    ] {
        assert!(s.contains(want), "missing {want:?} in:\n{s}");
    }

    // The device the migration holds says who holds it.
    let o = output(&rt, &["device", &m.src.uri(), "state"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let s = text(&o.stdout);
    if !s.starts_with("BUSY: held by pid") {
        let mut child = m.child;
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!(
            "device state said {s:?} while the migration ran; its stdout: {}\nstderr: {}",
            text(&out.stdout),
            m.stderr.join().unwrap()
        );
    }
    assert!(s.contains("vfio-migrate migrate"), "{s}");
    assert!(s.contains("in pre-copy"), "{s}");
    assert!(s.contains(&m.control), "{s}");
    // And a second migration of it is refused with the same words.
    let snap = dir.path("second.snap");
    let second = format!("file:{}", snap.display());
    let o = output(
        &rt,
        &["migrate", "--source", &m.src.uri(), "--dest", &second],
    );
    let e = text(&o.stderr);
    let mut child = m.child;
    assert!(
        e.contains("is busy: the device is held by pid"),
        "{e}\nthe first migration: {:?}",
        child.try_wait()
    );
    assert!(e.contains("vfio-migrate cancel"), "{e}");
    assert!(!e.contains("not running"), "{e}");
    assert!(!snap.exists(), "a refused snapshot left a file");

    // Cancel: it rolls back, and says what each device was left as.
    let o = output(&rt, &["cancel", "--json"]);
    assert!(o.status.success(), "cancel: {}", text(&o.stderr));
    let v = json(&o);
    assert_eq!(v["status"], "cancelled", "{v}");
    assert_eq!(v["devices"][0]["state"], "RUNNING", "{v}");
    let out = wait(child, 30);
    let err = m.stderr.join().unwrap();
    assert_eq!(out.status.code(), Some(130), "{err}");
    m.src.with(|c| {
        assert_eq!(state(c), MigState::Running);
        assert_eq!(stopped_digest(c, vgpu::DIGEST), m.digest);
    });
    m.dst.with(|c| assert_ne!(state(c), MigState::Resuming));
    // The control socket is gone with the process.
    assert!(!std::path::Path::new(&m.control).exists());
    let o = output(&rt, &["status"]);
    assert!(text(&o.stdout).contains("no migration is running"), "{o:?}");
}

#[test]
fn progress_lines_come_inside_rounds_and_at_every_boundary() {
    let dir = Dir::new("op-progress");
    let rt = dir.path("rt");
    std::fs::create_dir_all(&rt).unwrap();
    let m = slow(&dir, &rt, &["-vv"]);
    let out = wait(m.child, 60);
    let err = m.stderr.join().unwrap();
    assert!(out.status.success(), "{err}");
    // Round 0 of 512 MiB at 64 MiB/s: lines at least every second inside.
    let inside: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("pre-copy round 0:") && l.contains(" of "))
        .collect();
    assert!(inside.len() >= 4, "{err}");
    // Every round boundary is printed, in order.
    let rounds: Vec<u32> = err
        .lines()
        .filter(|l| l.contains("pre-copy round") && l.contains("remaining") && !l.contains(" of "))
        .filter_map(|l| {
            l.split("pre-copy round ")
                .nth(1)?
                .split(':')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    let n = json_rounds(&out);
    assert_eq!(rounds, (0..=n).collect::<Vec<_>>(), "{err}");
    // Not a terminal: no escape codes, even with -vv logging.
    assert!(err.contains("DEBUG"), "-vv logs debug: {err}");
    assert!(!err.contains('\x1b'), "escape codes on a pipe: {err:?}");
}

fn json_rounds(out: &Output) -> u32 {
    // The human report: "pre-copy N ms in R round(s)".
    let s = text(&out.stdout);
    s.split(" in ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no round count in {s}"))
}

#[test]
fn verbosity_changes_what_is_logged() {
    let dir = Dir::new("op-verbose");
    let src = Server::start("serial", None, &dir.path("a.sock"));
    let quiet = run(&["device", &src.uri(), "info"], 20);
    let loud = run(&["-vv", "device", &src.uri(), "info"], 20);
    assert!(quiet.status.success() && loud.status.success());
    assert!(!text(&quiet.stderr).contains("DEBUG"));
    assert!(
        text(&loud.stderr).contains("DEBUG"),
        "{}",
        text(&loud.stderr)
    );
    assert!(!text(&loud.stderr).contains('\x1b'));
}

#[test]
fn inspect_says_what_is_not_a_stream() {
    let dir = Dir::new("op-inspect");
    let empty = dir.path("empty");
    std::fs::write(&empty, b"").unwrap();
    let random = dir.path("random");
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&random, junk).unwrap();
    let d = dir.path("adir");
    std::fs::create_dir_all(&d).unwrap();
    for (p, why) in [
        (&empty, "is not a migration stream: the file is empty"),
        (&random, "not a migration stream: it does not begin with"),
        (&d, "is a directory, not a migration stream"),
    ] {
        let o = cli(&["inspect", p.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1));
        let (out, err) = (text(&o.stdout), text(&o.stderr));
        assert!(err.contains(why), "{err}");
        assert!(!out.contains("format"), "{out}");
        assert!(!err.contains("format"), "{err}");
        assert!(!out.contains("checksums"), "{out}");
    }
}

#[test]
fn snapshots_are_private_and_restores_report_what_happened() {
    let dir = Dir::new("op-snap");
    let src = Server::start("vgpu", Some("8M"), &dir.path("a.sock"));
    let dst = Server::with_args(
        "vgpu",
        &["--device-mem", "8M", "--incoming"],
        &dir.path("b.sock"),
    );
    src.with(|c| write(c, vgpu::SEED, 5));
    let snap = dir.path("s.snap");
    let ep = format!("file:{}", snap.display());
    let o = run(
        &["migrate", "--source", &src.uri(), "--dest", &ep, "--json"],
        60,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mode = std::fs::metadata(&snap).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "snapshot mode {mode:o}");

    let o = run(&["migrate", "--source", &ep, "--dest", &dst.uri()], 60);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let s = text(&o.stdout);
    assert!(s.contains("restored"), "{s}");
    assert!(s.contains("verified"), "{s}");
    for wrong in ["pre-copy", "limit 0", "downtime", "Mbit"] {
        assert!(!s.contains(wrong), "a restore report says {wrong:?}: {s}");
    }
    let dst2 = Server::with_args(
        "vgpu",
        &["--device-mem", "8M", "--incoming"],
        &dir.path("c.sock"),
    );
    let o = run(
        &["migrate", "--source", &ep, "--dest", &dst2.uri(), "--json"],
        60,
    );
    let v = json(&o);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["verified"], true);
    let total = v["total_ms"].as_f64().unwrap();
    let parts = v["check_ms"].as_f64().unwrap() + v["load_ms"].as_f64().unwrap();
    assert!(parts <= total + 0.01 && parts > total * 0.5, "{v}");
    assert!(
        v.get("precopy").is_none() && v.get("downtime_limit_ms").is_none(),
        "{v}"
    );
    assert_eq!(v["devices"][0]["protocol"], "vfio-user v2");
}

#[test]
fn a_device_without_precopy_runs_no_empty_rounds_and_units_are_bytes() {
    let dir = Dir::new("op-serial");
    let a = Server::start("serial", None, &dir.path("a.sock"));
    let b = Server::start("serial", None, &dir.path("b.sock"));
    let o = run(
        &[
            "migrate",
            "--source",
            &a.uri(),
            "--dest",
            &b.uri(),
            "--json",
        ],
        30,
    );
    let v = json(&o);
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(v["precopy"], false, "{v}");
    assert_eq!(v["precopy_iterations"], 0, "{v}");
    assert!(v["throughput_bytes_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v.get("throughput_mbps").is_none(), "{v}");
    let c = Server::start("serial", None, &dir.path("c.sock"));
    let o = run(&["migrate", "--source", &b.uri(), "--dest", &c.uri()], 30);
    let s = text(&o.stdout);
    assert!(s.contains("no pre-copy"), "{s}");
    assert!(!s.contains("Mbit"), "{s}");
    assert!(s.contains("B/s"), "{s}");
}

#[test]
fn the_same_device_is_found_whatever_its_spelling() {
    let dir = Dir::new("op-same");
    let a = Server::start("vgpu", Some("4M"), &dir.path("a.sock"));
    let link = dir.path("link.sock");
    std::os::unix::fs::symlink(dir.path("a.sock"), &link).unwrap();
    let o = run(
        &[
            "migrate",
            "--source",
            &a.uri(),
            "--dest",
            &format!("unix:{}", link.display()),
        ],
        20,
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("the same device"),
        "{}",
        text(&o.stderr)
    );
    a.with(|c| assert_eq!(state(c), MigState::Running));
}

#[test]
fn receive_json_prints_only_json_and_says_it_verified() {
    let dir = Dir::new("op-recv");
    let rt = dir.path("rt");
    std::fs::create_dir_all(&rt).unwrap();
    let src = Server::start("vgpu", Some("4M"), &dir.path("a.sock"));
    let dst = Server::start("vgpu", Some("4M"), &dir.path("b.sock"));
    let mut recv = cmd(
        &rt,
        &[
            "receive",
            "--listen",
            "tcp:127.0.0.1:0",
            "--dest",
            &dst.uri(),
            "--json",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let (seen, err) = wait_for_line(recv.stderr.take().unwrap(), "listening on", 20);
    let at = seen
        .lines()
        .find_map(|l| l.strip_prefix("listening on "))
        .unwrap()
        .trim()
        .to_string();
    let o = output(&rt, &["migrate", "--source", &src.uri(), "--dest", &at]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = wait(recv, 30);
    let _ = err.join();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {}", text(&out.stdout)));
    assert_eq!(v["status"], "ok");
    assert_eq!(v["verified"], true, "{v}");
}

#[test]
fn kernel_errors_name_the_endpoint_once_and_fit_the_address() {
    let o = cli(&["device", "kernel:0000:7e:1f.7", "info"]);
    let e = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(e.matches("kernel:0000:7e:1f.7").count(), 1, "{e}");
    assert!(
        e.contains("no PCI device 0000:7e:1f.7") && e.contains("lspci"),
        "{e}"
    );
    assert!(!e.contains("refused"), "{e}");
    let o = cli(&[
        "device",
        "kernel:0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
        "info",
    ]);
    let e = text(&o.stderr);
    assert!(
        e.contains("no mdev") && e.contains("mdev_supported_types"),
        "{e}"
    );
    assert!(!e.contains("lspci") && !e.contains("refused"), "{e}");
}

#[test]
fn completions_and_man_pages_come_from_the_cli() {
    let o = cli(&["completions", "bash"]);
    assert!(o.status.success());
    let s = text(&o.stdout);
    assert!(s.contains("vfio-migrate") && s.contains("complete"), "{s}");
    for sub in ["migrate", "receive", "status", "cancel", "device"] {
        assert!(s.contains(sub), "{sub} missing from completions");
    }
    let dir = Dir::new("op-man");
    let m = dir.path("man1");
    let o = cli(&["man", "--dir", m.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let page = std::fs::read_to_string(m.join("vfio-migrate-migrate.1")).unwrap();
    assert!(page.contains(".TH") && page.contains("downtime"), "{page}");
    assert!(m.join("vfio-migrate.1").exists() && m.join("vfio-migrate-status.1").exists());
    let mut reader = BufReader::new(page.as_bytes());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert!(!first.is_empty());
}

#[test]
fn track_measures_the_dirty_rate_and_draws_it() {
    let dir = Dir::new("op-track");
    let busy = Server::start("vgpu", Some("32M"), &dir.path("busy.sock"));
    busy.with(|c| {
        write(c, vgpu::RENDER_RATE, 8 << 20);
        write(c, vgpu::CONTROL, 1);
    });
    let png = dir.path("dirty.png");
    let o = run(
        &[
            "track",
            &busy.uri(),
            "--seconds",
            "2",
            "--interval-ms",
            "250",
            "--json",
            "--plot",
            png.to_str().unwrap(),
        ],
        60,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v = json(&o);
    assert_eq!(v["memory_bytes"], 32 << 20);
    let n = v["samples"].as_array().unwrap().len();
    assert!((6..=9).contains(&n), "{n} samples");
    // The render engine writes 8 MiB/s of 4 KiB blocks: the tracker sees
    // most of it (a block rewritten in one interval counts once).
    let mean = v["memory_rate_mean"].as_f64().unwrap() / (1 << 20) as f64;
    assert!((2.0..=9.0).contains(&mean), "mean {mean} MiB/s: {v}");
    assert!(v["distinct_pages"].as_u64().unwrap() > 100, "{v}");
    assert!(v["converge_bandwidth"].as_f64().unwrap() > v["memory_rate_mean"].as_f64().unwrap());
    let head = std::fs::read(&png).unwrap();
    assert_eq!(&head[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert!(
        head.len() > 10_000,
        "an empty picture? {} bytes",
        head.len()
    );

    // A quiet device: nothing changes, any bandwidth converges; the
    // device is released afterwards (not left held or stopped).
    let quiet = Server::start("vgpu", Some("8M"), &dir.path("quiet.sock"));
    let o = run(
        &[
            "track",
            &quiet.uri(),
            "--seconds",
            "1",
            "--interval-ms",
            "200",
        ],
        30,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let s = text(&o.stdout);
    assert!(s.contains("0 distinct pages changed"), "{s}");
    assert!(s.contains("converges        at any bandwidth"), "{s}");
    quiet.with(|c| assert_eq!(state(c), MigState::Running));
}

#[test]
fn track_logs_dma_writes_into_its_window() {
    let dir = Dir::new("op-track-dma");
    let d = Server::start("vgpu", Some("8M"), &dir.path("d.sock"));
    d.with(|c| {
        write(c, vgpu::DMA_IOVA, 0);
        write(c, vgpu::DMA_SIZE, 4 << 20);
        write(c, vgpu::DMA_RATE, 4 << 20);
        write(c, vgpu::CONTROL, 2);
    });
    let o = run(
        &[
            "track",
            &d.uri(),
            "--seconds",
            "1.5",
            "--interval-ms",
            "250",
            "--dma",
            "4M",
            "--json",
        ],
        60,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v = json(&o);
    assert_eq!(v["dma_window_bytes"], 4 << 20);
    let dma: u64 = v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["dma_pages"].as_u64().unwrap())
        .sum();
    assert!(dma > 50, "the device's DMA writes were not logged: {v}");
    // Its own memory did not change (only the DMA engine runs).
    assert_eq!(v["distinct_pages"], 0, "{v}");
}
