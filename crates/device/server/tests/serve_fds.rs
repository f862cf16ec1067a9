//! No fd leaks: many connections to a real server process open,
//! map guest memory, fetch region fds, send fds the server refuses, break
//! off in the middle of messages, and go; the server's fd count (from
//! /proc/<pid>/fd) ends where it started.

mod support;
mod wire;

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use support::Served;
use vfio_migrate_abi::vfio_user::*;
use vfio_migrate_backend::{DmaDirtyLog, DmaMapping, DmaWindow};
use wire::*;

#[test]
fn many_connections_leak_no_fds() {
    let p = Served::start("vgpu", Some(1 << 20));
    // Warm up (lazy allocations, logging), then take the baseline with one
    // client connected and answered: the server serves one client at a
    // time, so an answer proves every earlier session is closed (right after
    // a disconnect the server may not have noticed it yet).
    drop(p.client());
    let mut first = p.client();
    first.device_info().unwrap();
    let baseline = p.fd_count() - 1;
    drop(first);
    let ram = memfd(1 << 20);
    for i in 0..150u64 {
        match i % 5 {
            0 => {
                // Guest memory mapped by fd, a region fd fetched, then gone.
                let mut c = p.client();
                c.dma_map(DmaWindow {
                    iova: 0x10_0000,
                    size: 1 << 20,
                    fd: Some(ram.as_fd()),
                    offset: 0,
                    readable: true,
                    writable: true,
                })
                .unwrap();
                let bar2 = c.region_info(2).unwrap();
                assert!(bar2.fd.is_some());
                c.dma_logging_start(4096, &[]).unwrap();
            }
            1 => {
                // fds on commands that refuse them, and too many fds.
                let mut c = p.client();
                let evs: Vec<_> = (0..12).map(|_| eventfd()).collect();
                let b: Vec<BorrowedFd<'_>> = evs.iter().map(|e| e.as_fd()).collect();
                let r = c
                    .request(Command::DeviceReset as u16, &[], &b[..1])
                    .unwrap();
                assert_eq!(r.errno(), Some(libc::EINVAL));
                let r = c.request(Command::DeviceReset as u16, &[], &b).unwrap();
                assert_eq!(r.errno(), Some(libc::E2BIG));
                let pipe = memfd(10);
                let m = DmaMap {
                    argsz: 32,
                    flags: 3,
                    offset: 0,
                    addr: 0,
                    size: 1 << 20,
                }
                .to_bytes();
                let r = c
                    .request(Command::DmaMap as u16, &m, &[pipe.as_fd()])
                    .unwrap();
                assert_eq!(r.errno(), Some(libc::EINVAL));
            }
            2 => {
                // A DMA_MAP header with its fd, then the client vanishes
                // before the payload.
                let s = p.raw();
                let c = vfio_migrate_client::Client::without_version(
                    s.try_clone().unwrap(),
                    "raw",
                    Default::default(),
                )
                .unwrap();
                drop(c);
                let fd = memfd(4096);
                let h = Header {
                    msg_id: 1,
                    cmd: 2,
                    msg_size: 48,
                    flags: 0,
                    error_no: 0,
                }
                .to_bytes();
                send_with_fd(&s, &h, fd.as_fd());
            }
            3 => {
                // Garbage.
                let mut s = p.raw();
                let _ = s.write_all(&[0xff; 100]);
            }
            _ => {
                // Connect and leave without a word.
                drop(p.raw());
            }
        }
    }
    // The last connection's teardown may still be running.
    let mut c = p.client();
    c.device_info().unwrap();
    assert_eq!(
        p.fd_count(),
        baseline + 1,
        "fds of the server: baseline {baseline} + this client"
    );
    drop(c);
    drop(ram);
}

/// Sends `bytes` with one fd attached (SCM_RIGHTS).
fn send_with_fd(s: &std::os::unix::net::UnixStream, bytes: &[u8], fd: BorrowedFd<'_>) {
    use std::os::fd::AsRawFd;
    let n = vfio_migrate_sys::sock::send_with_fds(
        s.as_fd(),
        &[std::io::IoSlice::new(bytes)],
        &[fd.as_raw_fd()],
    )
    .unwrap();
    assert_eq!(n, bytes.len());
}
