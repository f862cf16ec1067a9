//! An independent vfio-user conformance check of the server.
//!
//! These tests are written from the protocol specification (QEMU
//! `docs/interop/vfio-user.rst`), not from our codec: every message is
//! encoded by hand with `to_le_bytes`, every reply decoded by the offsets
//! the spec gives, using std, libc and the `vfio_migrate_sys` syscall
//! wrappers only (no `vfio_migrate_abi`, no `vfio_migrate_vfio_user`). A shared misreading between our server and
//! our client cannot hide here.
//!
//! Each test runs the server (a vgpu with 16 MiB of device memory, every
//! protocol offered) as a separate process on a UNIX socket and checks, command by command, what the spec fixes: the reply
//! header (msg_id and command echoed, type = reply, msg_size = the bytes
//! actually sent, error flag + errno and a header-only error reply), the
//! payload layouts and `argsz` values, the capability chain, and that the
//! connection stays in sync after every refusal.
//!
//! Where the spec leaves a choice (or we extend it on purpose, see
//! `crates/vfio-user/src/ext.rs`) the check accepts every reading the
//! spec allows and says so in a comment.

#[path = "../support/mod.rs"]
mod support;
#[macro_use]
mod spec;

mod consistency;
mod dma_migration;
mod info;

use spec::*;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;
use support::Served;

/// Connects to `path` and negotiates with a plain spec JSON.
fn session_on(path: &std::path::Path) -> Conn {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut c = Conn { s, next_id: 0x100 };
    c.call(VERSION, &version_payload(0, 0, SPEC_CAPS), &[]).ok();
    c
}

/// A server process serving the vgpu.
struct Server(Served);

impl Server {
    fn start() -> Self {
        Self(Served::start("vgpu", Some(16 << 20)))
    }

    fn connect(&self) -> Conn {
        let s = UnixStream::connect(&self.0.path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Conn { s, next_id: 0x100 }
    }

    /// Connects and negotiates with a plain spec JSON (no extensions).
    fn session(&self) -> Conn {
        let mut c = self.connect();
        let r = c.call(VERSION, &version_payload(0, 0, SPEC_CAPS), &[]);
        r.ok();
        c
    }
}
