//! TLS between `migrate` and `receive`, through the CLI with real
//! processes: credentials made by `vfio-migrate certs`; a live migration
//! over TLS, verified; every refusal (wrong CA, expired and not yet valid
//! certificates, wrong host name, a sender not in --tls-authz, plaintext
//! against TLS both ways) fails the handshake with a message on both sides,
//! leaves the source RUNNING and the destination untouched, and `receive`
//! keeps waiting for the real sender; a stray connection is dropped; and
//! the device's bytes never cross the wire in clear.

mod support;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;
use time::OffsetDateTime;
use vfio_migrate_backend::{MigState, MigrationDevice};

/// `vfio-migrate certs DIR --host 127.0.0.1`.
fn certs(dir: &Path, extra: &[&str]) {
    let out = cli(&[
        &["certs", dir.to_str().unwrap(), "--host", "127.0.0.1"],
        extra,
    ]
    .concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A credentials directory made here (own CA), with the receiver's
/// certificate for `host` and both leaf certificates valid from
/// `not_before` to `not_after` (days from now).
fn custom_creds(dir: &Path, host: &str, client: &str, not_before: i64, not_after: i64) {
    std::fs::create_dir_all(dir).unwrap();
    let now = OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, "test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = now - time::Duration::days(400);
    ca.not_after = now + time::Duration::days(400);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf = |names: Vec<String>, cn: &str, eku| {
        let k = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![eku];
        p.not_before = now + time::Duration::days(not_before);
        p.not_after = now + time::Duration::days(not_after);
        let c = p.signed_by(&k, &ca_cert, &ca_key).unwrap();
        (c.pem(), k.serialize_pem())
    };
    let (sc, sk) = leaf(vec![host.into()], host, ExtendedKeyUsagePurpose::ServerAuth);
    let (cc, ck) = leaf(
        vec![client.into()],
        client,
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    for (name, text) in [
        ("ca-cert.pem", ca_cert.pem()),
        ("server-cert.pem", sc),
        ("server-key.pem", sk),
        ("client-cert.pem", cc),
        ("client-key.pem", ck),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

struct Receiver {
    child: Child,
    at: String,
    stderr: Arc<Mutex<String>>,
}

impl Receiver {
    fn start(dest: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(["receive", "--listen", "tcp:127.0.0.1:0", "--dest", dest])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        // Keep reading its stdout (its report) so that it never writes
        // into a closed pipe.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut out, &mut std::io::sink());
        });
        let at = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("receive said {line:?}"))
            .to_string();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (e, mut pipe) = (stderr.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut b) {
                if n == 0 {
                    break;
                }
                e.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&b[..n]));
            }
        });
        Self { child, at, stderr }
    }

    /// Waits until receive's stderr contains `needle`.
    fn said(&self, needle: &str) -> String {
        let t = Instant::now();
        loop {
            let s = self.stderr.lock().unwrap().clone();
            if s.contains(needle) {
                return s;
            }
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "receive never said {needle:?}: {s}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn still_waiting(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Pair {
    _dir: Dir,
    src: Server,
    dst: Server,
    digest: u64,
}

fn pair(tag: &str) -> Pair {
    let dir = Dir::new(tag);
    let src = Server::start("vgpu", Some("4M"), &dir.path("src.sock"));
    let dst = Server::start("vgpu", Some("4M"), &dir.path("dst.sock"));
    let digest = src.with(|c| {
        write(c, vgpu::SEED, 77);
        stopped_digest(c, vgpu::DIGEST)
    });
    Pair {
        _dir: dir,
        src,
        dst,
        digest,
    }
}

impl Pair {
    /// The source is RUNNING with its state.
    fn source_intact(&self) {
        self.src.with(|c| {
            assert_eq!(c.state().unwrap(), MigState::Running);
            assert_eq!(stopped_digest(c, vgpu::DIGEST), self.digest);
        });
    }

    /// The destination was never touched (RUNNING, unused); `receive`
    /// must have let go of it.
    fn dest_untouched(&self) {
        self.dst.with(|c| {
            assert_eq!(c.state().unwrap(), MigState::Running);
            assert_eq!(c.status().unwrap().map(|s| s.pristine), Some(true));
        });
    }
}

fn migrate(src: &Server, at: &str, extra: &[&str]) -> std::process::Output {
    run(
        &[
            &["migrate", "--source", &src.uri(), "--dest", at, "--json"],
            extra,
        ]
        .concat(),
        60,
    )
}

#[test]
fn certs_makes_the_qemu_layout_with_private_keys() {
    let dir = Dir::new("certs");
    let d = dir.path("creds");
    certs(&d, &["--host", "localhost"]);
    for (f, mode) in [
        ("ca-cert.pem", 0o644),
        ("server-cert.pem", 0o644),
        ("server-key.pem", 0o600),
        ("client-cert.pem", 0o644),
        ("client-key.pem", 0o600),
    ] {
        let m = std::fs::metadata(d.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, mode, "{f}");
    }
    // Never overwritten without --force.
    let out = cli(&["certs", d.to_str().unwrap(), "--host", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
}

#[test]
fn live_migration_over_tls_is_verified() {
    let p = pair("tls-ok");
    let dir = Dir::new("tls-ok-creds");
    let creds = dir.path("c");
    certs(&creds, &[]);
    let c = creds.to_str().unwrap();
    let mut r = Receiver::start(
        &p.dst.uri(),
        &["--tls-creds", c, "--tls-authz", "vfio-migrate-client"],
    );
    let out = migrate(&p.src, &r.at, &["--tls-creds", c]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = json(&out);
    assert_eq!(j["status"], "ok");
    assert_eq!(j["verified"], true);
    let s = r.child.wait().unwrap();
    assert!(s.success(), "{}", r.stderr.lock().unwrap());
    p.dst.with(|c| {
        assert_eq!(c.state().unwrap(), MigState::Running);
        assert_eq!(stopped_digest(c, vgpu::DIGEST), p.digest);
    });
}

#[test]
fn parallel_channels_over_tls_are_each_authenticated_and_verified() {
    let p = pair("tls-chan");
    let dir = Dir::new("tls-chan-creds");
    let creds = dir.path("c");
    certs(&creds, &[]);
    let c = creds.to_str().unwrap();
    let mut r = Receiver::start(
        &p.dst.uri(),
        &["--tls-creds", c, "--tls-authz", "vfio-migrate-client"],
    );
    let out = migrate(&p.src, &r.at, &["--tls-creds", c, "--channels", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = json(&out);
    assert_eq!(j["verified"], true);
    assert_eq!(j["channels"], 3);
    let s = r.child.wait().unwrap();
    let log = r.stderr.lock().unwrap().clone();
    assert!(s.success(), "{log}");
    assert!(!log.contains("refused"), "{log}");
    p.dst
        .with(|c| assert_eq!(stopped_digest(c, vgpu::DIGEST), p.digest));

    // A plaintext sender asking for channels is refused at its first
    // connection, as without channels: it fails, the source stays intact.
    let p = pair("tls-chan-plain");
    let mut r = Receiver::start(&p.dst.uri(), &["--tls-creds", c]);
    let (tx, rx) = std::sync::mpsc::channel();
    let at = r.at.clone();
    let src = p.src.uri();
    std::thread::spawn(move || {
        let _ = tx.send(run(
            &[
                "migrate",
                "--source",
                &src,
                "--dest",
                &at,
                "--channels",
                "2",
            ],
            60,
        ));
    });
    let out = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert!(!out.status.success());
    r.said("does not speak TLS");
    assert!(r.still_waiting());
    p.source_intact();
}

/// A refused handshake: migrate fails saying `migrate_says`, receive logs
/// `receive_says` and keeps waiting, nothing is touched.
fn refused(
    tag: &str,
    recv_args: &[&str],
    mig_args: &[&str],
    migrate_says: &str,
    receive_says: &str,
) {
    let p = pair(tag);
    let mut r = Receiver::start(&p.dst.uri(), recv_args);
    let out = migrate(&p.src, &r.at, mig_args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{tag}: {err}");
    assert!(err.contains(migrate_says), "{tag}: migrate said: {err}");
    let log = r.said(receive_says);
    assert!(log.contains("still waiting"), "{tag}: {log}");
    assert!(r.still_waiting(), "{tag}: receive gave up: {log}");
    p.source_intact();
    drop(r);
    p.dest_untouched();
}

#[test]
fn a_sender_with_another_ca_is_refused() {
    let dir = Dir::new("tls-ca");
    let (a, b) = (dir.path("a"), dir.path("b"));
    certs(&a, &[]);
    certs(&b, &[]);
    refused(
        "wrong-ca",
        &["--tls-creds", a.to_str().unwrap()],
        &["--tls-creds", b.to_str().unwrap()],
        "not signed by our CA",
        "not signed by its CA",
    );
}

#[test]
fn expired_and_not_yet_valid_certificates_are_refused() {
    let dir = Dir::new("tls-time");
    let old = dir.path("old");
    custom_creds(&old, "127.0.0.1", "vfio-migrate-client", -30, -1);
    refused(
        "expired",
        &["--tls-creds", old.to_str().unwrap()],
        &["--tls-creds", old.to_str().unwrap()],
        "has expired",
        "expired",
    );
    let new = dir.path("new");
    custom_creds(&new, "127.0.0.1", "vfio-migrate-client", 2, 30);
    refused(
        "not-yet-valid",
        &["--tls-creds", new.to_str().unwrap()],
        &["--tls-creds", new.to_str().unwrap()],
        "not valid yet",
        "refused",
    );
}

#[test]
fn a_receiver_certificate_for_another_host_is_refused() {
    let dir = Dir::new("tls-name");
    let creds = dir.path("c");
    custom_creds(&creds, "other.example", "vfio-migrate-client", -1, 30);
    let c = creds.to_str().unwrap();
    refused(
        "wrong-host",
        &["--tls-creds", c],
        &["--tls-creds", c],
        "not valid for the host name",
        "refused",
    );
    // --tls-hostname names what the certificate carries.
    let p = pair("tls-hostname");
    let mut r = Receiver::start(&p.dst.uri(), &["--tls-creds", c]);
    let out = migrate(
        &p.src,
        &r.at,
        &["--tls-creds", c, "--tls-hostname", "other.example"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(r.child.wait().unwrap().success());
}

#[test]
fn a_sender_not_in_tls_authz_is_refused() {
    let dir = Dir::new("tls-authz");
    let creds = dir.path("c");
    certs(&creds, &["--client-name", "mallory"]);
    let c = creds.to_str().unwrap();
    refused(
        "authz",
        &["--tls-creds", c, "--tls-authz", "alice,bob"],
        &["--tls-creds", c],
        "our certificate is not in its --tls-authz",
        "not admitted by --tls-authz",
    );
}

#[test]
fn plaintext_against_tls_is_refused_both_ways() {
    let dir = Dir::new("tls-plain");
    let creds = dir.path("c");
    certs(&creds, &[]);
    let c = creds.to_str().unwrap();
    refused(
        "plain-to-tls",
        &["--tls-creds", c],
        &[],
        "pass --tls-creds",
        "does not speak TLS",
    );
    refused(
        "tls-to-plain",
        &[],
        &["--tls-creds", c],
        "does not speak TLS",
        "start `receive` with --tls-creds",
    );
}

#[test]
fn a_stray_connection_is_dropped_and_receive_waits_for_the_sender() {
    let p = pair("stray");
    let mut r = Receiver::start(&p.dst.uri(), &[]);
    let mut s = TcpStream::connect(r.at.trim_start_matches("tcp:")).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let log = r.said("not a vfio-migrate stream");
    assert!(log.contains("still waiting"), "{log}");
    drop(s);
    assert!(r.still_waiting());
    p.source_intact();
    // The real sender then migrates.
    let out = migrate(&p.src, &r.at, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(r.child.wait().unwrap().success());
}

#[test]
fn a_receiver_on_a_network_address_needs_tls_or_insecure() {
    let dir = Dir::new("tls-open");
    let dst = Server::start("vgpu", Some("1M"), &dir.path("d.sock"));
    let out = run(
        &["receive", "--listen", "tcp:0.0.0.0:0", "--dest", &dst.uri()],
        10,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--tls-creds") && err.contains("--insecure"),
        "{err}"
    );
}

/// Relays one TCP connection to `to`, recording what the sender sent.
fn relay(to: String) -> (String, Arc<Mutex<Vec<u8>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = format!("tcp:{}", l.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rec = seen.clone();
    std::thread::spawn(move || {
        let (a, _) = l.accept().unwrap();
        let b = TcpStream::connect(to.trim_start_matches("tcp:")).unwrap();
        let (mut a2, mut b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
        let back = std::thread::spawn(move || {
            let _ = std::io::copy(&mut b2, &mut a2);
        });
        let (mut a, mut b) = (a, b);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match a.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    rec.lock().unwrap().extend_from_slice(&buf[..n]);
                    if b.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = b.shutdown(std::net::Shutdown::Write);
        let _ = back.join();
    });
    (at, seen)
}

fn captured(tls: Option<&str>, marker: &[u8]) -> Vec<u8> {
    let p = pair("wire");
    // The marker goes into device memory (BAR2).
    p.src.with(|c| {
        for k in 0..16u64 {
            vfio_migrate_backend::RegionAccess::region_write(c, 2, k * 4096, marker).unwrap();
        }
    });
    let recv_args: Vec<&str> = tls.map_or(vec![], |c| vec!["--tls-creds", c]);
    let mut r = Receiver::start(&p.dst.uri(), &recv_args);
    let (at, seen) = relay(r.at.clone());
    let out = migrate(&p.src, &at, &recv_args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(r.child.wait().unwrap().success());
    let v = seen.lock().unwrap().clone();
    assert!(v.len() > 1 << 20, "only {} bytes relayed", v.len());
    v
}

#[test]
fn device_bytes_never_cross_the_wire_in_clear_with_tls() {
    let marker = b"vfio-migrate secret framebuffer marker 5c1e";
    let find = |hay: &[u8]| hay.windows(marker.len()).any(|w| w == marker);
    // Control: in plaintext the marker is on the wire.
    assert!(
        find(&captured(None, marker)),
        "the control run does not show the marker"
    );
    let dir = Dir::new("wire-creds");
    let creds = dir.path("c");
    certs(&creds, &[]);
    assert!(!find(&captured(Some(creds.to_str().unwrap()), marker)));
}

/// A peer that accepts the connection and then says nothing: the handshake
/// ends at the connect deadline with a message that says so, and a SIGTERM
/// during the handshake ends it at once; the source stays RUNNING and intact.
#[test]
fn a_silent_peer_ends_the_handshake_at_its_deadline_and_a_signal_at_once() {
    let p = pair("tls-silent");
    let dir = Dir::new("tls-silent-creds");
    let creds = dir.path("c");
    certs(&creds, &[]);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = format!("tcp:{}", l.local_addr().unwrap());
    // Accept and hold every connection without a byte; say when one came.
    let (tx, accepted) = std::sync::mpsc::channel();
    let held = std::thread::spawn(move || {
        let mut kept = Vec::new();
        for s in l.incoming().take(2) {
            kept.push(s.unwrap());
            tx.send(()).unwrap();
        }
        std::thread::sleep(Duration::from_secs(3));
    });
    let c = creds.to_str().unwrap();
    let src = p.src.uri();
    let args = |timeout: &'static str| {
        [
            "migrate",
            "--source",
            &src,
            "--dest",
            &at,
            "--tls-creds",
            c,
            "--connect-timeout",
            timeout,
        ]
        .map(String::from)
    };
    let t = Instant::now();
    let a = args("2");
    let out = run(&a.iter().map(String::as_str).collect::<Vec<_>>(), 30);
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no answer within 2 s"), "{err}");
    assert!(took < Duration::from_secs(6), "took {took:?}: {err}");
    accepted.recv().unwrap();
    p.source_intact();

    // The same wait, ended by SIGTERM once the peer has accepted.
    let child = Command::new(BIN)
        .args(args("20"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    accepted.recv_timeout(Duration::from_secs(10)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    vfio_migrate_sys::signal::kill(&child, libc::SIGTERM).unwrap();
    let out = wait(child, 10);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{err}");
    assert!(t.elapsed() < Duration::from_secs(2), "{err}");
    p.source_intact();
    held.join().unwrap();
}
