//! Shared helpers of the protocol tests: a real `vfio-migrate serve
//! --protocol P` process and running the CLI.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static N: AtomicU32 = AtomicU32::new(0);

/// A fresh private directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "vfio-migrate-proto-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A running `vfio-migrate serve --protocol P`, killed on drop.
pub struct Serve {
    child: Child,
    pub path: PathBuf,
}

impl Serve {
    pub fn start(dir: &Path, name: &str, device: &str, mem: Option<&str>, protocol: &str) -> Self {
        let path = dir.join(name);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vfio-migrate"));
        cmd.args([
            "serve",
            "--device",
            device,
            "--protocol",
            protocol,
            "--socket",
        ])
        .arg(&path);
        if let Some(m) = mem {
            cmd.args(["--device-mem", m]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn vfio-migrate serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("listening on unix:"), "{line}");
        Self { child, path }
    }

    pub fn endpoint(&self) -> String {
        format!("unix:{}", self.path.display())
    }

    /// The server process is still alive.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `vfio-migrate ARGS`.
pub fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vfio-migrate"))
        .args(args)
        .output()
        .expect("run vfio-migrate")
}

/// Parses stdout as JSON, failing with stderr when it is not.
pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}); status {:?}\nstdout: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}
