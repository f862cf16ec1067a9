//! What the throughput benchmarks of this crate share: the limits they are
//! measured against in the same run (a raw AF_UNIX socketpair copy and a
//! memcpy), the `vfio-migrate` binary whose servers they drive, and
//! starting one of those servers (with `vfio_migrate_harness`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use vfio_migrate_harness::{ServerProcess, TempDir};

/// Seconds to move `bytes` through one AF_UNIX socketpair in `chunk` writes, reader in
/// another thread, same send buffer as the vfio-user sockets.
pub fn raw_socket(bytes: u64, chunk: usize, sndbuf: usize) -> f64 {
    let (a, b) = UnixStream::pair().unwrap();
    for s in [&a, &b] {
        let _ = vfio_migrate_sys::sock::set_send_buffer(std::os::fd::AsFd::as_fd(s), sndbuf);
    }
    let src = vec![0x5au8; chunk];
    let t0 = Instant::now();
    let reader = std::thread::spawn(move || {
        let mut b = b;
        let mut buf = vec![0u8; chunk];
        let mut got = 0u64;
        while got < bytes {
            let n = b.read(&mut buf).unwrap();
            assert!(n > 0);
            got += n as u64;
        }
    });
    let mut a = a;
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(chunk as u64) as usize;
        a.write_all(&src[..n]).unwrap();
        sent += n as u64;
    }
    reader.join().unwrap();
    t0.elapsed().as_secs_f64()
}

/// Seconds for a memcpy of `bytes` between two pre-touched buffers of that size.
pub fn memcpy(bytes: u64) -> f64 {
    let src = vec![0x33u8; bytes as usize];
    let mut dst = vec![0u8; bytes as usize];
    dst.iter_mut().step_by(4096).for_each(|b| *b = 1);
    let t0 = Instant::now();
    dst.copy_from_slice(&src);
    let t = t0.elapsed().as_secs_f64();
    assert_eq!(dst[bytes as usize - 1], 0x33);
    t
}

/// The release `vfio-migrate` binary, built first when missing.
pub fn binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../target"));
    let bin = target.join("release/vfio-migrate");
    if !bin.exists() {
        eprintln!("building {} ...", bin.display());
        let ok = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "-p", "vfio-migrate"])
            .status()
            .expect("run cargo build")
            .success();
        assert!(ok, "cargo build --release -p vfio-migrate failed");
    }
    bin
}

/// Starts `BIN serve --device vgpu --device-mem MEM ARGS --socket DIR/NAME`
/// and waits until it accepts; stopped (SIGTERM) on drop.
pub fn serve_vgpu(
    bin: &Path,
    dir: &TempDir,
    name: &str,
    mem: &str,
    args: &[&str],
) -> ServerProcess {
    let socket = dir.join(name);
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--device", "vgpu", "--device-mem", mem])
        .args(args)
        .arg("--socket")
        .arg(&socket);
    ServerProcess::start(cmd, &socket).unwrap_or_else(|e| panic!("{e}"))
}
