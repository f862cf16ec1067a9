//! The vgpu as a device: identity and config space, the register map and
//! its refusals, engines that follow state and CONTROL, deterministic
//! engine output, and DMA errors.

mod common;

use common::*;
use std::time::{Duration, Instant};
use vfio_migrate_backend::{DmaMapping, MigState, MigrationDevice, RegionAccess};
use vfio_migrate_device::{Device, DmaSpace};
use vfio_migrate_samples::hash::fill_pseudo_random;
use vfio_migrate_samples::mem::SharedMemory;
use vfio_migrate_samples::vgpu::engines::{dma_target, render_target};
use vfio_migrate_samples::vgpu::regs::{reg, ID_VALUE};
use vfio_migrate_samples::vgpu::{Vgpu, VgpuConfig, FLAGS};

const PAGE: u64 = 4096;

/// Polls `f` until it holds (engines are threads; no fixed sleeps).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn identity_regions_and_config_space() {
    let mut h = vgpu("v", 16 * MIB);
    assert_eq!(h.migration_flags().unwrap(), FLAGS);
    assert_eq!(FLAGS, 7);
    let d = h.descriptor().unwrap();
    assert_eq!(
        (
            d.vendor_id,
            d.device_id,
            d.subsystem_vendor_id,
            d.subsystem_id,
            d.revision
        ),
        (0x1b36, 0x00f0, 0x1b36, 0x0001, 1)
    );
    assert_eq!(d.region_sizes[0], 4096);
    assert_eq!(d.region_sizes[2], 16 * MIB);
    assert_eq!(d.region_sizes[7], 256);
    let mut cfg = [0u8; 0x30];
    h.region_read(7, 0, &mut cfg).unwrap();
    assert_eq!(u16::from_le_bytes([cfg[0], cfg[1]]), 0x1b36);
    assert_eq!(u16::from_le_bytes([cfg[2], cfg[3]]), 0x00f0);
    assert_eq!(cfg[8], 1);
    assert_eq!(u16::from_le_bytes([cfg[0x2c], cfg[0x2d]]), 0x1b36);
    assert_eq!(u16::from_le_bytes([cfg[0x2e], cfg[0x2f]]), 0x0001);
    // BAR2 is a 64-bit prefetchable BAR of mem_size.
    h.region_write(7, 0x18, &[0xff; 8]).unwrap();
    let mut bar = [0u8; 8];
    h.region_read(7, 0x18, &mut bar).unwrap();
    assert_eq!(u64::from_le_bytes(bar), !(16 * MIB - 1) | 0xc);

    let dev = Vgpu::new(VgpuConfig::default(), std::sync::Arc::new(DmaSpace::new())).unwrap();
    assert_eq!(dev.mem_size(), 256 * MIB);
    let regions = dev.regions();
    let bar2 = regions.iter().find(|r| r.index == 2).unwrap();
    let mmap = bar2.mmap.as_ref().expect("BAR2 is mmap-able");
    assert_eq!(mmap.areas, vec![(0, 256 * MIB)]);
    // A client mapping of BAR2 sees what region writes put there.
    let client = SharedMemory::map(mmap.fd.clone(), 256 * MIB).unwrap();
    drop(regions);
    let mut dev = dev;
    dev.region_write(MigState::Running, 2, 12345, b"through the fd")
        .unwrap();
    let mut got = [0u8; 14];
    client.read(12345, &mut got).unwrap();
    assert_eq!(&got, b"through the fd");
}

#[test]
fn bad_mem_sizes_are_refused() {
    for m in [0, 1000, 3 * MIB, 4095] {
        let e = Vgpu::new(
            VgpuConfig {
                mem_size: m,
                ..Default::default()
            },
            std::sync::Arc::new(DmaSpace::new()),
        )
        .unwrap_err();
        assert_eq!(e.errno, libc::EINVAL);
        assert!(e.message.contains("power of two"), "{e}");
    }
}

#[test]
fn register_map_and_refusals() {
    let mut h = vgpu("v", MIB);
    assert_eq!(read_reg(&mut h, reg::ID), ID_VALUE);
    assert_eq!(read_reg(&mut h, reg::MEM_SIZE), MIB);
    for r in [
        reg::RENDER_RATE,
        reg::DMA_RATE,
        reg::DMA_IOVA,
        reg::DMA_SIZE,
        reg::SEED,
        reg::SCRATCH,
    ] {
        write_reg(&mut h, r, 0x1122_3344_5566_7788 ^ r);
        assert_eq!(read_reg(&mut h, r), 0x1122_3344_5566_7788 ^ r);
    }
    // 4-byte halves.
    h.region_write(0, reg::SCRATCH + 4, &0xaabb_ccddu32.to_le_bytes())
        .unwrap();
    assert_eq!(read_reg(&mut h, reg::SCRATCH) >> 32, 0xaabb_ccdd);
    let mut half = [0u8; 4];
    h.region_read(0, reg::ID + 4, &mut half).unwrap();
    assert_eq!(u32::from_le_bytes(half), (ID_VALUE >> 32) as u32);
    // Two registers in one access.
    let mut two = [0u8; 16];
    h.region_read(0, reg::ID, &mut two).unwrap();
    assert_eq!(u64::from_le_bytes(two[..8].try_into().unwrap()), ID_VALUE);

    let refused = |h: &mut VgpuHandle, off: u64, data: &[u8], want: &str| {
        let e = h.region_write(0, off, data).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EINVAL), "{e}");
        assert!(e.to_string().contains(want), "{off:#x}: {e}");
    };
    for r in [
        reg::ID,
        reg::DIGEST,
        reg::FRAME,
        reg::DMA_COUNT,
        reg::DMA_ERRORS,
        reg::MEM_SIZE,
        reg::DIGEST_FULL,
        reg::THROTTLE,
    ] {
        refused(&mut h, r, &[0; 8], "read-only");
    }
    refused(&mut h, reg::CONTROL, &16u64.to_le_bytes(), "reserved");
    refused(&mut h, 0x80, &[0; 8], "no register");
    refused(&mut h, 0x09, &[0; 2], "8-byte aligned");
    refused(&mut h, 0x0a, &[0; 4], "8-byte aligned");
    // A multi-register write with one bad register changes nothing.
    let mut w = Vec::new();
    w.extend_from_slice(&7u64.to_le_bytes()); // SEED
    w.extend_from_slice(&0u64.to_le_bytes()); // DIGEST (read-only)
    let seed = read_reg(&mut h, reg::SEED);
    refused(&mut h, reg::SEED, &w, "read-only");
    assert_eq!(read_reg(&mut h, reg::SEED), seed);
    let mut b = [0u8; 8];
    assert!(h.region_read(0, 0x100, &mut b).is_err());
    assert!(h.region_read(0, 4096, &mut b).is_err(), "outside BAR0");
    assert!(h.region_read(3, 0, &mut b).is_err(), "no region 3");

    // The state is frozen outside the running states.
    h.set_state(MigState::Stop).unwrap();
    let e = h.region_write(0, reg::SCRATCH, &[0; 8]).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EBUSY));
    assert!(e.to_string().contains("set it RUNNING first"), "{e}");
    assert!(h.region_write(2, 0, &[1]).is_err());
    read_reg(&mut h, reg::DIGEST); // reads still work
}

#[test]
fn engines_follow_state_and_control() {
    let guest = SharedMemory::new("guest", MIB).unwrap();
    let mut h = vgpu("v", 4 * MIB);
    map_guest(&mut h, &guest);
    write_reg(&mut h, reg::RENDER_RATE, 64 * MIB);
    write_reg(&mut h, reg::DMA_RATE, 8 * MIB);
    write_reg(&mut h, reg::DMA_IOVA, GUEST_IOVA);
    write_reg(&mut h, reg::DMA_SIZE, MIB);
    let engines = |h: &VgpuHandle| h.core().lock().unwrap().device_ref().engines_running();
    assert_eq!(engines(&h), (false, false));
    write_reg(&mut h, reg::CONTROL, 1);
    assert_eq!(engines(&h), (true, false));
    eventually("frames", || read_reg(&mut h, reg::FRAME) > 10);
    assert_eq!(read_reg(&mut h, reg::DMA_COUNT), 0);
    write_reg(&mut h, reg::CONTROL, 3);
    eventually("DMA writes", || read_reg(&mut h, reg::DMA_COUNT) > 10);

    // P2P only forbids peer-to-peer DMA: both engines go on.
    h.set_state(MigState::RunningP2p).unwrap();
    assert_eq!(engines(&h), (true, true));
    let (f, d) = (
        read_reg(&mut h, reg::FRAME),
        read_reg(&mut h, reg::DMA_COUNT),
    );
    eventually("progress in RUNNING_P2P", || {
        read_reg(&mut h, reg::FRAME) > f && read_reg(&mut h, reg::DMA_COUNT) > d
    });

    // STOP stops both before the arc returns.
    h.set_state(MigState::Stop).unwrap();
    assert_eq!(engines(&h), (false, false));
    let frozen = (
        read_reg(&mut h, reg::FRAME),
        read_reg(&mut h, reg::DMA_COUNT),
    );
    let digest = read_reg(&mut h, reg::DIGEST);
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(
        (
            read_reg(&mut h, reg::FRAME),
            read_reg(&mut h, reg::DMA_COUNT)
        ),
        frozen
    );
    assert_eq!(read_reg(&mut h, reg::DIGEST), digest);

    // Back to RUNNING: they restart from where they were.
    h.set_state(MigState::Running).unwrap();
    assert_eq!(engines(&h), (true, true));
    eventually("restart", || read_reg(&mut h, reg::FRAME) > frozen.0);
    write_reg(&mut h, reg::CONTROL, 0);
    assert_eq!(engines(&h), (false, false));

    // Reset: power-on state.
    write_reg(&mut h, reg::CONTROL, 1);
    h.reset().unwrap();
    assert_eq!(engines(&h), (false, false));
    assert_eq!(read_reg(&mut h, reg::FRAME), 0);
    assert_eq!(read_reg(&mut h, reg::CONTROL), 0);
    let fresh = vgpu("fresh", 4 * MIB);
    let mut fresh = fresh;
    assert_eq!(
        read_reg(&mut h, reg::DIGEST),
        read_reg(&mut fresh, reg::DIGEST)
    );
}

/// Engine writes follow from (SEED, counters) only: replaying them gives
/// the same device memory, guest memory and digest.
#[test]
fn engine_output_is_deterministic() {
    let mem = 2 * MIB;
    let guest_len = 256 << 10;
    let guest = SharedMemory::new("guest", guest_len).unwrap();
    let mut h = vgpu("v", mem);
    map_guest(&mut h, &guest);
    let seed = 0xdead_beef;
    write_reg(&mut h, reg::SEED, seed);
    write_reg(&mut h, reg::RENDER_RATE, 32 * MIB);
    write_reg(&mut h, reg::DMA_RATE, 4 * MIB);
    write_reg(&mut h, reg::DMA_IOVA, GUEST_IOVA);
    write_reg(&mut h, reg::DMA_SIZE, guest_len);
    write_reg(&mut h, reg::CONTROL, 3);
    eventually("work", || {
        read_reg(&mut h, reg::FRAME) > 200 && read_reg(&mut h, reg::DMA_COUNT) > 50
    });
    h.set_state(MigState::Stop).unwrap();
    let frames = read_reg(&mut h, reg::FRAME);
    let dmas = read_reg(&mut h, reg::DMA_COUNT);
    assert_eq!(read_reg(&mut h, reg::DMA_ERRORS), 0);

    let pages = mem / PAGE;
    let mut want_mem = vec![0u8; mem as usize];
    for f in 0..frames {
        let (p, fill) = render_target(seed, f, pages);
        fill_pseudo_random(
            fill,
            &mut want_mem[(p * PAGE) as usize..((p + 1) * PAGE) as usize],
        );
    }
    let mut got_mem = vec![0u8; mem as usize];
    h.region_read(2, 0, &mut got_mem).unwrap();
    assert!(got_mem == want_mem, "device memory differs from the replay");

    let mut want_guest = vec![0u8; guest_len as usize];
    for s in 0..dmas {
        let (off, blk, fill) = dma_target(seed, s, guest_len);
        fill_pseudo_random(fill, &mut want_guest[off as usize..(off + blk) as usize]);
    }
    let mut got_guest = vec![0u8; guest_len as usize];
    guest.read(0, &mut got_guest).unwrap();
    assert!(
        got_guest == want_guest,
        "guest memory differs from the replay"
    );
}

#[test]
fn dma_to_an_unmapped_window_counts_errors() {
    let mut h = vgpu("v", MIB);
    write_reg(&mut h, reg::DMA_RATE, 4 * MIB);
    write_reg(&mut h, reg::DMA_IOVA, 0x9000_0000);
    write_reg(&mut h, reg::DMA_SIZE, 64 << 10);
    write_reg(&mut h, reg::CONTROL, 2);
    eventually("errors", || read_reg(&mut h, reg::DMA_ERRORS) > 5);
    assert_eq!(read_reg(&mut h, reg::DMA_COUNT), 0);
    // Map it: writes start to succeed.
    let guest = SharedMemory::new("guest", 64 << 10).unwrap();
    h.dma_map(vfio_migrate_backend::DmaWindow {
        iova: 0x9000_0000,
        size: 64 << 10,
        fd: Some(std::os::fd::AsFd::as_fd(&**guest.fd())),
        offset: 0,
        readable: true,
        writable: true,
    })
    .unwrap();
    eventually("writes", || read_reg(&mut h, reg::DMA_COUNT) > 5);
}

#[test]
fn invalid_arcs_are_refused_and_change_nothing() {
    let mut h = vgpu("v", MIB);
    let core = h.core().clone();
    let mut c = core.lock().unwrap();
    // The SDK only hands out single arcs; a device asked for anything else
    // refuses it.
    let e = c
        .device()
        .transition(MigState::Running, MigState::StopCopy)
        .unwrap_err();
    assert_eq!(e.errno, libc::EINVAL);
    assert_eq!(c.state(), MigState::Running);
    drop(c);
    let e = h.set_state(MigState::Error).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EINVAL));
    assert_eq!(h.state().unwrap(), MigState::Running);
    // Data access outside the states that allow it.
    assert!(h.write_data(b"x").is_err());
    let mut b = [0u8; 16];
    assert!(h.read_data(&mut b).is_err());
    assert!(h.precopy_info().is_err());
}

/// Reads (and clears) an eventfd's counter; 0 when nothing is pending.
fn take(fd: &std::os::fd::OwnedFd) -> u64 {
    use std::io::Read;
    use std::os::fd::AsFd;
    vfio_migrate_sys::fd::set_nonblocking(fd.as_fd()).unwrap();
    let mut b = [0u8; 8];
    match std::fs::File::from(fd.try_clone().unwrap()).read(&mut b) {
        Ok(8) => u64::from_ne_bytes(b),
        _ => 0,
    }
}

/// The vgpu offers one MSI vector, announced by the MSI capability (and no
/// INTx: pin 0), and raises it after engine steps when CONTROL asks.
#[test]
fn msi_after_engine_steps() {
    use vfio_migrate_device::IrqRequest;
    use vfio_migrate_samples::vgpu::regs::{
        CONTROL_DMA, CONTROL_IRQ_DMA, CONTROL_IRQ_FRAME, CONTROL_RENDER,
    };
    let mut h = vgpu("v", 16 * MIB);
    let irqs = h.core().lock().unwrap().device_ref().irqs();
    assert_eq!(irqs.len(), 1);
    assert_eq!((irqs[0].index, irqs[0].count), (1, 1), "MSI, one vector");
    let mut cfg = [0u8; 256];
    h.region_read(7, 0, &mut cfg).unwrap();
    assert_eq!(cfg[0x3d], 0, "no interrupt pin: no INTx");
    assert_ne!(cfg[6] & 0x10, 0, "capability list");
    let at = cfg[0x34] as usize;
    assert_eq!((cfg[at], cfg[at + 1]), (0x05, 0), "MSI, last capability");
    let ctrl = u16::from_le_bytes([cfg[at + 2], cfg[at + 3]]);
    assert_eq!(ctrl, 0x0080, "64-bit, one vector (MMC 0), disabled");

    let ev = vfio_migrate_sys::fd::eventfd().unwrap();
    h.core()
        .lock()
        .unwrap()
        .device()
        .set_irqs(
            1,
            IrqRequest::Attach {
                start: 0,
                fds: vec![ev.try_clone().unwrap()],
            },
        )
        .unwrap();
    write_reg(&mut h, reg::RENDER_RATE, 4096 * 1000);
    write_reg(&mut h, reg::CONTROL, CONTROL_RENDER);
    eventually("a few frames", || read_reg(&mut h, reg::FRAME) >= 3);
    assert_eq!(take(&ev), 0, "no interrupt unless asked");
    write_reg(&mut h, reg::CONTROL, CONTROL_RENDER | CONTROL_IRQ_FRAME);
    let mut seen = 0;
    eventually("frame interrupts", || {
        seen += take(&ev);
        seen >= 3
    });
    write_reg(&mut h, reg::CONTROL, 0);
    let frames = read_reg(&mut h, reg::FRAME);
    let signals = h
        .core()
        .lock()
        .unwrap()
        .device_ref()
        .interrupts()
        .signals(1, 0);
    assert!(
        signals >= seen && signals <= frames,
        "{signals} signals, {frames} frames"
    );

    // DMA steps raise it too (here failing ones: nothing is mapped).
    write_reg(&mut h, reg::DMA_SIZE, 4096);
    write_reg(&mut h, reg::DMA_RATE, 4096 * 1000);
    take(&ev);
    write_reg(&mut h, reg::CONTROL, CONTROL_DMA | CONTROL_IRQ_DMA);
    eventually("DMA interrupts", || take(&ev) > 0);
    write_reg(&mut h, reg::CONTROL, 0);
    assert!(read_reg(&mut h, reg::DMA_ERRORS) > 0);
    let mut bad = [0u8; 8];
    bad[0] = 0x10;
    assert!(
        h.region_write(0, reg::CONTROL, &bad).is_err(),
        "bit 4 is reserved"
    );
}
