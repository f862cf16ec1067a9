//! Interrupts: IRQ info and eventfds set and torn down.

use super::*;

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
    let set = |flags, index, start, count| {
        IrqSet {
            argsz: 20,
            flags,
            index,
            start,
            count,
        }
        .to_bytes()
    };
    let trig = IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER;
    let si = |s: &mut Session<'_, TestDev>, p: Vec<u8>, fds| {
        call_fds(s, Command::DeviceSetIrqs as u16, &p, fds).0
    };
    assert_eq!(
        si(&mut s, set(trig, 2, 0, 2), vec![eventfd(), eventfd()]),
        0
    );
    assert_eq!(srv_irq_fds(&s), 2);
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
        si(
            &mut s,
            set(IRQ_SET_DATA_NONE | IRQ_SET_ACTION_MASK, 2, 0, 1),
            vec![]
        ),
        libc::ENOTSUP
    );
    assert_eq!(
        si(&mut s, set(trig, 0, 0, 1), vec![eventfd()]),
        libc::EINVAL,
        "INTx not offered"
    );
    s.close();
    assert_eq!(
        srv.core().lock().unwrap().device_ref().irq_fds.len(),
        0,
        "disconnect drops IRQ fds"
    );
}

fn srv_irq_fds(s: &Session<'_, TestDev>) -> usize {
    s.lock().device_ref().irq_fds.len()
}
