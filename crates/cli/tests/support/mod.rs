//! Shared by the CLI tests: device servers as real `vfio-migrate serve`
//! processes on UNIX sockets (spawned by `vfio_migrate_harness`), a
//! vfio-user client to program and inspect them between migrations (a
//! server takes one client at a time), and running the CLI with a deadline.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Output, Stdio};
use std::time::{Duration, Instant};
use vfio_migrate_backend::{MigState, MigrationDevice, RegionAccess};
use vfio_migrate_client::Client;
use vfio_migrate_harness::{ServerProcess, TempDir};

pub const BIN: &str = env!("CARGO_BIN_EXE_vfio-migrate");

/// vgpu registers (not every test binary uses them).
#[allow(unused_imports)]
pub use vfio_migrate_samples::vgpu::regs::reg as vgpu;

/// serial registers.
#[allow(unused_imports)]
pub use vfio_migrate_samples::serial::reg as serial;

/// A private directory, removed on drop.
pub struct Dir(TempDir);

impl Dir {
    pub fn new(tag: &str) -> Self {
        Self(TempDir::new(tag).expect("temp dir"))
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

/// A `vfio-migrate serve` process, stopped on drop.
pub struct Server {
    process: ServerProcess,
    pub socket: PathBuf,
}

impl Server {
    /// Starts `serve --device KIND [--device-mem MEM]` on `socket`.
    pub fn start(kind: &str, mem: Option<&str>, socket: &Path) -> Self {
        Self::with_protocol(kind, mem, "all", socket)
    }

    /// Starts `serve --device KIND [--device-mem MEM] --protocol PROTOCOL`
    /// on `socket`.
    pub fn with_protocol(kind: &str, mem: Option<&str>, protocol: &str, socket: &Path) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "serve",
            "--device",
            kind,
            "--protocol",
            protocol,
            "--socket",
        ])
        .arg(socket);
        if let Some(m) = mem {
            cmd.args(["--device-mem", m]);
        }
        let process = ServerProcess::start(cmd, socket).unwrap_or_else(|e| panic!("{e}"));
        Self {
            process,
            socket: socket.to_path_buf(),
        }
    }

    /// `unix:PATH`.
    pub fn uri(&self) -> String {
        self.process.uri()
    }

    /// The server process is still running.
    pub fn alive(&mut self) -> bool {
        self.process.alive()
    }

    /// Connects, runs `f`, disconnects.
    pub fn with<T>(&self, f: impl FnOnce(&mut Client) -> T) -> T {
        let mut c = Client::connect(&self.socket).expect("connect to the device server");
        f(&mut c)
    }

    /// Kills the server at once.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Sends `sig` to the server process (SIGSTOP, SIGCONT, ...).
    pub fn signal(&mut self, sig: i32) {
        self.process.signal(sig).unwrap();
    }

    /// Starts `serve --device KIND [ARGS...]` on `socket`.
    pub fn with_args(kind: &str, args: &[&str], socket: &Path) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--device", kind, "--socket"])
            .arg(socket)
            .args(args);
        let process = ServerProcess::start(cmd, socket).unwrap_or_else(|e| panic!("{e}"));
        Self {
            process,
            socket: socket.to_path_buf(),
        }
    }
}

pub fn write(c: &mut Client, off: u64, v: u64) {
    RegionAccess::region_write(c, 0, off, &v.to_le_bytes()).unwrap();
}

pub fn read(c: &mut Client, off: u64) -> u64 {
    let mut b = [0u8; 8];
    RegionAccess::region_read(c, 0, off, &mut b).unwrap();
    u64::from_le_bytes(b)
}

pub fn state(c: &mut Client) -> MigState {
    MigrationDevice::state(c).unwrap()
}

/// Moves the device to STOP, reads the digest at `off`, and back to
/// RUNNING (a digest is only stable while stopped).
pub fn stopped_digest(c: &mut Client, off: u64) -> u64 {
    MigrationDevice::set_state(c, MigState::Stop).unwrap();
    let d = read(c, off);
    MigrationDevice::set_state(c, MigState::Running).unwrap();
    d
}

/// Runs `vfio-migrate ARGS` to completion.
pub fn cli(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run vfio-migrate")
}

/// Runs the CLI to completion within `secs`.
pub fn run(args: &[&str], secs: u64) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait(child, secs)
}

/// Waits for `child` within `secs` (killed and failed otherwise).
pub fn wait(mut child: Child, secs: u64) -> Output {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "vfio-migrate did not finish within {secs} s; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// Parses stdout as one JSON object.
pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Reads `stderr` until a line contains `needle` (returns what was read
/// so far); the thread keeps reading and returns all of stderr when it
/// closes.
pub fn wait_for_line(
    stderr: ChildStderr,
    needle: &str,
    secs: u64,
) -> (String, std::thread::JoinHandle<String>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let needle = needle.to_string();
    let t = std::thread::spawn(move || {
        let mut r = BufReader::new(stderr);
        let mut seen = String::new();
        let mut line = String::new();
        let mut sent = false;
        while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            seen.push_str(&line);
            if !sent && line.contains(&needle) {
                let _ = tx.send(seen.clone());
                sent = true;
            }
            line.clear();
        }
        if !sent {
            let _ = tx.send(seen.clone());
        }
        let mut rest = String::new();
        let _ = r.read_to_string(&mut rest);
        seen + &rest
    });
    (
        rx.recv_timeout(Duration::from_secs(secs))
            .expect("no output in time"),
        t,
    )
}

pub fn write_byte(c: &mut Client, off: u64, v: u8) {
    RegionAccess::region_write(c, 0, off, &[v]).unwrap();
}
