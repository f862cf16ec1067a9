//! `DmaSpace`: guest-memory windows, bounds, and the DMA dirty log
//! (start / report / stop) with its refusals and read-and-clear semantics.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use vfio_migrate_backend::IovaRange;
use vfio_migrate_device::DmaSpace;
use vfio_migrate_samples::mem::SharedMemory;

const PAGE: u64 = 4096;
const BASE: u64 = 0x10_0000;

fn fd_of(m: &SharedMemory) -> OwnedFd {
    m.fd().try_clone().unwrap()
}

/// A space with one 64-page window at BASE backed by `mem`.
fn space(mem: &SharedMemory) -> DmaSpace {
    let d = DmaSpace::new();
    d.map(BASE, 64 * PAGE, Some(fd_of(mem)), 0, true, true)
        .unwrap();
    d
}

fn report(d: &DmaSpace, iova: u64, len: u64) -> Vec<u64> {
    let pages = len.div_ceil(PAGE);
    let mut bm = vec![0xffu8; (pages.div_ceil(64) * 8) as usize];
    d.logging_report(iova, len, PAGE, &mut bm).unwrap();
    (0..pages)
        .filter(|p| bm[(p / 8) as usize] & (1 << (p % 8)) != 0)
        .collect()
}

fn range(iova: u64, length: u64) -> IovaRange {
    IovaRange { iova, length }
}

#[test]
fn map_overlaps_are_eexist_and_unmap_needs_the_exact_window() {
    let mem = SharedMemory::new("g", 1 << 20).unwrap();
    let d = space(&mem);
    let e = d.map(BASE, 0, None, 0, true, true).unwrap_err();
    assert_eq!(e.errno, libc::EINVAL);
    for (iova, size) in [
        (BASE, PAGE),                 // same start
        (BASE + PAGE, PAGE),          // inside
        (BASE - PAGE, 2 * PAGE),      // straddles the start
        (BASE + 63 * PAGE, 2 * PAGE), // straddles the end
        (BASE - PAGE, 100 * PAGE),    // contains it
    ] {
        let e = d.map(iova, size, None, 0, true, true).unwrap_err();
        assert_eq!(e.errno, libc::EEXIST, "{iova:#x}+{size:#x}");
        assert!(e.message.contains("overlaps"), "{e}");
    }
    assert_eq!(
        d.map(u64::MAX - 10, 100, None, 0, true, true)
            .unwrap_err()
            .errno,
        libc::EINVAL
    );
    // Adjacent windows are fine.
    d.map(BASE + 64 * PAGE, PAGE, None, 0, true, true).unwrap();
    d.map(BASE - PAGE, PAGE, None, 0, true, true).unwrap();
    assert_eq!(d.windows().len(), 3);

    for (iova, size) in [(BASE, PAGE), (BASE + PAGE, 63 * PAGE), (0, PAGE)] {
        let e = d.unmap(iova, size).unwrap_err();
        assert_eq!(e.errno, libc::ENOENT, "{iova:#x}+{size:#x}");
    }
    d.unmap(BASE, 64 * PAGE).unwrap();
    assert_eq!(d.unmap(BASE, 64 * PAGE).unwrap_err().errno, libc::ENOENT);
    d.map(BASE, 64 * PAGE, Some(fd_of(&mem)), 0, true, true)
        .unwrap();
    d.clear();
    assert!(d.windows().is_empty());
}

#[test]
fn accesses_are_bounds_checked_and_all_or_nothing() {
    let mem = SharedMemory::new("g", 1 << 20).unwrap();
    let d = space(&mem);
    d.write(BASE + 10, b"abc").unwrap();
    let mut b = [0u8; 3];
    d.read(BASE + 10, &mut b).unwrap();
    assert_eq!(&b, b"abc");
    let mut m = [0u8; 3];
    mem.read(10, &mut m).unwrap();
    assert_eq!(&m, b"abc", "the window is the fd at offset 0");

    // Running off the end of the window: EFAULT and nothing written.
    let end = BASE + 64 * PAGE;
    let e = d.write(end - 2, b"wxyz").unwrap_err();
    assert_eq!(e.errno, libc::EFAULT);
    let mut tail = [0u8; 2];
    mem.read(64 * PAGE - 2, &mut tail).unwrap();
    assert_eq!(tail, [0, 0], "a refused write leaves memory unchanged");
    assert_eq!(d.read(end, &mut b).unwrap_err().errno, libc::EFAULT);
    assert_eq!(d.read(BASE - 1, &mut b).unwrap_err().errno, libc::EFAULT);
    assert_eq!(
        d.write(u64::MAX - 1, b"abc").unwrap_err().errno,
        libc::EINVAL
    );

    // A write across two adjacent windows works (second one at fd offset
    // 64 pages of the same memory).
    d.map(end, 4 * PAGE, Some(fd_of(&mem)), 64 * PAGE, true, true)
        .unwrap();
    d.write(end - 2, b"wxyz").unwrap();
    let mut four = [0u8; 4];
    mem.read(64 * PAGE - 2, &mut four).unwrap();
    assert_eq!(&four, b"wxyz");

    // Permissions and windows without memory.
    d.map(0x9000_0000, PAGE, Some(fd_of(&mem)), 0, true, false)
        .unwrap();
    assert_eq!(d.write(0x9000_0000, b"x").unwrap_err().errno, libc::EPERM);
    d.read(0x9000_0000, &mut b).unwrap();
    d.map(0xa000_0000, PAGE, None, 0, true, true).unwrap();
    assert_eq!(d.write(0xa000_0000, b"x").unwrap_err().errno, libc::EFAULT);
}

#[test]
fn logging_start_refuses_bad_page_sizes_and_ranges() {
    let mem = SharedMemory::new("g", 1 << 20).unwrap();
    let d = space(&mem);
    for ps in [0, 1, 1000, 2048, 4095, 3 * 4096, 1 << 31] {
        let e = d.logging_start(ps, &[range(BASE, PAGE)]).unwrap_err();
        assert_eq!(e.errno, libc::EINVAL, "page size {ps}");
        assert!(e.message.contains("page size"), "{e}");
    }
    let bad: [(&[IovaRange], &str); 4] = [
        (&[range(BASE, 0)], "empty"),
        (
            &[range(BASE, 4 * PAGE), range(BASE + 2 * PAGE, 4 * PAGE)],
            "overlaps",
        ),
        (&[range(BASE + 1, PAGE)], "page boundary"),
        (&[range(!(PAGE - 1), 2 * PAGE)], "overflows"),
    ];
    for (rs, want) in bad {
        let e = d.logging_start(PAGE, rs).unwrap_err();
        assert_eq!(e.errno, libc::EINVAL, "{rs:?}");
        assert!(e.message.contains(want), "{want}: {e}");
    }
    let many: Vec<IovaRange> = (0..2000).map(|i| range(i * 2 * PAGE, PAGE)).collect();
    assert_eq!(d.logging_start(PAGE, &many).unwrap_err().errno, libc::E2BIG);
    assert!(!d.logging(), "no refused start leaves logging on");

    d.logging_start(PAGE, &[range(BASE, 64 * PAGE)]).unwrap();
    assert!(d.logging());
    assert_eq!(
        d.logging_start(PAGE, &[range(BASE, PAGE)])
            .unwrap_err()
            .errno,
        libc::EBUSY
    );
    d.logging_stop();
    d.logging_stop(); // stopping twice is fine
    assert!(!d.logging());

    let empty = DmaSpace::new();
    let e = empty.logging_start(PAGE, &[]).unwrap_err();
    assert!(e.message.contains("no mapped windows"), "{e}");
}

#[test]
fn report_refuses_bad_requests() {
    let mem = SharedMemory::new("g", 1 << 20).unwrap();
    let d = space(&mem);
    let mut bm = [0u8; 64];
    assert_eq!(
        d.logging_report(BASE, PAGE, PAGE, &mut bm)
            .unwrap_err()
            .errno,
        libc::EINVAL,
        "logging is off"
    );
    d.logging_start(
        PAGE,
        &[range(BASE, 32 * PAGE), range(BASE + 40 * PAGE, 8 * PAGE)],
    )
    .unwrap();
    let cases: [(u64, u64, u64, usize, &str); 6] = [
        (BASE, PAGE, 8192, 8, "differs from the logging page size"),
        (BASE + 1, PAGE, PAGE, 8, "not page-aligned"),
        (BASE, 0, PAGE, 8, "empty"),
        (BASE, 32 * PAGE, PAGE, 2, "bitmap has 2 bytes, 8 needed"),
        (BASE + 30 * PAGE, 4 * PAGE, PAGE, 8, "not logged"),
        (BASE + 64 * PAGE, PAGE, PAGE, 8, "not logged"),
    ];
    for (iova, len, ps, bml, want) in cases {
        let e = d.logging_report(iova, len, ps, &mut bm[..bml]).unwrap_err();
        assert_eq!(e.errno, libc::EINVAL);
        assert!(e.message.contains(want), "{want}: {e}");
    }
}

#[test]
fn report_is_read_and_clear_and_covers_only_logged_writes() {
    let mem = SharedMemory::new("g", 1 << 20).unwrap();
    let d = space(&mem);
    d.write(BASE, b"before logging").unwrap();
    d.logging_start(
        PAGE,
        &[range(BASE, 16 * PAGE), range(BASE + 16 * PAGE, 16 * PAGE)],
    )
    .unwrap();
    assert!(
        report(&d, BASE, 32 * PAGE).is_empty(),
        "writes before start are not logged"
    );

    d.write(BASE + 3 * PAGE + 100, b"x").unwrap();
    d.write(BASE + 15 * PAGE + 4000, &[1u8; 200]).unwrap(); // pages 15 and 16, across ranges
    d.write(BASE + 40 * PAGE, b"outside the logged ranges")
        .unwrap();
    let mut b = [0u8; 8];
    d.read(BASE + 20 * PAGE, &mut b).unwrap(); // reads are not logged
    assert!(d
        .logging_report(BASE + 40 * PAGE, PAGE, PAGE, &mut b)
        .is_err());

    // A sub-range report clears only its own pages.
    assert_eq!(report(&d, BASE + 16 * PAGE, 16 * PAGE), vec![0]);
    assert_eq!(report(&d, BASE, 32 * PAGE), vec![3, 15]);
    assert!(report(&d, BASE, 32 * PAGE).is_empty(), "read-and-clear");

    d.write(BASE + 31 * PAGE, b"y").unwrap();
    assert_eq!(report(&d, BASE, 32 * PAGE), vec![31]);

    // Stop, then a new start logs from scratch.
    d.write(BASE, b"z").unwrap();
    d.logging_stop();
    assert!(d.logging_report(BASE, PAGE, PAGE, &mut b).is_err());
    d.logging_start(PAGE, &[]).unwrap(); // every mapped window
    assert!(report(&d, BASE, 64 * PAGE).is_empty());
    d.write(BASE + 63 * PAGE, b"w").unwrap();
    assert_eq!(report(&d, BASE, 64 * PAGE), vec![63]);
}

#[test]
fn unaligned_windows_are_widened_for_logging_everything() {
    let mem = SharedMemory::new("g", 1 << 20).unwrap();
    let d = DmaSpace::new();
    // Two windows in the same 2 MiB page: logging "everything" at 2 MiB
    // covers both with one page.
    d.map(0x20_0000, 0x1000, Some(fd_of(&mem)), 0, true, true)
        .unwrap();
    d.map(0x20_3000, 0x1000, Some(fd_of(&mem)), 0x3000, true, true)
        .unwrap();
    d.logging_start(2 << 20, &[]).unwrap();
    d.write(0x20_3010, b"q").unwrap();
    let mut bm = [0u8; 8];
    d.logging_report(0x20_0000, 2 << 20, 2 << 20, &mut bm)
        .unwrap();
    assert_eq!(bm[0], 1);
}

#[test]
fn concurrent_writes_are_all_reported() {
    let mem = SharedMemory::new("g", 4 << 20).unwrap();
    let d = Arc::new(DmaSpace::new());
    d.map(BASE, 4 << 20, Some(fd_of(&mem)), 0, true, true)
        .unwrap();
    d.logging_start(PAGE, &[]).unwrap();
    let pages = (4 << 20) / PAGE;
    let writers: Vec<_> = (0..2u64)
        .map(|t| {
            let d = d.clone();
            std::thread::spawn(move || {
                for p in (t..pages).step_by(2) {
                    d.write(BASE + p * PAGE + 7, &[p as u8; 9]).unwrap();
                }
            })
        })
        .collect();
    let mut seen = vec![false; pages as usize];
    let mut done = false;
    while !done {
        done = writers.iter().all(|w| w.is_finished());
        for p in report(&d, BASE, 4 << 20) {
            seen[p as usize] = true;
        }
    }
    for w in writers {
        w.join().unwrap();
    }
    for p in report(&d, BASE, 4 << 20) {
        seen[p as usize] = true;
    }
    assert!(
        seen.iter().all(|s| *s),
        "every written page is reported once the writers end"
    );
}
