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
