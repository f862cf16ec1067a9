//! VERSION negotiation, device, region and IRQ info, and region access
//! errors.

use super::*;

#[test]
fn version_negotiation_follows_the_rules() {
    let srv = Server::start();
    let mut c = srv.connect();
    // A proposal with every capability the spec lists, minor 7.
    let r = c.call(VERSION, &version_payload(0, 7, SPEC_CAPS), &[]);
    let (major, minor, json) = decode_version(r.ok());
    assert_eq!(major, 0, "major must be the one proposed");
    assert!(minor <= 7, "minor must not exceed the proposal");
    let caps = json.get("capabilities").expect("capabilities object");
    for k in caps.keys() {
        // Reply capabilities must come from the proposal. The two limits
        // (max_msg_fds, max_data_xfer_size) were proposed here.
        assert!(
            [
                "max_msg_fds",
                "max_data_xfer_size",
                "max_dma_maps",
                "pgsizes",
                "write_multiple",
                "twin_socket"
            ]
            .contains(&k),
            "capability {k} was not proposed"
        );
    }
    // We serve no twin socket: it must not be claimed without its fd.
    if let Some(t) = caps.get("twin_socket") {
        assert_ne!(t.get("supported"), Some(&Json::Bool(true)));
    }
    assert!(r.fds.is_empty());
    if let Some(Json::Num(n)) = caps.get("max_data_xfer_size") {
        assert!(*n >= 4096.0);
    }
    // A second VERSION on the same connection is refused; still in sync.
    let r = c.call(VERSION, &version_payload(0, 0, SPEC_CAPS), &[]);
    r.err();
    c.in_sync();
    drop(c);

    // No version data at all (it is optional) is accepted. Ambiguity: the
    // spec says reply capabilities are a subset of the proposal, yet a
    // receiver defaults absent limits; like libvfio-user, our server
    // always states its own max_msg_fds / max_data_xfer_size. We accept
    // exactly those two here, nothing else.
    let mut c = srv.connect();
    let r = c.call(VERSION, &le!(0u16, 0u16), &[]);
    let (_, minor, json) = decode_version(r.ok());
    assert_eq!(minor, 0);
    for k in json
        .get("capabilities")
        .map(|c| c.keys())
        .unwrap_or_default()
    {
        assert!(
            ["max_msg_fds", "max_data_xfer_size"].contains(&k),
            "capability {k} was not proposed"
        );
    }
    drop(c);

    // A different major: the server refuses (error reply) or closes.
    let mut c = srv.connect();
    let id = c.id();
    c.send_raw(id, VERSION, 0, &version_payload(1, 0, "{}"), &[]);
    if let Some(r) = c.recv() {
        assert_eq!((r.id, r.cmd), (id, VERSION));
        r.err();
    }
    drop(c);

    // Invalid JSON is refused with an error reply, and the connection can
    // still negotiate.
    let mut c = srv.connect();
    c.call(VERSION, &version_payload(0, 0, "{not json"), &[])
        .err();
    c.call(VERSION, &version_payload(0, 0, SPEC_CAPS), &[]).ok();
    c.in_sync();

    // The server honours a small client max_data_xfer_size: a read that
    // would not fit the client's limit is refused, not sent.
    drop(c);
    let mut c = srv.connect();
    c.call(
        VERSION,
        &version_payload(0, 0, r#"{"capabilities":{"max_data_xfer_size":65536}}"#),
        &[],
    )
    .ok();
    assert_eq!(c.read(2, 0, 65536).len(), 65536);
    c.call(REGION_READ, &le!(0u64, 2u32, 65537u32), &[]).err();
    c.in_sync();
}

#[test]
fn device_region_and_irq_info() {
    let srv = Server::start();
    let mut c = srv.session();

    // DEVICE_GET_INFO: 16-byte reply, argsz = 16 even when more is offered.
    for argsz in [16u32, 64] {
        let r = c.call(DEVICE_GET_INFO, &le!(argsz, 0u32, 0u32, 0u32), &[]);
        let p = r.ok();
        assert_eq!(p.len(), 16);
        assert_eq!(u32_at(p, 0), 16, "argsz = size of the full reply");
        assert_eq!(u32_at(p, 4) & 0b11, 0b11, "RESET | PCI");
        assert!(u32_at(p, 8) >= 9, "PCI devices have at least 9 regions");
        assert!(u32_at(p, 12) >= 5, "PCI devices have at least 5 IRQ types");
    }
    let info = c.call(DEVICE_GET_INFO, &le!(16u32, 0u32, 0u32, 0u32), &[]);
    let num_regions = u32_at(info.ok(), 8);
    let num_irqs = u32_at(info.ok(), 12);
    c.call(DEVICE_GET_INFO, &le!(8u32, 0u32), &[]).err();
    c.in_sync();

    let region_info = |c: &mut Conn, index: u32, argsz: u32| {
        c.call(
            DEVICE_GET_REGION_INFO,
            &le!(argsz, 0u32, index, 0u32, 0u64, 0u64),
            &[],
        )
    };

    // BAR0: trapped registers, 4 KiB, no mmap.
    let r = region_info(&mut c, 0, 32);
    let p = r.ok();
    assert_eq!(p.len(), 32);
    assert_eq!(u32_at(p, 0), 32);
    assert_eq!(u32_at(p, 4) & 0b111, 0b011, "READ|WRITE, no MMAP");
    assert_eq!(u32_at(p, 8), 0, "index echoed");
    assert_eq!(u64_at(p, 16), 4096);
    assert!(r.fds.is_empty());

    // BAR2: mmap-able device memory. First with the bare 32 bytes.
    let r = region_info(&mut c, 2, 32);
    let p = r.ok().to_vec();
    let need = u32_at(&p, 0);
    assert!(need >= 32);
    assert_eq!(u32_at(&p, 8), 2);
    assert_eq!(u64_at(&p, 16), 16 << 20);
    let flags = u32_at(&p, 4);
    assert_eq!(flags & 0b11, 0b11, "READ|WRITE");
    // The spec: "When [MMAP] is set, the reply will include a file
    // descriptor". Either both or neither.
    assert_eq!(r.fds.len(), usize::from(flags & 0b100 != 0), "MMAP <=> fd");
    if need > 32 {
        // Too small for the capabilities: the info alone, argsz = needed,
        // and no flag promising what the reply does not carry (QEMU refuses
        // CAPS with a cap_offset below 32).
        assert_eq!(p.len(), 32, "no partial capability chain");
        assert_eq!(flags & 0b1000, 0, "no CAPS flag without the chain");
        assert_eq!(u32_at(&p, 12), 0, "no cap_offset into what was not sent");
    }
    // Again with room for everything: payload = argsz, chain walkable.
    let r = region_info(&mut c, 2, need + 64);
    let p = r.ok().to_vec();
    assert_eq!(p.len(), need as usize, "payload is exactly argsz bytes");
    assert_eq!(u32_at(&p, 0), need);
    assert_eq!(u32_at(&p, 4) & 0b111, 0b111, "READ|WRITE|MMAP");
    assert_eq!(r.fds.len(), 1, "MMAP regions come with their fd");
    let mut sparse = None;
    if need > 32 {
        assert_ne!(u32_at(&p, 4) & 0b1000, 0, "CAPS flag with a chain");
        let mut at = u32_at(&p, 12) as usize;
        let mut seen = 0;
        while at != 0 {
            assert!(at >= 32 && at + 8 <= p.len(), "cap at {at} out of bounds");
            seen += 1;
            assert!(seen < 16, "capability chain loops");
            let (id, ver, next) = (u16_at(&p, at), u16_at(&p, at + 2), u32_at(&p, at + 4));
            match id {
                // VFIO_REGION_INFO_CAP_SPARSE_MMAP
                1 => {
                    assert_eq!(ver, 1);
                    let n = u32_at(&p, at + 8) as usize;
                    assert!(at + 16 + 16 * n <= p.len());
                    let areas: Vec<(u64, u64)> = (0..n)
                        .map(|i| (u64_at(&p, at + 16 + 16 * i), u64_at(&p, at + 24 + 16 * i)))
                        .collect();
                    for &(o, s) in &areas {
                        assert!(o + s <= 16 << 20, "sparse area outside the region");
                    }
                    sparse = Some(areas);
                }
                // VFIO_REGION_INFO_CAP_TYPE: {type, subtype}
                2 => assert!(at + 16 <= p.len()),
                other => panic!("unexpected capability id {other}"),
            }
            assert!(next == 0 || next as usize > at, "next goes backwards");
            at = next as usize;
        }
    }
    // The fd maps the region at the reply's `offset`: what REGION_WRITE
    // puts in, the mapping shows.
    let fd = r.fds.into_iter().next().expect("region fd");
    let base = u64_at(&p, 24);
    let pattern: Vec<u8> = (0..64u8).map(|i| i ^ 0xa5).collect();
    c.write(2, 8192, &pattern);
    let mut back = vec![0u8; 64];
    let n = vfio_migrate_sys::fd::read_at(fd.as_fd(), &mut back, base + 8192).unwrap();
    assert_eq!(n, 64);
    assert_eq!(back, pattern, "region fd shows what REGION_WRITE wrote");
    if let Some(a) = sparse {
        assert!(!a.is_empty());
    }

    // Config space: IDs at the standard offsets, read with REGION_READ.
    let r = region_info(&mut c, 7, 32);
    assert_eq!(u64_at(r.ok(), 16), 256);
    let cfg = c.read(7, 0, 64);
    assert_eq!(u16_at(&cfg, 0), 0x1b36);
    assert_eq!(u16_at(&cfg, 2), 0x00f0);
    assert_eq!(cfg[8], 1, "revision");
    assert_eq!(u16_at(&cfg, 0x2c), 0x1b36);
    assert_eq!(u16_at(&cfg, 0x2e), 0x0001);

    // Out of range, and argsz below the struct: errors, still in sync.
    region_info(&mut c, num_regions, 32).err();
    c.in_sync();
    region_info(&mut c, 0, 16).err();
    c.in_sync();

    // REGION_IO_FDS is optional. Ambiguity: the spec names no errno for a
    // server without it; we accept an error reply, or a well-formed reply
    // (argsz >= 16, index echoed, flags 0, count sub-regions of equal size).
    let r = c.call(
        DEVICE_GET_REGION_IO_FDS,
        &le!(256u32, 0u32, 0u32, 0u32),
        &[],
    );
    if r.flags & F_ERROR != 0 {
        r.err();
    } else {
        let p = r.ok();
        assert!(p.len() >= 16);
        assert_eq!(u32_at(p, 0) as usize, p.len());
        assert_eq!((u32_at(p, 4), u32_at(p, 8)), (0, 0));
        assert_eq!(r.fds.is_empty(), u32_at(p, 12) == 0);
    }
    c.in_sync();

    // IRQ info for every index: 16 bytes, argsz 16, index echoed.
    let mut eventfd_irq = None;
    for index in 0..num_irqs {
        let r = c.call(DEVICE_GET_IRQ_INFO, &le!(16u32, 0u32, index, 0u32), &[]);
        let p = r.ok();
        assert_eq!(p.len(), 16);
        assert_eq!(u32_at(p, 0), 16);
        assert_eq!(u32_at(p, 8), index);
        if u32_at(p, 4) & 1 != 0 && u32_at(p, 12) > 0 && eventfd_irq.is_none() {
            eventfd_irq = Some(index);
        }
    }
    c.call(DEVICE_GET_IRQ_INFO, &le!(16u32, 0u32, num_irqs, 0u32), &[])
        .err();
    c.in_sync();
    if let Some(index) = eventfd_irq {
        let ev = vfio_migrate_sys::fd::eventfd().unwrap();
        // DATA_EVENTFD | ACTION_TRIGGER, one vector: no reply payload.
        let r = c.call(
            DEVICE_SET_IRQS,
            &le!(20u32, (1u32 << 2) | (1 << 5), index, 0u32, 1u32),
            &[ev.as_raw_fd()],
        );
        assert!(r.ok().is_empty(), "SET_IRQS has no reply payload");
        // DATA_NONE | TRIGGER with start = count = 0 disables the index.
        let r = c.call(
            DEVICE_SET_IRQS,
            &le!(20u32, 1u32 | (1 << 5), index, 0u32, 0u32),
            &[],
        );
        assert!(r.ok().is_empty());
    }
}

#[test]
fn region_access_errors_and_no_reply() {
    let srv = Server::start();
    let mut c = srv.session();
    assert_eq!(c.reg(R_ID), 0x5647_5055_0000_0001);
    assert_eq!(c.reg(0x58), 16 << 20, "MEM_SIZE");
    c.set_reg(R_SCRATCH, 0x1122_3344_5566_7788);
    assert_eq!(c.reg(R_SCRATCH), 0x1122_3344_5566_7788);
    // 4-byte access to the high half.
    c.write(0, R_SCRATCH + 4, &0xdead_beefu32.to_le_bytes());
    assert_eq!(u32_at(&c.read(0, R_SCRATCH + 4, 4), 0), 0xdead_beef);
    assert_eq!(c.reg(R_SCRATCH), 0xdead_beef_5566_7788);

    // Refusals: header-only error replies, and the next command works.
    let bad: Vec<(u16, Vec<u8>)> = vec![
        (REGION_READ, le!(4096u64, 0u32, 8u32)), // past BAR0's end
        (REGION_READ, le!(0u64, 999u32, 8u32)),  // no such region
        (REGION_READ, le!(0u64, 0u32)),          // short payload
        (REGION_WRITE, le!(R_SCRATCH, 0u32, 8u32, 1u32)), // 4 data bytes, count 8
        (DEVICE_FEATURE, le!(16u32, FEAT_GET | 0x3u32)), // no feature 3
        (MIG_DATA_READ, le!(4104u32, 4096u32)),  // not in a saving state
        (MIG_DATA_WRITE, le!(12u32, 4u32, 0u32)), // not RESUMING
        (DMA_UNMAP, le!(24u32, 0u32, 0x1000u64, 0x1000u64)), // nothing mapped
        (4242, vec![1, 2, 3, 4, 5]),             // unknown command
    ];
    for (cmd, p) in bad {
        c.call(cmd, &p, &[]).err();
        c.in_sync();
    }
    // A message that is not a command.
    let id = c.id();
    c.send_raw(id, REGION_READ, F_REPLY, &le!(0u64, 0u32, 8u32), &[]);
    let r = c.recv().unwrap();
    assert_eq!((r.id, r.cmd), (id, REGION_READ));
    r.err();
    c.in_sync();

    // No_reply: the write is done, no reply comes; the next reply is the
    // next command's.
    let id = c.id();
    let mut w = le!(R_SCRATCH, 0u32, 8u32);
    w.extend_from_slice(&0x0123_4567_89ab_cdefu64.to_le_bytes());
    c.send_raw(id, REGION_WRITE, F_NO_REPLY, &w, &[]);
    assert_eq!(c.reg(R_SCRATCH), 0x0123_4567_89ab_cdef);

    // DEVICE_RESET: neither request nor reply has a payload.
    let r = c.call(DEVICE_RESET, &[], &[]);
    assert!(r.ok().is_empty());
    assert_eq!(c.get_state(), ST_RUNNING);
    c.in_sync();
}
