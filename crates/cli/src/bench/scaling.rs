//! Channel scaling where one flow is the limit: two network namespaces
//! joined by a veth pair, `serve` + `migrate` in one, `serve` + `receive`
//! in the other, and every TCP flow from the source held to the same rate
//! by the network — an HTB class of its own per source port (the source
//! namespace's ephemeral ports are narrowed to 16, each with a `u32`
//! filter; this kernel has no `fq` or `netem`). A whole `--precopy off`
//! migration with N = 1, 2, 4, 8 channels; the figure is its throughput
//! over N × the per-flow rate. Needs root, `ip` and `tc`.

use super::datapath::median;
use crate::report::bytes;
use anyhow::{bail, Context};
use serde::Serialize;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;
use vfio_migrate_harness::TempDir;

/// First of the source namespace's 16 ephemeral ports.
const PORT0: u16 = 40000;
const PORTS: u16 = 16;

fn sh(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The namespace pair; deleted on drop.
struct Pair {
    a: String,
    b: String,
}

impl Pair {
    fn new(rate: u64) -> anyhow::Result<Self> {
        let tag = format!("vmsc{}", std::process::id() % 100_000);
        let p = Self {
            a: format!("{tag}a"),
            b: format!("{tag}b"),
        };
        let (va, vb) = (format!("{tag}va"), format!("{tag}vb"));
        sh(&["ip", "netns", "add", &p.a])?;
        sh(&["ip", "netns", "add", &p.b])?;
        sh(&[
            "ip", "link", "add", &va, "netns", &p.a, "type", "veth", "peer", "name", &vb, "netns",
            &p.b,
        ])?;
        for (ns, dev, host) in [(&p.a, &va, 1), (&p.b, &vb, 2)] {
            let addr = format!("10.251.0.{host}/24");
            sh(&["ip", "-n", ns, "addr", "add", &addr, "dev", dev])?;
            sh(&["ip", "-n", ns, "link", "set", dev, "up"])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        let range = format!("{PORT0} {}", PORT0 + PORTS - 1);
        sh(&[
            "ip",
            "netns",
            "exec",
            &p.a,
            "sysctl",
            "-q",
            "-w",
            &format!("net.ipv4.ip_local_port_range={range}"),
        ])?;
        // Every flow from a source port gets a class of `rate`; the rest
        // (nothing, here) is not held.
        let bits = format!("{}bit", rate * 8);
        sh(&[
            "tc", "-n", &p.a, "qdisc", "add", "dev", &va, "root", "handle", "1:", "htb", "default",
            "99",
        ])?;
        sh(&[
            "tc", "-n", &p.a, "class", "add", "dev", &va, "parent", "1:", "classid", "1:99", "htb",
            "rate", "10gbit", "quantum", "60000",
        ])?;
        for i in 0..PORTS {
            let class = format!("1:{}", 10 + i);
            sh(&[
                "tc", "-n", &p.a, "class", "add", "dev", &va, "parent", "1:", "classid", &class,
                "htb", "rate", &bits, "ceil", &bits, "quantum", "60000",
            ])?;
            let port = (PORT0 + i).to_string();
            sh(&[
                "tc", "-n", &p.a, "filter", "add", "dev", &va, "parent", "1:", "protocol", "ip",
                "prio", "1", "u32", "match", "ip", "sport", &port, "0xffff", "flowid", &class,
            ])?;
        }
        Ok(p)
    }

    fn cmd(&self, ns: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]);
        c.arg(std::env::current_exe().expect("our executable"));
        c
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.a]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.b]).status();
    }
}

/// One point of the curve.
#[derive(Serialize, Debug)]
pub struct Point {
    /// Channels.
    pub channels: u32,
    /// Migration throughput (stream bytes over the `migrate` wall time),
    /// bytes/s, each run.
    pub throughput: Vec<f64>,
    /// Median throughput over channels × the per-flow rate.
    pub vs_held_rate: f64,
}

/// The curve.
#[derive(Serialize, Debug)]
pub struct Scaling {
    /// Each flow's rate, bytes/s.
    pub per_flow_rate: u64,
    /// Device memory moved.
    pub device_mem: u64,
    /// N = 1, 2, 4, 8.
    pub points: Vec<Point>,
}

fn serve(
    p: &Pair,
    ns: &str,
    dir: &TempDir,
    name: &str,
    mem: u64,
) -> anyhow::Result<std::process::Child> {
    let sock = dir.join(name);
    let mut c = p.cmd(ns);
    c.args([
        "serve",
        "--device",
        "vgpu",
        "--device-mem",
        &mem.to_string(),
        "--socket",
    ])
    .arg(&sock)
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut child = c.spawn().context("starting serve")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    if !line.starts_with("listening") {
        let _ = child.kill();
        bail!("serve said {line:?}");
    }
    Ok(child)
}

fn one(p: &Pair, mem: u64, channels: u32) -> anyhow::Result<f64> {
    let dir = TempDir::new("bench-scale")?;
    let mut a = serve(p, &p.a, &dir, "a.sock", mem)?;
    let mut b = serve(p, &p.b, &dir, "b.sock", mem)?;
    let mut r = p.cmd(&p.b);
    r.args([
        "receive",
        "--insecure",
        "--no-control",
        "--listen",
        "tcp:10.251.0.2:0",
        "--dest",
    ])
    .arg(format!("unix:{}", dir.join("b.sock").display()))
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut recv = r.spawn().context("starting receive")?;
    let mut out = BufReader::new(recv.stdout.take().expect("piped"));
    let mut line = String::new();
    out.read_line(&mut line)?;
    let ep = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or("")
        .to_string();
    let t = Instant::now();
    let m = p
        .cmd(&p.a)
        .args([
            "migrate",
            "--json",
            "--no-control",
            "--precopy",
            "off",
            "--channels",
            &channels.to_string(),
            "--source",
        ])
        .arg(format!("unix:{}", dir.join("a.sock").display()))
        .args(["--dest", &ep])
        .stderr(Stdio::null())
        .output()?;
    let secs = t.elapsed().as_secs_f64();
    let _ = recv.wait();
    for c in [&mut a, &mut b] {
        let _ = c.kill();
        let _ = c.wait();
    }
    let v: serde_json::Value = serde_json::from_slice(&m.stdout).context("migrate output")?;
    if v["status"] != "ok" || v["verified"] != true {
        bail!("the migration failed: {}", v["error"]);
    }
    if v["channels"].as_u64() != Some(u64::from(channels)) {
        bail!("{channels} channels asked, {} used", v["channels"]);
    }
    Ok(v["transferred_bytes"].as_u64().unwrap_or(0) as f64 / secs)
}

/// The curve for `rate` bytes/s per flow, `runs` runs per point.
pub fn scaling(rate: u64, mem: u64, runs: usize) -> anyhow::Result<Scaling> {
    let p = Pair::new(rate).context("setting up the namespaces (needs root, ip and tc)")?;
    let mut points = Vec::new();
    for n in [1u32, 2, 4, 8] {
        let mut thr = Vec::new();
        for _ in 0..runs.max(1) {
            thr.push(one(&p, mem, n)?);
        }
        let vs = median(&thr) / (f64::from(n) * rate as f64);
        eprintln!(
            "  {n} channel(s): {}/s = {vs:.2} x {n} x {}/s",
            bytes(median(&thr) as u64),
            bytes(rate)
        );
        points.push(Point {
            channels: n,
            throughput: thr,
            vs_held_rate: vs,
        });
    }
    Ok(Scaling {
        per_flow_rate: rate,
        device_mem: mem,
        points,
    })
}

/// The curve, one line per point.
pub fn print(s: &Scaling) {
    println!(
        "channel scaling ({} device, each flow held to {}/s):",
        bytes(s.device_mem),
        bytes(s.per_flow_rate)
    );
    for p in &s.points {
        println!(
            "  {} channel(s): {:>10}/s = {:.2} x N x the per-flow rate",
            p.channels,
            bytes(median(&p.throughput) as u64),
            p.vs_held_rate
        );
    }
}
