//! # vfio-migrate-harness
//!
//! Runs device servers as separate processes for the demo, the benchmarks
//! and the tests. A [`ServerProcess`] spawns a given [`Command`] that
//! serves a UNIX socket and waits, with a deadline, until the socket
//! accepts a connection; it captures the child's stdout and stderr (stderr
//! goes into error messages, optionally echoed as it arrives) and stops the
//! child on drop: SIGTERM, then SIGKILL after a grace period. A [`TempDir`]
//! is a private directory for sockets, removed on drop. A [`SimGuest`]
//! ([`guest`]) is a guest whose vCPU dirties its RAM, for the engine to
//! migrate.
//!
//! The readiness check connects once and hangs up at once: a vfio-user
//! server sees a client that leaves without a word.
//!
//! Not published: this is the project's own test and demo plumbing.

#![forbid(unsafe_code)]

pub mod guest;

pub use guest::{SimGuest, VcpuConfig};

use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// At most this much of each output stream is kept (the rest is dropped).
const CAPTURE_LIMIT: usize = 1 << 20;

/// A private directory under the system temp dir, removed (with what is
/// in it) on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `vfio-migrate-TAG-PID-N-NANOS` under [`std::env::temp_dir`].
    pub fn new(tag: &str) -> io::Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let p = std::env::temp_dir().join(format!(
            "vfio-migrate-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&p)
            .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", p.display())))?;
        Ok(Self(p))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `name` inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How [`ServerProcess::start_with`] starts and stops the child.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long the socket may take to accept a connection.
    pub deadline: Duration,
    /// Copy the child's stderr to ours as it arrives (it is captured
    /// either way; errors then point to it instead of repeating it).
    pub echo_stderr: bool,
    /// On drop: how long the child has to exit after SIGTERM before it is
    /// killed.
    pub stop_grace: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(20),
            echo_stderr: false,
            stop_grace: Duration::from_secs(5),
        }
    }
}

/// Output of the child, read by a thread as it comes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn spawn_reader(
        &self,
        from: impl Read + Send + 'static,
        echo: bool,
    ) -> io::Result<JoinHandle<()>> {
        let buf = self.0.clone();
        std::thread::Builder::new()
            .name("harness-output".into())
            .spawn(move || {
                let mut r = BufReader::new(from);
                let mut line = Vec::new();
                while r.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                    if echo {
                        let _ = io::stderr().write_all(&line);
                    }
                    let mut b = buf.lock().unwrap_or_else(|p| p.into_inner());
                    let room = CAPTURE_LIMIT.saturating_sub(b.len());
                    b.extend_from_slice(&line[..line.len().min(room)]);
                    line.clear();
                }
            })
    }

    fn text(&self) -> String {
        let b = self.0.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&b).into_owned()
    }
}

/// A child process serving a UNIX socket; stopped and reaped on drop.
pub struct ServerProcess {
    child: Child,
    socket: PathBuf,
    what: String,
    stdout: Captured,
    stderr: Captured,
    readers: Vec<JoinHandle<()>>,
    echo_stderr: bool,
    stop_grace: Duration,
}

impl std::fmt::Debug for ServerProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerProcess")
            .field("pid", &self.child.id())
            .field("socket", &self.socket)
            .field("command", &self.what)
            .finish_non_exhaustive()
    }
}

impl ServerProcess {
    /// Spawns `cmd`, which serves `socket`, with the default [`Options`].
    pub fn start(cmd: Command, socket: impl Into<PathBuf>) -> io::Result<Self> {
        Self::start_with(cmd, socket, &Options::default())
    }

    /// Spawns `cmd` (stdin null, stdout and stderr captured) and waits
    /// until `socket` accepts a connection. Fails, with what the child
    /// wrote on stderr, when the child exits first or the deadline passes
    /// (the child is killed then).
    pub fn start_with(
        mut cmd: Command,
        socket: impl Into<PathBuf>,
        opts: &Options,
    ) -> io::Result<Self> {
        let socket = socket.into();
        let what = describe(&cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("starting {what}: {e}")))?;
        let (stdout, stderr) = (Captured::default(), Captured::default());
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        let mut server = Self {
            child,
            socket,
            what,
            stdout,
            stderr,
            readers: Vec::new(),
            echo_stderr: opts.echo_stderr,
            stop_grace: opts.stop_grace,
        };
        server.readers.push(server.stdout.spawn_reader(out, false)?);
        server
            .readers
            .push(server.stderr.spawn_reader(err, opts.echo_stderr)?);
        server.wait_ready(opts.deadline)?;
        Ok(server)
    }

    fn wait_ready(&mut self, deadline: Duration) -> io::Result<()> {
        let t = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.settle_readers();
                return Err(io::Error::other(format!(
                    "{} exited ({status}) before {} accepted connections{}",
                    self.what,
                    self.socket.display(),
                    self.stderr_note()
                )));
            }
            if UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if t.elapsed() > deadline {
                self.kill();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} did not accept connections on {} within {} s{}",
                        self.what,
                        self.socket.display(),
                        deadline.as_secs_f64(),
                        self.stderr_note()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stderr_note(&self) -> String {
        if self.echo_stderr {
            return " (see its stderr above)".into();
        }
        let e = self.stderr();
        let e = e.trim_end();
        if e.is_empty() {
            " (nothing on stderr)".into()
        } else {
            format!("; its stderr:\n{e}")
        }
    }

    /// After the child exited: gives the reader threads a moment to take
    /// in its last words (they end when nobody holds the pipes any more).
    fn settle_readers(&mut self) {
        let t = Instant::now();
        while self.readers.iter().any(|r| !r.is_finished()) && t.elapsed() < Duration::from_secs(1)
        {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The socket it serves.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `unix:PATH`, the endpoint syntax of the `vfio-migrate` command.
    pub fn uri(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the child wrote on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.text()
    }

    /// What the child wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// The child has not exited.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `sig` (e.g. SIGSTOP, SIGCONT) while the child runs.
    pub fn signal(&mut self, sig: i32) -> io::Result<()> {
        if !self.alive() {
            return Err(io::Error::other(format!("{} is not running", self.what)));
        }
        vfio_migrate_sys::signal::kill(&self.child, sig)
    }

    /// SIGKILL at once, and reap.
    pub fn kill(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// SIGTERM; waits up to `grace` for the child to exit, then kills it.
    /// Returns its exit code (None when a signal ended it).
    pub fn terminate(&mut self, grace: Duration) -> io::Result<Option<i32>> {
        if let Some(s) = self.child.try_wait()? {
            return Ok(s.code());
        }
        // Our own child, not yet reaped (the try_wait above saw it running,
        // and only we reap it). A failure (it exited meanwhile) is fine. A
        // stopped child is woken so that it can take the SIGTERM.
        let _ = vfio_migrate_sys::signal::kill(&self.child, libc::SIGTERM);
        let _ = vfio_migrate_sys::signal::kill(&self.child, libc::SIGCONT);
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s.code());
            }
            if t.elapsed() > grace {
                let _ = self.child.kill();
                let s = self.child.wait()?;
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} did not exit within {} s of SIGTERM and was killed ({s})",
                        self.what,
                        grace.as_secs_f64()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.terminate(self.stop_grace);
    }
}

/// `` `program arg...` `` (the program's file name only) for messages.
fn describe(cmd: &Command) -> String {
    let prog = Path::new(cmd.get_program());
    let mut words = vec![prog
        .file_name()
        .unwrap_or(prog.as_os_str())
        .to_string_lossy()];
    words.extend(cmd.get_args().map(OsStr::to_string_lossy));
    format!("`{}`", words.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// `sh -c SCRIPT`. A shell cannot listen on a UNIX socket, so the tests
    /// bind the socket on the child's behalf where they need one.
    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn temp_dir_is_removed_on_drop() {
        let d = TempDir::new("harness").unwrap();
        let p = d.path().to_path_buf();
        std::fs::write(d.join("f"), b"x").unwrap();
        assert!(p.is_dir());
        drop(d);
        assert!(!p.exists());
    }

    #[test]
    fn a_child_that_exits_early_reports_its_stderr() {
        let d = TempDir::new("harness").unwrap();
        let e =
            ServerProcess::start(sh("echo 'no device here' >&2; exit 3"), d.join("s")).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("exited") && m.contains("no device here"), "{m}");
    }

    #[test]
    fn the_deadline_kills_a_child_that_never_listens() {
        let d = TempDir::new("harness").unwrap();
        let opts = Options {
            deadline: Duration::from_millis(200),
            ..Options::default()
        };
        let t = Instant::now();
        let e = ServerProcess::start_with(sh("echo waiting >&2; sleep 30"), d.join("s"), &opts)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("waiting"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn ready_once_the_socket_accepts_and_stopped_on_drop() {
        let d = TempDir::new("harness").unwrap();
        let sock = d.join("s");
        // The "server": we listen on its behalf once it has started; the
        // child only prints and waits for SIGTERM.
        let l = sock.clone();
        let binder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            UnixListener::bind(&l).unwrap()
        });
        let mut s = ServerProcess::start(
            sh("echo 'listening on unix:s'; exec sleep 30"),
            sock.clone(),
        )
        .unwrap();
        let _listener = binder.join().unwrap();
        assert!(s.alive());
        assert_eq!(s.uri(), format!("unix:{}", sock.display()));
        let t = Instant::now();
        while !s.stdout().contains("listening on") {
            assert!(t.elapsed() < Duration::from_secs(10), "no stdout");
            std::thread::sleep(Duration::from_millis(5));
        }
        let pid = s.pid();
        drop(s);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "stopped and reaped"
        );
    }

    #[test]
    fn terminate_returns_the_exit_code() {
        let d = TempDir::new("harness").unwrap();
        let sock = d.join("s");
        let _l = UnixListener::bind(&sock).unwrap();
        let script = "trap 'exit 7' TERM; echo ready; while :; do sleep 0.01; done";
        let mut s = ServerProcess::start(sh(script), sock).unwrap();
        let t = Instant::now();
        while !s.stdout().contains("ready") {
            assert!(t.elapsed() < Duration::from_secs(10), "no trap");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(s.terminate(Duration::from_secs(10)).unwrap(), Some(7));
        assert!(!s.alive());
    }
}
