//! `vfio-migrate serve` as a command: its `listening on unix:PATH` line,
//! exit status 0 and the socket removed on SIGTERM, and what it says (exit
//! status 1) about a path another server listens on, a file in the way and
//! bad arguments. A stale socket file is replaced. What the server does
//! over the socket is tested with the server (crates/device/server/tests).

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{cli, Dir, BIN};
use vfio_migrate_client::Client;
use vfio_migrate_harness::ServerProcess;

fn serve(socket: &std::path::Path) -> Command {
    let mut c = Command::new(BIN);
    c.args(["serve", "--device", "serial", "--socket"])
        .arg(socket);
    c
}

/// Waits until the server's stdout holds a whole line.
fn first_line(s: &ServerProcess) -> String {
    let t = Instant::now();
    loop {
        let out = s.stdout();
        if let Some((line, _)) = out.split_once('\n') {
            return line.to_string();
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no line on stdout");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn failure(out: &std::process::Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn listening_line_sigterm_live_and_stale_sockets_and_files() {
    let dir = Dir::new("serve-cmd");
    let path = dir.path("s.sock");
    let mut s = ServerProcess::start(serve(&path), &path).unwrap();
    assert_eq!(
        first_line(&s),
        format!("listening on unix:{}", path.display())
    );
    // Another server on the same live path is refused.
    let out = serve(&path).output().unwrap();
    assert!(failure(&out).contains("already listening"), "{out:?}");
    assert_eq!(s.terminate(Duration::from_secs(10)).unwrap(), Some(0));
    assert!(
        std::fs::symlink_metadata(&path).is_err(),
        "socket removed on SIGTERM"
    );

    // A stale socket file (nobody listening) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(std::fs::symlink_metadata(&path).is_ok());
    let mut s = ServerProcess::start(serve(&path), &path).unwrap();
    assert!(first_line(&s).starts_with("listening on unix:"));
    Client::connect(&path).unwrap();
    assert_eq!(s.terminate(Duration::from_secs(10)).unwrap(), Some(0));

    // A regular file at the path is never deleted.
    std::fs::write(&path, b"keep me").unwrap();
    let out = serve(&path).stdout(Stdio::null()).output().unwrap();
    assert!(failure(&out).contains("not a socket"), "{out:?}");
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
}

#[test]
fn bad_arguments_are_explained() {
    let dir = Dir::new("serve-args");
    let sock = dir.path("s.sock");
    let sock = sock.to_str().unwrap();
    let out = cli(&[
        "serve",
        "--device",
        "serial",
        "--device-mem",
        "1M",
        "--socket",
        sock,
    ]);
    assert!(
        failure(&out).contains("--device-mem applies to --device vgpu only"),
        "{out:?}"
    );
    let out = cli(&[
        "serve",
        "--device",
        "vgpu",
        "--device-mem",
        "3M",
        "--socket",
        sock,
    ]);
    assert!(failure(&out).contains("power of two"), "{out:?}");
    let out = cli(&[
        "serve",
        "--device",
        "vgpu",
        "--device-mem",
        "12Q",
        "--socket",
        sock,
    ]);
    assert_eq!(out.status.code(), Some(2), "clap usage error: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a size"),
        "{out:?}"
    );
    assert!(
        std::fs::symlink_metadata(dir.path("s.sock")).is_err(),
        "nothing bound"
    );
}

/// A refused message sent with NO_REPLY (QEMU posts its BAR writes so)
/// gets no reply; the server logs it as a warning, since the client
/// cannot learn of it.
#[test]
fn refused_posted_writes_are_logged() {
    use std::io::{Read, Write};
    use vfio_migrate_abi::vfio_user::{
        Command as Cmd, DeviceInfo, Header, RegionAccess, Version, FLAG_NO_REPLY, HEADER_SIZE,
        TYPE_COMMAND,
    };
    let dir = Dir::new("serve-posted");
    let path = dir.path("s.sock");
    let s = ServerProcess::start(serve(&path), &path).unwrap();
    let mut c = std::os::unix::net::UnixStream::connect(&path).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut send = |id: u16, cmd: Cmd, flags: u32, payload: &[u8]| {
        let mut m = Header {
            msg_id: id,
            cmd: cmd as u16,
            msg_size: (HEADER_SIZE + payload.len()) as u32,
            flags: TYPE_COMMAND | flags,
            error_no: 0,
        }
        .to_bytes();
        m.extend_from_slice(payload);
        c.write_all(&m).unwrap();
    };
    send(
        1,
        Cmd::Version,
        0,
        &Version { major: 0, minor: 0 }.to_bytes(),
    );
    let mut lsr = RegionAccess {
        offset: 5,
        region: 0,
        count: 1,
    }
    .to_bytes();
    lsr.push(0);
    send(2, Cmd::RegionWrite, FLAG_NO_REPLY, &lsr);
    let info = DeviceInfo {
        argsz: DeviceInfo::SIZE as u32,
        ..Default::default()
    };
    send(3, Cmd::DeviceGetInfo, 0, &info.to_bytes());
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut h = [0u8; HEADER_SIZE];
        c.read_exact(&mut h).unwrap();
        let h = Header::decode(&h).unwrap();
        let mut p = vec![0u8; h.msg_size as usize - HEADER_SIZE];
        c.read_exact(&mut p).unwrap();
        ids.push((h.msg_id, h.error_no));
    }
    assert_eq!(ids, [(1, 0), (3, 0)], "no reply to the posted write");
    let t = Instant::now();
    while !s.stderr().contains("LSR (0x5) is read-only") {
        assert!(t.elapsed() < Duration::from_secs(10), "{}", s.stderr());
        std::thread::sleep(Duration::from_millis(5));
    }
    let e = s.stderr();
    assert!(e.contains("WARN") && e.contains("without reply"), "{e}");
}
