//! `serial`: a 16550-like UART with a 64-byte loopback FIFO — the minimal
//! migratable device (STOP_COPY only, a few dozen bytes of state).
//!
//! - BAR0 (region 0, 32 bytes, byte registers at 0x00..0x07 in 16550
//!   order): 0x00 data (a write pushes into the FIFO, a read pops; empty
//!   reads 0; with LCR.DLAB set: divisor latch low), 0x01 IER (DLAB:
//!   divisor latch high), 0x02 IIR (read) / FCR (write), 0x03 LCR, 0x04 MCR,
//!   0x05 LSR (read-only; bit 0 data ready, bit 1 overrun, bits 5-6
//!   transmitter empty), 0x06 MSR (read-only, looped back from MCR), 0x07
//!   SCR; 0x10 DIGEST (u64, read-only), 0x18 FIFO_LEVEL (u32, read-only).
//! - Region 7: PCI config space (vendor 0x1b36, device 0x00f1, class
//!   0x070002, interrupt pin INTA#).
//! - INTx (IRQ index 0, one vector, maskable, automasked): the line is
//!   high while IIR reports an interrupt (IER enables it), Command's INTx
//!   Disable is clear and the device runs; Status' Interrupt Status shows
//!   the condition whatever INTx Disable says (PCI 2.3 INTx masking, what
//!   Linux's `uio_pci_generic` needs).
//!
//! The save stream is a header record, one registers record (registers,
//! FIFO content, config space) and an end record, in the framing of
//! [`super::stream`].

use super::hash::Digest64;
use super::stream::{
    kind_name, Outbox, RecordReader, RecordSink, StreamEnd, StreamHeader, KIND_END, KIND_HEADER,
    KIND_STATE, OVERHEAD,
};
use super::{CONFIG_REGION, SAMPLE_VENDOR_ID};
use std::collections::VecDeque;
use vfio_migrate_abi::kernel::{MigState, MIGRATION_STOP_COPY};
use vfio_migrate_abi::vfio_user::{
    IRQ_INFO_AUTOMASKED, IRQ_INFO_EVENTFD, IRQ_INFO_MASKABLE, PCI_INTX_IRQ_INDEX,
};
use vfio_migrate_device::device::{Device, DeviceIdentity, IrqDesc, Region};
use vfio_migrate_device::error::{DeviceError, DeviceResult};
use vfio_migrate_device::irq::{Interrupts, IrqRequest};
use vfio_migrate_device::pci::{Bar, BarKind, PciConfig, CONFIG_SIZE};

/// PCI device id.
pub const DEVICE_ID: u16 = 0x00f1;
/// PCI subsystem vendor id.
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x1b36;
/// PCI subsystem id.
pub const SUBSYSTEM_ID: u16 = 0x0001;
/// PCI revision.
pub const REVISION: u8 = 1;
/// PCI class code (serial controller, 16550 compatible).
pub const CLASS_CODE: u32 = 0x07_00_02;
/// Migration flags.
pub const FLAGS: u64 = MIGRATION_STOP_COPY;
/// Region index of the register BAR.
pub const BAR0: u32 = 0;
/// BAR0 size.
pub const BAR0_SIZE: u64 = 32;
/// FIFO depth.
pub const FIFO_SIZE: usize = 64;

/// BAR0 offsets. Registers 0x00..=0x07 take 1-byte accesses only; outside
/// RUNNING, writes and data-register reads are refused with `EBUSY`.
pub mod reg {
    /// Data (u8): a write pushes into the FIFO (dropped and LSR.OE set when
    /// full), a read pops (0 when empty). With LCR.DLAB: divisor latch low.
    pub const DATA: u64 = 0x00;
    /// Interrupt enable (u8, bits 0-3). With LCR.DLAB: divisor latch high.
    pub const IER: u64 = 0x01;
    /// Read: interrupt identification (IIR). Write: FIFO control (FCR; bit
    /// 1 clears the FIFO).
    pub const IIR_FCR: u64 = 0x02;
    /// Line control (u8); bit 7 is [`super::LCR_DLAB`].
    pub const LCR: u64 = 0x03;
    /// Modem control (u8, bits 0-4), looped back into MSR.
    pub const MCR: u64 = 0x04;
    /// Line status (u8, read-only): [`super::LSR_DR`], [`super::LSR_OE`]
    /// (cleared by reading LSR while running), [`super::LSR_TX_EMPTY`].
    pub const LSR: u64 = 0x05;
    /// Modem status (u8, read-only): MCR looped back.
    pub const MSR: u64 = 0x06;
    /// Scratch (u8).
    pub const SCR: u64 = 0x07;
    /// Read-only 64-bit digest of every register, the overrun flag and the
    /// FIFO content (one 8-byte or two 4-byte reads).
    pub const DIGEST: u64 = 0x10;
    /// Read-only u32: bytes in the FIFO.
    pub const FIFO_LEVEL: u64 = 0x18;
}

/// LSR: data ready.
pub const LSR_DR: u8 = 0x01;
/// LSR: overrun (a byte was dropped because the FIFO was full).
pub const LSR_OE: u8 = 0x02;
/// LSR: transmitter holding register empty | transmitter empty.
pub const LSR_TX_EMPTY: u8 = 0x60;
/// LCR: divisor latch access.
pub const LCR_DLAB: u8 = 0x80;

/// Magic of a serial stream header.
pub const MAGIC: [u8; 8] = *b"SERIALST";
/// Stream format version.
pub const VERSION: u32 = 1;
/// Fixed part of the registers record: 8 register bytes + FIFO length.
const STATE_FIXED: usize = 9;

/// The UART's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Uart {
    fifo: VecDeque<u8>,
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fcr: u8,
    overrun: bool,
}

impl Uart {
    fn fixed(&self) -> [u8; STATE_FIXED] {
        [
            self.ier,
            self.lcr,
            self.mcr,
            self.scr,
            self.dll,
            self.dlm,
            self.fcr,
            self.overrun as u8,
            self.fifo.len() as u8,
        ]
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = self.fixed().to_vec();
        b.extend(self.fifo.iter());
        b
    }

    fn decode(b: &[u8]) -> DeviceResult<Self> {
        if b.len() < STATE_FIXED {
            return Err(DeviceError::inval("serial registers record is too short"));
        }
        let n = b[8] as usize;
        if n > FIFO_SIZE || b.len() != STATE_FIXED + n {
            return Err(DeviceError::inval(format!(
                "serial registers record holds {} FIFO bytes but says {n} (FIFO depth {FIFO_SIZE})",
                b.len().saturating_sub(STATE_FIXED)
            )));
        }
        if b[7] > 1 {
            return Err(DeviceError::inval(format!(
                "serial overrun flag {} is not 0 or 1",
                b[7]
            )));
        }
        Ok(Self {
            ier: b[0],
            lcr: b[1],
            mcr: b[2],
            scr: b[3],
            dll: b[4],
            dlm: b[5],
            fcr: b[6],
            overrun: b[7] == 1,
            fifo: b[STATE_FIXED..].iter().copied().collect(),
        })
    }

    fn digest(&self) -> u64 {
        let mut d = Digest64::new(u64::from_le_bytes(MAGIC));
        d.update(&self.encode());
        d.finish()
    }

    /// IIR reports an interrupt: the INTx condition.
    fn interrupt_pending(&self) -> bool {
        self.iir() & 0x01 == 0
    }

    fn iir(&self) -> u8 {
        let fifo_bits = if self.fcr & 1 != 0 { 0xc0 } else { 0 };
        let id = if self.ier & 0x01 != 0 && !self.fifo.is_empty() {
            0x04 // received data available
        } else if self.ier & 0x02 != 0 {
            0x02 // transmitter holding register empty (always, loopback)
        } else {
            0x01 // no interrupt pending
        };
        fifo_bits | id
    }

    fn lsr(&self) -> u8 {
        LSR_TX_EMPTY
            | if self.fifo.is_empty() { 0 } else { LSR_DR }
            | if self.overrun { LSR_OE } else { 0 }
    }

    fn msr(&self) -> u8 {
        // Loopback: DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD.
        let m = self.mcr;
        ((m & 0x02) << 3) | ((m & 0x01) << 5) | ((m & 0x04) << 4) | ((m & 0x08) << 4)
    }
}

fn identity() -> DeviceIdentity {
    DeviceIdentity {
        model: "serial".into(),
        version: format!("state format {VERSION}"),
        vendor_id: SAMPLE_VENDOR_ID,
        device_id: DEVICE_ID,
        subsystem_vendor_id: SUBSYSTEM_VENDOR_ID,
        subsystem_id: SUBSYSTEM_ID,
        revision: REVISION,
        class_code: CLASS_CODE,
    }
}

/// The INTx line the serial offers: index 0, one vector, maskable,
/// automasked (as the kernel's vfio-pci reports INTx).
pub const INTX: IrqDesc = IrqDesc {
    index: PCI_INTX_IRQ_INDEX,
    count: 1,
    flags: IRQ_INFO_EVENTFD | IRQ_INFO_MASKABLE | IRQ_INFO_AUTOMASKED,
};

/// The serial device.
#[derive(Debug)]
pub struct Serial {
    uart: Uart,
    pci: PciConfig,
    irq: Interrupts,
    save: Option<Outbox>,
    load: Option<(RecordReader, SerialSink)>,
}

impl Default for Serial {
    fn default() -> Self {
        Self::new()
    }
}

impl Serial {
    /// A powered-on UART (RUNNING, FIFO empty).
    pub fn new() -> Self {
        let pci = PciConfig::new(
            &identity(),
            &[Bar {
                index: BAR0 as u8,
                size: BAR0_SIZE,
                kind: BarKind::Mem32 {
                    prefetchable: false,
                },
            }],
            1,
        )
        .expect("the serial BAR layout is valid");
        Self {
            uart: Uart::default(),
            pci,
            irq: Interrupts::new(&[INTX]),
            save: None,
            load: None,
        }
    }

    /// The device's interrupts (shared: clones see the same eventfds).
    pub fn interrupts(&self) -> &Interrupts {
        &self.irq
    }

    /// Sets Interrupt Status and the INTx level from the UART, Command's
    /// INTx Disable and the migration state (a stopped device raises
    /// nothing).
    fn update_irq(&mut self, state: MigState) {
        let pending = self.uart.interrupt_pending();
        self.pci.set_interrupt_status(pending);
        let level = pending && !self.pci.intx_disabled() && state == MigState::Running;
        self.irq.set_level(PCI_INTX_IRQ_INDEX, 0, level);
    }

    fn stream(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let h = StreamHeader {
            magic: MAGIC,
            version: VERSION,
            page_size: 0,
            mem_size: 0,
        };
        super::stream::encode_record(KIND_HEADER, &h.encode(), &mut out);
        let mut st = self.uart.encode();
        st.extend_from_slice(self.pci.bytes());
        super::stream::encode_record(KIND_STATE, &st, &mut out);
        let end = StreamEnd {
            records: 2,
            page_entries: 0,
        };
        super::stream::encode_record(KIND_END, &end.encode(), &mut out);
        out
    }

    fn require_running(state: MigState, what: &str) -> DeviceResult<()> {
        if state == MigState::Running {
            Ok(())
        } else {
            Err(DeviceError::new(
                libc::EBUSY,
                format!(
                    "{what} refused: the serial device is in {state} and its state is frozen; set \
                     it RUNNING first"
                ),
            ))
        }
    }

    fn bar0_read(&mut self, state: MigState, offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
        let dlab = self.uart.lcr & LCR_DLAB != 0;
        match (offset, buf.len()) {
            (0..=7, 1) => {
                buf[0] = match offset {
                    reg::DATA if dlab => self.uart.dll,
                    reg::DATA => {
                        Self::require_running(
                            state,
                            "reading the data register (it pops the FIFO)",
                        )?;
                        self.uart.fifo.pop_front().unwrap_or(0)
                    }
                    reg::IER if dlab => self.uart.dlm,
                    reg::IER => self.uart.ier,
                    reg::IIR_FCR => self.uart.iir(),
                    reg::LCR => self.uart.lcr,
                    reg::MCR => self.uart.mcr,
                    reg::LSR => {
                        let v = self.uart.lsr();
                        if state == MigState::Running {
                            self.uart.overrun = false;
                        }
                        v
                    }
                    reg::MSR => self.uart.msr(),
                    _ => self.uart.scr,
                };
                Ok(())
            }
            (reg::DIGEST, 8) => {
                buf.copy_from_slice(&self.uart.digest().to_le_bytes());
                Ok(())
            }
            (reg::DIGEST | 0x14, 4) => {
                let h = (offset - reg::DIGEST) as usize;
                buf.copy_from_slice(&self.uart.digest().to_le_bytes()[h..h + 4]);
                Ok(())
            }
            (reg::FIFO_LEVEL, 4) => {
                buf.copy_from_slice(&(self.uart.fifo.len() as u32).to_le_bytes());
                Ok(())
            }
            _ => Err(bad_access(offset, buf.len())),
        }
    }

    fn bar0_write(&mut self, state: MigState, offset: u64, data: &[u8]) -> DeviceResult<()> {
        match (offset, data.len()) {
            (reg::LSR | reg::MSR, 1) => Err(DeviceError::inval(format!(
                "serial {} ({offset:#x}) is read-only",
                if offset == reg::LSR { "LSR" } else { "MSR" }
            ))),
            (0..=7, 1) => {
                Self::require_running(state, "register write")?;
                let v = data[0];
                let dlab = self.uart.lcr & LCR_DLAB != 0;
                let u = &mut self.uart;
                match offset {
                    reg::DATA if dlab => u.dll = v,
                    reg::DATA => {
                        if u.fifo.len() < FIFO_SIZE {
                            u.fifo.push_back(v);
                        } else {
                            u.overrun = true;
                        }
                    }
                    reg::IER if dlab => u.dlm = v,
                    reg::IER => u.ier = v & 0x0f,
                    reg::IIR_FCR => {
                        if v & 0x02 != 0 {
                            u.fifo.clear();
                        }
                        u.fcr = v & 0xc9;
                    }
                    reg::LCR => u.lcr = v,
                    reg::MCR => u.mcr = v & 0x1f,
                    _ => u.scr = v,
                }
                Ok(())
            }
            (reg::DIGEST | 0x14 | reg::FIFO_LEVEL, _) => Err(DeviceError::inval(format!(
                "serial register at {offset:#x} is read-only"
            ))),
            _ => Err(bad_access(offset, data.len())),
        }
    }
}

fn bad_access(offset: u64, len: usize) -> DeviceError {
    DeviceError::inval(format!(
        "serial BAR0 access of {len} bytes at {offset:#x}: registers 0x00-0x07 take 1-byte \
         accesses, DIGEST (0x10) 8 bytes or 4-byte halves, FIFO_LEVEL (0x18) 4 bytes"
    ))
}

/// Collects the serial load stream.
#[derive(Debug, Default)]
struct SerialSink {
    kind: u32,
    buf: Vec<u8>,
    header: bool,
    state: Option<(Uart, Vec<u8>)>,
    end: bool,
    records: u64,
}

impl RecordSink for SerialSink {
    fn start(&mut self, kind: u32, len: u32) -> DeviceResult<()> {
        let len = len as usize;
        let ok = match kind {
            _ if self.end => false,
            KIND_HEADER => !self.header && len == StreamHeader::LEN,
            KIND_STATE => {
                self.header
                    && self.state.is_none()
                    && (STATE_FIXED + CONFIG_SIZE..=STATE_FIXED + FIFO_SIZE + CONFIG_SIZE)
                        .contains(&len)
            }
            KIND_END => self.header && len == StreamEnd::LEN,
            _ => false,
        };
        if !ok {
            return Err(DeviceError::inval(format!(
                "unexpected {} record of {len} bytes (a serial state is a header, one registers \
                 record and an end record)",
                kind_name(kind)
            )));
        }
        self.kind = kind;
        self.buf.clear();
        Ok(())
    }

    fn data(&mut self, chunk: &[u8]) -> DeviceResult<()> {
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    fn end(&mut self) -> DeviceResult<()> {
        match self.kind {
            KIND_HEADER => {
                let h = StreamHeader::decode(&self.buf)?;
                if h.magic != MAGIC {
                    return Err(DeviceError::inval(format!(
                        "header magic {:?} is not a serial state (want {:?})",
                        String::from_utf8_lossy(&h.magic),
                        String::from_utf8_lossy(&MAGIC)
                    )));
                }
                if h.version != VERSION {
                    return Err(DeviceError::inval(format!(
                        "the state has format version {}; this serial device reads version \
                         {VERSION}",
                        h.version
                    )));
                }
                self.header = true;
            }
            KIND_STATE => {
                let split = self.buf.len() - CONFIG_SIZE;
                let uart = Uart::decode(&self.buf[..split])?;
                self.state = Some((uart, self.buf[split..].to_vec()));
            }
            _ => {
                let e = StreamEnd::decode(&self.buf)?;
                if e.records != self.records || e.page_entries != 0 {
                    return Err(DeviceError::inval(format!(
                        "the end record counts {} records before it, but {} arrived",
                        e.records, self.records
                    )));
                }
                self.end = true;
                return Ok(());
            }
        }
        self.records += 1;
        Ok(())
    }
}

impl Device for Serial {
    fn identity(&self) -> DeviceIdentity {
        identity()
    }

    fn regions(&self) -> Vec<Region> {
        vec![
            Region {
                index: BAR0,
                size: BAR0_SIZE,
                readable: true,
                writable: true,
                mmap: None,
                region_type: None,
            },
            Region {
                index: CONFIG_REGION,
                size: CONFIG_SIZE as u64,
                readable: true,
                writable: true,
                mmap: None,
                region_type: None,
            },
        ]
    }

    fn region_read(
        &mut self,
        state: MigState,
        index: u32,
        offset: u64,
        buf: &mut [u8],
    ) -> DeviceResult<()> {
        match index {
            BAR0 => {
                let r = self.bar0_read(state, offset, buf);
                self.update_irq(state);
                r
            }
            CONFIG_REGION => self.pci.read(offset, buf),
            _ => Err(DeviceError::inval(format!("serial has no region {index}"))),
        }
    }

    fn region_write(
        &mut self,
        state: MigState,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> DeviceResult<()> {
        let r = match index {
            BAR0 => self.bar0_write(state, offset, data),
            CONFIG_REGION => {
                if matches!(state, MigState::StopCopy | MigState::Resuming) {
                    return Err(DeviceError::new(
                        libc::EBUSY,
                        format!(
                            "config space write refused in {state}: the state is being saved or loaded"
                        ),
                    ));
                }
                self.pci.write(offset, data)
            }
            _ => Err(DeviceError::inval(format!("serial has no region {index}"))),
        };
        self.update_irq(state);
        r
    }

    fn irqs(&self) -> Vec<IrqDesc> {
        self.irq.descs()
    }

    fn set_irqs(&mut self, index: u32, req: IrqRequest) -> DeviceResult<()> {
        self.irq.apply(index, req)
    }

    fn reset(&mut self) -> DeviceResult<()> {
        self.uart = Uart::default();
        self.pci.reset();
        self.save = None;
        self.load = None;
        self.update_irq(MigState::Running);
        Ok(())
    }

    fn migration_flags(&self) -> u64 {
        FLAGS
    }

    fn transition(&mut self, from: MigState, to: MigState) -> DeviceResult<()> {
        use MigState::*;
        vfio_migrate_device::core::check_arc(FLAGS, from, to)?;
        match (from, to) {
            (Stop, StopCopy) => {
                let mut o = Outbox::default();
                o.buffer().extend_from_slice(&self.stream());
                self.save = Some(o);
            }
            (StopCopy, Stop) => self.save = None,
            (Stop, Resuming) => {
                self.load = Some((RecordReader::new("serial"), SerialSink::default()));
            }
            (Resuming, Stop) => {
                let (reader, sink) = self
                    .load
                    .as_ref()
                    .ok_or_else(|| DeviceError::new(libc::EIO, "RESUMING without a load stream"))?;
                reader.finish()?;
                if !sink.header {
                    return Err(DeviceError::inval(
                        "serial state is empty: no data was written while RESUMING",
                    ));
                }
                if !sink.end {
                    return Err(DeviceError::inval(format!(
                        "serial state is truncated: no end record after {} records ({} bytes)",
                        reader.records(),
                        reader.offset()
                    )));
                }
                let (uart, config) = sink
                    .state
                    .clone()
                    .ok_or_else(|| DeviceError::inval("serial state has no registers record"))?;
                self.pci.restore(&config)?;
                self.uart = uart;
                self.load = None;
            }
            _ => {}
        }
        self.update_irq(to);
        Ok(())
    }

    fn save(&mut self, state: MigState, buf: &mut [u8]) -> DeviceResult<usize> {
        match self.save.as_mut() {
            Some(o) => Ok(o.drain_into(buf)),
            None => Err(DeviceError::inval(format!(
                "the serial device has no save stream in {state}"
            ))),
        }
    }

    fn stop_copy_size(&mut self) -> u64 {
        match &self.save {
            Some(o) => o.pending() as u64,
            None => {
                (3 * OVERHEAD
                    + StreamHeader::LEN
                    + STATE_FIXED
                    + self.uart.fifo.len()
                    + CONFIG_SIZE
                    + StreamEnd::LEN) as u64
            }
        }
    }

    fn load(&mut self, state: MigState, data: &[u8]) -> DeviceResult<()> {
        match self.load.as_mut() {
            Some((reader, sink)) => reader.push(data, sink),
            None => Err(DeviceError::inval(format!(
                "the serial device takes state data only in RESUMING; it is in {state}"
            ))),
        }
    }

    fn digest(&mut self) -> Option<u64> {
        Some(self.uart.digest())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uart_state_round_trip_and_refusals() {
        let mut u = Uart {
            ier: 1,
            lcr: 3,
            mcr: 0x0b,
            scr: 0x55,
            dll: 12,
            dlm: 0,
            fcr: 0xc1,
            overrun: true,
            ..Default::default()
        };
        u.fifo.extend(b"hello");
        let b = u.encode();
        assert_eq!(Uart::decode(&b).unwrap(), u);
        assert!(Uart::decode(&b[..b.len() - 1]).is_err());
        let mut bad = b.clone();
        bad[7] = 2;
        assert!(Uart::decode(&bad).is_err());
        assert_ne!(Uart::default().digest(), u.digest());
    }

    #[test]
    fn msr_loops_back_mcr() {
        let u = Uart {
            mcr: 0x0f,
            ..Default::default()
        };
        assert_eq!(u.msr(), 0xf0);
        let u = Uart {
            mcr: 0x01,
            ..Default::default()
        };
        assert_eq!(u.msr(), 0x20);
    }
}
