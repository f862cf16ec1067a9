//! The control socket of a running `migrate` or `receive`: another shell
//! asks it for the migration's status (`vfio-migrate status`) or cancels it
//! (`vfio-migrate cancel`, the same rollback as Ctrl-C).
//!
//! One UNIX stream socket per process, `<dir>/<role>-<pid>.sock` (mode
//! 0600; `dir` from [`default_dir`] unless `--control PATH`), removed when
//! the process ends. The protocol is one JSON line each way:
//!
//! - `{"cmd":"status"}` → `{"ok":true,"status":{...}}` ([`Status`]);
//! - `{"cmd":"cancel"}` → `{"ok":true,"cancelling":true}`, then, on the
//!   same connection when the migration has ended,
//!   `{"finished":{...}}` (its outcome: status, exit code, error, what each
//!   device was left as);
//! - anything else → `{"ok":false,"error":"..."}`, and the socket keeps
//!   serving.
//!
//! Every read and write on it has a deadline; a client that stalls is
//! dropped, never waited for.

use anyhow::Context;
use serde::Serialize;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use vfio_migrate_engine::{Cancel, Progress};

/// Longest wait for a control client's request or for it to take a reply.
const CLIENT_DEADLINE: Duration = Duration::from_secs(2);
/// Largest request line.
const MAX_REQUEST: u64 = 4096;

/// What `status` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// `migrate` or `receive`.
    pub role: &'static str,
    /// The process.
    pub pid: u32,
    /// Its command line.
    pub command: String,
    /// Where the state comes from.
    pub source: String,
    /// Where it goes.
    pub dest: String,
    /// `setup`, `pre-copy`, `stop-copy`, `resume`, `rollback`, `done`, or
    /// `waiting` (a `receive` before its sender connected).
    pub phase: String,
    /// Wall-clock start, ms since the epoch.
    pub started_unix_ms: u64,
    /// Time since the start, ms.
    pub elapsed_ms: f64,
    /// Setup time (to the first pre-copy round), ms; 0 while in setup.
    pub setup_ms: f64,
    /// Pre-copy rounds completed.
    pub rounds: u32,
    /// Bytes sent (or received) so far.
    pub transferred_bytes: u64,
    /// Bytes still to send, as last estimated (0 when not known).
    pub remaining_bytes: u64,
    /// `transferred + remaining`.
    pub total_bytes: u64,
    /// Bytes dirtied per second in the last round.
    pub dirty_rate_bytes_per_sec: f64,
    /// Measured bandwidth, bytes per second (0: not measured yet).
    pub bandwidth_bytes_per_sec: f64,
    /// Expected downtime if the switchover came now, ms (`null`: not
    /// known yet).
    pub expected_downtime_ms: Option<f64>,
    /// The downtime limit, ms (`null` for `receive`).
    pub downtime_limit_ms: Option<f64>,
    /// Cancel was asked for (by a signal or `vfio-migrate cancel`).
    pub cancelling: bool,
}

impl Status {
    /// A status for a migration about to start.
    pub fn new(role: &'static str, source: String, dest: String, limit_ms: Option<f64>) -> Self {
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        Self {
            role,
            pid: std::process::id(),
            command,
            source,
            dest,
            phase: "setup".into(),
            started_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            elapsed_ms: 0.0,
            setup_ms: 0.0,
            rounds: 0,
            transferred_bytes: 0,
            remaining_bytes: 0,
            total_bytes: 0,
            dirty_rate_bytes_per_sec: 0.0,
            bandwidth_bytes_per_sec: 0.0,
            expected_downtime_ms: None,
            downtime_limit_ms: limit_ms,
            cancelling: false,
        }
    }

    /// Takes in one progress report of the engine.
    pub fn update(&mut self, p: &Progress) {
        let ms = p.elapsed.as_secs_f64() * 1000.0;
        let phase = p.phase.to_string();
        if phase != "setup" && self.setup_ms == 0.0 {
            self.setup_ms = ms;
        }
        self.phase = phase;
        self.elapsed_ms = ms;
        self.rounds = p.iteration;
        self.transferred_bytes = p.transferred_bytes;
        self.remaining_bytes = p.remaining_bytes;
        self.total_bytes = p.transferred_bytes + p.remaining_bytes;
        self.dirty_rate_bytes_per_sec = p.dirty_rate;
        self.bandwidth_bytes_per_sec = p.bandwidth;
        self.expected_downtime_ms = p
            .expected_downtime_ms
            .is_finite()
            .then_some(p.expected_downtime_ms)
            .filter(|_| p.bandwidth > 0.0);
    }
}

/// The directory control sockets go in by default: `$XDG_RUNTIME_DIR/
/// vfio-migrate`, else `/run/vfio-migrate` for root, else
/// `$TMPDIR/vfio-migrate-<uid>`.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("vfio-migrate");
    }
    // Our uid is the owner of /proc/self (no libc call needed).
    let uid = std::fs::metadata("/proc/self").map_or(u32::MAX, |m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    if uid == 0 {
        PathBuf::from("/run/vfio-migrate")
    } else {
        std::env::temp_dir().join(format!("vfio-migrate-{uid}"))
    }
}

/// The control socket path of process `pid` in `dir`, if it has one.
pub fn find_pid(dir: &Path, pid: u32) -> Option<PathBuf> {
    ["migrate", "receive"]
        .iter()
        .map(|r| dir.join(format!("{r}-{pid}.sock")))
        .find(|p| p.exists())
}

/// A handle on a control server's status (see
/// [`ControlServer::shared_status`]).
#[derive(Clone)]
pub struct SharedStatus(Arc<Shared>);

impl SharedStatus {
    /// Locks the status.
    pub fn lock(
        &self,
    ) -> Result<
        std::sync::MutexGuard<'_, Status>,
        std::sync::PoisonError<std::sync::MutexGuard<'_, Status>>,
    > {
        self.0.status.lock()
    }
}

struct Shared {
    status: Mutex<Status>,
    waiters: Mutex<Vec<UnixStream>>,
    stop: AtomicBool,
    cancel: Cancel,
}

/// A running control socket; removed when dropped.
pub struct ControlServer {
    path: PathBuf,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlServer {
    /// Listens at `path` (or `<default_dir>/<role>-<pid>.sock`) and serves
    /// `status`, and `cancel` by firing `cancel`.
    pub fn start(path: Option<PathBuf>, status: Status, cancel: Cancel) -> anyhow::Result<Self> {
        let path = match path {
            Some(p) => p,
            None => {
                let dir = default_dir();
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating the control directory {}", dir.display()))?;
                let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
                dir.join(format!("{}-{}.sock", status.role, status.pid))
            }
        };
        if path.exists() {
            // A socket nobody answers on is a leftover; anything else is
            // not ours to replace.
            if UnixStream::connect(&path).is_ok() {
                anyhow::bail!(
                    "the control socket {} is in use by another migration: choose another with --control PATH",
                    path.display()
                );
            }
            std::fs::remove_file(&path)
                .with_context(|| format!("removing the stale control socket {}", path.display()))?;
        }
        let l = UnixListener::bind(&path)
            .with_context(|| format!("cannot create the control socket {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        l.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            status: Mutex::new(status),
            waiters: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            cancel,
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || serve(l, &s))?;
        Ok(Self {
            path,
            shared,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Changes the status.
    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        let mut s = self.shared.status.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
    }

    /// The status itself, for callers that keep it current their own way.
    pub fn shared_status(&self) -> SharedStatus {
        SharedStatus(self.shared.clone())
    }

    /// A progress callback that keeps the status current, then calls
    /// `next`.
    pub fn progress_fn(
        &self,
        mut next: Option<vfio_migrate_engine::ProgressFn>,
    ) -> vfio_migrate_engine::ProgressFn {
        let shared = self.shared.clone();
        Box::new(move |p: &Progress| {
            shared
                .status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .update(p);
            if let Some(f) = next.as_mut() {
                f(p);
            }
        })
    }

    /// The migration ended: tells every `cancel` client the outcome.
    pub fn finish(&self, outcome: &serde_json::Value) {
        let line = serde_json::json!({ "finished": outcome }).to_string() + "\n";
        let waiters = std::mem::take(
            &mut *self
                .shared
                .waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for mut w in waiters {
            let _ = w.write_all(line.as_bytes());
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(l: UnixListener, s: &Shared) {
    while !s.stop.load(Ordering::Relaxed) {
        let mut p = libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        match vfio_migrate_sys::fd::poll(std::slice::from_mut(&mut p), 100) {
            Ok(n) if n > 0 => {}
            _ => continue,
        }
        let Ok((c, _)) = l.accept() else { continue };
        if let Err(e) = handle(c, s) {
            tracing::debug!("control client: {e}");
        }
    }
}

fn handle(c: UnixStream, s: &Shared) -> std::io::Result<()> {
    c.set_nonblocking(false)?;
    c.set_read_timeout(Some(CLIENT_DEADLINE))?;
    c.set_write_timeout(Some(CLIENT_DEADLINE))?;
    let mut line = String::new();
    BufReader::new((&c).take(MAX_REQUEST)).read_line(&mut line)?;
    let req: Result<serde_json::Value, _> = serde_json::from_str(line.trim());
    let cmd = req
        .as_ref()
        .ok()
        .and_then(|v| v.get("cmd"))
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let reply = match cmd.as_deref() {
        Some("status") => {
            let mut st = s.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
            st.cancelling = s.cancel.is_cancelled();
            serde_json::json!({ "ok": true, "status": st })
        }
        // The cancel itself comes after the reply, once the connection
        // waits for the outcome: a migration that ends at once must still
        // find it among the waiters.
        Some("cancel") => serde_json::json!({ "ok": true, "cancelling": true }),
        Some(other) => serde_json::json!({
            "ok": false,
            "error": format!("unknown command {other:?}: status or cancel")
        }),
        None => serde_json::json!({
            "ok": false,
            "error": "not a request: send one JSON line, {\"cmd\":\"status\"} or {\"cmd\":\"cancel\"}"
        }),
    };
    let mut w = &c;
    w.write_all((reply.to_string() + "\n").as_bytes())?;
    if cmd.as_deref() == Some("cancel") {
        // The outcome follows when the migration has ended: no deadline
        // on the client's side of it, but ours still holds for writes.
        s.waiters.lock().unwrap_or_else(|p| p.into_inner()).push(c);
        tracing::warn!("cancel asked for on the control socket");
        s.cancel.cancel();
    }
    Ok(())
}

/// Sends one request to the control socket at `path`; returns the first
/// reply line and the connection (for what follows a cancel).
pub fn request(path: &Path, cmd: &str) -> anyhow::Result<(serde_json::Value, UnixStream)> {
    let c = UnixStream::connect(path).with_context(|| {
        format!(
            "nothing answers at {} (the migration has ended, or this is not a vfio-migrate control socket)",
            path.display()
        )
    })?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    c.set_write_timeout(Some(Duration::from_secs(5)))?;
    (&c).write_all(format!("{{\"cmd\":\"{cmd}\"}}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(&c)
        .read_line(&mut line)
        .with_context(|| format!("no answer from {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(line.trim())
        .with_context(|| format!("{} answered something that is not JSON", path.display()))?;
    if v["ok"] != true {
        anyhow::bail!(
            "{}: {}",
            path.display(),
            v["error"].as_str().unwrap_or("refused")
        );
    }
    Ok((v, c))
}

/// Every control socket in `dir` that answers, oldest first; leftovers of
/// ended processes are removed.
pub fn running(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<(std::time::SystemTime, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .filter_map(|p| match UnixStream::connect(&p) {
            Ok(_) => {
                let t = std::fs::metadata(&p).and_then(|m| m.modified()).ok()?;
                Some((t, p))
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                let _ = std::fs::remove_file(&p);
                None
            }
            Err(_) => None,
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

/// `--control PATH` / `--no-control`, shared by `migrate` and `receive`.
#[derive(clap::Args, Debug, Clone)]
pub struct ControlArgs {
    /// Serve status and cancel on this UNIX socket (default:
    /// `<runtime dir>/vfio-migrate/<command>-<pid>.sock`, printed at the
    /// start; see `vfio-migrate status --help`).
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// No control socket.
    #[arg(long, conflicts_with = "control")]
    no_control: bool,
}

impl ControlArgs {
    /// Starts the control socket (unless `--no-control`) and says where it
    /// is on stderr.
    pub fn start(&self, status: Status, cancel: &Cancel) -> anyhow::Result<Option<ControlServer>> {
        if self.no_control {
            return Ok(None);
        }
        let c = ControlServer::start(self.control.clone(), status, cancel.clone())?;
        eprintln!(
            "control socket: {} (vfio-migrate status | cancel)",
            c.path().display()
        );
        Ok(Some(c))
    }
}
