//! Property tests with a fixed-seed generator (runs on stable, in
//! `cargo test`): random and mutated messages through the dispatcher, and
//! random byte streams through the real framing loop over a socket. The
//! cargo-fuzz target in `fuzz/` explores the same entry points further.

use super::testdev::TestDev;
use super::*;
use std::io::Write;
use std::os::fd::OwnedFd;
use vfio_migrate_abi::kernel::MigState;
use vfio_migrate_abi::vfio_user::{Header, HEADER_SIZE, TYPE_COMMAND};
use vfio_migrate_client::{Client, ClientConfig};
use vfio_migrate_vfio_user::sock::RecvFds;

/// xorshift64*: small, fast, reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// A value that often sits on a boundary.
    pub fn interesting(&mut self) -> u64 {
        const V: [u64; 14] = [
            0,
            1,
            2,
            7,
            8,
            16,
            24,
            32,
            4096,
            1 << 20,
            8 << 20,
            u32::MAX as u64,
            u64::MAX,
            u64::MAX - 4095,
        ];
        if self.below(3) == 0 {
            self.next()
        } else {
            V[self.below(V.len() as u64) as usize]
        }
    }
}

fn fd_of_some_kind(rng: &mut Rng) -> OwnedFd {
    use vfio_migrate_sys as sys;
    match rng.below(3) {
        0 => sys::fd::eventfd().unwrap(),
        1 => sys::memfd::create_sized(c"fuzz", rng.below(4) * 4096).unwrap(),
        _ => sys::fd::pipe(libc::O_CLOEXEC).unwrap().0,
    }
}

/// A payload for `cmd` built from plausible fields, then maybe mutated.
fn payload(rng: &mut Rng, cmd: u16) -> Vec<u8> {
    let mut p = Vec::new();
    let fields: &[usize] = match cmd {
        1 => &[2, 2],
        2 => &[4, 4, 8, 8, 8],
        3 => &[4, 4, 8, 8],
        4 | 7 => &[4, 4, 4, 4],
        5 => &[4, 4, 4, 4, 8, 8],
        8 => &[4, 4, 4, 4, 4],
        9 | 10 => &[8, 4, 4],
        16 => &[4, 4, 8, 8, 8, 8],
        17 | 18 => &[4, 4],
        _ => &[],
    };
    for &w in fields {
        let v = rng.interesting();
        p.extend_from_slice(&v.to_le_bytes()[..w]);
    }
    match cmd {
        1 => {
            let docs: [&[u8]; 5] = [
                b"{\"capabilities\":{\"max_msg_fds\":4,\"max_data_xfer_size\":65536,\"migration\":{\"pgsize\":4096}}}\0",
                b"{\"capabilities\":{\"max_data_xfer_size\":0}}\0",
                b"{\"capabilities\":[1,2]}\0",
                b"\xff\xfe\0",
                b"",
            ];
            p[0..2].copy_from_slice(&(rng.below(2) as u16).to_le_bytes());
            p.extend_from_slice(docs[rng.below(docs.len() as u64) as usize]);
        }
        16 => {
            // Feature index and op bits that mostly make sense.
            let feat =
                [1u32, 2, 6, 7, 8, 9, 0xf001, rng.next() as u32 & 0xffff][rng.below(8) as usize];
            let op = [
                1u32 << 16,
                1 << 17,
                1 << 18,
                3 << 16,
                5 << 16,
                0,
                rng.next() as u32,
            ][rng.below(7) as usize];
            p[4..8].copy_from_slice(&(feat | op).to_le_bytes());
            if feat == 2 {
                p[8..12].copy_from_slice(&(rng.below(9) as u32).to_le_bytes());
            }
        }
        10 | 18 => {
            let n = rng.below(64) as usize;
            let at = if cmd == 10 { 12 } else { 4 };
            p[at..at + 4].copy_from_slice(&(n as u32).to_le_bytes());
            p.extend((0..n).map(|_| rng.next() as u8));
        }
        9 => {
            p[8..12].copy_from_slice(&(rng.below(10) as u32).to_le_bytes());
            p[12..16].copy_from_slice(&(rng.below(300) as u32).to_le_bytes());
        }
        17 => {
            let n = rng.below(40000) as u32;
            p[0..4].copy_from_slice(&(n + 8).to_le_bytes());
            p[4..8].copy_from_slice(&n.to_le_bytes());
        }
        _ => {}
    }
    match rng.below(6) {
        0 => p.truncate(rng.below(p.len() as u64 + 1) as usize),
        1 => p.extend((0..rng.below(40)).map(|_| rng.next() as u8)),
        2 if !p.is_empty() => {
            let i = rng.below(p.len() as u64) as usize;
            p[i] ^= 1 << rng.below(8);
        }
        _ => {}
    }
    p
}

#[test]
fn dispatcher_survives_random_messages() {
    let mut rng = Rng::new(0x5eed_0001);
    let mut srv = Server::new(TestDev::core());
    let max_out = srv.config().max_data_xfer_size as usize + HEADER_ALLOWANCE as usize;
    for round in 0..40 {
        let mut s = srv.session();
        let mut r = Reply::new();
        for _ in 0..400 {
            let cmd = if rng.below(20) == 0 {
                rng.next() as u16
            } else {
                1 + rng.below(18) as u16
            };
            let p = payload(&mut rng, cmd);
            let fds: Vec<OwnedFd> = (0..[0, 0, 0, 1, 2][rng.below(5) as usize])
                .map(|_| fd_of_some_kind(&mut rng))
                .collect();
            let h = Header {
                msg_id: rng.next() as u16,
                cmd,
                msg_size: (HEADER_SIZE + p.len()) as u32,
                flags: if rng.below(30) == 0 {
                    rng.next() as u32
                } else {
                    TYPE_COMMAND
                },
                error_no: 0,
            };
            dispatch(
                &mut s,
                &h,
                &p,
                RecvFds {
                    fds,
                    truncated: rng.below(50) == 0,
                },
                &mut r,
            );
            assert!(r.errno >= 0);
            if r.errno != 0 {
                assert!(r.payload().is_empty(), "error replies carry no payload");
                assert!(r.fds.is_empty());
            }
            assert!(
                r.payload().len() <= max_out,
                "reply of {} bytes",
                r.payload().len()
            );
            assert!(r.fds.len() <= 1);
        }
        s.close();
        // The device is still usable after each burst.
        let mut c = srv.core().lock().unwrap();
        let st = c.state();
        assert!(MigState::ALL.contains(&st), "round {round}");
        if st == MigState::Error {
            c.reset().unwrap();
        }
    }
}

#[test]
fn framing_survives_random_streams() {
    let dir = std::env::temp_dir().join(format!("vfio-user-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let listener = Listener::bind(&path).unwrap();
    let shutdown = Shutdown::new().unwrap();
    let stop = shutdown.clone();
    let cfg = ServerConfig {
        max_data_xfer_size: 1 << 16,
        stall_timeout: std::time::Duration::from_millis(300),
        ..Default::default()
    };
    let t = std::thread::spawn(move || {
        let mut srv = Server::with_config(TestDev::core(), cfg);
        srv.serve(&listener, &stop).unwrap();
    });
    let mut rng = Rng::new(0x5eed_0002);
    for i in 0..120 {
        {
            let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
            let mut bytes = Vec::new();
            for _ in 0..rng.below(6) {
                let cmd = 1 + rng.below(20) as u16;
                let p = payload(&mut rng, cmd);
                let size = match rng.below(8) {
                    0 => rng.interesting() as u32,
                    1 => rng.below(16) as u32,
                    _ => (HEADER_SIZE + p.len()) as u32,
                };
                bytes.extend_from_slice(
                    &Header {
                        msg_id: i,
                        cmd,
                        msg_size: size,
                        flags: TYPE_COMMAND,
                        error_no: 0,
                    }
                    .to_bytes(),
                );
                bytes.extend_from_slice(&p);
            }
            if rng.below(4) == 0 {
                bytes.extend((0..rng.below(100)).map(|_| rng.next() as u8));
            }
            let _ = s.write_all(&bytes);
            if rng.below(2) == 0 {
                // Read what came back, then hang up.
                s.set_read_timeout(Some(std::time::Duration::from_millis(20)))
                    .unwrap();
                let mut sink = [0u8; 4096];
                let _ = std::io::Read::read(&mut s, &mut sink);
            }
        }
        if i % 20 == 19 {
            let mut c = Client::connect_with(&path, ClientConfig::default()).unwrap();
            assert!(c.peer_is_vfio_migrate());
            c.device_info().unwrap();
        }
    }
    shutdown.trigger();
    t.join().unwrap();
    assert!(!path.exists(), "socket removed on shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}
