//! Framing and negotiation: bad `msg_size`, short payloads, unknown
//! commands, bad `argsz`, bad VERSION JSON or major, a reply sent to the
//! server.

use super::*;

#[test]
fn msg_size_below_header_size() {
    let p = Served::start("serial", None);
    let mut s = p.raw();
    send_raw(&mut s, Command::DeviceGetInfo as u16, 8, &[]);
    let (h, body) = read_reply(&mut s);
    assert_eq!(errno_of(&h), libc::EINVAL);
    assert!(body.is_empty());
    raw_healthy(&mut s);
}

#[test]
fn msg_size_over_the_cap_closes_only_that_connection() {
    let p = Served::start("serial", None);
    let mut s = p.raw();
    // Claims 4 GiB; nothing that large is ever allocated or read.
    send_raw(&mut s, Command::MigDataWrite as u16, u32::MAX, &[0; 64]);
    let (h, _) = read_reply(&mut s);
    assert_eq!(errno_of(&h), libc::EMSGSIZE);
    assert!(closed_by_peer(&mut s));
    let mut c = p.client();
    healthy(&mut c);
}

#[test]
fn payload_shorter_than_its_struct() {
    let p = Served::start("serial", None);
    let mut c = p.client();
    for (cmd, len) in [
        (Command::DmaMap, 8),
        (Command::DmaUnmap, 16),
        (Command::DeviceGetInfo, 4),
        (Command::DeviceGetRegionInfo, 16),
        (Command::DeviceGetIrqInfo, 12),
        (Command::DeviceSetIrqs, 16),
        (Command::RegionRead, 12),
        (Command::RegionWrite, 0),
        (Command::DeviceFeature, 4),
        (Command::MigDataRead, 4),
        (Command::MigDataWrite, 7),
        (Command::Version, 2),
    ] {
        expect(
            req(&mut c, cmd, &vec![0xff; len]),
            libc::EINVAL,
            &format!("{cmd:?} with {len} bytes"),
        );
        healthy(&mut c);
    }
}

#[test]
fn unknown_command_is_drained() {
    let p = Served::start("serial", None);
    let mut s = p.raw();
    // A payload that looks like a header: if it were not drained, it
    // would be taken as the next message.
    let inner = Header {
        msg_id: 1,
        cmd: 4,
        msg_size: 16,
        flags: 0,
        error_no: 0,
    }
    .to_bytes();
    let mut payload = inner.clone();
    payload.extend_from_slice(&[0xab; 1000]);
    send_cmd(&mut s, 777, &payload);
    let (h, _) = read_reply(&mut s);
    assert_eq!((errno_of(&h), h.cmd, h.msg_id), (libc::ENOSYS, 777, 0x4242));
    raw_healthy(&mut s);
    drop(s);
    // Known commands the server does not take are refused the same way.
    let mut c = p.client();
    expect(
        req(&mut c, Command::DmaWrite, &[0; 16]),
        libc::ENOTSUP,
        "DMA_WRITE to a server",
    );
    healthy(&mut c);
}

#[test]
fn argsz_too_small() {
    let p = Served::start("vgpu", Some(1 << 20));
    let mut c = p.client();
    expect(
        req(
            &mut c,
            Command::DeviceGetInfo,
            &DeviceInfo {
                argsz: 15,
                ..Default::default()
            }
            .to_bytes(),
        ),
        libc::EINVAL,
        "GET_INFO",
    );
    expect(
        req(
            &mut c,
            Command::DeviceGetRegionInfo,
            &RegionInfo {
                argsz: 31,
                ..Default::default()
            }
            .to_bytes(),
        ),
        libc::EINVAL,
        "REGION_INFO",
    );
    expect(
        req(
            &mut c,
            Command::DeviceGetIrqInfo,
            &IrqInfo {
                argsz: 4,
                ..Default::default()
            }
            .to_bytes(),
        ),
        libc::EINVAL,
        "IRQ_INFO",
    );
    expect(
        req(
            &mut c,
            Command::DmaMap,
            &DmaMap {
                argsz: 8,
                flags: 3,
                offset: 0,
                addr: 0,
                size: 4096,
            }
            .to_bytes(),
        ),
        libc::EINVAL,
        "DMA_MAP",
    );
    expect(
        req(
            &mut c,
            Command::DeviceFeature,
            &feature_payload(FEATURE_MIGRATION | FEATURE_GET, 8, &[]),
        ),
        libc::EINVAL,
        "feature GET reply does not fit",
    );
    expect(
        req(
            &mut c,
            Command::MigDataRead,
            &MigData {
                argsz: 8,
                size: 4096,
            }
            .to_bytes(),
        ),
        libc::EINVAL,
        "MIG_DATA_READ reply does not fit",
    );
    healthy(&mut c);
}

fn version(major: u16, json: &[u8]) -> Vec<u8> {
    let mut p = Version { major, minor: 0 }.to_bytes();
    p.extend_from_slice(json);
    p
}

#[test]
fn invalid_json_and_wrong_major_version() {
    let p = Served::start("serial", None);
    let s = p.raw();
    let mut c = Client::without_version(s, "raw", ClientConfig::default()).unwrap();
    for bad in [
        &b"{\"capabilities\": {"[..],
        b"[1,2,3]\0",
        b"{\"capabilities\":{\"max_msg_fds\":\"many\"}}\0",
        b"\xc3\x28\0",
    ] {
        expect(
            req(&mut c, Command::Version, &version(0, bad)),
            libc::EINVAL,
            &format!("JSON {bad:?}"),
        );
    }
    expect(
        req(
            &mut c,
            Command::Version,
            &version(0, b"{\"capabilities\":{\"migration\":{\"pgsize\":1000}}}\0"),
        ),
        libc::EINVAL,
        "pgsize",
    );
    expect(
        req(&mut c, Command::Version, &version(1, b"{}\0")),
        libc::ENOTSUP,
        "major 1",
    );
    // After all that, a proper VERSION on the same connection succeeds.
    c.negotiate().unwrap();
    assert!(c.peer_is_vfio_migrate());
    expect(
        req(&mut c, Command::Version, &version(0, b"{}\0")),
        libc::EINVAL,
        "second VERSION",
    );
    healthy(&mut c);
}

#[test]
fn a_reply_sent_to_the_server() {
    let p = Served::start("serial", None);
    let mut s = p.raw();
    let h = Header {
        msg_id: 5,
        cmd: 4,
        msg_size: 16,
        flags: TYPE_REPLY,
        error_no: 0,
    }
    .to_bytes();
    std::io::Write::write_all(&mut s, &h).unwrap();
    let (h, _) = read_reply(&mut s);
    assert_eq!((errno_of(&h), h.msg_id), (libc::EINVAL, 5));
    raw_healthy(&mut s);
}
