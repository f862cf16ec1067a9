//! Dispatcher unit tests: one message in, one reply out, no sockets. The
//! helpers here are shared by the topic modules.

mod dma;
mod irqs;
mod migration;
mod negotiation;

use super::testdev::{TestDev, MEM};
use super::*;
use std::os::fd::OwnedFd;
use vfio_migrate_abi::kernel::*;
use vfio_migrate_abi::vfio_user::*;
use vfio_migrate_vfio_user::ext::{
    VersionCaps, EXT_VERSION, FEATURE_MIG_DATA_SIZE, FEATURE_PRECOPY_INFO,
};
use vfio_migrate_vfio_user::sock::RecvFds;

fn hdr(cmd: u16, len: usize) -> Header {
    Header {
        msg_id: 7,
        cmd,
        msg_size: (HEADER_SIZE + len) as u32,
        flags: TYPE_COMMAND,
        error_no: 0,
    }
}

fn call_fds(
    s: &mut Session<'_, TestDev>,
    cmd: u16,
    payload: &[u8],
    fds: Vec<OwnedFd>,
) -> (i32, Vec<u8>, usize) {
    let mut r = Reply::new();
    dispatch(
        s,
        &hdr(cmd, payload.len()),
        payload,
        RecvFds {
            fds,
            truncated: false,
        },
        &mut r,
    );
    (r.errno, r.payload().to_vec(), r.fds.len())
}

fn call(s: &mut Session<'_, TestDev>, cmd: Command, payload: &[u8]) -> (i32, Vec<u8>) {
    let (e, p, _) = call_fds(s, cmd as u16, payload, Vec::new());
    (e, p)
}

fn feature(s: &mut Session<'_, TestDev>, flags: u32, data: &[u8], argsz: u32) -> (i32, Vec<u8>) {
    let mut p = DeviceFeature { argsz, flags }.to_bytes();
    p.extend_from_slice(data);
    call(s, Command::DeviceFeature, &p)
}

fn set_state(s: &mut Session<'_, TestDev>, st: MigState) -> i32 {
    let d = FeatureMigState {
        device_state: st as u32,
        data_fd: -1,
    }
    .to_bytes();
    feature(s, FEATURE_MIG_DEVICE_STATE | FEATURE_SET, &d, 16).0
}

fn get_state(s: &mut Session<'_, TestDev>) -> u32 {
    let (e, p) = feature(s, FEATURE_MIG_DEVICE_STATE | FEATURE_GET, &[], 16);
    assert_eq!(e, 0);
    u32::from_le_bytes(p[8..12].try_into().unwrap())
}

fn memfd(len: usize) -> OwnedFd {
    vfio_migrate_sys::memfd::create_sized(c"guest", len as u64).unwrap()
}

fn eventfd() -> OwnedFd {
    vfio_migrate_sys::fd::eventfd().unwrap()
}

fn version_payload(json: &[u8], major: u16) -> Vec<u8> {
    let mut p = Version { major, minor: 1 }.to_bytes();
    p.extend_from_slice(json);
    p
}

fn access(offset: u64, region: u32, count: u32, data: &[u8]) -> Vec<u8> {
    let mut p = RegionAccess {
        offset,
        region,
        count,
    }
    .to_bytes();
    p.extend_from_slice(data);
    p
}
