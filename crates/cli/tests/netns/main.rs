//! Silent network faults between two hosts: two network namespaces joined
//! by a veth pair, `migrate` and the source server in one, `receive` and
//! the destination server in the other, TCP between them. A link cut
//! silently (`ip link set DEV down` on one side: nothing is refused,
//! packets just vanish) in each phase, and a connect to an address that
//! drops packets (a permanent neighbour entry to a MAC nobody has). Each
//! cell checks that `migrate` gives up within its deadline with exit 1 and
//! a message naming the phase, that the source is RUNNING with its state,
//! that `receive` gives up too and never runs the destination.
//!
//! Needs root and iproute2: run by `tests/peers/netns.sh` (ignored in a
//! plain `cargo test`).

#[path = "../support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;
use vfio_migrate_backend::{MigState, MigrationDevice};
use vfio_migrate_client::Client;

const STALL: u64 = 3;
const HOLD_MS: &str = "2400";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces `<tag>a` and `<tag>b`, joined by a veth pair, with
/// 10.<n>.0.1 and 10.<n>.0.2; deleted on drop.
struct Hosts {
    a: String,
    b: String,
    dev_a: String,
    subnet: u8,
}

impl Hosts {
    fn new(n: u8) -> Self {
        let tag = format!("vm{}x{n}", std::process::id() % 100_000);
        let (a, b) = (format!("{tag}a"), format!("{tag}b"));
        let (dev_a, dev_b) = (format!("{tag}va"), format!("{tag}vb"));
        let h = Self {
            a: a.clone(),
            b: b.clone(),
            dev_a: dev_a.clone(),
            subnet: n,
        };
        ip(&["netns", "add", &a]);
        ip(&["netns", "add", &b]);
        ip(&[
            "link", "add", &dev_a, "netns", &a, "type", "veth", "peer", "name", &dev_b, "netns", &b,
        ]);
        for (ns, dev, host) in [(&a, &dev_a, 1), (&b, &dev_b, 2)] {
            let addr = format!("10.{n}.0.{host}/24");
            ip(&["-n", ns, "addr", "add", &addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        h
    }

    fn addr(&self, host: u8) -> String {
        format!("10.{}.0.{host}", self.subnet)
    }

    /// `cmd ARGS` inside namespace `ns`.
    fn cmd(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(args);
        c
    }

    /// Cuts the link silently on the source's side.
    fn cut(&self) {
        ip(&["-n", &self.a, "link", "set", &self.dev_a, "down"]);
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.a]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.b]).status();
    }
}

fn wait_exit(c: &mut Child, since: Instant, secs: f64) -> (std::process::ExitStatus, f64) {
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            return (s, since.elapsed().as_secs_f64());
        }
        if since.elapsed().as_secs_f64() > secs {
            let _ = c.kill();
            panic!("no exit within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Setup,
    PreCopy,
    StopCopy,
    Resume,
}

fn link_cut(phase: Phase, n: u8) {
    let hosts = Hosts::new(n);
    let dir = Dir::new("netns");
    let src = Server::start("vgpu", Some("16M"), &dir.path("src.sock"));
    let mut dargs = vec!["--device-mem", "16M"];
    match phase {
        Phase::Setup => dargs.extend(["--slow-resume", HOLD_MS]),
        Phase::Resume => dargs.extend(["--slow-validate", HOLD_MS]),
        _ => {}
    }
    let dst = Server::with_args("vgpu", &dargs, &dir.path("dst.sock"));
    let before = src.with(|c| {
        write(c, vgpu::SEED, 7);
        stopped_digest(c, vgpu::DIGEST)
    });
    let stall = STALL.to_string();
    let listen = format!("tcp:{}:4444", hosts.addr(2));
    let dst_uri = dst.uri();
    let mut recv = hosts
        .cmd(
            &hosts.b,
            &[
                BIN,
                "receive",
                "--listen",
                &listen,
                "--dest",
                &dst_uri,
                "--stall-timeout",
                &stall,
                // Two namespaces of our own: plaintext on purpose.
                "--insecure",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(recv.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening on"), "{line}");
    let src_uri = src.uri();
    let mut args = vec![
        BIN,
        "migrate",
        "--source",
        &src_uri,
        "--dest",
        &listen,
        "--stall-timeout",
        &stall,
    ];
    match phase {
        Phase::PreCopy => args.extend(["--downtime-limit", "0", "--max-iterations", "1000000"]),
        Phase::StopCopy => args.extend(["--precopy", "off", "--bandwidth-limit", "4M"]),
        _ => args.extend(["--precopy", "off"]),
    }
    let mut m = hosts
        .cmd(&hosts.a, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let needle = match phase {
        Phase::Setup => "setup:",
        Phase::PreCopy => "pre-copy round",
        Phase::StopCopy => "stop-copy:",
        Phase::Resume => "resume:",
    };
    let (seen, all) = wait_for_line(m.stderr.take().unwrap(), needle, 30);
    assert!(seen.contains(needle), "{phase:?}: {seen}");
    std::thread::sleep(Duration::from_millis(300));
    let at = Instant::now();
    hosts.cut();
    let (status, took) = wait_exit(&mut m, at, STALL as f64 + 3.0);
    let err = all.join().unwrap();
    let what = format!("{phase:?}: exit {status} {took:.2} s after the cut\n{err}");
    eprintln!("link cut in {phase:?}: migrate exit {status} after {took:.2} s");
    assert_eq!(status.code(), Some(1), "{what}");
    let word = match phase {
        Phase::Setup => "setup",
        Phase::PreCopy => "pre-copy",
        Phase::StopCopy => "stop-copy",
        Phase::Resume => "resume",
    };
    assert!(err.contains(&format!("error: {word}:")), "{what}");
    let (rs, rt) = wait_exit(
        &mut recv,
        at,
        STALL as f64 + HOLD_MS.parse::<f64>().unwrap() / 1000.0 + 4.0,
    );
    eprintln!("link cut in {phase:?}: receive exit {rs} after {rt:.2} s");
    assert!(!rs.success(), "{what}: receive must fail");
    // The source runs with its state; the destination never runs.
    let d = src.with(|c| {
        assert_eq!(c.state().unwrap(), MigState::Running, "{what}");
        stopped_digest(c, vgpu::DIGEST)
    });
    assert_eq!(d, before, "{what}");
    let t = Instant::now();
    let s = loop {
        match Client::connect(&dst.socket) {
            Ok(mut c) => break c.state().unwrap(),
            Err(_) if t.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_ne!(s, MigState::Running, "{what}");
    assert_ne!(s, MigState::Resuming, "{what}");
}

#[test]
#[ignore = "needs root and network namespaces: run ./test.sh (tests/peers/netns.sh)"]
fn link_cut_in_setup() {
    link_cut(Phase::Setup, 201);
}

#[test]
#[ignore = "needs root and network namespaces: run ./test.sh (tests/peers/netns.sh)"]
fn link_cut_in_precopy() {
    link_cut(Phase::PreCopy, 202);
}

#[test]
#[ignore = "needs root and network namespaces: run ./test.sh (tests/peers/netns.sh)"]
fn link_cut_in_stopcopy() {
    link_cut(Phase::StopCopy, 203);
}

#[test]
#[ignore = "needs root and network namespaces: run ./test.sh (tests/peers/netns.sh)"]
fn link_cut_in_resume() {
    link_cut(Phase::Resume, 204);
}

#[test]
#[ignore = "needs root and network namespaces: run ./test.sh (tests/peers/netns.sh)"]
fn connect_to_an_address_that_drops_packets() {
    let hosts = Hosts::new(205);
    // 10.205.0.99 resolves to a MAC nobody has: the SYN goes nowhere.
    ip(&[
        "-n",
        &hosts.a,
        "neigh",
        "add",
        &hosts.addr(99),
        "lladdr",
        "02:00:00:00:00:63",
        "dev",
        &hosts.dev_a,
        "nud",
        "permanent",
    ]);
    let dir = Dir::new("netns-drop");
    let src = Server::start("vgpu", Some("1M"), &dir.path("src.sock"));
    let dest = format!("tcp:{}:4444", hosts.addr(99));
    let src_uri = src.uri();
    let t = Instant::now();
    let out = hosts
        .cmd(
            &hosts.a,
            &[
                BIN,
                "migrate",
                "--source",
                &src_uri,
                "--dest",
                &dest,
                "--connect-timeout",
                "2",
            ],
        )
        .output()
        .unwrap();
    let took = t.elapsed().as_secs_f64();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "connect to a dropping address: exit {} after {took:.2} s",
        out.status
    );
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!((1.5..5.0).contains(&took), "{took} s: {err}");
    assert!(err.contains("no answer from"), "{err}");
    src.with(|c| assert_eq!(c.state().unwrap(), MigState::Running));
}
