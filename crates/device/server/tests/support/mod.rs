//! Runs the vfio-user server as a separate process over a real UNIX socket,
//! for the server's integration tests.
//!
//! A package's integration tests can only get binaries of their own
//! package, so the test binary runs *itself* as the server: [`Served`]
//! spawns `current_exe()` with the `VFIO_MIGRATE_TEST_SERVE_*` environment
//! and libtest arguments that run only the hidden, `#[ignore]`d
//! [`serve_child`] test, which serves the requested sample device the way
//! `vfio-migrate serve` does, prints `listening on unix:PATH` and exits on
//! SIGTERM. In normal runs that test is skipped (ignored, and it returns at
//! once without the environment). Spawning, readiness and teardown are
//! `vfio_migrate_harness`'s.

#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use vfio_migrate_client::Client;
use vfio_migrate_device::{Device, DeviceCore, DmaSpace};
use vfio_migrate_harness::{ServerProcess, TempDir};
use vfio_migrate_samples::serial::Serial;
use vfio_migrate_samples::vgpu::{Vgpu, VgpuConfig, DEFAULT_MEM_SIZE};
use vfio_migrate_server::{Listener, Server, Shutdown};

/// The sample device to serve (`vgpu` or `serial`); unset = not the child.
const ENV_DEVICE: &str = "VFIO_MIGRATE_TEST_SERVE_DEVICE";
/// vgpu device memory in bytes.
const ENV_MEM: &str = "VFIO_MIGRATE_TEST_SERVE_MEM";
/// Migration protocols offered: `v2`, `v1`, `seed` or `all`.
const ENV_PROTOCOL: &str = "VFIO_MIGRATE_TEST_SERVE_PROTOCOL";
/// The socket path.
const ENV_SOCKET: &str = "VFIO_MIGRATE_TEST_SERVE_SOCKET";

/// Data section size of the v1 and seed regions (as `vfio-migrate serve`).
const SECTION: u64 = vfio_migrate_device::region::DEFAULT_DATA_SECTION;

/// The server child's entry point: serves the device the environment
/// names until SIGTERM; returns at once when it names none.
#[test]
#[ignore = "the server child process's entry point, run by Served::start"]
fn serve_child() {
    let Ok(device) = std::env::var(ENV_DEVICE) else {
        return;
    };
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
    let socket = PathBuf::from(var(ENV_SOCKET));
    let protocol = var(ENV_PROTOCOL);
    let dma = Arc::new(DmaSpace::new());
    match device.as_str() {
        "vgpu" => {
            let mem_size = std::env::var(ENV_MEM).map_or(DEFAULT_MEM_SIZE, |m| {
                m.parse().expect("memory size in bytes")
            });
            let dev = Vgpu::new(
                VgpuConfig {
                    mem_size,
                    ..Default::default()
                },
                dma.clone(),
            )
            .expect("vgpu");
            serve(DeviceCore::new(dev, dma), &socket, &protocol)
        }
        "serial" => serve(DeviceCore::new(Serial::new(), dma), &socket, &protocol),
        other => panic!("no sample device {other:?}"),
    }
}

/// What `vfio-migrate serve` does with a device core.
fn serve<D: Device>(core: DeviceCore<D>, socket: &Path, protocol: &str) {
    let shutdown = Shutdown::new().expect("shutdown pipe");
    shutdown.on_signals().expect("SIGTERM/SIGINT handlers");
    let listener = Listener::bind(socket).expect("bind");
    let mut server = Server::new(core);
    server.set_v2_migration(matches!(protocol, "v2" | "all"));
    if matches!(protocol, "v1" | "all") {
        server.add_v1_region(SECTION).expect("v1 region");
    }
    if matches!(protocol, "seed" | "all") {
        server.add_seed_region(SECTION).expect("seed region");
    }
    println!("listening on unix:{}", listener.path().display());
    server.serve(&listener, &shutdown).expect("serving");
}

/// The libtest name of [`serve_child`] in this test binary (the crate name
/// is not part of it).
fn child_test_name() -> String {
    let path = module_path!();
    let inner = path.split_once("::").map_or("", |(_, rest)| rest);
    format!("{inner}::serve_child")
}

/// A server child process on a socket in its own temp dir; stopped on
/// drop, the dir removed after it.
pub struct Served {
    server: ServerProcess,
    pub path: PathBuf,
    _dir: TempDir,
}

impl Served {
    /// Serves `device` (`vgpu` or `serial`; `mem` is the vgpu's memory
    /// size) offering every migration protocol.
    pub fn start(device: &str, mem: Option<u64>) -> Self {
        Self::with_protocol(device, mem, "all")
    }

    /// Serves `device` offering `protocol` (`v2`, `v1`, `seed` or `all`).
    pub fn with_protocol(device: &str, mem: Option<u64>, protocol: &str) -> Self {
        let dir = TempDir::new(device).expect("temp dir");
        let path = dir.join("dev.sock");
        let exe = std::env::current_exe().expect("this test binary");
        let mut cmd = Command::new(exe);
        cmd.args(["--ignored", "--exact", &child_test_name()])
            .args(["--nocapture", "--test-threads=1", "--quiet"])
            .env(ENV_DEVICE, device)
            .env(ENV_PROTOCOL, protocol)
            .env(ENV_SOCKET, &path);
        match mem {
            Some(m) => cmd.env(ENV_MEM, m.to_string()),
            None => cmd.env_remove(ENV_MEM),
        };
        let server = ServerProcess::start(cmd, &path).unwrap_or_else(|e| panic!("{e}"));
        Self {
            server,
            path,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// `unix:PATH`.
    pub fn uri(&self) -> String {
        self.server.uri()
    }

    /// Sends `sig` to the server process.
    pub fn signal(&mut self, sig: i32) {
        self.server.signal(sig).expect("signal the server");
    }

    /// A negotiated client.
    pub fn client(&self) -> Client {
        Client::connect(&self.path).expect("connect")
    }

    /// A raw socket (no VERSION sent).
    pub fn raw(&self) -> UnixStream {
        let s = UnixStream::connect(&self.path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// Open fds of the server process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// The server process is still running.
    pub fn alive(&mut self) -> bool {
        self.server.alive()
    }

    /// What the server wrote on stdout so far (its listening line).
    pub fn stdout(&self) -> String {
        self.server.stdout()
    }

    /// SIGTERM and wait (10 s at most); returns the exit code.
    pub fn stop(mut self) -> Option<i32> {
        self.server
            .terminate(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}"))
    }
}
