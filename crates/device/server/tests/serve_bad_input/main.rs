//! Malformed and hostile messages against a real server process over its
//! UNIX socket: each gets an error reply with its specific errno, and the
//! server keeps serving (the same connection while the stream is in sync,
//! a new connection always).

#[path = "../support/mod.rs"]
mod support;
#[path = "../wire/mod.rs"]
mod wire;

mod fds;
mod framing;
mod migration;
mod regions_dma;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use support::Served;
use vfio_migrate_abi::kernel::*;
use vfio_migrate_abi::vfio_user::*;
use vfio_migrate_backend::{DmaDirtyLog, MigrationDevice};
use vfio_migrate_client::{Client, ClientConfig, RawReply};
use wire::*;

/// A request that must succeed on a healthy connection.
fn healthy(c: &mut Client) {
    let i = c.device_info().expect("connection still serves");
    assert!(i.num_regions >= 9);
}

fn raw_healthy(s: &mut UnixStream) {
    send_cmd(
        s,
        Command::DeviceGetInfo as u16,
        &DeviceInfo {
            argsz: 16,
            ..Default::default()
        }
        .to_bytes(),
    );
    let (h, p) = read_reply(s);
    assert_eq!(errno_of(&h), 0);
    assert_eq!(DeviceInfo::decode(&p).unwrap().argsz, 16);
}

fn req(c: &mut Client, cmd: Command, payload: &[u8]) -> RawReply {
    c.request(cmd as u16, payload, &[]).unwrap()
}

fn req_fds(c: &mut Client, cmd: Command, payload: &[u8], fds: &[BorrowedFd<'_>]) -> RawReply {
    c.request(cmd as u16, payload, fds).unwrap()
}

fn expect(r: RawReply, errno: i32, what: &str) {
    assert_eq!(r.errno(), Some(errno), "{what}: got {:?}", r.header);
    assert_eq!(
        r.header.msg_size as usize, HEADER_SIZE,
        "{what}: error replies are bare headers"
    );
}

fn feature_payload(flags: u32, argsz: u32, data: &[u8]) -> Vec<u8> {
    let mut p = DeviceFeature { argsz, flags }.to_bytes();
    p.extend_from_slice(data);
    p
}

fn set_state_payload(s: u32) -> Vec<u8> {
    feature_payload(
        FEATURE_MIG_DEVICE_STATE | FEATURE_SET,
        16,
        &FeatureMigState {
            device_state: s,
            data_fd: -1,
        }
        .to_bytes(),
    )
}

fn dma_map(addr: u64, size: u64, offset: u64) -> Vec<u8> {
    DmaMap {
        argsz: 32,
        flags: DMA_FLAG_READ | DMA_FLAG_WRITE,
        offset,
        addr,
        size,
    }
    .to_bytes()
}
