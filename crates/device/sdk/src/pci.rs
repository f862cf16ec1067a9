//! A small PCI configuration-space helper: a 256-byte type-0 header built
//! from a [`DeviceIdentity`] and the BAR layout, with per-byte write masks
//! (so BAR sizing by writing all ones works), reset and save/restore.
//!
//! It models what a guest or a VMM needs from an emulated endpoint: IDs,
//! class, command register, BARs, interrupt line/pin, and an MSI
//! capability ([`PciConfig::add_msi`]). Status bits are read-only to the
//! guest; the device drives Interrupt Status
//! ([`PciConfig::set_interrupt_status`]).

use crate::device::DeviceIdentity;
use crate::error::{DeviceError, DeviceResult};

/// Size of the (conventional) configuration space.
pub const CONFIG_SIZE: usize = 256;

/// Standard header offsets.
pub mod offset {
    /// Vendor ID, 16 bits.
    pub const VENDOR_ID: usize = 0x00;
    /// Device ID, 16 bits.
    pub const DEVICE_ID: usize = 0x02;
    /// Command register, 16 bits (writable bits: [`super::COMMAND_WRITABLE`]).
    pub const COMMAND: usize = 0x04;
    /// Status register, 16 bits (read-only here).
    pub const STATUS: usize = 0x06;
    /// Revision ID, 8 bits.
    pub const REVISION: usize = 0x08;
    /// Class code, 24 bits: programming interface, subclass, base class.
    pub const CLASS_CODE: usize = 0x09;
    /// Cache line size, 8 bits (guest-writable).
    pub const CACHE_LINE_SIZE: usize = 0x0c;
    /// Latency timer, 8 bits (guest-writable).
    pub const LATENCY_TIMER: usize = 0x0d;
    /// Header type, 8 bits (0: endpoint).
    pub const HEADER_TYPE: usize = 0x0e;
    /// BAR0, 32 bits; BARn is at `BAR0 + 4 * n`.
    pub const BAR0: usize = 0x10;
    /// Capabilities pointer, 8 bits (valid when Status has
    /// [`super::STATUS_CAP_LIST`]).
    pub const CAPABILITY_LIST: usize = 0x34;
    /// Subsystem vendor ID, 16 bits.
    pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
    /// Subsystem ID, 16 bits.
    pub const SUBSYSTEM_ID: usize = 0x2e;
    /// Interrupt line, 8 bits (guest-writable scratch).
    pub const INTERRUPT_LINE: usize = 0x3c;
    /// Interrupt pin, 8 bits (0: none, 1..=4: INTA#..INTD#).
    pub const INTERRUPT_PIN: usize = 0x3d;
}

/// Command register bits the guest may change: I/O space, memory space,
/// bus master, parity error response, SERR#, INTx disable.
pub const COMMAND_WRITABLE: u16 = 0x0001 | 0x0002 | 0x0004 | 0x0040 | 0x0100 | 0x0400;
/// Command: INTx disable (the function must not assert INTx#).
pub const COMMAND_INTX_DISABLE: u16 = 0x0400;
/// Status: Interrupt Status (the function has an INTx interrupt pending,
/// whatever [`COMMAND_INTX_DISABLE`] says).
pub const STATUS_INTERRUPT: u16 = 0x0008;
/// Status: the capabilities list is valid.
pub const STATUS_CAP_LIST: u16 = 0x0010;
/// Capability ID of MSI.
pub const CAP_ID_MSI: u8 = 0x05;
/// MSI Message Control: MSI enable.
pub const MSI_FLAGS_ENABLE: u16 = 0x0001;
/// MSI Message Control: 64-bit address capable.
pub const MSI_FLAGS_64BIT: u16 = 0x0080;
/// Length of a 64-bit MSI capability without per-vector masking.
pub const MSI_CAP_LEN: usize = 14;

/// The kind of a BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory BAR.
    Mem32 {
        /// Sets the BAR's prefetchable bit.
        prefetchable: bool,
    },
    /// 64-bit memory BAR (uses this slot and the next).
    Mem64 {
        /// Sets the BAR's prefetchable bit.
        prefetchable: bool,
    },
    /// I/O port BAR.
    Io,
}

/// A BAR declaration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// BAR slot (0..=5).
    pub index: u8,
    /// Size in bytes (a power of two; ≥ 16 for memory, ≥ 4 for I/O).
    pub size: u64,
    /// Memory or I/O, and the memory BAR's width.
    pub kind: BarKind,
}

/// A type-0 configuration space with write masks.
#[derive(Clone)]
pub struct PciConfig {
    bytes: [u8; CONFIG_SIZE],
    power_on: [u8; CONFIG_SIZE],
    wmask: [u8; CONFIG_SIZE],
    /// Read-only bits the device itself changes (Interrupt Status): not
    /// compared by [`PciConfig::restore`].
    dynamic: [u8; CONFIG_SIZE],
}

impl std::fmt::Debug for PciConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciConfig")
            .field(
                "vendor_id",
                &format_args!("{:#06x}", self.u16_at(offset::VENDOR_ID)),
            )
            .field(
                "device_id",
                &format_args!("{:#06x}", self.u16_at(offset::DEVICE_ID)),
            )
            .finish_non_exhaustive()
    }
}

impl PciConfig {
    /// Builds the header for `id` with `bars` and interrupt pin `irq_pin`
    /// (0 = none, 1 = INTA#, …). Refuses overlapping or malformed BARs.
    pub fn new(id: &DeviceIdentity, bars: &[Bar], irq_pin: u8) -> DeviceResult<Self> {
        let mut b = [0u8; CONFIG_SIZE];
        let mut m = [0u8; CONFIG_SIZE];
        put16(&mut b, offset::VENDOR_ID, id.vendor_id);
        put16(&mut b, offset::DEVICE_ID, id.device_id);
        put16(&mut m, offset::COMMAND, COMMAND_WRITABLE);
        b[offset::REVISION] = id.revision;
        let class = id.class_code & 0x00ff_ffff;
        b[offset::CLASS_CODE] = class as u8;
        b[offset::CLASS_CODE + 1] = (class >> 8) as u8;
        b[offset::CLASS_CODE + 2] = (class >> 16) as u8;
        m[offset::CACHE_LINE_SIZE] = 0xff;
        m[offset::LATENCY_TIMER] = 0xff;
        put16(&mut b, offset::SUBSYSTEM_VENDOR_ID, id.subsystem_vendor_id);
        put16(&mut b, offset::SUBSYSTEM_ID, id.subsystem_id);
        m[offset::INTERRUPT_LINE] = 0xff;
        if irq_pin > 4 {
            return Err(DeviceError::inval(format!(
                "interrupt pin {irq_pin} does not exist (0 = none, 1..=4 = INTA#..INTD#)"
            )));
        }
        b[offset::INTERRUPT_PIN] = irq_pin;

        let mut used = [false; 6];
        for bar in bars {
            let i = bar.index as usize;
            let slots = if matches!(bar.kind, BarKind::Mem64 { .. }) {
                2
            } else {
                1
            };
            if i + slots > 6 || used[i..i + slots].iter().any(|u| *u) {
                return Err(DeviceError::inval(format!(
                    "BAR{i} ({slots} slot(s)) overlaps another BAR or runs past BAR5"
                )));
            }
            used[i..i + slots].iter_mut().for_each(|u| *u = true);
            let min = if bar.kind == BarKind::Io { 4 } else { 16 };
            let max = match bar.kind {
                BarKind::Mem64 { .. } => 1u64 << 63,
                _ => 1u64 << 31,
            };
            if !bar.size.is_power_of_two() || bar.size < min || bar.size > max {
                return Err(DeviceError::inval(format!(
                    "BAR{i} size {} must be a power of two between {min} and {max}",
                    bar.size
                )));
            }
            let at = offset::BAR0 + 4 * i;
            let addr_mask = !(bar.size - 1);
            let (flags, low_mask) = match bar.kind {
                BarKind::Io => (0x1u32, 0xffff_fffcu32),
                BarKind::Mem32 { prefetchable } => ((prefetchable as u32) << 3, 0xffff_fff0),
                BarKind::Mem64 { prefetchable } => {
                    (0x4 | ((prefetchable as u32) << 3), 0xffff_fff0)
                }
            };
            put32(&mut b, at, flags);
            put32(&mut m, at, (addr_mask as u32) & low_mask);
            if let BarKind::Mem64 { .. } = bar.kind {
                put32(&mut m, at + 4, (addr_mask >> 32) as u32);
            }
        }
        let mut dynamic = [0u8; CONFIG_SIZE];
        put16(&mut dynamic, offset::STATUS, STATUS_INTERRUPT);
        Ok(Self {
            bytes: b,
            power_on: b,
            wmask: m,
            dynamic,
        })
    }

    /// Adds a 64-bit MSI capability without per-vector masking at `at`
    /// (dword-aligned, in 0x40..=0xf0), announcing `vectors` vectors (a
    /// power of two, 1 to 32), at the head of the capability list. The
    /// guest may write Message Control's enable and Multiple Message
    /// Enable bits, the address and the data. Call it while building the
    /// device: it changes the power-on contents.
    pub fn add_msi(&mut self, at: u8, vectors: u32) -> DeviceResult<()> {
        let a = at as usize;
        if !a.is_multiple_of(4) || !(0x40..=0xf0).contains(&a) {
            return Err(DeviceError::inval(format!(
                "MSI capability at {at:#x}: capabilities sit dword-aligned in 0x40..=0xf0"
            )));
        }
        if !vectors.is_power_of_two() || vectors > 32 {
            return Err(DeviceError::inval(format!(
                "MSI with {vectors} vectors: a power of two from 1 to 32"
            )));
        }
        if self.power_on[a..a + MSI_CAP_LEN]
            .iter()
            .chain(&self.wmask[a..a + MSI_CAP_LEN])
            .any(|b| *b != 0)
        {
            return Err(DeviceError::inval(format!(
                "MSI capability at {at:#x} overlaps another capability"
            )));
        }
        let (b, m) = (&mut self.power_on, &mut self.wmask);
        b[a] = CAP_ID_MSI;
        b[a + 1] = b[offset::CAPABILITY_LIST];
        let mmc = vectors.trailing_zeros() as u16;
        put16(b, a + 2, MSI_FLAGS_64BIT | (mmc << 1));
        put16(m, a + 2, MSI_FLAGS_ENABLE | 0x0070);
        put32(m, a + 4, 0xffff_fffc);
        put32(m, a + 8, 0xffff_ffff);
        put16(m, a + 12, 0xffff);
        b[offset::CAPABILITY_LIST] = at;
        let status = u16::from_le_bytes([b[offset::STATUS], b[offset::STATUS + 1]]);
        put16(b, offset::STATUS, status | STATUS_CAP_LIST);
        self.bytes = self.power_on;
        Ok(())
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.u16_at(offset::COMMAND)
    }

    /// The guest set [`COMMAND_INTX_DISABLE`].
    pub fn intx_disabled(&self) -> bool {
        self.command() & COMMAND_INTX_DISABLE != 0
    }

    /// Sets or clears Status' Interrupt Status bit: the device's INTx
    /// condition, reported even while INTx is disabled.
    pub fn set_interrupt_status(&mut self, pending: bool) {
        let s = self.u16_at(offset::STATUS) & !STATUS_INTERRUPT;
        let v = if pending { s | STATUS_INTERRUPT } else { s };
        put16(&mut self.bytes, offset::STATUS, v);
    }

    fn u16_at(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]])
    }

    fn check(&self, offset: u64, len: usize) -> DeviceResult<usize> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= CONFIG_SIZE as u64 => Ok(offset as usize),
            _ => Err(DeviceError::inval(format!(
                "config space access {offset:#x}+{len} is outside the {CONFIG_SIZE} bytes"
            ))),
        }
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> DeviceResult<()> {
        let at = self.check(offset, buf.len())?;
        buf.copy_from_slice(&self.bytes[at..at + buf.len()]);
        Ok(())
    }

    /// Writes `data` at `offset`; only the writable bits change (the rest
    /// are ignored, as on real hardware).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> DeviceResult<()> {
        let at = self.check(offset, data.len())?;
        for (i, &v) in data.iter().enumerate() {
            let m = self.wmask[at + i];
            self.bytes[at + i] = (self.bytes[at + i] & !m) | (v & m);
        }
        Ok(())
    }

    /// Back to the power-on contents.
    pub fn reset(&mut self) {
        self.bytes = self.power_on;
    }

    /// The current contents (for save streams and digests).
    pub fn bytes(&self) -> &[u8; CONFIG_SIZE] {
        &self.bytes
    }

    /// Restores contents saved with [`bytes`](Self::bytes). Read-only bytes
    /// must match this device's (IDs, class, BAR flags, capabilities): a
    /// state from a different device is refused and nothing changes. The
    /// bits the device drives (Interrupt Status) are taken as saved; the
    /// device sets them again from its own state.
    pub fn restore(&mut self, saved: &[u8]) -> DeviceResult<()> {
        if saved.len() != CONFIG_SIZE {
            return Err(DeviceError::inval(format!(
                "saved config space has {} bytes, {CONFIG_SIZE} expected",
                saved.len()
            )));
        }
        if let Some(i) = (0..CONFIG_SIZE)
            .find(|&i| (saved[i] ^ self.power_on[i]) & !self.wmask[i] & !self.dynamic[i] != 0)
        {
            return Err(DeviceError::inval(format!(
                "saved config space differs from this device in read-only byte {i:#x} \
                 (saved {:#04x}, here {:#04x}): the state is from another device model",
                saved[i], self.power_on[i]
            )));
        }
        self.bytes.copy_from_slice(saved);
        Ok(())
    }
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident() -> DeviceIdentity {
        DeviceIdentity {
            model: "t".into(),
            version: "1".into(),
            vendor_id: 0x1b36,
            device_id: 0x00f0,
            subsystem_vendor_id: 0x1b36,
            subsystem_id: 0x0001,
            revision: 1,
            class_code: 0x038000,
        }
    }

    fn cfg() -> PciConfig {
        PciConfig::new(
            &ident(),
            &[
                Bar {
                    index: 0,
                    size: 4096,
                    kind: BarKind::Mem32 {
                        prefetchable: false,
                    },
                },
                Bar {
                    index: 2,
                    size: 1 << 33,
                    kind: BarKind::Mem64 { prefetchable: true },
                },
                Bar {
                    index: 4,
                    size: 8,
                    kind: BarKind::Io,
                },
            ],
            1,
        )
        .unwrap()
    }

    fn r32(c: &PciConfig, at: u64) -> u32 {
        let mut b = [0u8; 4];
        c.read(at, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    #[test]
    fn ids_and_class() {
        let c = cfg();
        assert_eq!(r32(&c, 0), 0x00f0_1b36);
        assert_eq!(r32(&c, 8), 0x0380_0001);
        assert_eq!(r32(&c, 0x2c), 0x0001_1b36);
        let mut pin = [0u8];
        c.read(0x3d, &mut pin).unwrap();
        assert_eq!(pin[0], 1);
    }

    #[test]
    fn bar_sizing() {
        let mut c = cfg();
        for bar in 0..6u64 {
            c.write(0x10 + 4 * bar, &[0xff; 4]).unwrap();
        }
        assert_eq!(r32(&c, 0x10), 0xffff_f000);
        assert_eq!(r32(&c, 0x14), 0); // unused slot
        assert_eq!(r32(&c, 0x18), 0x0000_000c); // 8 GiB: low dword all size bits, 64-bit prefetchable
        assert_eq!(r32(&c, 0x1c), 0xffff_fffe);
        assert_eq!(r32(&c, 0x20), 0xffff_fff9);
        c.reset();
        assert_eq!(r32(&c, 0x10), 0);
    }

    #[test]
    fn read_only_bytes_do_not_change() {
        let mut c = cfg();
        c.write(0, &[0, 0, 0, 0]).unwrap();
        assert_eq!(r32(&c, 0), 0x00f0_1b36);
        c.write(4, &[0xff, 0xff]).unwrap();
        assert_eq!(r32(&c, 4) & 0xffff, COMMAND_WRITABLE as u32);
    }

    #[test]
    fn out_of_range_is_refused() {
        let mut c = cfg();
        let mut b = [0u8; 4];
        assert!(c.read(254, &mut b).is_err());
        assert!(c.write(256, &[1]).is_err());
        assert!(c.read(u64::MAX, &mut b).is_err());
    }

    #[test]
    fn save_restore_checks_read_only_bytes() {
        let mut c = cfg();
        c.write(4, &[0x06, 0]).unwrap();
        c.write(0x10, &0xfebf_0000u32.to_le_bytes()).unwrap();
        let saved = *c.bytes();
        let mut d = cfg();
        d.restore(&saved).unwrap();
        assert_eq!(d.bytes(), &saved);
        let mut other = saved;
        other[2] = 0xf1; // device id 0x00f1
        let e = d.restore(&other).unwrap_err();
        assert!(e.message.contains("read-only byte 0x2"), "{e}");
        assert!(d.restore(&saved[..10]).is_err());
    }

    #[test]
    fn msi_capability() {
        let mut c = cfg();
        c.add_msi(0x40, 1).unwrap();
        let mut b = [0u8; 16];
        c.read(0x40, &mut b).unwrap();
        assert_eq!(&b[..4], &[CAP_ID_MSI, 0, 0x80, 0]);
        assert_eq!(r32(&c, 4) >> 16, STATUS_CAP_LIST as u32);
        assert_eq!(r32(&c, 0x34) & 0xff, 0x40);
        // The guest programs address, data and enable; the rest stays.
        c.write(0x42, &[0xff, 0xff]).unwrap();
        assert_eq!(r32(&c, 0x40) >> 16, 0x00f1);
        c.write(0x44, &[0xff; 8]).unwrap();
        assert_eq!(r32(&c, 0x44), 0xffff_fffc);
        c.write(0x4c, &0x1234_5678u32.to_le_bytes()).unwrap();
        assert_eq!(r32(&c, 0x4c), 0x5678, "data is 16 bits");
        let saved = *c.bytes();
        let mut d = cfg();
        assert!(d.restore(&saved).is_err(), "no MSI here");
        d.add_msi(0x40, 1).unwrap();
        d.restore(&saved).unwrap();
        c.reset();
        assert_eq!(r32(&c, 0x40), 0x0080_0005);
        assert!(c.add_msi(0x44, 1).is_err(), "overlap");
        assert!(c.add_msi(0x3c, 1).is_err());
        assert!(c.add_msi(0x60, 3).is_err());
        c.add_msi(0x60, 4).unwrap();
        assert_eq!(r32(&c, 0x60), 0x0084_4005, "chained in front, MMC 2");
    }

    #[test]
    fn interrupt_status_is_the_devices() {
        let mut c = cfg();
        c.write(4, &[0, 0, 0xff, 0xff]).unwrap();
        assert_eq!(r32(&c, 4), 0, "status is read-only to the guest");
        c.set_interrupt_status(true);
        assert_eq!(r32(&c, 4) >> 16, STATUS_INTERRUPT as u32);
        assert!(!c.intx_disabled());
        c.write(4, &COMMAND_INTX_DISABLE.to_le_bytes()).unwrap();
        assert!(c.intx_disabled());
        let saved = *c.bytes();
        let mut d = cfg();
        d.restore(&saved).unwrap();
        assert!(d.intx_disabled());
        c.set_interrupt_status(false);
        assert_eq!(r32(&c, 4), COMMAND_INTX_DISABLE as u32);
    }

    #[test]
    fn malformed_bars_are_refused() {
        let id = ident();
        let m32 = BarKind::Mem32 {
            prefetchable: false,
        };
        assert!(PciConfig::new(
            &id,
            &[Bar {
                index: 0,
                size: 3000,
                kind: m32
            }],
            0
        )
        .is_err());
        assert!(PciConfig::new(
            &id,
            &[
                Bar {
                    index: 1,
                    size: 4096,
                    kind: BarKind::Mem64 {
                        prefetchable: false
                    }
                },
                Bar {
                    index: 2,
                    size: 4096,
                    kind: m32
                },
            ],
            0
        )
        .is_err());
        assert!(PciConfig::new(
            &id,
            &[Bar {
                index: 5,
                size: 4096,
                kind: BarKind::Mem64 {
                    prefetchable: false
                }
            }],
            0
        )
        .is_err());
        assert!(PciConfig::new(&id, &[], 5).is_err());
    }
}
