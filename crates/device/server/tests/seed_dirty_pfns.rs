//! The seed client's dirty-page loop across several `dirty_pfns` rounds:
//! with a 4 KiB data section the server hands out at most 32768 pages per
//! "Get dirty pages bitmap", so a 256 MiB guest window takes two rounds
//! (`copied < total`, advance `start_addr`, ask again). The vgpu's DMA
//! engine writes a window straddling the round boundary; the joined bitmap
//! must show exactly those pages. Server and client talk over a real UNIX
//! socket (the server in a thread of this process).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;
use vfio_migrate_backend::{
    DmaDirtyLog, DmaMapping, DmaWindow, MigState, MigrationDevice, RegionAccess,
};
use vfio_migrate_client::{Client, SeedDevice};
use vfio_migrate_device::{DeviceCore, DmaSpace};
use vfio_migrate_samples::vgpu::{Vgpu, VgpuConfig};
use vfio_migrate_server::{Listener, Server, Shutdown};

const GUEST: u64 = 256 << 20;
const PAGE: u64 = 4096;

fn memfd(len: u64) -> OwnedFd {
    // Sparse: no memory until written.
    vfio_migrate_sys::memfd::create_sized(c"seed-dirty-guest", len).unwrap()
}

#[test]
fn dirty_bitmap_joins_rounds_across_the_section_limit() {
    let dir = std::env::temp_dir().join(format!("vfio-migrate-seed-dirty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("d.sock");
    let dma = Arc::new(DmaSpace::new());
    let dev = Vgpu::new(
        VgpuConfig {
            mem_size: 1 << 20,
            ..Default::default()
        },
        dma.clone(),
    )
    .unwrap();
    let mut server = Server::new(DeviceCore::new(dev, dma));
    server.set_v2_migration(false);
    server.add_seed_region(PAGE).unwrap();
    let listener = Listener::bind(&sock).unwrap();
    let shutdown = Shutdown::new().unwrap();
    std::thread::scope(|s| {
        let srv = s.spawn(|| server.serve(&listener, &shutdown));
        let ram = memfd(GUEST);
        let mut c = Client::connect(&sock).unwrap();
        DmaMapping::dma_map(
            &mut c,
            DmaWindow {
                iova: 0,
                size: GUEST,
                fd: Some(ram.as_fd()),
                offset: 0,
                readable: true,
                writable: true,
            },
        )
        .unwrap();
        let mut d = SeedDevice::new(c, true).unwrap();
        assert_eq!(d.region().section_len, PAGE);
        // Logging starts with MIGRATION_SETUP.
        d.dma_logging_start(PAGE, &[]).unwrap();
        assert_eq!(d.state().unwrap(), MigState::PreCopy);
        // DMA window: 16 pages straddling page 32768 (the round boundary).
        let first = 32768 - 8;
        for (off, v) in [
            (0x20u64, first * PAGE),
            (0x28, 16 * PAGE),
            (0x18, 256 << 20),
            (0x08, 2),
        ] {
            d.region_write(0, off, &v.to_le_bytes()).unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
        d.region_write(0, 0x08, &0u64.to_le_bytes()).unwrap();
        let mut bm = vec![0u8; (GUEST / PAGE / 8) as usize];
        d.dma_logging_report(0, GUEST, PAGE, &mut bm).unwrap();
        let set: Vec<u64> = (0..GUEST / PAGE)
            .filter(|&p| bm[(p / 8) as usize] & (1 << (p % 8)) != 0)
            .collect();
        assert_eq!(set, (first..first + 16).collect::<Vec<_>>());
        // Read and cleared.
        d.dma_logging_report(0, GUEST, PAGE, &mut bm).unwrap();
        assert!(bm.iter().all(|&b| b == 0));
        // Cancelling the log during pre-copy leaves the device running.
        d.dma_logging_stop().unwrap();
        assert_eq!(
            d.read_state().unwrap(),
            vfio_migrate_abi::seed::SeedState::Running
        );
        drop(d);
        shutdown.trigger();
        srv.join().unwrap().unwrap();
    });
    let _ = std::fs::remove_dir_all(&dir);
}
