//! The destination's splice path end to end (`receive` over plaintext
//! TCP into a `serve` process): device data goes link → pipe → device
//! server without passing through `receive`, and the server checks each
//! record's checksum before the device takes it. A byte flipped in transit
//! or a connection cut inside a record fails the migration cleanly: the
//! source device is back RUNNING with its state unchanged, the destination
//! does not run.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use support::*;
use vfio_migrate_backend::{MigState, MigrationDevice};

/// A `receive --json` into `dest`; its child and the endpoint it listens on.
fn receive(dest: &str) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args([
            "receive",
            "--json",
            "--no-control",
            "--listen",
            "tcp:127.0.0.1:0",
        ])
        .args(["--dest", dest, "--stall-timeout", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("listening on ") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "receive exited");
    }
    let at = line.trim()["listening on ".len()..].to_string();
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    (child, at)
}

/// What the proxy does to the source's bytes.
#[derive(Clone, Copy)]
enum Fault {
    /// Flips one byte at this stream offset.
    Flip(u64),
    /// Closes both connections after this many bytes.
    Cut(u64),
}

/// A one-connection TCP proxy to `to` that applies `fault` to the
/// source → destination direction; returns the endpoint to migrate to.
fn proxy(to: &str, fault: Fault) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = format!("tcp:{}", l.local_addr().unwrap());
    let to = to.strip_prefix("tcp:").unwrap().to_string();
    std::thread::spawn(move || {
        let (mut a, _) = l.accept().unwrap();
        let mut b = TcpStream::connect(&to).unwrap();
        let (mut a2, mut b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut b2, &mut a2);
            let _ = a2.shutdown(Shutdown::Both);
        });
        let mut buf = vec![0u8; 64 << 10];
        let mut off = 0u64;
        loop {
            let n = match a.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = &mut buf[..n];
            let end = off + n as u64;
            match fault {
                Fault::Flip(x) if (off..end).contains(&x) => chunk[(x - off) as usize] ^= 0x5a,
                Fault::Cut(x) if end >= x => {
                    let _ = b.write_all(&chunk[..(x - off) as usize]);
                    break;
                }
                _ => {}
            }
            if b.write_all(chunk).is_err() {
                break;
            }
            off = end;
        }
        let _ = a.shutdown(Shutdown::Both);
        let _ = b.shutdown(Shutdown::Both);
    });
    at
}

/// A seeded 16 MiB vgpu's digest.
fn seed(s: &Server) -> u64 {
    s.with(|c| {
        write(c, vgpu::SEED, 0x5eed);
        stopped_digest(c, vgpu::DIGEST)
    })
}

#[test]
fn receive_splices_device_data_into_the_device_verified() {
    let dir = Dir::new("dsplice-ok");
    let src = Server::start("vgpu", Some("16M"), &dir.path("a.sock"));
    let dst = Server::start("vgpu", Some("16M"), &dir.path("b.sock"));
    let digest = seed(&src);
    let (recv, at) = receive(&dst.uri());
    let out = run(
        &[
            "migrate",
            "--source",
            &src.uri(),
            "--dest",
            &at,
            "--precopy",
            "off",
            "--json",
        ],
        60,
    );
    let r = wait(recv, 30);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mj = json(&out);
    assert_eq!(mj["verified"], true);
    // At the source every byte of device data went server -> pipe -> link
    // by splice (without pre-copy the size is not estimated: no floor).
    let sent = &mj["devices"][0];
    assert!(sent["stopcopy_bytes"].as_u64().unwrap() > 16 << 20, "{mj}");
    assert_eq!(sent["spliced_bytes"], sent["stopcopy_bytes"], "{mj}");
    let rj = json(&r);
    let dev = &rj["devices"][0];
    // Every 1 MiB record of device data went by splice (only a short
    // last one, under a quarter MiB, was read).
    let data = dev["data_bytes"].as_u64().unwrap();
    let spliced = dev["spliced_bytes"].as_u64().unwrap();
    assert!(data > 16 << 20, "{rj}");
    assert!(spliced <= data && spliced >= data - (256 << 10), "{rj}");
    dst.with(|c| {
        assert_eq!(c.state().unwrap(), MigState::Running);
        assert_eq!(stopped_digest(c, vgpu::DIGEST), digest);
    });
}

/// Runs a migration through a faulty proxy; checks it fails cleanly and
/// returns migrate's stderr.
fn fails_cleanly(tag: &str, fault: Fault) -> String {
    let dir = Dir::new(tag);
    let src = Server::start("vgpu", Some("16M"), &dir.path("a.sock"));
    let dst = Server::start("vgpu", Some("16M"), &dir.path("b.sock"));
    let digest = seed(&src);
    let (recv, at) = receive(&dst.uri());
    let via = proxy(&at, fault);
    let out = run(
        &[
            "migrate",
            "--source",
            &src.uri(),
            "--dest",
            &via,
            "--precopy",
            "off",
            "--stall-timeout",
            "5",
        ],
        60,
    );
    let r = wait(recv, 30);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(!r.status.success());
    // The source runs again, its state untouched; the destination does
    // not run on what it got.
    src.with(|c| {
        assert_eq!(c.state().unwrap(), MigState::Running);
        assert_eq!(stopped_digest(c, vgpu::DIGEST), digest);
    });
    // (Its server takes one client at a time: once `receive` is gone.)
    let t = std::time::Instant::now();
    let mut c = loop {
        match vfio_migrate_client::Client::connect(dir.path("b.sock")) {
            Ok(c) => break c,
            Err(e) if t.elapsed().as_secs() < 10 => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_ne!(c.state().unwrap(), MigState::Running);
    text(&out.stderr)
}

#[test]
fn a_byte_flipped_in_device_data_is_refused_by_the_server_and_the_source_runs_on() {
    // 8 MiB in: inside a 1 MiB device-data record's payload.
    let m = fails_cleanly("dsplice-flip", Fault::Flip((8 << 20) + 4321));
    assert!(m.contains("checksum"), "{m}");
    assert!(
        m.contains("MIG_DATA_WRITE"),
        "the device server found it: {m}"
    );
}

#[test]
fn a_connection_cut_inside_a_record_fails_cleanly_and_the_source_runs_on() {
    let m = fails_cleanly("dsplice-cut", Fault::Cut((5 << 20) + 777));
    assert!(m.contains("stop-copy"), "{m}");
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
