//! Shared by the engine tests that migrate in-process sample devices
//! (`LocalDevice` vgpus) over a UNIX socket pair.

#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use vfio_migrate_backend::{MigrationDevice, RegionAccess};
use vfio_migrate_device::{DeviceCore, DmaSpace, LocalDevice};
use vfio_migrate_engine::{
    migrate_in, migrate_out, Deadlines, DestLink, DestOptions, GuestRam, Link, MemfdRam,
    SourceOptions, Verifier,
};
use vfio_migrate_harness::{SimGuest, VcpuConfig};
use vfio_migrate_samples::vgpu::{Vgpu, VgpuConfig};

pub const MIB: u64 = 1 << 20;
pub use vfio_migrate_samples::vgpu::regs::reg::*;

pub type Dev = LocalDevice<Vgpu>;

// Robust to fields the sample config may gain.
#[allow(clippy::needless_update)]
pub fn vgpu(name: &str, mem: u64, ram: Option<&MemfdRam>) -> Dev {
    let dma = Arc::new(DmaSpace::new());
    if let Some(r) = ram {
        let fd = r.fd().try_clone_to_owned().unwrap();
        dma.map(0, r.len(), Some(fd), 0, true, true).unwrap();
    }
    let dev = Vgpu::new(
        VgpuConfig {
            mem_size: mem,
            ..Default::default()
        },
        dma.clone(),
    )
    .unwrap();
    LocalDevice::new(name, Arc::new(Mutex::new(DeviceCore::new(dev, dma))))
}

pub fn wr(d: &mut Dev, off: u64, v: u64) {
    d.region_write(0, off, &v.to_le_bytes()).unwrap();
}

pub fn rd(d: &mut Dev, off: u64) -> u64 {
    let mut b = [0u8; 8];
    d.region_read(0, off, &mut b).unwrap();
    u64::from_le_bytes(b)
}

pub fn verifier() -> Verifier {
    Arc::new(|_desc, dev: &mut dyn MigrationDevice| {
        let mut b = [0u8; 8];
        Some(
            dev.regions()
                .expect("region access")
                .region_read(0, DIGEST, &mut b)
                .map(|()| u64::from_le_bytes(b)),
        )
    })
}

/// Starts render (and DMA into the first `dma_window` bytes when given).
pub fn start_engines(d: &mut Dev, dma_window: Option<u64>) {
    wr(d, SEED, 42);
    wr(d, RENDER_RATE, 64 * MIB);
    let mut control = 1;
    if let Some(w) = dma_window {
        wr(d, DMA_IOVA, 0);
        wr(d, DMA_SIZE, w);
        wr(d, DMA_RATE, 16 * MIB);
        control |= 2;
    }
    wr(d, CONTROL, control);
}

pub struct Run {
    pub source: Result<vfio_migrate_engine::MigrationReport, vfio_migrate_engine::SourceFailure>,
    pub dest: Result<vfio_migrate_engine::DestReport, vfio_migrate_engine::DestFailure>,
}

pub fn migrate(
    src: &mut Dev,
    src_guest: Option<&SimGuest>,
    dst: &mut Dev,
    dst_ram: Option<&MemfdRam>,
    opts: SourceOptions,
) -> Run {
    let (a, b) = UnixStream::pair().unwrap();
    std::thread::scope(|s| {
        let dest = s.spawn(move || {
            migrate_in(
                std::slice::from_mut(dst),
                dst_ram.map(|r| r as &dyn GuestRam),
                DestLink::unix(b, "test-source", &Deadlines::default()).unwrap(),
                DestOptions {
                    verifier: Some(verifier()),
                    hash_ram: true,
                    ..Default::default()
                },
            )
        });
        let d = Deadlines {
            cancel: opts.cancel.clone(),
            ..Default::default()
        };
        let source = migrate_out(
            std::slice::from_mut(src),
            src_guest.map(|g| g as &dyn GuestRam),
            Link::unix(a, "test-dest", &d).unwrap(),
            opts,
        );
        Run {
            source,
            dest: dest.join().unwrap(),
        }
    })
}

/// A running source — a 16 MiB vgpu rendering and DMAing into a 32 MiB
/// guest whose vCPU dirties RAM (`seed`) — and an empty destination.
pub struct World {
    pub guest: SimGuest,
    pub dst_ram: MemfdRam,
    pub src: Dev,
    pub dst: Dev,
}

impl World {
    pub fn running(seed: u64) -> Self {
        let mut guest = SimGuest::new(32 * MIB).unwrap();
        let dst_ram = MemfdRam::new("dest", 32 * MIB).unwrap();
        let mut src = vgpu("src", 16 * MIB, Some(guest.ram()));
        let dst = vgpu("dst", 16 * MIB, Some(&dst_ram));
        start_engines(&mut src, Some(4 * MIB));
        guest
            .start_vcpu(VcpuConfig {
                rate: 32 * MIB,
                offset: 8 * MIB,
                length: 8 * MIB,
                seed,
            })
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        Self {
            guest,
            dst_ram,
            src,
            dst,
        }
    }
}
