//! The data path end to end: a whole `--precopy off` migration of a large
//! vgpu by a fresh `vfio-migrate migrate` process between fresh `serve`
//! processes — unix → unix, and unix → `tcp:` loopback → a `receive`
//! process → unix — each next to a raw relay of the same bytes through the
//! same socket hops ([`super::relay`]), run in turn in the same call. The
//! ratio is relay time / migration time (1.0: as fast as the relay).
//!
//! Hops: unix → unix is server → `migrate` (AF_UNIX), the socket pair
//! between `migrate`'s source and destination sides (AF_UNIX), `migrate` →
//! server (AF_UNIX); over TCP the middle hop is the TCP connection
//! between `migrate` and `receive`. With `--channels N` the device data
//! crosses N middle connections instead of one; the relay keeps one (the
//! faster it is, the stricter the yardstick).

use super::relay::{best_relay, Hop};
use crate::report::bytes;
use anyhow::{bail, Context};
use serde::Serialize;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Instant;
use vfio_migrate_harness::{Options, ServerProcess, TempDir};

/// One kind of move, its runs and ratios.
#[derive(Serialize, Debug)]
pub struct Move {
    /// `unix->unix` or `unix->tcp->unix`.
    pub path: String,
    /// Parallel channels asked for.
    pub channels: u32,
    /// Stream bytes the migration reported (and the relay moved).
    pub bytes: u64,
    /// Wall seconds of each `migrate` process (start to exit; with TCP,
    /// until `receive` exited too).
    pub migrate_s: Vec<f64>,
    /// Wall seconds of each relay run.
    pub relay_s: Vec<f64>,
    /// relay / migrate, run by run.
    pub ratios: Vec<f64>,
    /// Median of `ratios`.
    pub median_ratio: f64,
    /// Median migration throughput.
    pub migrate_gib_s: f64,
    /// Median relay throughput.
    pub relay_gib_s: f64,
    /// Largest peak RSS of `migrate` over the runs.
    pub migrate_peak_rss: u64,
    /// Largest peak RSS of `receive` over the runs (TCP only).
    pub receive_peak_rss: Option<u64>,
    /// Every run verified (device digests equal).
    pub verified: bool,
    /// CPU seconds per GiB moved, by process (median run).
    pub cpu_s_per_gib: Cpu,
    /// The relay's CPU seconds per GiB (all its threads, median run).
    pub relay_cpu_s_per_gib: f64,
}

/// CPU seconds per GiB of each process of a move.
#[derive(Serialize, Debug, Default, Clone, Copy)]
pub struct Cpu {
    /// The source `serve`.
    pub source_server: f64,
    /// `migrate`.
    pub migrate: f64,
    /// `receive` (TCP only).
    pub receive: f64,
    /// The destination `serve`.
    pub dest_server: f64,
    /// All of them.
    pub total: f64,
}

pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn gib_s(bytes: u64, s: f64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64 / s.max(1e-9)
}

/// Starts a vgpu `serve` of `mem` bytes on `dir/name`.
pub fn server(dir: &TempDir, name: &str, mem: u64) -> anyhow::Result<ServerProcess> {
    let exe = std::env::current_exe()?;
    let sock = dir.join(name);
    let mut cmd = Command::new(exe);
    cmd.args(["serve", "--device", "vgpu", "--device-mem"])
        .arg(mem.to_string())
        .arg("--socket")
        .arg(&sock);
    let opts = Options {
        echo_stderr: true,
        ..Options::default()
    };
    ServerProcess::start_with(cmd, &sock, &opts).context("starting `vfio-migrate serve`")
}

/// A `migrate --json --precopy off` of `src` to `dest` (a fresh process,
/// no control socket); the caller adds its arguments.
pub fn migrate_cmd(src: &str, dest: &str) -> anyhow::Result<Command> {
    let mut c = Command::new(std::env::current_exe()?);
    c.args(["migrate", "--json", "--no-control", "--precopy", "off"])
        .args(["--source", src, "--dest", dest]);
    Ok(c)
}

/// A running `receive` process.
pub struct Receiver {
    /// The process.
    pub child: Child,
    /// The `tcp:` endpoint it listens on.
    pub endpoint: String,
    /// The rest of its stdout (its JSON report), once it exits.
    rest: std::thread::JoinHandle<String>,
}

impl Receiver {
    /// Waits for it to exit; returns its JSON report.
    pub fn finish(mut self) -> anyhow::Result<serde_json::Value> {
        self.child.wait()?;
        let s = self
            .rest
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))?;
        serde_json::from_str(&s).with_context(|| format!("receive printed {s:?}"))
    }
}

/// A `receive --json` process loading into `dest`, listening on `listen`
/// (port 0: a free one), with `extra` arguments.
pub fn receiver(dest: &str, listen: &str, extra: &[String]) -> anyhow::Result<Receiver> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["receive", "--json", "--no-control", "--listen", listen])
        .args(["--dest", dest])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting receive")?;
    // With --json only the report goes to stdout; where it listens is
    // said on stderr (the rest of which is drained, unread).
    let mut err = BufReader::new(child.stderr.take().expect("piped"));
    let mut line = String::new();
    while line.is_empty() || !line.starts_with("listening on ") {
        line.clear();
        if err.read_line(&mut line)? == 0 {
            let _ = child.kill();
            bail!("receive exited before it said where it listens");
        }
    }
    let endpoint = line.trim()["listening on ".len()..].to_string();
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    let mut out = child.stdout.take().expect("piped");
    let rest = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut rest);
        rest
    });
    Ok(Receiver {
        child,
        endpoint,
        rest,
    })
}

/// One migration run: fresh servers (and `receive`), then a timed
/// `migrate` process. Returns (seconds, report JSON, receive's JSON, CPU
/// seconds of the source and destination servers meanwhile).
#[allow(clippy::type_complexity)]
fn one_move(
    mem: u64,
    tcp: bool,
    migrate_args: &[String],
) -> anyhow::Result<(
    f64,
    serde_json::Value,
    Option<serde_json::Value>,
    (f64, f64),
)> {
    let dir = TempDir::new("bench-move").context("creating a directory for the sockets")?;
    let a = server(&dir, "a.sock", mem)?;
    let b = server(&dir, "b.sock", mem)?;
    let recv = if tcp {
        Some(receiver(&b.uri(), "tcp:127.0.0.1:0", &[])?)
    } else {
        None
    };
    let dest = recv.as_ref().map_or(b.uri(), |r| r.endpoint.clone());
    let cpu = |s: &ServerProcess| crate::procstat::cpu_seconds(Some(s.pid())).unwrap_or(0.0);
    let (ca, cb) = (cpu(&a), cpu(&b));
    let t = Instant::now();
    let out = migrate_cmd(&a.uri(), &dest)?
        .args(migrate_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .context("running migrate")?;
    let rjson = match recv {
        Some(r) => Some(r.finish()?),
        None => None,
    };
    let secs = t.elapsed().as_secs_f64();
    let servers = (cpu(&a) - ca, cpu(&b) - cb);
    drop((a, b));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("migrate output")?;
    if v["status"] != "ok" {
        bail!("the migration failed: {}", v["error"]);
    }
    Ok((secs, v, rjson, servers))
}

/// `runs` migrations of a `mem`-byte vgpu (unix → unix, or through TCP
/// and `receive`), each followed by a relay of the same bytes.
pub fn moves(mem: u64, tcp: bool, channels: u32, runs: usize) -> anyhow::Result<Move> {
    let hops: &[Hop] = if tcp {
        &[Hop::Unix, Hop::Tcp, Hop::Unix]
    } else {
        &[Hop::Unix, Hop::Unix, Hop::Unix]
    };
    let path = if tcp { "unix->tcp->unix" } else { "unix->unix" };
    let mut args = Vec::new();
    if channels > 1 {
        args = vec!["--channels".to_string(), channels.to_string()];
    }
    let mut m = Move {
        path: path.into(),
        channels,
        bytes: 0,
        migrate_s: Vec::new(),
        relay_s: Vec::new(),
        ratios: Vec::new(),
        median_ratio: 0.0,
        migrate_gib_s: 0.0,
        relay_gib_s: 0.0,
        migrate_peak_rss: 0,
        receive_peak_rss: None,
        verified: true,
        cpu_s_per_gib: Cpu::default(),
        relay_cpu_s_per_gib: 0.0,
    };
    let mut cpus = Vec::new();
    let mut relay_cpus = Vec::new();
    for i in 0..runs.max(1) {
        let (secs, v, r, (cs, cd)) = one_move(mem, tcp, &args)?;
        let gib = v["transferred_bytes"].as_u64().unwrap_or(0) as f64 / (1u64 << 30) as f64;
        let per = |x: f64| x / gib.max(1e-9);
        let mut c = Cpu {
            source_server: per(cs),
            migrate: per(v["cpu_seconds"].as_f64().unwrap_or(0.0)),
            receive: 0.0,
            dest_server: per(cd),
            total: 0.0,
        };
        let moved = v["transferred_bytes"].as_u64().unwrap_or(0);
        m.bytes = moved;
        m.verified &= v["verified"] == true;
        m.migrate_peak_rss = m
            .migrate_peak_rss
            .max(v["peak_rss_bytes"].as_u64().unwrap_or(0));
        if let Some(r) = r {
            let rss = r["peak_rss_bytes"].as_u64().unwrap_or(0);
            m.receive_peak_rss = Some(m.receive_peak_rss.unwrap_or(0).max(rss));
            c.receive = per(r["cpu_seconds"].as_f64().unwrap_or(0.0));
        }
        c.total = c.source_server + c.migrate + c.receive + c.dest_server;
        cpus.push(c);
        let relayed = best_relay(hops, moved)?;
        relay_cpus.push(per(relayed.cpu));
        let rs = relayed.secs;
        eprintln!(
            "  {path} ({channels} channel(s)) run {}: migrate {:.3} s, relay {:.3} s: {:.2}x",
            i + 1,
            secs,
            rs,
            rs / secs
        );
        m.migrate_s.push(secs);
        m.relay_s.push(rs);
        m.ratios.push(rs / secs);
    }
    m.median_ratio = median(&m.ratios);
    cpus.sort_by(|a, b| a.total.total_cmp(&b.total));
    m.cpu_s_per_gib = cpus[cpus.len() / 2];
    m.relay_cpu_s_per_gib = median(&relay_cpus);
    m.migrate_gib_s = gib_s(m.bytes, median(&m.migrate_s));
    m.relay_gib_s = gib_s(m.bytes, median(&m.relay_s));
    Ok(m)
}

/// One line per move.
pub fn print(m: &Move) {
    let rss = m
        .receive_peak_rss
        .map(|r| format!(", receive {}", bytes(r)))
        .unwrap_or_default();
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("{lo:.2}-{hi:.2}")
    };
    println!(
        "{:<16} {} ch: migrate {:.2} GiB/s, relay {:.2} GiB/s: {:.2}x the relay (runs {}); peak RSS migrate {}{rss}; verified {}",
        m.path,
        m.channels,
        m.migrate_gib_s,
        m.relay_gib_s,
        m.median_ratio,
        range(&m.ratios),
        bytes(m.migrate_peak_rss),
        m.verified
    );
    let c = &m.cpu_s_per_gib;
    println!(
        "{:<16} CPU s/GiB: source serve {:.2}, migrate {:.2}, receive {:.2}, dest serve {:.2}: total {:.2}; relay {:.2} ({:.2}x the relay's)",
        "",
        c.source_server,
        c.migrate,
        c.receive,
        c.dest_server,
        c.total,
        m.relay_cpu_s_per_gib,
        c.total / m.relay_cpu_s_per_gib.max(1e-9)
    );
}
