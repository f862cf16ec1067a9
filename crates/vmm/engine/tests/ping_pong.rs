//! Repeated live migrations with guest RAM: a vgpu whose render and DMA
//! engines run and a guest whose vCPU dirties RAM, migrated A→B→A…
//! ten times. Every hop starts DMA dirty logging on the source again
//! (over the same IOVA range), pre-copies device memory again, and must
//! arrive verified: device digest and RAM hash equal at the stop. State
//! left over from an earlier hop (a DMA log still on, a pre-copy cursor
//! or a dirty log not reset) fails a later hop.

use std::os::unix::net::UnixStream;
use vfio_migrate_backend::{MigState, MigrationDevice};
use vfio_migrate_engine::{
    migrate_in, migrate_out, Deadlines, DestLink, DestOptions, GuestRam, Link, SourceOptions,
};
use vfio_migrate_harness::{SimGuest, VcpuConfig};

mod common;
use common::{
    rd, verifier, wr, Dev, CONTROL, DMA_IOVA, DMA_RATE, DMA_SIZE, MIB, RENDER_RATE, SCRATCH, SEED,
};

/// A 2 MiB vgpu whose DMA window is `guest`'s RAM.
fn vgpu(name: &str, guest: &SimGuest) -> Dev {
    common::vgpu(name, 2 * MIB, Some(guest.ram()))
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
