//! The serial sample: UART behaviour, and migration of its FIFO through
//! the minimal STOP_COPY path.

mod common;

use common::*;
use vfio_migrate_backend::{MigState, MigrationDevice, RegionAccess};
use vfio_migrate_samples::serial::{reg, FIFO_SIZE, LSR_DR, LSR_OE, LSR_TX_EMPTY};

fn put(h: &mut SerialHandle, off: u64, v: u8) {
    h.region_write(0, off, &[v]).unwrap();
}

fn get(h: &mut SerialHandle, off: u64) -> u8 {
    let mut b = [0u8];
    h.region_read(0, off, &mut b).unwrap();
    b[0]
}

fn level(h: &mut SerialHandle) -> u32 {
    let mut b = [0u8; 4];
    h.region_read(0, reg::FIFO_LEVEL, &mut b).unwrap();
    u32::from_le_bytes(b)
}

fn digest(h: &mut SerialHandle) -> u64 {
    read_reg(h, reg::DIGEST)
}

fn push(h: &mut SerialHandle, s: &[u8]) {
    for &c in s {
        put(h, reg::DATA, c);
    }
}

fn pop_all(h: &mut SerialHandle) -> Vec<u8> {
    let mut out = Vec::new();
    while get(h, reg::LSR) & LSR_DR != 0 {
        out.push(get(h, reg::DATA));
    }
    out
}

/// Saves `a` in STOP_COPY and resumes it into `b`, reading with `chunk`
/// bytes at a time.
fn migrate(a: &mut SerialHandle, b: &mut SerialHandle, chunk: usize) {
    let estimate = a.stop_copy_size().unwrap().unwrap();
    a.set_state(MigState::StopCopy).unwrap();
    let stream = stop_copy_stream(a, chunk);
    assert_eq!(stream.len() as u64, estimate, "stop-copy size is exact");
    assert!(
        stream.len() < 512,
        "tens of bytes of state plus config space"
    );
    b.set_state(MigState::Resuming).unwrap();
    for c in stream.chunks(chunk) {
        b.write_data(c).unwrap();
    }
    b.set_state(MigState::Stop).unwrap();
}

#[test]
fn identity_and_uart_behaviour() {
    let mut h = serial("s");
    let d = h.descriptor().unwrap();
    assert_eq!((d.vendor_id, d.device_id), (0x1b36, 0x00f1));
    assert_eq!(d.region_sizes[0], 32);
    assert_eq!(d.region_sizes[7], 256);
    assert_eq!(h.migration_flags().unwrap(), 1, "STOP_COPY only");

    assert_eq!(get(&mut h, reg::LSR), LSR_TX_EMPTY);
    assert_eq!(get(&mut h, reg::DATA), 0, "empty FIFO reads 0");
    push(&mut h, b"abc");
    assert_eq!(level(&mut h), 3);
    assert_eq!(get(&mut h, reg::LSR) & LSR_DR, LSR_DR);
    assert_eq!(pop_all(&mut h), b"abc");

    // Overrun: the FIFO keeps its first 64 bytes and flags OE until LSR
    // is read.
    let bytes: Vec<u8> = (0..70).collect();
    push(&mut h, &bytes);
    assert_eq!(level(&mut h) as usize, FIFO_SIZE);
    assert_eq!(get(&mut h, reg::LSR) & LSR_OE, LSR_OE);
    assert_eq!(get(&mut h, reg::LSR) & LSR_OE, 0);
    // FCR bit 1 clears the receive FIFO.
    put(&mut h, reg::IIR_FCR, 0x03);
    assert_eq!(level(&mut h), 0);
    assert_eq!(get(&mut h, reg::IIR_FCR) & 0xc0, 0xc0, "FIFOs enabled");

    // Divisor latch behind DLAB.
    put(&mut h, reg::LCR, 0x83);
    put(&mut h, reg::DATA, 12);
    put(&mut h, reg::IER, 0);
    assert_eq!(level(&mut h), 0, "DLAB writes do not reach the FIFO");
    put(&mut h, reg::LCR, 0x03);
    assert_eq!(get(&mut h, reg::DATA), 0);

    // Interrupt identification.
    put(&mut h, reg::IER, 0x01);
    push(&mut h, b"x");
    assert_eq!(get(&mut h, reg::IIR_FCR) & 0x0f, 0x04);
    pop_all(&mut h);
    assert_eq!(get(&mut h, reg::IIR_FCR) & 0x0f, 0x01);

    // Refusals.
    for (off, len) in [(0u64, 2usize), (0x08, 1), (0x10, 2), (0x18, 8), (0x1c, 4)] {
        let mut b = vec![0u8; len];
        assert!(
            h.region_read(0, off, &mut b).is_err(),
            "read {off:#x}+{len}"
        );
    }
    assert!(h.region_write(0, reg::LSR, &[0]).is_err());
    assert!(h.region_write(0, reg::DIGEST, &[0; 8]).is_err());
    assert!(h.region_write(0, reg::FIFO_LEVEL, &[0; 4]).is_err());
    // Frozen in STOP: no pops, no pushes; DIGEST and FIFO_LEVEL still read.
    push(&mut h, b"zz");
    h.set_state(MigState::Stop).unwrap();
    let d0 = digest(&mut h);
    let e = h.region_read(0, reg::DATA, &mut [0u8]).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EBUSY));
    assert!(h.region_write(0, reg::DATA, &[1]).is_err());
    get(&mut h, reg::LSR);
    assert_eq!(digest(&mut h), d0);
    assert_eq!(level(&mut h), 2);
    assert!(h.set_state(MigState::PreCopy).is_err(), "no PRE_COPY");
    assert!(h.set_state(MigState::RunningP2p).is_err(), "no P2P");
}

#[test]
fn fifo_content_migrates() {
    let mut a = serial("a");
    let mut b = serial("b");
    put(&mut a, reg::LCR, 0x83);
    put(&mut a, reg::DATA, 1); // divisor 115200 baud
    put(&mut a, reg::LCR, 0x03);
    put(&mut a, reg::IER, 0x01);
    put(&mut a, reg::MCR, 0x0b);
    put(&mut a, reg::SCR, 0x5a);
    push(&mut a, b"hello, world");
    a.set_state(MigState::Stop).unwrap();
    let before = digest(&mut a);
    migrate(&mut a, &mut b, 7);
    assert_eq!(digest(&mut b), before);
    assert_eq!(level(&mut b), 12);
    b.set_state(MigState::Running).unwrap();
    assert_eq!(pop_all(&mut b), b"hello, world");
    assert_eq!(get(&mut b, reg::DATA), 0);
    assert_eq!(get(&mut b, reg::SCR), 0x5a);
    assert_eq!(get(&mut b, reg::MCR), 0x0b);
    assert_eq!(get(&mut b, reg::MSR), 0xb0);
    put(&mut b, reg::LCR, 0x83);
    assert_eq!(get(&mut b, reg::DATA), 1, "divisor latch migrated");
}

#[test]
fn overrun_and_full_fifo_migrate() {
    let mut a = serial("a");
    let mut b = serial("b");
    let bytes: Vec<u8> = (100..180).collect();
    push(&mut a, &bytes);
    a.set_state(MigState::Stop).unwrap();
    migrate(&mut a, &mut b, 1);
    assert_eq!(digest(&mut a), digest(&mut b));
    b.set_state(MigState::Running).unwrap();
    assert_eq!(get(&mut b, reg::LSR) & LSR_OE, LSR_OE);
    assert_eq!(pop_all(&mut b), &bytes[..FIFO_SIZE]);
}

#[test]
fn bad_serial_states_are_refused_and_reset_recovers() {
    let mut a = serial("a");
    push(&mut a, b"state");
    a.set_state(MigState::StopCopy).unwrap();
    let stream = stop_copy_stream(&mut a, 4096);
    let good = digest(&mut a);
    let mut b = serial("b");
    let mut corrupt = stream.clone();
    corrupt[60] ^= 0x01; // inside the registers payload
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (stream[..stream.len() - 3].to_vec(), "truncated"),
        (stream[..stream.len() - 32].to_vec(), "no end record"),
        (Vec::new(), "empty"),
        (corrupt, "checksum mismatch"),
    ];
    for (data, want) in cases {
        b.set_state(MigState::Resuming).unwrap();
        let _ = b.write_data(&data);
        let e = b.set_state(MigState::Stop).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EINVAL));
        assert!(e.to_string().contains(want), "{want}: {e}");
        assert_eq!(b.state().unwrap(), MigState::Resuming);
        b.reset().unwrap();
        assert_eq!(b.state().unwrap(), MigState::Running);
    }
    // A vgpu state is not a serial state.
    let mut v = vgpu("v", 64 << 10);
    v.set_state(MigState::StopCopy).unwrap();
    let vstream = stop_copy_stream(&mut v, 1 << 20);
    b.set_state(MigState::Resuming).unwrap();
    assert!(b.write_data(&vstream).is_err());
    let e = b.set_state(MigState::Stop).unwrap_err();
    assert!(e.to_string().contains("not a serial state"), "{e}");
    b.reset().unwrap();

    b.set_state(MigState::Resuming).unwrap();
    b.write_data(&stream).unwrap();
    b.set_state(MigState::Stop).unwrap();
    assert_eq!(digest(&mut b), good);
}

/// Reads (and clears) an eventfd's counter; 0 when nothing is pending.
fn take(fd: &std::os::fd::OwnedFd) -> u64 {
    use std::io::Read;
    use std::os::fd::AsFd;
    vfio_migrate_sys::fd::set_nonblocking(fd.as_fd()).unwrap();
    let mut b = [0u8; 8];
    match std::fs::File::from(fd.try_clone().unwrap()).read(&mut b) {
        Ok(8) => u64::from_ne_bytes(b),
        _ => 0,
    }
}

fn command_status(h: &mut SerialHandle) -> (u16, u16) {
    let mut b = [0u8; 4];
    h.region_read(7, 4, &mut b).unwrap();
    (
        u16::from_le_bytes([b[0], b[1]]),
        u16::from_le_bytes([b[2], b[3]]),
    )
}

/// INTx follows IIR: raised when received data is enabled and waiting,
/// reported in Status whatever INTx Disable says, signalled only while
/// INTx is enabled and the device runs, automasked until UNMASK.
#[test]
fn intx_follows_the_uart_and_the_command_register() {
    use vfio_migrate_device::{Device, IrqRequest};
    let mut h = serial("s");
    assert_eq!(
        h.core().lock().unwrap().device_ref().irqs()[0].count,
        1,
        "INTx offered"
    );
    let mut cfg = [0u8; 1];
    h.region_read(7, 0x3d, &mut cfg).unwrap();
    assert_eq!(cfg[0], 1, "interrupt pin A");
    let ev = vfio_migrate_sys::fd::eventfd().unwrap();
    let attach = IrqRequest::Attach {
        start: 0,
        fds: vec![ev.try_clone().unwrap()],
    };
    let set = |h: &mut SerialHandle, req| {
        h.core().lock().unwrap().device().set_irqs(0, req).unwrap();
    };
    let unmask = || IrqRequest::Unmask { start: 0, count: 1 };
    set(&mut h, attach);
    push(&mut h, b"x");
    assert_eq!(take(&ev), 0, "IER off: no interrupt");
    assert_eq!(command_status(&mut h).1 & 0x08, 0);
    put(&mut h, reg::IER, 0x01);
    assert_eq!(take(&ev), 1, "data waiting and enabled: INTx");
    assert_eq!(get(&mut h, reg::IIR_FCR) & 0x0f, 0x04);
    assert_eq!(command_status(&mut h).1 & 0x08, 0x08, "Interrupt Status");
    set(&mut h, unmask());
    assert_eq!(take(&ev), 1, "still pending at UNMASK: signalled again");
    assert_eq!(get(&mut h, reg::DATA), b'x');
    assert_eq!(command_status(&mut h).1 & 0x08, 0);
    set(&mut h, unmask());
    assert_eq!(take(&ev), 0, "serviced: quiet");

    // INTx Disable masks the line, not the status.
    h.region_write(7, 4, &0x0400u16.to_le_bytes()).unwrap();
    push(&mut h, b"y");
    assert_eq!(take(&ev), 0);
    assert_eq!(command_status(&mut h), (0x0400, 0x08));
    h.region_write(7, 4, &0u16.to_le_bytes()).unwrap();
    assert_eq!(take(&ev), 1, "enabled again while pending");
    set(&mut h, unmask());
    assert_eq!(take(&ev), 1);

    // A stopped device raises nothing; running again, it does.
    h.set_state(MigState::Stop).unwrap();
    set(&mut h, unmask());
    assert_eq!(take(&ev), 0, "stopped");
    assert_eq!(command_status(&mut h).1 & 0x08, 0x08, "still pending");
    h.set_state(MigState::Running).unwrap();
    assert_eq!(take(&ev), 1, "running: the level is back");

    // The destination of a migration shows the pending interrupt too.
    let mut b = serial("d");
    h.set_state(MigState::Stop).unwrap();
    migrate(&mut h, &mut b, 64);
    assert_eq!(command_status(&mut b).1 & 0x08, 0x08);
    b.set_state(MigState::Running).unwrap();
    assert_eq!(pop_all(&mut b), b"y");
    assert_eq!(command_status(&mut b).1 & 0x08, 0);
}
