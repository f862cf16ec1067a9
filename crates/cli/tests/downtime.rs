//! The downtime promise through the CLI, between real `serve` processes:
//! a vgpu dirtying faster than `--bandwidth-limit` converges only with the
//! device throttle (and `--plot` draws why), `--on-no-converge`, the
//! switchover acknowledgement, REINIT over vfio-user, and the demo's
//! breakdown and `--full-verify`.

mod support;
use support::*;
use vfio_migrate_backend::{MigState, MigrationDevice};

const THROTTLE: u64 = 0x70;
const MODESET: u64 = 0x78;

/// A vgpu rendering at `rate` bytes/s.
fn rendering(s: &Server, rate: u64) {
    s.with(|c| {
        write(c, vgpu::SEED, 5);
        write(c, vgpu::RENDER_RATE, rate);
        write(c, vgpu::CONTROL, 1);
    });
}

fn migrate(src: &Server, dst: &Server, extra: &[&str]) -> std::process::Output {
    let (s, d) = (src.uri(), dst.uri());
    let mut args = vec!["migrate", "--source", &s, "--dest", &d];
    args.extend_from_slice(extra);
    run(&args, 120)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_device_dirtying_faster_than_the_link_converges_with_the_throttle() {
    let dir = Dir::new("thr");
    let src = Server::start("vgpu", Some("8M"), &dir.path("a.sock"));
    let dst = Server::start("vgpu", Some("8M"), &dir.path("b.sock"));
    // 64 MiB/s of rendering over a 16 MiB/s link: without a throttle the
    // dirty set never shrinks.
    rendering(&src, 64 << 20);
    let limits = ["--bandwidth-limit", "16M", "--downtime-limit", "100"];
    let mut args = limits.to_vec();
    args.extend(["--max-iterations", "12", "--auto-converge", "off", "--json"]);
    let out = migrate(&src, &dst, &args);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("did not converge"), "{err}");
    assert!(err.contains("dirty") && err.contains("MiB/s"), "{err}");
    src.with(|c| {
        assert_eq!(state(c), MigState::Running, "the source keeps running");
        let f = read(c, vgpu::FRAME);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(read(c, vgpu::FRAME) > f);
    });

    let plot = dir.path("rounds.png");
    let plot_arg = plot.to_str().unwrap().to_string();
    let mut args = limits.to_vec();
    args.extend(["--max-iterations", "40", "--json", "--plot", &plot_arg]);
    let out = migrate(&src, &dst, &args);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["verified"], true, "{v:#}");
    assert_eq!(v["converged"], true, "{v:#}");
    let max = v["max_throttle_percent"].as_u64().unwrap();
    assert!(max >= 20, "{v:#}");
    // Raised step by step while the rounds stopped shrinking.
    let levels: Vec<u64> = v["rounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["throttle_percent"].as_u64().unwrap())
        .collect();
    assert!(levels.windows(2).all(|w| w[0] <= w[1]), "{levels:?}");
    assert_eq!(levels[0], 0);
    assert_eq!(*levels.last().unwrap(), max);
    // Released at the end.
    src.with(|c| assert_eq!(read(c, THROTTLE), 0));
    dst.with(|c| {
        assert_eq!(state(c), MigState::Running);
        assert_eq!(read(c, THROTTLE), 0);
    });
    let png = std::fs::read(&plot).expect("the plot was written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 10_000, "{} bytes", png.len());
}

#[test]
fn the_downtime_limit_is_a_promise() {
    let dir = Dir::new("lim");
    let src = Server::start("vgpu", Some("4M"), &dir.path("a.sock"));
    let dst = Server::start("vgpu", Some("4M"), &dir.path("b.sock"));
    rendering(&src, 8 << 20);
    // No downtime fits 0 ms: abort (the default), the source runs on.
    let args = ["--downtime-limit", "0", "--max-iterations", "3"];
    let out = migrate(&src, &dst, &args);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("above the limit of 0 ms"),
        "{}",
        stderr(&out)
    );
    src.with(|c| assert_eq!(state(c), MigState::Running));
    // Forced: it switches, and says plainly that the limit was exceeded.
    let mut forced = args.to_vec();
    forced.extend(["--on-no-converge", "force"]);
    let out = migrate(&src, &dst, &forced);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("exceeded the limit"), "{text}");
    assert!(text.contains("forced"), "{text}");
    dst.with(|c| assert_eq!(state(c), MigState::Running));
}

#[test]
fn switchover_ack_is_negotiated_and_can_be_turned_off() {
    let dir = Dir::new("ack");
    let a = Server::start("vgpu", Some("4M"), &dir.path("a.sock"));
    let b = Server::start("vgpu", Some("4M"), &dir.path("b.sock"));
    rendering(&a, 8 << 20);
    let out = migrate(&a, &b, &["--json"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["switchover_ack"], true, "{v:#}");
    assert_eq!(v["verified"], true, "{v:#}");
    // Back the other way without it: still a verified migration.
    let out = migrate(&b, &a, &["--json", "--switchover-ack", "off", "--force"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["switchover_ack"], false, "{v:#}");
    assert_eq!(v["verified"], true, "{v:#}");
}

#[test]
fn reinit_travels_over_vfio_user_once_the_client_opts_in() {
    let dir = Dir::new("reinit");
    let s = Server::start("vgpu", Some("1M"), &dir.path("a.sock"));
    rendering(&s, 0);
    s.with(|c| {
        MigrationDevice::set_state(c, MigState::PreCopy).unwrap();
        let mut buf = vec![0u8; 4 << 20];
        while MigrationDevice::precopy_info(c).unwrap().initial_bytes > 0 {
            MigrationDevice::read_data(c, &mut buf).unwrap();
        }
        let p = MigrationDevice::precopy_info(c).unwrap();
        assert!(!p.reinit);
        // A display mode change: new initial data, reported once.
        write(c, MODESET, 1);
        let p = MigrationDevice::precopy_info(c).unwrap();
        assert!(p.reinit, "{p:?}");
        assert!(p.initial_bytes >= 1 << 20, "{p:?}");
        assert_eq!(p.dirty_bytes, 0, "{p:?}");
        assert!(!MigrationDevice::precopy_info(c).unwrap().reinit);
        MigrationDevice::set_state(c, MigState::Running).unwrap();
    });
}

#[test]
fn the_demo_breaks_its_downtime_down_and_full_verify_agrees() {
    let dir = Dir::new("demo-plot");
    let plot = dir.path("demo.png");
    let out = run(
        &[
            "demo",
            "--device-mem",
            "16M",
            "--guest-mem",
            "64M",
            "--full-verify",
            "--json",
            "--plot",
            plot.to_str().unwrap(),
        ],
        120,
    );
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["verified"], true, "{v:#}");
    let b = &v["downtime_breakdown"];
    let sum: f64 = b
        .as_object()
        .unwrap()
        .values()
        .map(|x| x.as_f64().unwrap())
        .sum();
    let down = v["downtime_ms"].as_f64().unwrap();
    assert!((sum - down).abs() < 0.01, "{sum} vs {down}: {b:#}");
    assert!(v["expected_downtime_ms"].as_f64().unwrap() > 0.0, "{v:#}");
    assert!(std::fs::metadata(&plot).unwrap().len() > 10_000);
}
