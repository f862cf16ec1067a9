//! Region accesses out of range, and DMA maps that overlap or unmap
//! nothing.

use super::*;

fn access(offset: u64, region: u32, count: u32) -> Vec<u8> {
    RegionAccess {
        offset,
        region,
        count,
    }
    .to_bytes()
}

#[test]
fn region_index_offset_and_count_out_of_range() {
    let p = Served::start("vgpu", Some(1 << 20));
    let mut c = p.client();
    expect(
        req(&mut c, Command::RegionRead, &access(0, 11, 4)), // 9, 10: migration regions
        libc::EINVAL,
        "index past the last region",
    );
    expect(
        req(&mut c, Command::RegionRead, &access(0, u32::MAX, 4)),
        libc::EINVAL,
        "huge index",
    );
    expect(
        req(&mut c, Command::RegionRead, &access(0, 1, 4)),
        libc::EINVAL,
        "absent BAR1",
    );
    expect(
        req(&mut c, Command::RegionRead, &access(4093, 0, 4)),
        libc::EINVAL,
        "past BAR0's end",
    );
    expect(
        req(&mut c, Command::RegionRead, &access(u64::MAX - 1, 0, 4)),
        libc::EINVAL,
        "offset overflow",
    );
    expect(
        req(&mut c, Command::RegionRead, &access(0, 2, 64 << 20)),
        libc::E2BIG,
        "count over max_data_xfer_size",
    );
    let mut w = access(256, 7, 4);
    w.extend_from_slice(&[1, 2, 3, 4]);
    expect(
        req(&mut c, Command::RegionWrite, &w),
        libc::EINVAL,
        "past config space",
    );
    let mut w = access(0, 0, 8);
    w.extend_from_slice(&[1, 2, 3]);
    expect(
        req(&mut c, Command::RegionWrite, &w),
        libc::EINVAL,
        "count disagrees with the data",
    );
    expect(
        req(
            &mut c,
            Command::DeviceGetRegionInfo,
            &RegionInfo {
                argsz: 32,
                index: 100,
                ..Default::default()
            }
            .to_bytes(),
        ),
        libc::EINVAL,
        "region info index",
    );
    expect(
        req(
            &mut c,
            Command::DeviceGetIrqInfo,
            &IrqInfo {
                argsz: 16,
                index: 50,
                ..Default::default()
            }
            .to_bytes(),
        ),
        libc::EINVAL,
        "IRQ index",
    );
    healthy(&mut c);
}

#[test]
fn dma_map_overlap_and_unknown_unmap() {
    let p = Served::start("vgpu", Some(1 << 20));
    let mut c = p.client();
    let ram = memfd(1 << 20);
    let r = req_fds(
        &mut c,
        Command::DmaMap,
        &dma_map(0x10_0000, 1 << 20, 0),
        &[ram.as_fd()],
    );
    assert_eq!(r.errno(), None);
    for (addr, size) in [(0x10_0000, 4096), (0x1f_f000, 8192), (0x8_0000, 0x9_0000)] {
        let r = req_fds(
            &mut c,
            Command::DmaMap,
            &dma_map(addr, size, 0),
            &[ram.as_fd()],
        );
        expect(r, libc::EEXIST, &format!("overlap {addr:#x}+{size:#x}"));
    }
    let um = |addr, size| {
        DmaUnmap {
            argsz: 24,
            flags: 0,
            addr,
            size,
        }
        .to_bytes()
    };
    expect(
        req(&mut c, Command::DmaUnmap, &um(0x50_0000, 4096)),
        libc::ENOENT,
        "never mapped",
    );
    expect(
        req(&mut c, Command::DmaUnmap, &um(0x10_0000, 4096)),
        libc::ENOENT,
        "not the whole window",
    );
    let r = req(&mut c, Command::DmaUnmap, &um(0x10_0000, 1 << 20));
    assert_eq!((r.errno(), r.payload), (None, um(0x10_0000, 1 << 20)));
    expect(
        req(&mut c, Command::DmaUnmap, &um(0x10_0000, 1 << 20)),
        libc::ENOENT,
        "twice",
    );
    healthy(&mut c);
}
