//! Repeated live migrations with guest RAM: a vgpu whose render and DMA
//! engines run and a guest whose vCPU dirties RAM, migrated A→B→A…
//! ten times. Every hop starts DMA dirty logging on the source again
//! (over the same IOVA range), pre-copies device memory again, and must
//! arrive verified: device digest and RAM hash equal at the stop. State
//! left over from an earlier hop (a DMA log still on, a pre-copy cursor
//! or a dirty log not reset) fails a later hop.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use vfio_migrate_backend::{MigState, MigrationDevice, RegionAccess};
use vfio_migrate_device::{DeviceCore, DmaSpace, LocalDevice};
use vfio_migrate_engine::{
    migrate_in, migrate_out, Deadlines, DestLink, DestOptions, GuestRam, Link, SourceOptions,
    Verifier,
};
use vfio_migrate_harness::{SimGuest, VcpuConfig};
use vfio_migrate_samples::vgpu::{Vgpu, VgpuConfig};

const MIB: u64 = 1 << 20;
const CONTROL: u64 = 0x08;
const RENDER_RATE: u64 = 0x10;
const DMA_RATE: u64 = 0x18;
const DMA_IOVA: u64 = 0x20;
const DMA_SIZE: u64 = 0x28;
const SEED: u64 = 0x30;
const DIGEST: u64 = 0x38;
const SCRATCH: u64 = 0x60;

type Dev = LocalDevice<Vgpu>;

#[allow(clippy::needless_update)]
fn vgpu(name: &str, guest: &SimGuest) -> Dev {
    let dma = Arc::new(DmaSpace::new());
    let r = guest.ram();
    let fd = r.fd().try_clone_to_owned().unwrap();
    dma.map(0, r.len(), Some(fd), 0, true, true).unwrap();
    let dev = Vgpu::new(
        VgpuConfig {
            mem_size: 2 * MIB,
            ..Default::default()
        },
        dma.clone(),
    )
    .unwrap();
    LocalDevice::new(name, Arc::new(Mutex::new(DeviceCore::new(dev, dma))))
}

fn wr(d: &mut Dev, off: u64, v: u64) {
    d.region_write(0, off, &v.to_le_bytes()).unwrap();
}

fn rd(d: &mut Dev, off: u64) -> u64 {
    let mut b = [0u8; 8];
    d.region_read(0, off, &mut b).unwrap();
    u64::from_le_bytes(b)
}

fn verifier() -> Verifier {
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

#[test]
fn ten_live_hops_with_guest_ram_and_dma_logging() {
    let mut guests = [
        SimGuest::new(8 * MIB).unwrap(),
        SimGuest::new(8 * MIB).unwrap(),
    ];
    let mut devs = [vgpu("a", &guests[0]), vgpu("b", &guests[1])];
    for g in guests.iter_mut() {
        g.start_vcpu(VcpuConfig {
            rate: 16 * MIB,
            offset: 4 * MIB,
            length: 2 * MIB,
            seed: 5,
        })
        .unwrap();
    }
    // B's guest waits for the VM to arrive.
    GuestRam::pause(&guests[1]);
    let a = &mut devs[0];
    wr(a, SEED, 1);
    wr(a, RENDER_RATE, 16 * MIB);
    wr(a, DMA_IOVA, 0);
    wr(a, DMA_SIZE, 2 * MIB);
    wr(a, DMA_RATE, 8 * MIB);
    wr(a, CONTROL, 3);
    for n in 0..10usize {
        let (s, d) = if n % 2 == 0 { (0, 1) } else { (1, 0) };
        let [da, db] = &mut devs;
        let (src, dst) = if s == 0 { (da, db) } else { (db, da) };
        wr(src, SCRATCH, 0x100 + n as u64);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (a_sock, b_sock) = UnixStream::pair().unwrap();
        let (gs, gd) = (&guests[s], &guests[d]);
        let (out, inn) = std::thread::scope(|sc| {
            let dest = sc.spawn(|| {
                migrate_in(
                    std::slice::from_mut(dst),
                    Some(gd as &dyn GuestRam),
                    DestLink::unix(b_sock, "src", &Deadlines::default()).unwrap(),
                    DestOptions {
                        verifier: Some(verifier()),
                        hash_ram: true,
                        ..Default::default()
                    },
                )
            });
            let out = migrate_out(
                std::slice::from_mut(src),
                Some(gs as &dyn GuestRam),
                Link::unix(a_sock, "dst", &Deadlines::default()).unwrap(),
                SourceOptions {
                    verifier: Some(verifier()),
                    ..Default::default()
                },
            );
            (out, dest.join().unwrap())
        });
        let rep = out.unwrap_or_else(|f| panic!("hop {n}: {f}"));
        inn.unwrap_or_else(|f| panic!("hop {n}: destination: {f}"));
        assert!(rep.verified, "hop {n}: {rep:#?}");
        assert!(rep.precopy_iterations >= 1, "hop {n}");
        assert!(rep.devices[0].precopy_bytes >= 2 * MIB, "hop {n}: {rep:#?}");
        assert!(
            rep.ram_hash_source.is_some() && rep.ram_hash_source == rep.ram_hash_dest,
            "hop {n}: {rep:#?}"
        );
        assert_eq!(src.state().unwrap(), MigState::Stop, "hop {n}");
        assert_eq!(dst.state().unwrap(), MigState::Running, "hop {n}");
        assert_eq!(rd(dst, SCRATCH), 0x100 + n as u64, "hop {n}");
        // The VM runs at the destination now.
        GuestRam::resume(gd);
    }
}
