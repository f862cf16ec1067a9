//! DMA windows and DMA dirty logging.

use super::*;

fn dma_map(iova: u64, size: u64, offset: u64, flags: u32) -> Vec<u8> {
    DmaMap {
        argsz: 32,
        flags,
        offset,
        addr: iova,
        size,
    }
    .to_bytes()
}

fn logging_start(page: u64, ranges: &[(u64, u64)]) -> Vec<u8> {
    let mut d = page.to_le_bytes().to_vec();
    d.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
    d.extend_from_slice(&[0; 4]);
    for &(i, l) in ranges {
        d.extend_from_slice(&i.to_le_bytes());
        d.extend_from_slice(&l.to_le_bytes());
    }
    d
}

fn report(
    s: &mut Session<'_, TestDev>,
    iova: u64,
    len: u64,
    page: u64,
    argsz: u32,
) -> (i32, Vec<u8>) {
    let mut d = iova.to_le_bytes().to_vec();
    d.extend_from_slice(&len.to_le_bytes());
    d.extend_from_slice(&page.to_le_bytes());
    feature(s, FEATURE_DMA_LOGGING_REPORT | FEATURE_GET, &d, argsz)
}

#[test]
fn dma_windows_and_logging() {
    let mut srv = Server::new(TestDev::core());
    let mut s = srv.session();
    let mem = memfd(1 << 20);
    let m = |s: &mut Session<'_, TestDev>, p: Vec<u8>, fds| {
        call_fds(s, Command::DmaMap as u16, &p, fds).0
    };
    assert_eq!(
        m(
            &mut s,
            dma_map(0x10000, 1 << 20, 0, 3),
            vec![mem.try_clone().unwrap()]
        ),
        0
    );
    assert_eq!(
        m(
            &mut s,
            dma_map(0x80000, 4096, 0, 3),
            vec![mem.try_clone().unwrap()]
        ),
        libc::EEXIST
    );
    assert_eq!(
        m(
            &mut s,
            dma_map(0x1_0000_0000, 2 << 20, 0, 3),
            vec![mem.try_clone().unwrap()]
        ),
        libc::EINVAL,
        "past the fd's end"
    );
    assert_eq!(
        m(&mut s, dma_map(0x1_0000_0000, 4096, 0, 3), vec![eventfd()]),
        libc::EBADF
    );
    assert_eq!(
        m(&mut s, dma_map(0x1_0000_0000, 4096, 4096, 3), vec![]),
        libc::EINVAL,
        "offset without fd"
    );
    assert_eq!(
        m(&mut s, dma_map(0x1_0000_0000, 4096, 0, 8), vec![]),
        libc::EINVAL,
        "flags"
    );
    assert_eq!(
        m(&mut s, dma_map(0x1_0000_0000, 4096, 0, 3), vec![]),
        0,
        "no fd"
    );
    let mut short = dma_map(0, 4096, 0, 3);
    short[0] = 16;
    assert_eq!(m(&mut s, short, vec![]), libc::EINVAL, "argsz");
    let um = |iova: u64, size: u64| {
        DmaUnmap {
            argsz: 24,
            flags: 0,
            addr: iova,
            size,
        }
        .to_bytes()
    };
    assert_eq!(
        call(&mut s, Command::DmaUnmap, &um(0x20000, 4096)).0,
        libc::ENOENT
    );
    let (e, p) = call(&mut s, Command::DmaUnmap, &um(0x1_0000_0000, 4096));
    assert_eq!((e, p), (0, um(0x1_0000_0000, 4096)));

    let start = |s: &mut Session<'_, TestDev>, d: Vec<u8>| {
        feature(
            s,
            FEATURE_DMA_LOGGING_START | FEATURE_SET,
            &d,
            8 + d.len() as u32,
        )
        .0
    };
    // The START page size is a hint: 1000 becomes 4096, said in the reply.
    let (e, p) = feature(
        &mut s,
        FEATURE_DMA_LOGGING_START | FEATURE_SET,
        &logging_start(1000, &[]),
        24,
    );
    assert_eq!((e, &p[8..16]), (0, &4096u64.to_le_bytes()[..]), "page hint");
    assert_eq!(
        feature(&mut s, FEATURE_DMA_LOGGING_STOP | FEATURE_SET, &[], 8).0,
        0
    );
    assert_eq!(
        start(
            &mut s,
            logging_start(4096, &[(0x10000, 8192), (0x11000, 4096)])
        ),
        libc::EINVAL,
        "overlap"
    );
    let mut lie = logging_start(4096, &[(0x10000, 8192)]);
    lie[8] = 5;
    assert_eq!(
        start(&mut s, lie),
        libc::EINVAL,
        "num_ranges beyond the payload"
    );
    let mut many = logging_start(4096, &[]);
    many[8..12].copy_from_slice(&5000u32.to_le_bytes());
    assert_eq!(start(&mut s, many), libc::E2BIG);
    assert_eq!(
        report(&mut s, 0x10000, 1 << 20, 4096, 64).0,
        libc::EINVAL,
        "logging off"
    );
    assert_eq!(start(&mut s, logging_start(4096, &[])), 0);
    assert_eq!(start(&mut s, logging_start(4096, &[])), libc::EBUSY);
    srv_dma_write(&s, 0x10000 + 5 * 4096 + 10, b"dirty");
    assert_eq!(
        report(&mut s, 0x10000, 1 << 20, 4096, 16).0,
        libc::EINVAL,
        "argsz too small"
    );
    assert_eq!(
        report(&mut s, 0x0, 1 << 20, 4096, 1024).0,
        libc::EINVAL,
        "outside logged ranges"
    );
    assert_eq!(
        report(&mut s, 0x10000, 1 << 20, 3000, 1024).0,
        libc::EINVAL,
        "page size"
    );
    let (e, p) = report(&mut s, 0x10000, 1 << 20, 4096, 1024);
    assert_eq!(e, 0);
    assert_eq!(p.len(), 8 + 24 + 32);
    assert_eq!(u64::from_le_bytes(p[32..40].try_into().unwrap()), 1 << 5);
    let (_, p) = report(&mut s, 0x10000, 1 << 20, 4096, 1024);
    assert!(p[32..].iter().all(|&b| b == 0), "read-and-clear");
    // Report page sizes other than START's: a finer one repeats the
    // logged bit, a coarser one ORs the logged bits.
    srv_dma_write(&s, 0x10000 + 5 * 4096 + 10, b"dirty");
    let (e, p) = report(&mut s, 0x10000, 1 << 16, 2048, 1024);
    assert_eq!(e, 0);
    assert_eq!(p.len(), 8 + 24 + 8);
    assert_eq!(
        u64::from_le_bytes(p[32..40].try_into().unwrap()),
        0b11 << 10
    );
    srv_dma_write(&s, 0x10000 + 5 * 4096 + 10, b"dirty");
    let (e, p) = report(&mut s, 0x10000, 1 << 16, 8192, 1024);
    assert_eq!(e, 0);
    assert_eq!(u64::from_le_bytes(p[32..40].try_into().unwrap()), 1 << 2);
    assert_eq!(
        feature(&mut s, FEATURE_DMA_LOGGING_STOP | FEATURE_SET, &[], 8).0,
        0
    );
    s.close();
    assert!(
        srv.core().lock().unwrap().dma().windows().is_empty(),
        "disconnect clears DMA"
    );
}

fn srv_dma_write(s: &Session<'_, TestDev>, iova: u64, data: &[u8]) {
    s.lock().dma().write(iova, data).unwrap();
}
