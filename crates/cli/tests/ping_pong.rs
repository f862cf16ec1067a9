//! Repeated migrations: the same device migrated A→B→A→B… (ten hops),
//! live, with the device changed between hops, over each migration
//! protocol (v2, v1 region, seed region), for `vgpu` (pre-copy, its
//! render engine dirtying device memory during every migration) and
//! `serial` (stop-copy, FIFO and registers changed between hops). After
//! every hop: the migration verified (the destination's digest equals
//! the source's at the stop), the source parked in STOP with that
//! digest, the destination RUNNING with what was written before the hop.
//!
//! Kernel variant drivers have shipped bugs where a device migrated a
//! second time silently skipped data (a dirty log or pre-copy cursor left
//! over from the first migration); these tests are that second, third …
//! tenth migration.

mod support;

use support::*;
use vfio_migrate_backend::{MigState, RegionAccess};

const HOPS: usize = 10;

/// `migrate --source A --dest B --protocol P --json`, which must succeed
/// verified; returns the report.
fn hop(src: &Server, dst: &Server, protocol: &str, n: usize) -> serde_json::Value {
    let out = run(
        &[
            "migrate",
            "--source",
            &src.uri(),
            "--dest",
            &dst.uri(),
            "--protocol",
            protocol,
            "--json",
        ],
        60,
    );
    assert!(
        out.status.success(),
        "{protocol} hop {n}: stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    assert_eq!(v["status"], "ok", "{protocol} hop {n}: {v:#}");
    assert_eq!(v["verified"], true, "{protocol} hop {n}: {v:#}");
    let d = &v["devices"][0];
    assert_eq!(d["digest_source"], d["digest_dest"], "{protocol} hop {n}");
    v
}

/// The parked source's digest is the one the report carries.
fn check_source(v: &serde_json::Value, src: &Server, digest_at: u64, what: &str) {
    let sd = src.with(|c| {
        assert_eq!(state(c), MigState::Stop, "{what}: source not parked");
        read(c, digest_at)
    });
    assert_eq!(
        v["devices"][0]["digest_source"].as_str().unwrap(),
        format!("{sd:#018x}"),
        "{what}: the source's digest is not what was sent"
    );
}

fn vgpu_ping_pong(protocol: &str) {
    let dir = Dir::new(&format!("pp-vgpu-{protocol}"));
    let servers = [
        Server::start("vgpu", Some("1M"), &dir.path("a.sock")),
        Server::start("vgpu", Some("1M"), &dir.path("b.sock")),
    ];
    servers[0].with(|c| {
        write(c, vgpu::SEED, 7);
        write(c, vgpu::RENDER_RATE, 8 << 20);
        write(c, vgpu::CONTROL, 1);
    });
    let mut last_frame = 0;
    for n in 0..HOPS {
        let (src, dst) = (&servers[n % 2], &servers[(n + 1) % 2]);
        // Change the running device before the hop.
        let scratch = 0x1000 + n as u64;
        src.with(|c| {
            assert_eq!(state(c), MigState::Running, "hop {n}: source");
            write(c, vgpu::SCRATCH, scratch);
            write(c, vgpu::SEED, 100 + n as u64);
        });
        let v = hop(src, dst, protocol, n);
        let what = format!("vgpu {protocol} hop {n}");
        if n == 0 {
            assert!(
                v["precopy_iterations"].as_u64().unwrap() >= 1,
                "{what}: {v:#}"
            );
        }
        assert!(
            v["devices"][0]["precopy_bytes"].as_u64().unwrap() > 0,
            "{what}: no pre-copy data: {v:#}"
        );
        check_source(&v, src, vgpu::DIGEST, &what);
        dst.with(|c| {
            assert_eq!(state(c), MigState::Running, "{what}: destination");
            assert_eq!(read(c, vgpu::SCRATCH), scratch, "{what}");
            assert_eq!(read(c, vgpu::SEED), 100 + n as u64, "{what}");
            let f = read(c, vgpu::FRAME);
            assert!(f >= last_frame, "{what}: frame {f} < {last_frame}");
            std::thread::sleep(std::time::Duration::from_millis(20));
            let g = read(c, vgpu::FRAME);
            assert!(g > f, "{what}: the render engine does not run");
            last_frame = g;
        });
    }
}

fn serial_ping_pong(protocol: &str) {
    let dir = Dir::new(&format!("pp-serial-{protocol}"));
    let servers = [
        Server::start("serial", None, &dir.path("a.sock")),
        Server::start("serial", None, &dir.path("b.sock")),
    ];
    // What the FIFO holds, oldest first.
    let mut fifo: Vec<u8> = Vec::new();
    for n in 0..HOPS {
        let (src, dst) = (&servers[n % 2], &servers[(n + 1) % 2]);
        let before = src.with(|c| {
            assert_eq!(state(c), MigState::Running, "hop {n}: source");
            // Change it: take the oldest byte, add two, new scratch.
            if !fifo.is_empty() {
                let mut b = [0u8; 1];
                RegionAccess::region_read(c, 0, serial::DATA, &mut b).unwrap();
                assert_eq!(b[0], fifo.remove(0), "hop {n}: FIFO order");
            }
            for k in 0..2u8 {
                let b = (n as u8) * 2 + k + b'a';
                write_byte(c, serial::DATA, b);
                fifo.push(b);
            }
            write_byte(c, serial::SCR, n as u8);
            read(c, serial::DIGEST)
        });
        let v = hop(src, dst, protocol, n);
        let what = format!("serial {protocol} hop {n}");
        check_source(&v, src, serial::DIGEST, &what);
        assert_eq!(
            v["devices"][0]["digest_source"].as_str().unwrap(),
            format!("{before:#018x}"),
            "{what}: the state migrated is not the one left before the hop"
        );
        dst.with(|c| {
            assert_eq!(state(c), MigState::Running, "{what}: destination");
            assert_eq!(read(c, serial::DIGEST), before, "{what}");
            let mut b = [0u8; 1];
            RegionAccess::region_read(c, 0, serial::SCR, &mut b).unwrap();
            assert_eq!(b[0], n as u8, "{what}: scratch");
        });
    }
}

#[test]
fn vgpu_ping_pong_v2() {
    vgpu_ping_pong("v2");
}

#[test]
fn vgpu_ping_pong_v1() {
    vgpu_ping_pong("v1");
}

#[test]
fn vgpu_ping_pong_seed() {
    vgpu_ping_pong("seed");
}

#[test]
fn serial_ping_pong_v2() {
    serial_ping_pong("v2");
}

#[test]
fn serial_ping_pong_v1() {
    serial_ping_pong("v1");
}

#[test]
fn serial_ping_pong_seed() {
    serial_ping_pong("seed");
}
