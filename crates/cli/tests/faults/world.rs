//! One cell of the fault matrix: a source and a destination vgpu server
//! (real `vfio-migrate serve` processes), a `receive` process for tcp, a
//! `migrate` process held in one phase, one fault injected there, and the
//! checks every cell makes afterwards.

use crate::support::*;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use vfio_migrate_backend::{MigState, MigrationDevice};
use vfio_migrate_client::Client;

/// The stall timeout the cells run with (s): a stopped peer is given up on
/// after it.
pub const STALL: u64 = 3;
/// How long a held phase lasts (ms): long enough to inject a fault in it,
/// shorter than the stall timeout (a slow device is not a dead one).
const HOLD_MS: u64 = 2_400;

/// How `migrate` reaches the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Device to device on this host (a socket pair inside `migrate`).
    Unix,
    /// Through a `vfio-migrate receive` over TCP loopback.
    Tcp,
}

/// The phase the fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the destination's compatibility answer (the destination
    /// device is slow to enter RESUMING).
    Setup,
    /// Endless pre-copy rounds.
    PreCopy,
    /// A slow final transfer (`--precopy off`, `--bandwidth-limit`).
    StopCopy,
    /// Waiting for the destination to validate (it is slow to).
    Resume,
}

/// What goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL `migrate`.
    KillMigrate,
    /// SIGTERM `migrate`.
    TermMigrate,
    /// SIGKILL the source device server.
    KillSource,
    /// SIGKILL the destination device server.
    KillDest,
    /// SIGKILL `receive` (tcp only).
    KillReceive,
    /// SIGSTOP the destination: its device server (unix), or `receive`
    /// (tcp): a peer that hangs with its socket open.
    StopDest,
}

/// The progress line that says `migrate` is in `phase`.
fn phase_line(p: Phase) -> &'static str {
    match p {
        Phase::Setup => "setup:",
        Phase::PreCopy => "pre-copy round",
        Phase::StopCopy => "stop-copy:",
        Phase::Resume => "resume:",
    }
}

struct Receiver {
    child: Child,
    at: String,
}

/// A `vfio-migrate receive` into `dest`, once it listens.
fn receive(dest: &str) -> Receiver {
    let mut child = Command::new(BIN)
        .args(["receive", "--listen", "tcp:127.0.0.1:0", "--dest", dest])
        .args(["--stall-timeout", &STALL.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let at = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("receive said {line:?}"))
        .to_string();
    Receiver { child, at }
}

/// Waits for a child up to `secs`; returns its status and how long it took
/// from `since`.
fn exit_within(child: &mut Child, since: Instant, secs: f64) -> (ExitStatus, f64) {
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return (s, since.elapsed().as_secs_f64());
        }
        if since.elapsed().as_secs_f64() > secs {
            let _ = child.kill();
            panic!("the process did not exit within {secs} s of the fault");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The state of the device behind `s`, waiting until its server has
/// recovered from a vanished client (it takes one client at a time).
fn settled_state(s: &Server) -> MigState {
    let t = Instant::now();
    loop {
        match Client::connect(&s.socket) {
            Ok(mut c) => return c.state().unwrap(),
            Err(e) if t.elapsed() < Duration::from_secs(10) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{}: {e}", s.uri()),
        }
    }
}

/// A quiet vgpu with seeded memory: its digest only changes if something
/// writes it.
fn seed(s: &Server) -> u64 {
    s.with(|c| {
        write(c, vgpu::SEED, 0x5eed);
        write(c, vgpu::SCRATCH, 42);
        stopped_digest(c, vgpu::DIGEST)
    })
}

/// The digest of the (stopped or running) device, and it ends in `end`.
fn digest_in(c: &mut Client, end: MigState) -> u64 {
    c.set_state(MigState::Stop).unwrap();
    let d = read(c, vgpu::DIGEST);
    c.set_state(end).unwrap();
    d
}

/// Runs one cell and checks it.
pub fn cell(t: Transport, phase: Phase, fault: Fault) {
    let _slot = crate::slot();
    let dir = Dir::new("fault");
    let mut src = Server::start("vgpu", Some("16M"), &dir.path("src.sock"));
    let hold = HOLD_MS.to_string();
    let mut dst_args = vec!["--device-mem", "16M"];
    match phase {
        Phase::Setup => dst_args.extend(["--slow-resume", &hold]),
        Phase::Resume => dst_args.extend(["--slow-validate", &hold]),
        _ => {}
    }
    let mut dst = Server::with_args("vgpu", &dst_args, &dir.path("dst.sock"));
    let before = seed(&src);

    let mut recv = (t == Transport::Tcp).then(|| receive(&dst.uri()));
    let dest = match &recv {
        Some(r) => r.at.clone(),
        None => dst.uri(),
    };
    let stall = STALL.to_string();
    let src_uri = src.uri();
    let mut args = vec!["migrate", "--source", &src_uri];
    args.extend(["--dest", &dest, "--stall-timeout", &stall]);
    match phase {
        Phase::PreCopy => args.extend(["--downtime-limit", "0", "--max-iterations", "1000000"]),
        Phase::StopCopy => args.extend(["--precopy", "off", "--bandwidth-limit", "4M"]),
        Phase::Setup | Phase::Resume => args.extend(["--precopy", "off"]),
    }
    let mut m = Command::new(BIN)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (seen, all) = wait_for_line(m.stderr.take().unwrap(), phase_line(phase), 30);
    assert!(
        seen.contains(phase_line(phase)),
        "{t:?} {phase:?} {fault:?}: migrate never reached the phase: {seen}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        m.try_wait().unwrap().is_none(),
        "{t:?} {phase:?}: migrate ended before the fault: {}",
        all.join().unwrap()
    );

    // The fault.
    let at = Instant::now();
    match fault {
        Fault::KillMigrate => m.kill().unwrap(),
        Fault::TermMigrate => vfio_migrate_sys::signal::kill(&m, libc::SIGTERM).unwrap(),
        Fault::KillSource => src.kill(),
        Fault::KillDest => dst.kill(),
        Fault::KillReceive => recv.as_mut().expect("tcp").child.kill().unwrap(),
        Fault::StopDest => match recv.as_mut() {
            Some(r) => vfio_migrate_sys::signal::kill(&r.child, libc::SIGSTOP).unwrap(),
            None => dst.signal(libc::SIGSTOP),
        },
    }

    // migrate exits within its deadline, with the right code. Killing the source server once its state has all been sent changes
    // nothing: the destination takes over (its server gone, the source can
    // only not be parked).
    let completes = fault == Fault::KillSource && phase == Phase::Resume;
    let limit = match fault {
        // A peer that hangs: the stall timeout.
        Fault::StopDest => STALL as f64 + 2.5,
        _ if completes => HOLD_MS as f64 / 1000.0 + 2.0,
        // Found at the next request to the source device (within the
        // destination's hold), and at worst by a deadline.
        Fault::KillSource => STALL as f64 + 2.0,
        _ => 2.0,
    };
    let (status, took) = exit_within(&mut m, at, limit);
    let err = all.join().unwrap();
    let what =
        format!("{t:?} {phase:?} {fault:?} (exit {status}, {took:.2} s after the fault)\n{err}");
    match fault {
        Fault::KillMigrate => assert_eq!(status.signal(), Some(libc::SIGKILL), "{what}"),
        _ if completes => assert_eq!(status.code(), Some(0), "{what}"),
        Fault::TermMigrate => {
            assert_eq!(status.code(), Some(143), "{what}");
            assert!(err.contains("cancelled by the user"), "{what}");
        }
        // The source server is gone: it cannot be rolled back.
        Fault::KillSource => assert_eq!(status.code(), Some(4), "{what}"),
        _ => assert_eq!(status.code(), Some(1), "{what}"),
    }
    // (A dead source server is noticed at the next request to it, which may
    // be in the next phase.)
    if !matches!(fault, Fault::KillMigrate | Fault::KillSource) && !completes {
        assert!(
            err.contains(&format!("error: {}:", phase_word(phase))),
            "the message names the phase: {what}"
        );
    }
    eprintln!("{t:?} {phase:?} {fault:?}: exit {status} {took:.2} s after the fault");

    // Wake what was stopped, let receive finish.
    if fault == Fault::StopDest {
        match recv.as_mut() {
            Some(r) => vfio_migrate_sys::signal::kill(&r.child, libc::SIGCONT).unwrap(),
            None => dst.signal(libc::SIGCONT),
        }
    }
    if let Some(r) = recv.as_mut() {
        let (s, _) = exit_within(&mut r.child, Instant::now(), STALL as f64 + 5.0);
        assert!(!s.success(), "{what}: receive must fail");
    }

    // The destination device never runs the (partial) incoming state.
    if fault != Fault::KillDest {
        let s = settled_state(&dst);
        if completes {
            assert_eq!(s, MigState::Running, "{what}: the destination took over");
        } else {
            assert_ne!(s, MigState::Running, "{what}: the destination runs");
            assert_ne!(
                s,
                MigState::Resuming,
                "{what}: the destination stays RESUMING"
            );
        }
    }

    // The source: back RUNNING with its state, or stopped where the outcome
    // is unknown to its server (killed migrate after the stop).
    if fault == Fault::KillSource {
        // The device is gone with its server: a new one can be migrated.
        src = Server::start("vgpu", Some("16M"), &dir.path("src2.sock"));
        seed(&src);
    } else {
        let s = settled_state(&src);
        let expect_stopped =
            fault == Fault::KillMigrate && matches!(phase, Phase::StopCopy | Phase::Resume);
        let expected = if expect_stopped {
            MigState::Stop
        } else {
            MigState::Running
        };
        assert_eq!(s, expected, "{what}: the source");
        // Where the outcome was unknown to the source's server, the
        // operator checks the destination did not run (above) and resumes
        // the source: `digest_in` ends it RUNNING.
        let d = src.with(|c| digest_in(c, MigState::Running));
        assert_eq!(d, before, "{what}: the source's state changed");
    }

    // A second migration of the same source to a fresh destination works.
    if fault == Fault::KillDest || fault == Fault::StopDest {
        drop(dst);
        dst = Server::start("vgpu", Some("16M"), &dir.path("dst2.sock"));
    } else {
        // The old destination was reset (or is stopped, loaded but never
        // run): reset it to make it a fresh destination.
        dst.with(|c| c.reset().unwrap());
    }
    drop(recv);
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
        "{what}: the second migration failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&out)["verified"], true, "{what}");
}

fn phase_word(p: Phase) -> &'static str {
    match p {
        Phase::Setup => "setup",
        Phase::PreCopy => "pre-copy",
        Phase::StopCopy => "stop-copy",
        Phase::Resume => "resume",
    }
}

/// Keeps the receiver's stdout reader alive with the child.
impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = vfio_migrate_sys::signal::kill(&self.child, libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
