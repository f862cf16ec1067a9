//! Interrupts: IRQ info, eventfds set and torn down, masks and client
//! triggers, and the refusals.

use super::*;

fn set(flags: u32, index: u32, start: u32, count: u32) -> Vec<u8> {
    IrqSet {
        argsz: 20,
        flags,
        index,
        start,
        count,
    }
    .to_bytes()
}

fn si(s: &mut Session<'_, TestDev>, p: Vec<u8>, fds: Vec<OwnedFd>) -> i32 {
    call_fds(s, Command::DeviceSetIrqs as u16, &p, fds).0
}

/// Reads (and clears) an eventfd's counter; 0 when nothing is pending.
fn take(fd: &OwnedFd) -> u64 {
    use std::io::Read;
    use std::os::fd::AsFd;
    vfio_migrate_sys::fd::set_nonblocking(fd.as_fd()).unwrap();
    let mut b = [0u8; 8];
    match std::fs::File::from(fd.try_clone().unwrap()).read(&mut b) {
        Ok(8) => u64::from_ne_bytes(b),
        _ => 0,
    }
}

fn attached(s: &Session<'_, TestDev>) -> usize {
    s.lock().device_ref().irq.attached(PCI_MSIX_IRQ_INDEX)
}

#[test]
fn irqs() {
    let mut srv = Server::new(TestDev::core());
    let mut s = srv.session();
    let (e, p) = call(
        &mut s,
        Command::DeviceGetIrqInfo,
        &IrqInfo {
            argsz: 16,
            index: 2,
            ..Default::default()
        }
        .to_bytes(),
    );
    assert_eq!(e, 0);
    assert_eq!(IrqInfo::decode(&p).unwrap().count, 2);
    assert_eq!(
        call(
            &mut s,
            Command::DeviceGetIrqInfo,
            &IrqInfo {
                argsz: 16,
                index: 5,
                ..Default::default()
            }
            .to_bytes()
        )
        .0,
        libc::EINVAL
    );
    let trig = IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER;
    assert_eq!(
        si(&mut s, set(trig, 2, 0, 2), vec![eventfd(), eventfd()]),
        0
    );
    assert_eq!(attached(&s), 2);
    assert_eq!(
        si(&mut s, set(trig, 2, 1, 2), vec![eventfd(), eventfd()]),
        libc::EINVAL,
        "vectors out of range"
    );
    assert_eq!(
        si(&mut s, set(trig, 2, 0, 2), vec![eventfd()]),
        libc::EINVAL,
        "count != fds"
    );
    assert_eq!(si(&mut s, set(trig, 2, 0, 1), vec![memfd(16)]), libc::EBADF);
    assert_eq!(
        si(&mut s, set(trig | IRQ_SET_DATA_NONE, 2, 0, 1), vec![]),
        libc::EINVAL,
        "two data flags"
    );
    assert_eq!(
        si(&mut s, set(trig, 0, 0, 1), vec![eventfd()]),
        libc::EINVAL,
        "INTx not offered"
    );
    assert_eq!(
        si(
            &mut s,
            set(IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_UNMASK, 2, 0, 1),
            vec![eventfd()]
        ),
        libc::ENOTSUP,
        "unmask eventfds (KVM's resampler)"
    );
    assert_eq!(
        si(
            &mut s,
            set(IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK, 2, 0, 0),
            vec![]
        ),
        libc::EINVAL,
        "count 0 is only the disable"
    );
    assert_eq!(
        si(
            &mut s,
            set(IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK, 2, 0, 1),
            vec![eventfd()]
        ),
        libc::EINVAL,
        "fds without DATA_EVENTFD"
    );
    // DATA_EVENTFD without fds de-assigns the vectors named.
    assert_eq!(si(&mut s, set(trig, 2, 1, 1), vec![]), 0);
    assert_eq!(attached(&s), 1);
    assert_eq!(si(&mut s, set(trig, 2, 0, 0), vec![]), 0, "count 0: all");
    assert_eq!(attached(&s), 0);
}

#[test]
fn masks_and_client_triggers_reach_the_eventfds() {
    let mut srv = Server::new(TestDev::core());
    let mut s = srv.session();
    let (a, b) = (eventfd(), eventfd());
    let trig = IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER;
    let fds = vec![a.try_clone().unwrap(), b.try_clone().unwrap()];
    assert_eq!(si(&mut s, set(trig, 2, 0, 2), fds), 0);
    let none = IRQ_SET_DATA_NONE;
    // Client trigger of vector 1.
    assert_eq!(
        si(&mut s, set(none | IRQ_SET_ACTION_TRIGGER, 2, 1, 1), vec![]),
        0
    );
    assert_eq!((take(&a), take(&b)), (0, 1));
    // Masked, the device's edge waits for the unmask.
    assert_eq!(
        si(&mut s, set(none | IRQ_SET_ACTION_MASK, 2, 0, 2), vec![]),
        0
    );
    s.lock().device_ref().irq.raise(PCI_MSIX_IRQ_INDEX, 0);
    assert_eq!(take(&a), 0);
    assert_eq!(
        si(&mut s, set(none | IRQ_SET_ACTION_UNMASK, 2, 0, 1), vec![]),
        0
    );
    assert_eq!(take(&a), 1);
    // DATA_BOOL: one byte per vector; only vector 1 is triggered.
    let mut p = set(IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_TRIGGER, 2, 0, 2);
    p.extend_from_slice(&[0, 1]);
    assert_eq!(si(&mut s, p, vec![]), 0);
    assert_eq!((take(&a), take(&b)), (0, 1));
    let mut p = set(IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_TRIGGER, 2, 0, 2);
    p.push(1);
    assert_eq!(si(&mut s, p, vec![]), libc::EINVAL, "one byte short");
    let p = set(IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_TRIGGER, 2, 0, 0);
    assert_eq!(si(&mut s, p, vec![]), libc::EINVAL, "BOOL count 0");
    assert_eq!(attached(&s), 2, "still attached");
    // Disable: DATA_NONE | TRIGGER, count 0.
    assert_eq!(
        si(&mut s, set(none | IRQ_SET_ACTION_TRIGGER, 2, 0, 0), vec![]),
        0
    );
    assert_eq!(attached(&s), 0);
    assert_eq!(si(&mut s, set(trig, 2, 0, 1), vec![eventfd()]), 0);
    s.close();
    assert_eq!(
        srv.core()
            .lock()
            .unwrap()
            .device_ref()
            .irq
            .attached(PCI_MSIX_IRQ_INDEX),
        0,
        "disconnect drops IRQ fds"
    );
}
