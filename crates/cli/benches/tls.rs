//! What TLS costs a migration: the same device state moved over loopback
//! TCP with and without TLS, in one run.
//!
//! - **whole job**: a vgpu's state (`TLS_BENCH_MEM`, default 1G of device
//!   memory, `--precopy off`) moved by fresh `vfio-migrate migrate` and
//!   `vfio-migrate receive` processes between two fresh `serve` processes,
//!   plaintext and then with `--tls-creds` (certificates made by
//!   `vfio-migrate certs`), alternating, `TLS_BENCH_RUNS` (default 3) runs
//!   each; throughput is the report's transferred bytes over the wall time
//!   of `migrate`. The goal: TLS keeps at least 85 % of the plaintext
//!   throughput.
//! - **the channel alone**: 1 GiB over a loopback TCP connection, plain
//!   and through rustls with the configurations `migrate` and `receive`
//!   build from the same directory — the cipher's ceiling on this machine,
//!   which explains the whole-job figure.
//!
//! Run: `cargo bench -p vfio-migrate --bench tls`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;
use vfio_migrate_engine::tls;
use vfio_migrate_harness::{Options, ServerProcess, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_vfio-migrate");
const GIB: f64 = (1u64 << 30) as f64;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Moves 1 GiB from `a` to `b` in 1 MiB writes; returns GiB/s.
fn copy_gib_s<A: Write, B: Read + Send + 'static>(mut a: A, mut b: B) -> f64 {
    let total = 1u64 << 30;
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        while got < total {
            match b.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n as u64,
            }
        }
        got
    });
    let buf = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    for _ in 0..(total >> 20) {
        a.write_all(&buf).expect("write");
    }
    a.flush().expect("flush");
    let got = reader.join().expect("reader");
    assert_eq!(got, total, "the copy lost bytes");
    total as f64 / GIB / t.elapsed().as_secs_f64()
}

fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    a.set_nodelay(true).unwrap();
    (a, b)
}

/// The channel alone: plain and TLS GiB/s.
fn channel(creds: &Path) -> (f64, f64) {
    let (a, b) = tcp_pair();
    let plain = copy_gib_s(a, b);

    let (a, b) = tcp_pair();
    let server_cfg = tls::server_config(creds, &[]).expect("server config");
    let client_cfg = tls::client_config(creds).expect("client config");
    let server = std::thread::spawn(move || {
        let conn = rustls::ServerConnection::new(server_cfg).unwrap();
        rustls::StreamOwned::new(conn, b)
    });
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(client_cfg, name).unwrap();
    let mut client = rustls::StreamOwned::new(conn, a);
    let server_thread = std::thread::spawn(move || {
        let mut s = server.join().unwrap();
        // Complete the handshake on this side by reading.
        let mut one = [0u8; 1];
        s.read_exact(&mut one).unwrap();
        s
    });
    client.write_all(&[0]).unwrap();
    client.flush().unwrap();
    let server = server_thread.join().unwrap();
    if let Some(cs) = client.conn.negotiated_cipher_suite() {
        println!("  cipher suite {:?}", cs.suite());
    }
    let secure = copy_gib_s(client, server);
    (plain, secure)
}

fn serve(dir: &TempDir, name: &str, mem: &str) -> ServerProcess {
    let sock = dir.join(name);
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--device", "vgpu", "--device-mem", mem, "--socket"])
        .arg(&sock);
    ServerProcess::start_with(cmd, &sock, &Options::default()).expect("serve")
}

fn spawn_receive(dest: &str, creds: Option<&Path>) -> (Child, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(["receive", "--listen", "tcp:127.0.0.1:0", "--dest", dest]);
    if let Some(c) = creds {
        cmd.arg("--tls-creds").arg(c);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("receive");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let at = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("receive said {line:?}"))
        .to_string();
    (child, at)
}

/// One whole migration; returns (bytes moved, seconds).
fn whole_job(mem: &str, creds: Option<&Path>) -> (u64, f64) {
    let dir = TempDir::new("tls-bench").unwrap();
    let src = serve(&dir, "src.sock", mem);
    let dst = serve(&dir, "dst.sock", mem);
    let (mut recv, at) = spawn_receive(&dst.uri(), creds);
    let mut cmd = Command::new(BIN);
    cmd.args(["migrate", "--json", "--precopy", "off", "--source"])
        .arg(src.uri())
        .args(["--dest", &at]);
    if let Some(c) = creds {
        cmd.arg("--tls-creds")
            .arg(c)
            .args(["--tls-hostname", "localhost"]);
    }
    let t = Instant::now();
    let out = cmd.stderr(Stdio::inherit()).output().expect("migrate");
    let secs = t.elapsed().as_secs_f64();
    let status = recv.wait().expect("receive");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("migrate --json");
    assert_eq!(v["status"], "ok", "migration failed: {v}");
    assert!(status.success(), "receive failed: {status}");
    (v["transferred_bytes"].as_u64().unwrap(), secs)
}

fn main() {
    let mem = env_or("TLS_BENCH_MEM", "1G");
    let runs: usize = env_or("TLS_BENCH_RUNS", "3")
        .parse()
        .expect("TLS_BENCH_RUNS");
    let dir = TempDir::new("tls-bench-creds").unwrap();
    let creds = dir.join("creds");
    let made = Command::new(BIN)
        .arg("certs")
        .arg(&creds)
        .args(["--host", "localhost"])
        .output()
        .expect("certs");
    assert!(made.status.success(), "{made:?}");
    // The crypto provider the engine uses (ring).
    let _ = rustls::crypto::ring::default_provider().install_default();

    let (plain_ch, tls_ch) = channel(&creds);
    println!("channel alone, 1 GiB over loopback TCP:");
    println!(
        "  plain {plain_ch:.2} GiB/s, TLS {tls_ch:.2} GiB/s = {:.2} of plain",
        tls_ch / plain_ch
    );

    let mut plain = Vec::new();
    let mut secure = Vec::new();
    let mut moved = 0;
    for _ in 0..runs {
        let (b, s) = whole_job(&mem, None);
        plain.push(b as f64 / GIB / s);
        let (b2, s2) = whole_job(&mem, Some(&creds));
        secure.push(b2 as f64 / GIB / s2);
        moved = b;
    }
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let (p, t) = (best(&plain), best(&secure));
    println!(
        "whole job, vgpu --device-mem {mem} ({:.2} GiB of state), --precopy off, migrate -> receive over tcp:127.0.0.1, best of {runs}:",
        moved as f64 / GIB
    );
    println!("  plaintext runs {plain:.2?} GiB/s");
    println!("  TLS runs       {secure:.2?} GiB/s");
    println!(
        "  TLS / plaintext = {:.2} (goal >= 0.85) {}",
        t / p,
        if t / p >= 0.85 { "ok" } else { "NOT MET" }
    );
}
