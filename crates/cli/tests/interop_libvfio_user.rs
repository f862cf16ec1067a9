//! Interoperation with libvfio-user, the reference C implementation of
//! vfio-user: its sample server (a small PCI device with v2 migration,
//! built by the kit in `../shared/peers/libvfio-user`) driven by the
//! `vfio-migrate` command, real processes on real sockets.
//!
//! Every test here needs the server, found through the
//! `VFIO_LIBVFIO_USER_SERVER` environment variable, so every test is
//! ignored in a plain `cargo test`; `tests/peers/libvfio-user.sh` (run by
//! `./test.sh`) builds the server and runs them with `--ignored`.
//!
//! The sample device (see the kit's README): BAR0 is 8 bytes holding a
//! Unix time (a read returns now minus it; entering RUNNING re-arms a
//! timer from it and refuses a time in the past), BAR1 is 16 KiB of
//! memory (reads ignore the offset: read it whole). Its migration stream
//! is BAR1 then BAR0; it aborts (an assertion) when it enters RUNNING, or
//! leaves STOP_COPY, without exactly that many bytes moved since its last
//! PRE_COPY/STOP_COPY/RESUMING entry. So destinations are prepared with
//! `set-state STOP`, and every test checks at the end that no server
//! aborted.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use support::*;
use vfio_migrate_harness::ServerProcess;

const BAR1: usize = 16384;

/// The reference sample server (`VFU_PERSIST=1`: it serves one client
/// after another and keeps its device), stopped on drop.
struct Ref {
    process: ServerProcess,
}

impl Ref {
    fn start(socket: &Path) -> Self {
        let bin = std::env::var_os("VFIO_LIBVFIO_USER_SERVER").expect(
            "VFIO_LIBVFIO_USER_SERVER is not set: run these tests through ./test.sh (tests/peers/libvfio-user.sh)",
        );
        let mut cmd = Command::new(bin);
        cmd.arg(socket).env("VFU_PERSIST", "1");
        let process = ServerProcess::start(cmd, socket).unwrap_or_else(|e| panic!("{e}"));
        Self { process }
    }

    fn uri(&self) -> String {
        self.process.uri()
    }

    /// `vfio-migrate device URI ARGS…`, which must succeed; stdout.
    fn device(&self, args: &[&str]) -> String {
        let out = self.device_out(args);
        assert!(
            out.status.success(),
            "device {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn device_out(&self, args: &[&str]) -> Output {
        let uri = self.uri();
        let mut a = vec!["device", uri.as_str()];
        a.extend_from_slice(args);
        run(&a, 30)
    }

    fn state(&self) -> String {
        self.device(&["state"]).trim().to_string()
    }

    /// BAR0 := now + `secs` (the timer the device arms when it runs).
    fn arm(&self, secs: i64) {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            + secs;
        self.device(&["write", "0", "0", &hex(&t.to_le_bytes())]);
    }

    /// BAR0 as the device reads it: now minus the stored time.
    fn bar0(&self) -> i64 {
        let b = unhex(self.device(&["read", "0", "0", "8"]).trim());
        i64::from_le_bytes(b.try_into().unwrap())
    }

    fn fill_bar1(&self, seed: u8) -> Vec<u8> {
        let data = pattern(seed);
        for (i, part) in data.chunks(4096).enumerate() {
            self.device(&["write", "1", &(i * 4096).to_string(), &hex(part)]);
        }
        data
    }

    /// BAR1, read whole (the device ignores read offsets).
    fn bar1(&self) -> Vec<u8> {
        unhex(self.device(&["read", "1", "0", &BAR1.to_string()]).trim())
    }

    /// The server still runs and never failed an assertion.
    fn check_alive(&mut self) {
        let err = self.process.stderr();
        assert!(
            self.process.alive() && !err.contains("Assertion"),
            "the reference server at {} died or aborted; its stderr:\n{err}",
            self.uri()
        );
    }
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..BAR1)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn migrate(args: &[&str]) -> Output {
    let mut a = vec!["migrate"];
    a.extend_from_slice(args);
    run(&a, 60)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A source with a future timer and a pattern in BAR1.
fn source(dir: &Dir, name: &str, seed: u8) -> (Ref, Vec<u8>) {
    let r = Ref::start(&dir.path(name));
    r.arm(3600);
    let data = r.fill_bar1(seed);
    (r, data)
}

/// A destination the operator prepared: stopped.
fn destination(dir: &Dir, name: &str) -> Ref {
    let r = Ref::start(&dir.path(name));
    assert_eq!(r.device(&["set-state", "STOP"]).trim(), "STOP");
    r
}

#[test]
#[ignore = "needs the libvfio-user reference server: run ./test.sh"]
fn device_commands_work_against_the_reference() {
    let dir = Dir::new("lvu-dev");
    let mut r = Ref::start(&dir.path("r.sock"));
    let info = r.device(&["info"]);
    assert!(info.contains("pci dead:beef"), "{info}");
    assert!(info.contains("libvfio-user sample device"), "{info}");
    assert!(info.contains("0x5 (STOP_COPY|PRE_COPY)"), "{info}");
    assert!(info.contains("RUNNING"), "{info}");
    assert!(info.contains("[8, 16384, 0, 0, 0, 0, 0, 256]"), "{info}");
    let j: serde_json::Value = serde_json::from_str(&r.device(&["info", "--json"])).unwrap();
    assert_eq!(j["descriptor"]["vendor_id"], 0xdead, "{j}");
    assert_eq!(j["descriptor"]["region_sizes"][1], BAR1, "{j}");
    assert_eq!(j["state"], "RUNNING");
    // Region access: BAR1 round trip, BAR0 time semantics, config space.
    let data = r.fill_bar1(3);
    assert_eq!(r.bar1(), data);
    r.arm(3600);
    let b0 = r.bar0();
    assert!(
        (-3605..=-3595).contains(&b0),
        "BAR0 reads now - stored: {b0}"
    );
    let cfg = r.device(&["read", "7", "0", "4"]);
    assert_eq!(cfg.trim(), "addeefbe", "vendor dead, device beef");
    // A refused access is reported, and the connection stays usable.
    let bad = r.device_out(&["read", "0", "4", "4"]);
    assert_eq!(bad.status.code(), Some(1), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("EINVAL"), "{}", stderr(&bad));
    assert_eq!(r.state(), "RUNNING");
    // STOP: harmless for this device. It then refuses to describe
    // itself; `info` says so and shows the rest.
    assert_eq!(r.device(&["set-state", "STOP"]).trim(), "STOP");
    assert_eq!(r.state(), "STOP");
    let info = r.device(&["info"]);
    assert!(
        info.contains("refuses to describe itself while stopped"),
        "{info}"
    );
    assert!(info.contains("STOP_COPY|PRE_COPY"), "{info}");
    assert_eq!(r.bar1(), data, "region reads work in STOP");
    r.check_alive();
}

#[test]
#[ignore = "needs the libvfio-user reference server: run ./test.sh"]
fn reference_to_reference_without_precopy() {
    let dir = Dir::new("lvu-r2r");
    let (mut a, data) = source(&dir, "a.sock", 1);
    let mut b = destination(&dir, "b.sock");
    let out = migrate(&[
        "--source",
        &a.uri(),
        "--dest",
        &b.uri(),
        "--precopy",
        "off",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["status"], "ok", "{v:#}");
    assert_eq!(v["devices"][0]["stopcopy_bytes"], BAR1 + 8, "{v:#}");
    assert_eq!(b.state(), "RUNNING");
    assert_eq!(b.bar1(), data, "BAR1 identical at the destination");
    let b0 = b.bar0();
    assert!((-3605..=-3595).contains(&b0), "BAR0 travelled: {b0}");
    assert_eq!(a.state(), "STOP", "the source is parked");
    assert_eq!(a.bar1(), data);
    a.check_alive();
    b.check_alive();
}

#[test]
#[ignore = "needs the libvfio-user reference server: run ./test.sh"]
fn reference_through_a_snapshot() {
    let dir = Dir::new("lvu-snap");
    let (mut a, data) = source(&dir, "a.sock", 2);
    let snap = dir.path("ref.snap");
    let file = format!("file:{}", snap.display());
    let out = migrate(&["--source", &a.uri(), "--dest", &file, "--precopy", "off"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(a.state(), "RUNNING", "a snapshot's source runs on");
    assert_eq!(a.bar1(), data);
    let ins = run(&["inspect", &file], 30);
    assert!(ins.status.success(), "{}", stderr(&ins));
    let text = String::from_utf8_lossy(&ins.stdout);
    assert!(text.contains("dead:beef"), "{text}");
    assert!(text.contains("checksums    all"), "{text}");
    let ins = run(&["inspect", &file, "--json"], 30);
    assert!(ins.status.success(), "{}", stderr(&ins));
    let j = json(&ins);
    let d = &j["devices"][0];
    assert_eq!(d["stopcopy"]["bytes"], BAR1 + 8, "{j:#}");
    assert_eq!(d["precopy"]["bytes"], 0, "{j:#}");
    assert_eq!(d["complete"], true, "{j:#}");
    assert_eq!(d["running"], true, "{j:#}");
    // Restore into a second reference device.
    a.fill_bar1(9);
    let mut b = destination(&dir, "b.sock");
    let out = migrate(&["--source", &file, "--dest", &b.uri()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(b.state(), "RUNNING");
    assert_eq!(b.bar1(), data, "the snapshot's BAR1, not the later one");
    a.check_alive();
    b.check_alive();
}

#[test]
#[ignore = "needs the libvfio-user reference server: run ./test.sh"]
fn precopy_against_the_reference_fails_cleanly() {
    let dir = Dir::new("lvu-pre");
    let (mut a, data) = source(&dir, "a.sock", 4);
    let mut b = destination(&dir, "b.sock");
    // Pre-copy on (the default): the device sends BAR1 in PRE_COPY, then
    // restarts its stream in STOP_COPY; the destination takes the pre-copy
    // bytes as the start of its state and refuses the stop-copy bytes
    // past its end.
    let out = migrate(&["--source", &a.uri(), "--dest", &b.uri()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("MIG_DATA_WRITE"), "{err}");
    assert!(err.contains("EINVAL"), "{err}");
    assert!(err.contains("--precopy off"), "{err}");
    assert!(err.contains("rolled back"), "{err}");
    // The source rolled back to RUNNING with its state; the destination
    // holds mixed state and was never started.
    assert_eq!(a.state(), "RUNNING");
    assert_eq!(a.bar1(), data);
    assert_eq!(b.state(), "STOP");
    a.check_alive();
    b.check_alive();
    // Both stay usable: the same migration without pre-copy works.
    let out = migrate(&["--source", &a.uri(), "--dest", &b.uri(), "--precopy", "off"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(b.state(), "RUNNING");
    assert_eq!(b.bar1(), data);
    a.check_alive();
    b.check_alive();
}

#[test]
#[ignore = "needs the libvfio-user reference server: run ./test.sh"]
fn reference_and_vgpu_are_refused_before_the_source_stops() {
    let dir = Dir::new("lvu-vgpu");
    // A fresh reference source: had it been stopped and run again, it
    // would have aborted (nothing was migrated), so its survival shows it
    // was never stopped.
    let mut r = Ref::start(&dir.path("r.sock"));
    r.arm(3600);
    let g = Server::start("vgpu", Some("1M"), &dir.path("g.sock"));
    for (src, dst) in [(r.uri(), g.uri()), (g.uri(), r.uri())] {
        if dst == r.uri() {
            r.device(&["set-state", "STOP"]);
        }
        let out = migrate(&["--source", &src, "--dest", &dst, "--precopy", "off"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{src} → {dst}: {err}");
        assert!(err.contains("refused the migration"), "{err}");
        assert!(err.contains("libvfio-user sample device"), "{err}");
        assert!(err.contains("vfio-migrate vgpu"), "{err}");
        assert!(err.contains("setup"), "refused in setup: {err}");
        r.check_alive();
    }
    assert_eq!(r.state(), "STOP", "the refused destination is left stopped");
    g.with(|c| assert_eq!(state(c), vfio_migrate_backend::MigState::Running));
}

#[test]
#[ignore = "needs the libvfio-user reference server: run ./test.sh"]
fn reference_ping_pong_stop_copy() {
    let dir = Dir::new("lvu-pp");
    let (a, mut data) = source(&dir, "a.sock", 5);
    let b = destination(&dir, "b.sock");
    let mut refs = [a, b];
    for n in 0..10 {
        let (s, d) = if n % 2 == 0 { (0, 1) } else { (1, 0) };
        if n > 0 {
            // The running device changes between hops.
            data = refs[s].fill_bar1(10 + n as u8);
        }
        let out = migrate(&[
            "--source",
            &refs[s].uri(),
            "--dest",
            &refs[d].uri(),
            "--precopy",
            "off",
        ]);
        assert!(out.status.success(), "hop {n}: {}", stderr(&out));
        assert_eq!(refs[d].state(), "RUNNING", "hop {n}");
        assert_eq!(refs[s].state(), "STOP", "hop {n}");
        assert_eq!(refs[d].bar1(), data, "hop {n}: BAR1");
        let b0 = refs[d].bar0();
        assert!((-3700..=-3500).contains(&b0), "hop {n}: BAR0 {b0}");
        refs[0].check_alive();
        refs[1].check_alive();
    }
}
