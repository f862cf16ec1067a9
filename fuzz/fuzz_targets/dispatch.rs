//! Fuzzes the vfio-user message decoder and dispatcher: the input is a
//! byte stream cut into messages the way the server's framing does
//! (16-byte header, `msg_size`, payload), each dispatched to a real sample
//! device (serial, or a small vgpu) without sockets. Some messages carry
//! fds (an eventfd or a memfd) to reach the fd-taking paths.
//!
//! Invariants checked: no panic, error replies carry no payload or fds,
//! no reply exceeds the transfer limit plus allowance, at most one fd.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, OnceLock};
use vfio_migrate_abi::vfio_user::{Header, HEADER_SIZE};
use vfio_migrate_samples::serial::Serial;
use vfio_migrate_samples::vgpu::{Vgpu, VgpuConfig};
use vfio_migrate_device::{Device, DeviceCore, DmaSpace};
use vfio_migrate_server::{dispatch, Reply, HEADER_ALLOWANCE};
use vfio_migrate_vfio_user::sock::RecvFds;
use vfio_migrate_server::Server;
use vfio_migrate_sys as sys;

fn serial() -> &'static Mutex<Server<Serial>> {
    static S: OnceLock<Mutex<Server<Serial>>> = OnceLock::new();
    S.get_or_init(|| {
        Mutex::new(Server::new(DeviceCore::new(
            Serial::new(),
            Arc::new(DmaSpace::new()),
        )))
    })
}

fn vgpu() -> &'static Mutex<Server<Vgpu>> {
    static S: OnceLock<Mutex<Server<Vgpu>>> = OnceLock::new();
    S.get_or_init(|| {
        let dma = Arc::new(DmaSpace::new());
        let dev = Vgpu::new(VgpuConfig { mem_size: 64 << 10, ..Default::default() }, dma.clone()).expect("vgpu");
        Mutex::new(Server::new(DeviceCore::new(dev, dma)))
    })
}

fn some_fd(kind: u8) -> Option<OwnedFd> {
    match kind % 4 {
        1 => sys::fd::eventfd().ok(),
        2 => sys::memfd::create_sized(c"fuzz", 64 << 10).ok(),
        _ => None,
    }
}

fn run<D: Device>(server: &Mutex<Server<D>>, mut data: &[u8]) {
    let mut srv = server.lock().unwrap_or_else(|p| p.into_inner());
    let limit = srv.config().max_data_xfer_size as usize + HEADER_ALLOWANCE as usize;
    let mut s = srv.session();
    let mut reply = Reply::new();
    while data.len() >= HEADER_SIZE + 1 {
        let fd_kind = data[0];
        let h = Header::decode(&data[1..]).expect("16 bytes");
        data = &data[1 + HEADER_SIZE..];
        let plen = (h.msg_size as usize)
            .saturating_sub(HEADER_SIZE)
            .min(data.len());
        let (payload, rest) = data.split_at(plen);
        data = rest;
        let fds = RecvFds {
            fds: some_fd(fd_kind).into_iter().collect(),
            truncated: fd_kind == 0xff,
        };
        dispatch(&mut s, &h, payload, fds, &mut reply);
        if reply.errno != 0 {
            assert!(reply.payload().is_empty() && reply.fds.is_empty());
        }
        assert!(reply.payload().len() <= limit);
        assert!(reply.fds.len() <= 1);
    }
    s.close();
    let mut core = srv.core().lock().unwrap_or_else(|p| p.into_inner());
    if core.state() == vfio_migrate_abi::kernel::MigState::Error {
        core.reset().expect("reset leaves ERROR");
    }
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((sel, rest)) if sel & 1 == 0 => run(serial(), rest),
        Some((_, rest)) => run(vgpu(), rest),
        None => {}
    }
});
