//! Migration and DMA logging: data in the wrong state, invalid and
//! unsupported states, bad logging page sizes, ranges and reports.

use super::*;

#[test]
fn migration_data_in_the_wrong_state() {
    let p = Served::start("vgpu", Some(1 << 20));
    let mut c = p.client();
    let read = MigData {
        argsz: 8 + 4096,
        size: 4096,
    }
    .to_bytes();
    let mut write = MigData { argsz: 8, size: 4 }.to_bytes();
    write.extend_from_slice(b"data");
    expect(
        req(&mut c, Command::MigDataRead, &read),
        libc::EINVAL,
        "read while RUNNING",
    );
    expect(
        req(&mut c, Command::MigDataWrite, &write),
        libc::EINVAL,
        "write while RUNNING",
    );
    c.set_state(MigState::PreCopy).unwrap();
    expect(
        req(&mut c, Command::MigDataWrite, &write),
        libc::EINVAL,
        "write while PRE_COPY",
    );
    expect(
        req(
            &mut c,
            Command::MigDataRead,
            &MigData {
                argsz: 8 + (64 << 20),
                size: 64 << 20,
            }
            .to_bytes(),
        ),
        libc::E2BIG,
        "read over max_data_xfer_size",
    );
    c.set_state(MigState::Stop).unwrap();
    expect(
        req(&mut c, Command::MigDataRead, &read),
        libc::EINVAL,
        "read while STOP",
    );
    c.set_state(MigState::Resuming).unwrap();
    expect(
        req(&mut c, Command::MigDataRead, &read),
        libc::EINVAL,
        "read while RESUMING",
    );
    healthy(&mut c);
}

#[test]
fn invalid_and_unsupported_states() {
    let p = Served::start("serial", None);
    let mut c = p.client();
    for s in [8u32, 1000, u32::MAX] {
        expect(
            req(&mut c, Command::DeviceFeature, &set_state_payload(s)),
            libc::EINVAL,
            &format!("state {s}"),
        );
    }
    expect(
        req(&mut c, Command::DeviceFeature, &set_state_payload(0)),
        libc::EINVAL,
        "ERROR requested",
    );
    for s in [
        MigState::RunningP2p,
        MigState::PreCopy,
        MigState::PreCopyP2p,
    ] {
        expect(
            req(&mut c, Command::DeviceFeature, &set_state_payload(s as u32)),
            libc::EINVAL,
            &format!("{s} on serial"),
        );
    }
    assert_eq!(c.state().unwrap(), MigState::Running, "nothing moved");
    expect(
        req(
            &mut c,
            Command::DeviceFeature,
            &feature_payload(FEATURE_MIG_DEVICE_STATE | FEATURE_SET, 16, &[1, 0]),
        ),
        libc::EINVAL,
        "state data too short",
    );
    expect(
        req(
            &mut c,
            Command::DeviceFeature,
            &feature_payload(44 | FEATURE_GET, 64, &[]),
        ),
        libc::ENOTTY,
        "unknown feature",
    );
    expect(
        req(
            &mut c,
            Command::DeviceFeature,
            &feature_payload(FEATURE_MIGRATION | FEATURE_GET | FEATURE_SET, 64, &[]),
        ),
        libc::EINVAL,
        "GET and SET",
    );

    let v = Served::start("vgpu", Some(1 << 20));
    let mut c = v.client();
    c.set_state(MigState::StopCopy).unwrap();
    let e = c.set_state(MigState::PreCopy).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EINVAL), "STOP_COPY -> PRE_COPY: {e}");
    assert_eq!(c.state().unwrap(), MigState::StopCopy);
    healthy(&mut c);
}

fn logging_start(page: u64, ranges: &[(u64, u64)], num: Option<u32>) -> Vec<u8> {
    let mut d = page.to_le_bytes().to_vec();
    d.extend_from_slice(&num.unwrap_or(ranges.len() as u32).to_le_bytes());
    d.extend_from_slice(&[0; 4]);
    for &(i, l) in ranges {
        d.extend_from_slice(&i.to_le_bytes());
        d.extend_from_slice(&l.to_le_bytes());
    }
    feature_payload(
        FEATURE_DMA_LOGGING_START | FEATURE_SET,
        8 + d.len() as u32,
        &d,
    )
}

fn report(iova: u64, len: u64, page: u64) -> Vec<u8> {
    let mut d = iova.to_le_bytes().to_vec();
    d.extend_from_slice(&len.to_le_bytes());
    d.extend_from_slice(&page.to_le_bytes());
    feature_payload(FEATURE_DMA_LOGGING_REPORT | FEATURE_GET, 8 + 24 + 4096, &d)
}

#[test]
fn dma_logging_bad_page_size_ranges_and_reports() {
    let p = Served::start("vgpu", Some(1 << 20));
    let mut c = p.client();
    let ram = memfd(1 << 20);
    assert_eq!(
        req_fds(
            &mut c,
            Command::DmaMap,
            &dma_map(0x10_0000, 1 << 20, 0),
            &[ram.as_fd()]
        )
        .errno(),
        None
    );
    expect(
        req(
            &mut c,
            Command::DeviceFeature,
            &report(0x10_0000, 4096, 4096),
        ),
        libc::EINVAL,
        "report while logging is off",
    );
    // The START page size is a hint (vfio-user spec): the device picks
    // one it can log at and says so in the reply.
    for (page, chosen) in [(0u64, 4096u64), (1000, 4096), (2048, 4096), (3 << 12, 8192)] {
        let r = req(
            &mut c,
            Command::DeviceFeature,
            &logging_start(page, &[(0x10_0000, 1 << 20)], None),
        );
        assert_eq!(r.errno(), None, "page size hint {page}");
        assert_eq!(r.payload[8..16], chosen.to_le_bytes(), "page size {page}");
        let stop = feature_payload(FEATURE_DMA_LOGGING_STOP | FEATURE_SET, 8, &[]);
        assert_eq!(req(&mut c, Command::DeviceFeature, &stop).errno(), None);
    }
    expect(
        req(
            &mut c,
            Command::DeviceFeature,
            &logging_start(4096, &[(0x10_0000, 8192), (0x10_1000, 4096)], None),
        ),
        libc::EINVAL,
        "overlapping ranges",
    );
    expect(
        req(
            &mut c,
            Command::DeviceFeature,
            &logging_start(4096, &[(0x10_0000, 0)], None),
        ),
        libc::EINVAL,
        "empty range",
    );
    expect(
        req(
            &mut c,
            Command::DeviceFeature,
            &logging_start(4096, &[(u64::MAX - 4095, 8192)], None),
        ),
        libc::EINVAL,
        "range wraps",
    );
    expect(
        req(
            &mut c,
            Command::DeviceFeature,
            &logging_start(4096, &[(0x10_0000, 4096)], Some(3)),
        ),
        libc::EINVAL,
        "num_ranges past the payload",
    );
    expect(
        req(
            &mut c,
            Command::DeviceFeature,
            &logging_start(4096, &[], Some(100_000)),
        ),
        libc::E2BIG,
        "too many ranges",
    );
    assert_eq!(
        req(
            &mut c,
            Command::DeviceFeature,
            &logging_start(4096, &[(0x10_0000, 1 << 19)], None)
        )
        .errno(),
        None
    );
    expect(
        req(
            &mut c,
            Command::DeviceFeature,
            &logging_start(4096, &[], None),
        ),
        libc::EBUSY,
        "already logging",
    );
    expect(
        req(
            &mut c,
            Command::DeviceFeature,
            &report(0x10_0000, 1 << 20, 4096),
        ),
        libc::EINVAL,
        "report past the logged range",
    );
    expect(
        req(&mut c, Command::DeviceFeature, &report(0x0, 4096, 4096)),
        libc::EINVAL,
        "report outside logged ranges",
    );
    // The report page size may differ from START's (vfio-user spec).
    assert_eq!(
        req(
            &mut c,
            Command::DeviceFeature,
            &report(0x10_0000, 4096, 8192),
        )
        .errno(),
        None,
        "report page size differs"
    );
    expect(
        req(
            &mut c,
            Command::DeviceFeature,
            &report(0x10_0000, 4096, 1000),
        ),
        libc::EINVAL,
        "report page size not a power of two",
    );
    expect(
        req(&mut c, Command::DeviceFeature, &report(0x10_0000, 0, 4096)),
        libc::EINVAL,
        "empty report",
    );
    expect(
        req(&mut c, Command::DeviceFeature, &report(0x0, 1 << 50, 4096)),
        libc::E2BIG,
        "bitmap over max_data_xfer_size",
    );
    let mut bm = [0u8; 8];
    c.dma_logging_report(0x10_0000, 4096 * 64, 4096, &mut bm)
        .unwrap();
    healthy(&mut c);
}
