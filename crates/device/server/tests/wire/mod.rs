//! Raw vfio-user bytes with this project's codec (`vfio_migrate_abi`), and
//! fds to send: for the tests that speak the protocol badly on purpose.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use vfio_migrate_abi::vfio_user::{Header, HEADER_SIZE, TYPE_COMMAND};

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
