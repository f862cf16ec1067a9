//! fds: missing, of the wrong kind, on commands that take none, too many.

use super::*;

fn pipe_read_end() -> OwnedFd {
    vfio_migrate_sys::fd::pipe(libc::O_CLOEXEC).unwrap().0
}

#[test]
fn bad_and_missing_fds() {
    let p = Served::start("vgpu", Some(1 << 20));
    let mut c = p.client();
    let pipe = pipe_read_end();
    expect(
        req_fds(
            &mut c,
            Command::DmaMap,
            &dma_map(0, 4096, 0),
            &[pipe.as_fd()],
        ),
        libc::EBADF,
        "pipe as guest memory",
    );
    let small = memfd(4096);
    expect(
        req_fds(
            &mut c,
            Command::DmaMap,
            &dma_map(0, 1 << 20, 0),
            &[small.as_fd()],
        ),
        libc::EINVAL,
        "window past the fd's end",
    );
    expect(
        req(&mut c, Command::DmaMap, &dma_map(0, 4096, 4096)),
        libc::EINVAL,
        "offset but no fd",
    );
    let ev = eventfd();
    let ram = memfd(4096);
    expect(
        req_fds(
            &mut c,
            Command::DmaMap,
            &dma_map(0, 4096, 0),
            &[ram.as_fd(), ev.as_fd()],
        ),
        libc::E2BIG,
        "two fds for one window",
    );
    expect(
        req_fds(&mut c, Command::DeviceReset, &[], &[ev.as_fd()]),
        libc::EINVAL,
        "fd on a command that takes none",
    );
    expect(
        req_fds(
            &mut c,
            Command::DeviceGetInfo,
            &DeviceInfo {
                argsz: 16,
                ..Default::default()
            }
            .to_bytes(),
            &[ev.as_fd()],
        ),
        libc::EINVAL,
        "fd on GET_INFO",
    );
    healthy(&mut c);
}

#[test]
fn irq_fds_missing_or_not_eventfds() {
    // The serial offers no MSI (index 1); the fds are checked first anyway.
    let p = Served::start("serial", None);
    let mut c = p.client();
    let info = c.irq_info(1).unwrap();
    assert_eq!(info.count, 0);
    let set = |flags, start, count| {
        IrqSet {
            argsz: 20,
            flags,
            index: 1,
            start,
            count,
        }
        .to_bytes()
    };
    let trig = IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER;
    let m = memfd(16);
    expect(
        req_fds(
            &mut c,
            Command::DeviceSetIrqs,
            &set(trig, 0, 1),
            &[m.as_fd()],
        ),
        libc::EBADF,
        "memfd as eventfd",
    );
    let ev = eventfd();
    expect(
        req_fds(
            &mut c,
            Command::DeviceSetIrqs,
            &set(trig, 0, 2),
            &[ev.as_fd()],
        ),
        libc::EINVAL,
        "fewer fds than count",
    );
    expect(
        req_fds(
            &mut c,
            Command::DeviceSetIrqs,
            &set(trig, 0, 1),
            &[ev.as_fd()],
        ),
        libc::EINVAL,
        "index not offered",
    );
    expect(
        req(
            &mut c,
            Command::DeviceSetIrqs,
            &set(trig | IRQ_SET_DATA_BOOL, 0, 1),
        ),
        libc::EINVAL,
        "two DATA flags",
    );
    expect(
        req(
            &mut c,
            Command::DeviceSetIrqs,
            &set(IRQ_SET_DATA_NONE | IRQ_SET_ACTION_UNMASK, 0, 1),
        ),
        libc::EINVAL,
        "unmask of an index not offered",
    );
    expect(
        req(
            &mut c,
            Command::DeviceSetIrqs,
            &IrqSet {
                argsz: 20,
                flags: trig,
                index: 9,
                start: 0,
                count: 0,
            }
            .to_bytes(),
        ),
        libc::EINVAL,
        "index out of range",
    );
    healthy(&mut c);
}

#[test]
fn too_many_fds() {
    let p = Served::start("serial", None);
    let mut c = p.client();
    healthy(&mut c);
    let before = p.fd_count();
    for n in [9usize, 40] {
        let evs: Vec<OwnedFd> = (0..n).map(|_| eventfd()).collect();
        let b: Vec<BorrowedFd<'_>> = evs.iter().map(|e| e.as_fd()).collect();
        expect(
            req_fds(
                &mut c,
                Command::DeviceGetInfo,
                &DeviceInfo {
                    argsz: 16,
                    ..Default::default()
                }
                .to_bytes(),
                &b,
            ),
            libc::E2BIG,
            &format!("{n} fds"),
        );
        healthy(&mut c);
    }
    assert_eq!(p.fd_count(), before, "the refused fds were closed");
}
