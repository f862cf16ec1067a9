//! Docs that run: every `vfio-migrate` command in README.md, docs/*.md and
//! the `--help` of every subcommand is executed against real servers, in
//! the order written, and must succeed.
//!
//! What the runner changes so a command written for a real host runs here
//! (and nothing else):
//!
//! - each `unix:PATH` becomes a socket in a temporary directory served by a
//!   fresh `vfio-migrate serve` process (a serial when the name says
//!   serial, else a vgpu); the servers a `migrate`/`receive` names are
//!   started afresh before it, so each scenario starts from a running
//!   source and an unused destination;
//! - `file:PATH`, `--tls-creds DIR`, `certs DIR`, `man --dir DIR`,
//!   `--plot FILE` and
//!   output redirections point into the temporary directory (credentials
//!   a command uses before the text made them are made with `certs`);
//! - a `receive` runs in the background (it waits for its sender);
//! - host names become `localhost` and listen addresses `127.0.0.1`, each
//!   port a free port (the same port for the same number);
//! - `kernel:` devices do not exist here: those commands must fail with the
//!   locate error that says what to check (the kernel test in
//!   `tests/kernel` runs them against real kernel devices);
//! - a trailing `&` runs the command in the background (a `receive` is
//!   waited for until it listens, a `migrate` until its control socket is
//!   up; a background migration's `--bandwidth-limit` becomes 1M so that
//!   the small test devices are still migrating for the commands after
//!   it).
//!
//! Lines of other programs (`scp`, QEMU, libvfio-user's `./server`) are not
//! run here; the peer suites run those.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One command as written, and where.
#[derive(Debug, Clone)]
struct Doc {
    place: String,
    line: String,
}

/// The `vfio-migrate` command lines of one fenced block, continuations
/// joined, prompts and comments dropped.
fn commands(block: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for raw in block.lines() {
        let l = raw.trim_end();
        if let Some(head) = l.strip_suffix('\\') {
            cur.push_str(head.trim_start());
            cur.push(' ');
            continue;
        }
        cur.push_str(l.trim_start());
        let full = std::mem::take(&mut cur);
        let full = full.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut s = full.as_str();
        for p in ["a$ ", "b$ ", "$ "] {
            s = s.strip_prefix(p).unwrap_or(s);
        }
        let s = match s.find(" #") {
            Some(i) => s[..i].trim_end(),
            None => s,
        };
        let s = s.strip_prefix("target/release/").unwrap_or(s);
        if s.starts_with("vfio-migrate ") {
            out.push(s.to_string());
        }
    }
    out
}

/// Fenced shell blocks of a markdown file (```sh, ```bash, ```shell or
/// no language; ```text is output shown, not run).
fn blocks(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    let mut cur: Option<(usize, String, bool)> = None;
    for (i, l) in text.lines().enumerate() {
        if let Some(info) = l.trim_start().strip_prefix("```") {
            match cur.take() {
                Some((line, b, true)) => out.push((line, b)),
                Some(_) => {}
                None => {
                    let shell = matches!(info.trim(), "" | "sh" | "bash" | "shell");
                    cur = Some((i + 1, String::new(), shell));
                }
            }
        } else if let Some((_, b, _)) = cur.as_mut() {
            b.push_str(l);
            b.push('\n');
        }
    }
    out
}

/// Every scenario: the commands of one block (or one `--help`), in order.
fn scenarios() -> Vec<Vec<Doc>> {
    let mut files = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut out = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        for (line, b) in blocks(&f) {
            let cmds: Vec<Doc> = commands(&b)
                .into_iter()
                .map(|c| Doc {
                    place: format!("{name}:{line}"),
                    line: c,
                })
                .collect();
            if !cmds.is_empty() {
                out.push(cmds);
            }
        }
    }
    let top = String::from_utf8(cli(&["--help"]).stdout).unwrap();
    let subs: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|s| s != "help")
        .collect();
    assert!(subs.len() >= 8, "subcommands: {subs:?}");
    for s in subs {
        let help = String::from_utf8(cli(&[&s, "--help"]).stdout).unwrap();
        let cmds: Vec<Doc> = commands(&help)
            .into_iter()
            .map(|c| Doc {
                place: format!("vfio-migrate {s} --help"),
                line: c,
            })
            .collect();
        if !cmds.is_empty() {
            out.push(cmds);
        }
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The world one scenario runs in.
struct World {
    dir: Dir,
    servers: HashMap<String, (PathBuf, Option<Server>)>,
    files: HashMap<String, PathBuf>,
    ports: HashMap<String, u16>,
    background: Vec<(String, Child)>,
}

impl World {
    fn new(tag: &str) -> Self {
        let dir = Dir::new(tag);
        std::fs::create_dir_all(dir.path("rt")).unwrap();
        Self {
            dir,
            servers: HashMap::new(),
            files: HashMap::new(),
            ports: HashMap::new(),
            background: Vec::new(),
        }
    }

    fn socket(&mut self, doc_path: &str) -> String {
        let n = self.servers.len();
        let dir = &self.dir;
        let e = self
            .servers
            .entry(doc_path.to_string())
            .or_insert_with(|| (dir.path(&format!("s{n}.sock")), None));
        e.0.display().to_string()
    }

    /// A path in the test directory for a path of the text (its file
    /// name kept: extensions matter).
    fn file(&mut self, doc_path: &str) -> String {
        let n = self.files.len();
        let dir = &self.dir;
        let base = Path::new(doc_path.trim_matches('"'))
            .file_name()
            .map_or("f".into(), |b| b.to_string_lossy().into_owned());
        self.files
            .entry(doc_path.to_string())
            .or_insert_with(|| dir.path(&format!("f{n}-{base}")))
            .display()
            .to_string()
    }

    fn port(&mut self, p: &str) -> u16 {
        *self.ports.entry(p.to_string()).or_insert_with(free_port)
    }

    /// (Re)starts the server of a doc socket path.
    fn serve(&mut self, doc_path: &str, fresh: bool) {
        let kind = if doc_path.contains("serial") {
            "serial"
        } else {
            "vgpu"
        };
        let e = self.servers.get_mut(doc_path).expect("mapped");
        if e.1.is_some() && !fresh {
            return;
        }
        if let Some(mut s) = e.1.take() {
            s.kill();
        }
        let _ = std::fs::remove_file(&e.0);
        let mem = (kind == "vgpu").then_some("8M");
        e.1 = Some(Server::start(kind, mem, &e.0));
    }

    /// The command as it runs here, and the servers it names.
    fn rewrite(&mut self, line: &str) -> (Vec<String>, Vec<String>) {
        let mut out = Vec::new();
        let mut named = Vec::new();
        let words: Vec<&str> = line.split_whitespace().collect();
        let mut i = 0;
        while i < words.len() {
            let w = words[i];
            let prev = if i > 0 { words[i - 1] } else { "" };
            let r = if let Some(p) = w.strip_prefix("unix:") {
                named.push(p.to_string());
                format!("unix:{}", self.socket(p))
            } else if let Some(p) = w.strip_prefix("file:") {
                format!("file:{}", self.file(p))
            } else if let Some(rest) = w.strip_prefix("tcp:") {
                let (host, port) = rest.rsplit_once(':').expect("tcp:HOST:PORT");
                let host = match host {
                    "0.0.0.0" | "::" | "[::]" => "127.0.0.1",
                    h if h.parse::<std::net::IpAddr>().is_ok() => h,
                    _ => "localhost",
                };
                let port = if port == "0" { 0 } else { self.port(port) };
                format!("tcp:{host}:{port}")
            } else if w.starts_with("kernel:") {
                w.replace("<mdev-uuid>", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
            } else if prev == "--tls-creds" {
                // Credentials a command uses before the doc made them:
                // made as the README says, for the names dialled here.
                let dir = self.file(w);
                if !Path::new(&dir).exists() {
                    let o = cli(&["certs", &dir, "--host", "localhost", "--host", "127.0.0.1"]);
                    assert!(o.status.success(), "{o:?}");
                }
                dir
            } else if matches!(prev, "--dir" | "certs" | ">" | "--plot")
                || (prev == "inspect" && !w.starts_with('-'))
            {
                self.file(w)
            } else if prev == "--host" && w.parse::<std::net::IpAddr>().is_err() {
                "localhost".into()
            } else if prev == "--socket" {
                named.push(w.to_string());
                self.socket(w)
            } else {
                w.to_string()
            };
            out.push(r);
            i += 1;
        }
        (out, named)
    }
}

/// Reads the child's stderr (or stdout) until a line has `needle`; the
/// rest is drained in the background.
fn read_until(child: &mut Child, needle: &str, on_stdout: bool, secs: u64) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    let want = needle.to_string();
    let r: Box<dyn std::io::Read + Send> = if on_stdout {
        Box::new(child.stdout.take().unwrap())
    } else {
        Box::new(child.stderr.take().unwrap())
    };
    std::thread::spawn(move || {
        let mut seen = String::new();
        let mut sent = false;
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            seen.push_str(&l);
            seen.push('\n');
            if !sent && l.contains(&want) {
                let _ = tx.send(seen.clone());
                sent = true;
            }
        }
        if !sent {
            let _ = tx.send(seen);
        }
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| format!("(nothing with {needle:?} within {secs} s)"))
}

fn run_scenario(tag: &str, docs: &[Doc], failures: &mut Vec<String>) {
    let mut w = World::new(tag);
    let rt = w.dir.path("rt");
    for d in docs {
        let (mut words, named) = w.rewrite(&d.line);
        // What follows `&&`, `;` or `|` is another program.
        if let Some(i) = words
            .iter()
            .position(|x| matches!(x.as_str(), "&&" | ";" | "|"))
        {
            words.truncate(i);
        }
        let sub = words.get(1).cloned().unwrap_or_default();
        let mut background = words.last().is_some_and(|x| x == "&");
        if background {
            words.pop();
        }
        // A receive waits for its sender: it runs beside what follows.
        background |= sub == "receive";
        // A migration in the background is there for the commands after
        // it (status, cancel): paced so that it is still running then.
        if background && sub == "migrate" {
            if let Some(i) = words.iter().position(|x| x == "--bandwidth-limit") {
                words[i + 1] = "1M".into();
            }
        }
        let redirect = words.iter().position(|x| x == ">").map(|i| {
            let f = words[i + 1].clone();
            words.truncate(i);
            f
        });
        if sub == "serve" {
            // The server the command describes, started by the runner's
            // own rules (its socket is mapped already).
            let p = d
                .line
                .split_whitespace()
                .skip_while(|x| *x != "--socket")
                .nth(1)
                .expect("serve --socket PATH")
                .to_string();
            w.serve(&p, true);
            continue;
        }
        for p in &named {
            w.serve(p, matches!(sub.as_str(), "migrate" | "receive"));
        }
        let mut cmd = Command::new(BIN);
        cmd.args(&words[1..])
            .env("XDG_RUNTIME_DIR", &rt)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let shown = format!("{} `{}` (ran as `{}`)", d.place, d.line, words.join(" "));
        if background {
            let mut child = cmd.spawn().unwrap();
            let (needle, on_stdout) = if sub == "receive" {
                ("listening on", !words.iter().any(|x| x == "--json"))
            } else {
                ("control socket:", false)
            };
            let seen = read_until(&mut child, needle, on_stdout, 30);
            if !seen.contains(needle) {
                failures.push(format!("{shown}: never said {needle:?}: {seen}"));
            }
            w.background.push((shown, child));
            continue;
        }
        let out = wait(cmd.spawn().unwrap(), 120);
        if let Some(f) = redirect {
            std::fs::write(f, &out.stdout).unwrap();
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if d.line.contains("kernel:") {
            let located = [
                "no PCI device",
                "no mdev",
                "not an mdev UUID",
                "does not exist",
            ]
            .iter()
            .any(|x| err.contains(x));
            if out.status.code() != Some(1) || !located {
                failures.push(format!("{shown}: expected the locate error, got {out:?}"));
            }
            continue;
        }
        if !out.status.success() {
            failures.push(format!(
                "{shown}: exit {:?}\nstdout: {}\nstderr: {err}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout)
            ));
        }
    }
    // Background commands must finish well too (a receive once its sender
    // is done, a migration once it is cancelled or complete).
    for (shown, child) in w.background.drain(..) {
        let t = Instant::now();
        let out = wait(child, 60);
        let ok = out.status.success()
            || (out.status.code() == Some(130) && docs.iter().any(|d| d.line.contains(" cancel")));
        if !ok {
            failures.push(format!(
                "{shown} (background): exit {:?} after {:?}\nstderr: {}",
                out.status.code(),
                t.elapsed(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    std::thread::sleep(Duration::from_millis(10));
}

#[test]
fn every_documented_command_runs() {
    let all = scenarios();
    let total: usize = all.iter().map(Vec::len).sum();
    assert!(total >= 30, "found only {total} documented commands");
    let mut failures = Vec::new();
    for (i, s) in all.iter().enumerate() {
        run_scenario(&format!("docs{i}"), s, &mut failures);
    }
    assert!(
        failures.is_empty(),
        "{} of {total} documented commands failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn the_extractor_finds_commands_as_written() {
    let b = "a$ vfio-migrate receive --listen tcp:0.0.0.0:4444 \\\n    --dest unix:/run/b.sock   # there\nscp x y\n$ target/release/vfio-migrate serve --device vgpu --socket /tmp/v.sock &\n";
    assert_eq!(
        commands(b),
        [
            "vfio-migrate receive --listen tcp:0.0.0.0:4444 --dest unix:/run/b.sock",
            "vfio-migrate serve --device vgpu --socket /tmp/v.sock &"
        ]
    );
}
