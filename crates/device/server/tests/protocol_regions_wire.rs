//! The v1 and seed migration regions over the wire, against a real server
//! process offering all protocols, or only v1 or seed: bad accesses get
//! an error reply with EINVAL and change nothing, the same connection keeps
//! working, every v1 and seed state is reached through full save/resume
//! flows, the v2 interface is withheld when only an older protocol is
//! served, DEVICE_RESET resets the regions, and DIRTY_PAGES refuses bad
//! requests.

mod support;
mod wire;

use std::os::fd::AsFd;
use support::Served;
use vfio_migrate_abi::seed::{self as sabi, SeedState};
use vfio_migrate_abi::v1 as vabi;
use vfio_migrate_abi::v1::{DirtyBitmapRange, DirtyPages};
use vfio_migrate_abi::vfio_user::{Command, MigData};
use vfio_migrate_backend::{
    BackendError, DmaDirtyLog, DmaMapping, DmaWindow, MigState, MigrationDevice, RegionAccess,
};
use vfio_migrate_client::{Client, SeedDevice, V1Device};
use vfio_migrate_server::migregion::{SEED_REGION_INDEX, V1_REGION_INDEX};

const SECTION: u64 = 1 << 20;
const DATA: u64 = 4096;

fn einval<T: std::fmt::Debug>(r: Result<T, BackendError>, what: &str) {
    match r {
        Err(e) => assert_eq!(e.errno(), Some(libc::EINVAL), "{what}: {e}"),
        Ok(v) => panic!("{what}: accepted ({v:?})"),
    }
}

fn rd(c: &mut Client, region: u32, off: u64, len: usize) -> Result<Vec<u8>, BackendError> {
    let mut b = vec![0u8; len];
    c.region_read(region, off, &mut b)?;
    Ok(b)
}

fn state_u32(c: &mut Client, region: u32) -> u32 {
    u32::from_le_bytes(rd(c, region, 0, 4).unwrap().try_into().unwrap())
}

fn vgpu_digest(c: &mut Client) -> u64 {
    u64::from_le_bytes(rd(c, 0, 0x38, 8).unwrap().try_into().unwrap())
}

/// Sets some vgpu state (registers + rendered memory), engines off after.
fn make_state(c: &mut Client, seed: u64) {
    c.region_write(0, 0x30, &seed.to_le_bytes()).unwrap();
    c.region_write(0, 0x60, &(!seed).to_le_bytes()).unwrap();
    c.region_write(0, 0x10, &(64u64 << 20).to_le_bytes())
        .unwrap();
    c.region_write(0, 0x08, &1u64.to_le_bytes()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    c.region_write(0, 0x08, &0u64.to_le_bytes()).unwrap();
}

#[test]
fn v1_region_bad_accesses_are_refused_and_change_nothing() {
    let mut s = Served::with_protocol("vgpu", Some(16 << 20), "all");
    let mut c = Client::connect(&s.path).unwrap();
    let r = c.region_info(V1_REGION_INDEX).unwrap();
    assert_eq!(
        r.region_type,
        Some((vabi::REGION_TYPE, vabi::REGION_SUBTYPE))
    );
    assert_eq!(
        r.sparse_areas,
        vec![(DATA, SECTION)],
        "only the data section is mmap-able"
    );
    assert!(r.fd.is_some());
    let v = V1_REGION_INDEX;
    let before = vgpu_digest(&mut c);
    // Wrong width.
    einval(rd(&mut c, v, 0, 8), "8-byte read of device_state");
    einval(rd(&mut c, v, 8, 4), "4-byte read of pending_bytes");
    einval(
        c.region_write(v, 0, &[1, 0]),
        "2-byte write of device_state",
    );
    // Misaligned / inside a field / spanning two.
    einval(rd(&mut c, v, 12, 8), "read starting inside pending_bytes");
    einval(rd(&mut c, v, 2, 4), "misaligned device_state read");
    einval(
        rd(&mut c, v, 4, 8),
        "read spanning reserved and pending_bytes",
    );
    // Between header and data section.
    einval(rd(&mut c, v, 64, 8), "read past the header");
    // Read-only fields.
    einval(
        c.region_write(v, 8, &5u64.to_le_bytes()),
        "write pending_bytes",
    );
    einval(c.region_write(v, 4, &0u32.to_le_bytes()), "write reserved");
    einval(
        c.region_write(v, 16, &DATA.to_le_bytes()),
        "write data_offset",
    );
    // Invalid state values.
    for bad in [5u32, vabi::STATE_ERROR, 7, 8, 0xffff_ffff] {
        einval(
            c.region_write(v, 0, &bad.to_le_bytes()),
            &format!("device_state {bad:#x}"),
        );
    }
    // Saving fields outside saving states.
    einval(rd(&mut c, v, 8, 8), "pending_bytes while running");
    einval(
        c.region_write(v, 24, &8u64.to_le_bytes()),
        "data_size while running",
    );
    // Data outside the section.
    einval(
        rd(&mut c, v, DATA + SECTION - 4, 8),
        "read across the section end",
    );
    einval(
        c.region_write(v, DATA + SECTION, &[0; 8]),
        "write past the section",
    );
    // Forbidden arc: SAVING -> SAVING|RUNNING.
    c.region_write(v, 0, &vabi::STATE_SAVING.to_le_bytes())
        .unwrap();
    einval(
        c.region_write(v, 0, &3u32.to_le_bytes()),
        "SAVING -> SAVING|RUNNING",
    );
    assert_eq!(state_u32(&mut c, v), vabi::STATE_SAVING);
    c.region_write(v, 0, &vabi::STATE_RUNNING.to_le_bytes())
        .unwrap();
    // Nothing changed, the same connection serves, the server lives.
    assert_eq!(state_u32(&mut c, v), vabi::STATE_RUNNING);
    assert_eq!(vgpu_digest(&mut c), before);
    assert!(s.alive());
}

#[test]
fn seed_region_bad_accesses_are_refused_and_change_nothing() {
    let mut s = Served::with_protocol("vgpu", Some(16 << 20), "all");
    let mut c = Client::connect(&s.path).unwrap();
    let r = c.region_info(SEED_REGION_INDEX).unwrap();
    assert_eq!(
        r.region_type,
        Some((sabi::REGION_TYPE, sabi::REGION_SUBTYPE))
    );
    assert_eq!(r.sparse_areas, vec![(DATA, SECTION)]);
    let g = SEED_REGION_INDEX;
    let before = vgpu_digest(&mut c);
    // Wrong width, offsets inside fields (the packed u64s are unaligned by
    // design: 4, 12, ... are right, 8 is inside precopy_only).
    einval(rd(&mut c, g, 0, 8), "8-byte read of device_state");
    einval(rd(&mut c, g, 4, 4), "4-byte read of precopy_only");
    einval(rd(&mut c, g, 8, 8), "read inside precopy_only");
    einval(rd(&mut c, g, 30, 8), "read inside threshold_size");
    einval(rd(&mut c, g, 76, 8), "read past the header");
    einval(c.region_write(g, 28, &[0; 4]), "4-byte threshold write");
    // Read-only fields.
    for off in [
        sabi::OFF_PENDING_PRECOPY_ONLY,
        sabi::OFF_PENDING_COMPATIBLE,
        sabi::OFF_PENDING_POSTCOPY_ONLY,
        sabi::OFF_DIRTY_COPIED,
        sabi::OFF_DATA_OFFSET,
    ] {
        einval(
            c.region_write(g, off, &1u64.to_le_bytes()),
            &format!("write field at {off}"),
        );
    }
    // Invalid state values and transitions.
    for bad in [0u32, 10, 0xffff_ffff] {
        einval(
            c.region_write(g, 0, &bad.to_le_bytes()),
            &format!("device_state {bad}"),
        );
    }
    for bad in [
        SeedState::Precopy,
        SeedState::StopNCopy,
        SeedState::SaveCompleted,
        SeedState::ResumeCompleted,
    ] {
        einval(
            c.region_write(g, 0, &(bad as u32).to_le_bytes()),
            &format!("RUNNING -> {}", bad.name()),
        );
    }
    // Actions outside their states.
    einval(
        rd(&mut c, g, sabi::OFF_PENDING_PRECOPY_ONLY, 8),
        "get pending while running",
    );
    einval(
        rd(&mut c, g, sabi::OFF_DATA_OFFSET, 8),
        "get buffer while running",
    );
    einval(
        c.region_write(g, sabi::OFF_DATA_SIZE, &8u64.to_le_bytes()),
        "set buffer while running",
    );
    einval(
        rd(&mut c, g, sabi::OFF_DIRTY_COPIED, 8),
        "dirty bitmap without logging",
    );
    // Data outside the section; a data.offset outside it while resuming.
    einval(
        rd(&mut c, g, DATA + SECTION - 1, 2),
        "read across the section end",
    );
    c.region_write(g, 0, &(SeedState::Resume as u32).to_le_bytes())
        .unwrap();
    einval(
        c.region_write(g, sabi::OFF_DATA_OFFSET, &(DATA + SECTION).to_le_bytes()),
        "data.offset past the section",
    );
    einval(
        c.region_write(g, sabi::OFF_DATA_OFFSET, &100u64.to_le_bytes()),
        "data.offset in the header",
    );
    einval(
        c.region_write(g, sabi::OFF_DATA_SIZE, &(SECTION + 1).to_le_bytes()),
        "data.size above the section",
    );
    einval(
        c.region_write(g, 0, &(SeedState::Setup as u32).to_le_bytes()),
        "RESUME -> SETUP",
    );
    assert_eq!(state_u32(&mut c, g), SeedState::Resume as u32);
    // CANCELLED on the resuming side discards; then RUNNING.
    c.region_write(g, 0, &(SeedState::Cancelled as u32).to_le_bytes())
        .unwrap();
    c.region_write(g, 0, &(SeedState::Running as u32).to_le_bytes())
        .unwrap();
    assert_eq!(state_u32(&mut c, g), SeedState::Running as u32);
    let _ = before;
    assert!(s.alive());
    // The connection still serves a full save.
    let mut d = SeedDevice::new(c, true).unwrap();
    d.set_state(MigState::StopCopy).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = d.read_data(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
    }
    assert!(total > 16 << 20, "{total} bytes of vgpu state");
    d.set_state(MigState::Running).unwrap();
    assert_eq!(d.read_state().unwrap(), SeedState::Running);
}

/// Saves the whole state through `dev` from RUNNING with a pre-copy pass.
fn save(dev: &mut dyn MigrationDevice) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 256 << 10];
    dev.set_state(MigState::PreCopy).unwrap();
    assert_eq!(dev.state().unwrap(), MigState::PreCopy);
    let info = dev.precopy_info().unwrap();
    assert!(info.initial_bytes > 0);
    loop {
        let n = dev.read_data(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    dev.set_state(MigState::StopCopy).unwrap();
    assert_eq!(dev.state().unwrap(), MigState::StopCopy);
    loop {
        let n = dev.read_data(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    dev.set_state(MigState::Stop).unwrap();
    assert_eq!(dev.state().unwrap(), MigState::Stop);
    out
}

fn restore(dev: &mut dyn MigrationDevice, state: &[u8]) {
    dev.set_state(MigState::Resuming).unwrap();
    assert_eq!(dev.state().unwrap(), MigState::Resuming);
    for piece in state.chunks(300_000) {
        dev.write_data(piece).unwrap();
    }
    dev.set_state(MigState::Stop).unwrap();
    assert_eq!(dev.state().unwrap(), MigState::Stop);
}

fn digest_of(dev: &mut dyn MigrationDevice) -> u64 {
    let mut b = [0u8; 8];
    dev.regions()
        .expect("region access")
        .region_read(0, 0x38, &mut b)
        .unwrap();
    u64::from_le_bytes(b)
}

#[test]
fn every_seed_state_over_the_wire_mmap_and_messages() {
    for mmap in [true, false] {
        let src = Served::with_protocol("vgpu", Some(16 << 20), "seed");
        let dst = Served::with_protocol("vgpu", Some(16 << 20), "seed");
        let mut c = Client::connect(&src.path).unwrap();
        make_state(&mut c, 0xabc);
        let mut a = SeedDevice::new(c, mmap).unwrap();
        assert_eq!(a.region().mapped(), mmap);
        let mut b = SeedDevice::new(Client::connect(&dst.path).unwrap(), mmap).unwrap();
        assert_eq!(a.read_state().unwrap(), SeedState::Running);
        // SETUP, PRECOPY, STOPNCOPY, SAVE_COMPLETED.
        let state = save(&mut a);
        assert_eq!(a.read_state().unwrap(), SeedState::SaveCompleted);
        let want = digest_of(&mut a);
        // RESUME, RESUME_COMPLETED on the destination; same digest.
        restore(&mut b, &state);
        assert_eq!(b.read_state().unwrap(), SeedState::ResumeCompleted);
        assert_eq!(digest_of(&mut b), want, "mmap {mmap}");
        b.set_state(MigState::Running).unwrap();
        assert_eq!(b.read_state().unwrap(), SeedState::Running);
        // FAILED after a save: the source runs on with its state.
        a.go(SeedState::Failed).unwrap();
        assert_eq!(a.state().unwrap(), MigState::Running);
        a.go(SeedState::Running).unwrap();
        assert_eq!(digest_of(&mut a), want);
        // CANCELLED during pre-copy: back to RUNNING, state intact.
        a.go(SeedState::Setup).unwrap();
        a.go(SeedState::Cancelled).unwrap();
        a.go(SeedState::Running).unwrap();
        assert_eq!(digest_of(&mut a), want);
        // A truncated state fails RESUME_COMPLETED (stays RESUME); FAILED
        // then discards it: the device never runs it.
        b.set_state(MigState::Resuming).unwrap();
        b.write_data(&state[..state.len() / 2]).unwrap();
        let e = b.go(SeedState::ResumeCompleted).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EINVAL), "{e}");
        assert_eq!(b.read_state().unwrap(), SeedState::Resume);
        b.go(SeedState::Failed).unwrap();
        assert_eq!(b.state().unwrap(), MigState::Stop);
        assert_ne!(digest_of(&mut b), want);
    }
}

#[test]
fn every_v1_state_over_the_wire_mmap_and_messages() {
    for mmap in [true, false] {
        let src = Served::with_protocol("vgpu", Some(16 << 20), "v1");
        let dst = Served::with_protocol("vgpu", Some(16 << 20), "v1");
        let mut c = Client::connect(&src.path).unwrap();
        make_state(&mut c, 0xdef);
        let mut a = V1Device::new(c, mmap).unwrap();
        assert_eq!(a.region().mapped(), mmap);
        let mut b = V1Device::new(Client::connect(&dst.path).unwrap(), mmap).unwrap();
        assert_eq!(a.state().unwrap(), MigState::Running);
        // RUNNING(1) → SAVING|RUNNING(3) → SAVING(2) → 0.
        let state = save(&mut a);
        let want = digest_of(&mut a);
        // RESUMING(4) → 0 → RUNNING.
        restore(&mut b, &state);
        assert_eq!(digest_of(&mut b), want, "mmap {mmap}");
        b.set_state(MigState::Running).unwrap();
        assert_eq!(b.state().unwrap(), MigState::Running);
        // Bad data fails leaving RESUMING.
        b.set_state(MigState::Resuming).unwrap();
        b.write_data(&state[..state.len() / 3]).unwrap();
        assert!(b.set_state(MigState::Stop).is_err());
        // The source rolls back to RUNNING from SAVING.
        a.set_state(MigState::Running).unwrap();
        a.set_state(MigState::StopCopy).unwrap();
        a.set_state(MigState::Running).unwrap();
        assert_eq!(a.state().unwrap(), MigState::Running);
        assert_eq!(digest_of(&mut a), want);
    }
}

#[test]
fn older_protocol_only_servers_withhold_v2_and_reset_clears_regions() {
    let s = Served::with_protocol("vgpu", Some(16 << 20), "seed");
    let mut c = Client::connect(&s.path).unwrap();
    // v2: MIGRATION feature ENOTTY, MIG_DATA_READ ENOTSUP.
    let e = c
        .feature_get(vfio_migrate_abi::kernel::FEATURE_MIGRATION, &[], 8)
        .unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENOTTY), "{e}");
    let head = MigData {
        argsz: MigData::SIZE as u32 + 64,
        size: 64,
    };
    let r = c
        .request(Command::MigDataRead as u16, &head.to_bytes(), &[])
        .unwrap();
    assert_eq!(r.errno(), Some(libc::ENOTSUP));
    // No v1 region (index 9 absent), DIRTY_PAGES not served.
    assert_eq!(c.region_info(V1_REGION_INDEX).unwrap().size, 0);
    let dp = DirtyPages {
        argsz: 8,
        flags: vabi::DIRTY_PAGES_START,
    };
    let r = c
        .request(Command::DirtyPages as u16, &dp.to_bytes(), &[])
        .unwrap();
    assert_eq!(r.errno(), Some(libc::ENOTSUP));
    // DEVICE_RESET puts the seed region back to RUNNING.
    let g = SEED_REGION_INDEX;
    c.region_write(g, 0, &(SeedState::Setup as u32).to_le_bytes())
        .unwrap();
    let r = c.request(Command::DeviceReset as u16, &[], &[]).unwrap();
    assert_eq!(r.errno(), None);
    assert_eq!(state_u32(&mut c, g), SeedState::Running as u32);
    // A v2-only server has neither region.
    let v2 = Served::with_protocol("vgpu", Some(16 << 20), "v2");
    let mut c = Client::connect(&v2.path).unwrap();
    assert_eq!(c.device_info().unwrap().num_regions, 9);
    assert!(c.region_info(V1_REGION_INDEX).is_err());
}

#[test]
fn dirty_pages_refuses_bad_requests_and_reports_dma_writes() {
    let mut s = Served::with_protocol("vgpu", Some(16 << 20), "v1");
    let mut c = Client::connect(&s.path).unwrap();
    let ram = wire::memfd(1 << 20);
    DmaMapping::dma_map(
        &mut c,
        DmaWindow {
            iova: 0,
            size: 1 << 20,
            fd: Some(ram.as_fd()),
            offset: 0,
            readable: true,
            writable: true,
        },
    )
    .unwrap();
    let cmd = Command::DirtyPages as u16;
    let req = |flags: u32, range: Option<DirtyBitmapRange>| {
        let mut v = DirtyPages {
            argsz: 8 + range.map_or(0, |r| 32 + r.bitmap_size as u32),
            flags,
        }
        .to_bytes()
        .to_vec();
        if let Some(r) = range {
            v.extend_from_slice(&r.to_bytes());
        }
        v
    };
    let range = |size: u64, bitmap_size: u64| DirtyBitmapRange {
        iova: 0,
        size,
        pgsize: 4096,
        bitmap_size,
    };
    for (what, payload, errno) in [
        ("two flags", req(3, None), libc::EINVAL),
        ("no flag", req(0, None), libc::EINVAL),
        (
            "bitmap while logging is off",
            req(4, Some(range(1 << 20, 32))),
            libc::EINVAL,
        ),
        ("short", vec![0u8; 4], libc::EINVAL),
    ] {
        let r = c.request(cmd, &payload, &[]).unwrap();
        assert_eq!(r.errno(), Some(errno), "{what}");
    }
    assert_eq!(c.request(cmd, &req(1, None), &[]).unwrap().errno(), None);
    assert_eq!(
        c.request(cmd, &req(1, None), &[]).unwrap().errno(),
        Some(libc::EBUSY)
    );
    for (what, r) in [
        ("wrong bitmap_size", range(1 << 20, 8)),
        (
            "other page size",
            DirtyBitmapRange {
                pgsize: 8192,
                ..range(1 << 20, 16)
            },
        ),
        (
            "outside the log",
            DirtyBitmapRange {
                iova: 2 << 20,
                ..range(1 << 20, 32)
            },
        ),
    ] {
        let rep = c.request(cmd, &req(4, Some(r)), &[]).unwrap();
        assert_eq!(rep.errno(), Some(libc::EINVAL), "{what}");
    }
    // The DMA engine writes into the window: pages show up, read-and-clear.
    let mut d = V1Device::new(c, true).unwrap();
    for (off, v) in [
        (0x20u64, 0u64),
        (0x28, 64 << 10),
        (0x18, 64 << 20),
        (0x08, 2),
    ] {
        d.region_write(0, off, &v.to_le_bytes()).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    d.region_write(0, 0x08, &0u64.to_le_bytes()).unwrap();
    let mut bm = vec![0u8; 32];
    d.dma_logging_report(0, 1 << 20, 4096, &mut bm).unwrap();
    let dirty: u32 = bm.iter().map(|b| b.count_ones()).sum();
    assert!(
        (1..=16).contains(&dirty),
        "{dirty} dirty pages in a 16-page window"
    );
    assert!(
        bm[2..].iter().all(|&b| b == 0),
        "nothing outside the window"
    );
    d.dma_logging_report(0, 1 << 20, 4096, &mut bm).unwrap();
    assert!(bm.iter().all(|&b| b == 0), "read and cleared");
    d.dma_logging_stop().unwrap();
    assert!(s.alive());
}
