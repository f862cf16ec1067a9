//! Shared helpers of the `serve_*` integration tests: spawn a real
//! `vfio-migrate serve` process, wait for its "listening" line, speak raw
//! vfio-user bytes to it, count its fds, stop it with SIGTERM.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use vfio_migrate_abi::vfio_user::{Header, HEADER_SIZE, TYPE_COMMAND};
use vfio_migrate_client::Client;

static N: AtomicU32 = AtomicU32::new(0);

/// A fresh private directory for sockets.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "vfio-migrate-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A running `vfio-migrate serve`.
pub struct ServerProc {
    pub child: Child,
    pub path: PathBuf,
    dir: PathBuf,
}

impl ServerProc {
    /// Starts `serve --device <device> [--device-mem <mem>]` and waits for
    /// its listening line.
    pub fn start(device: &str, mem: Option<&str>) -> Self {
        let dir = temp_dir(device);
        let path = dir.join("dev.sock");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vfio-migrate"));
        cmd.args(["serve", "--device", device, "--socket"])
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
        assert_eq!(line.trim(), format!("listening on unix:{}", path.display()));
        Self { child, path, dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
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

    /// SIGTERM and wait; returns the exit status code.
    pub fn stop(mut self) -> Option<i32> {
        self.terminate()
    }

    fn terminate(&mut self) -> Option<i32> {
        let _ = vfio_migrate_sys::signal::kill(&self.child, libc::SIGTERM);
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            if t.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("server did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes a header with `msg_size` and `payload` (which need not match).
pub fn send_raw(s: &mut UnixStream, cmd: u16, msg_size: u32, payload: &[u8]) {
    let h = Header {
        msg_id: 0x4242,
        cmd,
        msg_size,
        flags: TYPE_COMMAND,
        error_no: 0,
    };
    let mut b = h.to_bytes();
    b.extend_from_slice(payload);
    s.write_all(&b).unwrap();
}

/// Writes a well-formed command.
pub fn send_cmd(s: &mut UnixStream, cmd: u16, payload: &[u8]) {
    send_raw(s, cmd, (HEADER_SIZE + payload.len()) as u32, payload)
}

/// Reads one whole reply.
pub fn read_reply(s: &mut UnixStream) -> (Header, Vec<u8>) {
    let mut hb = [0u8; HEADER_SIZE];
    s.read_exact(&mut hb).unwrap();
    let h = Header::decode(&hb).unwrap();
    let mut p = vec![0u8; h.msg_size as usize - HEADER_SIZE];
    s.read_exact(&mut p).unwrap();
    assert!(h.is_reply());
    (h, p)
}

/// The errno of a reply (0 when it is not an error).
pub fn errno_of(h: &Header) -> i32 {
    if h.is_error() {
        h.error_no as i32
    } else {
        0
    }
}

/// True when the server closed `s` (EOF, or a reset because bytes we sent
/// were left unread).
pub fn closed_by_peer(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

/// A memfd of `len` bytes.
pub fn memfd(len: u64) -> OwnedFd {
    vfio_migrate_sys::memfd::create_sized(c"guest-ram", len).unwrap()
}

/// An eventfd.
pub fn eventfd() -> OwnedFd {
    vfio_migrate_sys::fd::eventfd().unwrap()
}

/// Reads `len` bytes of `fd` at `off`.
pub fn pread(fd: &OwnedFd, off: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n =
            vfio_migrate_sys::fd::read_at(fd.as_fd(), &mut v[done..], off + done as u64).unwrap();
        assert!(n > 0);
        done += n;
    }
    v
}

/// Path helper for tests that bind themselves.
pub fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}
