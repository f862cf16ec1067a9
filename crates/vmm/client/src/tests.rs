//! The client against a scripted peer that behaves like other
//! implementations: no extension (32 KiB writes), padded MIG_DATA_READ
//! replies, error replies with a payload, a server-to-client command in
//! the middle of a reply wait.

use super::*;
use std::io::{Read, Write};
use vfio_migrate_abi::vfio_user::{FLAG_ERROR, TYPE_REPLY};
use vfio_migrate_backend::MigrationDevice;

/// Reads one message from the client: (header, payload).
fn recv(s: &mut UnixStream) -> (Header, Vec<u8>) {
    let mut hb = [0u8; HEADER_SIZE];
    s.read_exact(&mut hb).unwrap();
    let h = Header::decode(&hb).unwrap();
    let mut p = vec![0u8; h.msg_size as usize - HEADER_SIZE];
    s.read_exact(&mut p).unwrap();
    (h, p)
}

fn reply(s: &mut UnixStream, req: &Header, errno: u32, payload: &[u8]) {
    let h = Header {
        msg_id: req.msg_id,
        cmd: req.cmd,
        msg_size: (HEADER_SIZE + payload.len()) as u32,
        flags: TYPE_REPLY | if errno != 0 { FLAG_ERROR } else { 0 },
        error_no: errno,
    };
    let mut b = h.to_bytes();
    b.extend_from_slice(payload);
    s.write_all(&b).unwrap();
}

/// A client connected to a scripted peer that has answered VERSION like
/// the reference C server (its own caps, no extension).
fn with_foreign_peer(
    script: impl FnOnce(&mut UnixStream) + Send + 'static,
) -> (Client, std::thread::JoinHandle<()>) {
    let (a, mut b) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || {
        let (h, p) = recv(&mut b);
        assert_eq!(h.cmd, Command::Version as u16);
        assert!(
            String::from_utf8_lossy(&p[4..]).contains("\"vfio_migrate\""),
            "we propose the extension"
        );
        let mut r = Version { major: 0, minor: 0 }.to_bytes();
        r.extend_from_slice(br#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576,"migration":{"pgsize":4096}}}"#);
        r.push(0);
        reply(&mut b, &h, 0, &r);
        script(&mut b);
    });
    let mut c = Client::without_version(a, "scripted", ClientConfig::default()).unwrap();
    c.negotiate().unwrap();
    (c, t)
}

#[test]
fn foreign_peer_gets_32k_writes() {
    let (mut c, t) = with_foreign_peer(|s| {
        let mut got = Vec::new();
        while got.len() < 100_000 {
            let (h, p) = recv(s);
            assert_eq!(h.cmd, Command::MigDataWrite as u16);
            assert!(p.len() - 8 <= SAFE_WRITE_CHUNK, "chunk of {}", p.len() - 8);
            let m = MigData::decode(&p).unwrap();
            assert_eq!(m.size as usize, p.len() - 8);
            assert_eq!(
                m.argsz as usize,
                p.len(),
                "argsz covers the head and the data"
            );
            got.extend_from_slice(&p[8..]);
            reply(s, &h, 0, &[]);
        }
        assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    });
    assert!(!c.peer_is_vfio_migrate());
    assert_eq!(c.write_chunk(), SAFE_WRITE_CHUNK);
    let data: Vec<u8> = (0..100_000).map(|i| (i % 251) as u8).collect();
    c.write_data(&data).unwrap();
    t.join().unwrap();
}

#[test]
fn padded_reads_error_payloads_and_server_commands() {
    let (mut c, t) = with_foreign_peer(|s| {
        // 1: a padded MIG_DATA_READ reply (size 5, 11 bytes of padding).
        let (h, p) = recv(s);
        assert_eq!(MigData::decode(&p).unwrap().size, 64);
        let mut r = MigData {
            argsz: 8 + 16,
            size: 5,
        }
        .to_bytes();
        r.extend_from_slice(b"hello");
        r.extend_from_slice(&[0xee; 11]);
        reply(s, &h, 0, &r);
        // 2: an error reply that carries a payload anyway.
        let (h, _) = recv(s);
        reply(s, &h, libc::EINVAL as u32, &[1, 2, 3, 4, 5, 6]);
        // 3: a DMA_READ from the server before the real reply.
        let (h, _) = recv(s);
        let cmd = Header {
            msg_id: 9,
            cmd: Command::DmaRead as u16,
            msg_size: 32,
            flags: 0,
            error_no: 0,
        };
        let mut b = cmd.to_bytes();
        b.extend_from_slice(&[0; 16]);
        s.write_all(&b).unwrap();
        let (rh, _) = recv(s);
        assert!(rh.is_reply() && rh.is_error() && rh.msg_id == 9);
        assert_eq!(rh.error_no as i32, libc::ENOTSUP);
        reply(
            s,
            &h,
            0,
            &DeviceInfo {
                argsz: 16,
                flags: 2,
                num_regions: 9,
                num_irqs: 5,
            }
            .to_bytes(),
        );
        // 4: a reply to the wrong message id.
        let (h, _) = recv(s);
        let wrong = Header {
            msg_id: h.msg_id.wrapping_add(1),
            ..h
        };
        reply(s, &wrong, 0, &[0; 16]);
    });
    let mut buf = [0u8; 64];
    assert_eq!(c.read_data(&mut buf).unwrap(), 5);
    assert_eq!(&buf[..5], b"hello");
    let e = c.read_data(&mut buf).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EINVAL));
    assert_eq!(c.device_info().unwrap().num_regions, 9, "still in sync");
    let e = c.device_info().unwrap_err();
    assert!(matches!(e, BackendError::Protocol { .. }), "{e}");
    t.join().unwrap();
}
