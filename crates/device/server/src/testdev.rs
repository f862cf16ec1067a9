//! A small device for the dispatcher's unit tests and the property test:
//! 64 bytes of registers (BAR0), 16 KiB of memfd memory (BAR2, mmap-able),
//! config space, two MSI-X vectors, all migration flags. Its save stream is
//! `magic | BAR0 | BAR2`; loading validates length and magic when RESUMING
//! ends.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use vfio_migrate_abi::kernel::{MigState, MIGRATION_P2P, MIGRATION_PRE_COPY, MIGRATION_STOP_COPY};
use vfio_migrate_abi::vfio_user::{IRQ_INFO_EVENTFD, IRQ_INFO_MASKABLE, PCI_MSIX_IRQ_INDEX};
use vfio_migrate_backend::PrecopyInfo;
use vfio_migrate_device::{
    Device, DeviceCore, DeviceError, DeviceIdentity, DeviceResult, DmaSpace, Interrupts, IrqDesc,
    IrqRequest, Region, RegionMmap,
};

pub const MEM: usize = 16 << 10;
const MAGIC: &[u8; 8] = b"TESTDEV1";

pub struct TestDev {
    regs: [u8; 64],
    mem_fd: Arc<OwnedFd>,
    config: [u8; 256],
    out: Vec<u8>,
    out_pos: usize,
    incoming: Vec<u8>,
    pub irq: Interrupts,
}

fn memfd(len: usize) -> OwnedFd {
    vfio_migrate_sys::memfd::create_sized(c"testdev", len as u64).unwrap()
}

impl TestDev {
    pub fn new() -> Self {
        let mut config = [0u8; 256];
        config[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
        config[2..4].copy_from_slice(&0x00ffu16.to_le_bytes());
        config[8] = 3;
        config[0x2c..0x2e].copy_from_slice(&0x1b36u16.to_le_bytes());
        config[0x2e..0x30].copy_from_slice(&0x0042u16.to_le_bytes());
        Self {
            regs: [0; 64],
            mem_fd: Arc::new(memfd(MEM)),
            config,
            out: Vec::new(),
            out_pos: 0,
            incoming: Vec::new(),
            irq: Interrupts::new(&[IrqDesc {
                index: PCI_MSIX_IRQ_INDEX,
                count: 2,
                flags: IRQ_INFO_EVENTFD | IRQ_INFO_MASKABLE,
            }]),
        }
    }

    pub fn core() -> DeviceCore<TestDev> {
        DeviceCore::new(TestDev::new(), Arc::new(DmaSpace::new()))
    }

    fn mem_rw(&self, offset: u64, buf: &mut [u8], write: Option<&[u8]>) {
        let r = match write {
            Some(d) => vfio_migrate_sys::fd::write_at(self.mem_fd.as_fd(), d, offset),
            None => vfio_migrate_sys::fd::read_at(self.mem_fd.as_fd(), buf, offset),
        };
        assert!(r.is_ok());
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&self.regs);
        let mut m = vec![0u8; MEM];
        self.mem_rw(0, &mut m, None);
        v.extend_from_slice(&m);
        v
    }

    pub fn digest(&self) -> Vec<u8> {
        self.snapshot()
    }
}

impl Device for TestDev {
    fn identity(&self) -> DeviceIdentity {
        DeviceIdentity {
            model: "testdev".into(),
            version: "1".into(),
            vendor_id: 0x1b36,
            device_id: 0x00ff,
            subsystem_vendor_id: 0x1b36,
            subsystem_id: 0x0042,
            revision: 3,
            class_code: 0,
        }
    }

    fn regions(&self) -> Vec<Region> {
        vec![
            Region {
                index: 0,
                size: 64,
                readable: true,
                writable: true,
                mmap: None,
                region_type: None,
            },
            Region {
                index: 2,
                size: MEM as u64,
                readable: true,
                writable: true,
                mmap: Some(RegionMmap {
                    fd: self.mem_fd.clone(),
                    areas: vec![(0, MEM as u64)],
                }),
                region_type: None,
            },
            Region {
                index: 7,
                size: 256,
                readable: true,
                writable: false,
                mmap: None,
                region_type: None,
            },
        ]
    }

    fn region_read(
        &mut self,
        _state: MigState,
        index: u32,
        offset: u64,
        buf: &mut [u8],
    ) -> DeviceResult<()> {
        let o = offset as usize;
        match index {
            0 => buf.copy_from_slice(&self.regs[o..o + buf.len()]),
            2 => self.mem_rw(offset, buf, None),
            7 => buf.copy_from_slice(&self.config[o..o + buf.len()]),
            _ => return Err(DeviceError::inval("no such region")),
        }
        Ok(())
    }

    fn region_write(
        &mut self,
        _state: MigState,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> DeviceResult<()> {
        let o = offset as usize;
        match index {
            0 => self.regs[o..o + data.len()].copy_from_slice(data),
            2 => self.mem_rw(offset, &mut [], Some(data)),
            _ => return Err(DeviceError::inval("region not writable")),
        }
        Ok(())
    }

    fn irqs(&self) -> Vec<IrqDesc> {
        self.irq.descs()
    }

    fn set_irqs(&mut self, index: u32, req: IrqRequest) -> DeviceResult<()> {
        self.irq.apply(index, req)
    }

    fn migration_flags(&self) -> u64 {
        MIGRATION_STOP_COPY | MIGRATION_P2P | MIGRATION_PRE_COPY
    }

    fn transition(&mut self, from: MigState, to: MigState) -> DeviceResult<()> {
        match (from, to) {
            (MigState::Running, MigState::PreCopy) | (MigState::Stop, MigState::StopCopy) => {
                self.out = self.snapshot();
                self.out_pos = 0;
            }
            (MigState::PreCopyP2p, MigState::StopCopy) => {
                // Anything changed since pre-copy started is sent again.
                let now = self.snapshot();
                if now != self.out {
                    self.out.extend_from_slice(&now);
                }
            }
            (_, MigState::Resuming) => self.incoming.clear(),
            (MigState::Resuming, MigState::Stop) => {
                let n = self.incoming.len();
                let one = MAGIC.len() + 64 + MEM;
                if n == 0 || !n.is_multiple_of(one) || &self.incoming[n - one..n - one + 8] != MAGIC
                {
                    return Err(DeviceError::inval(format!(
                        "bad test device state of {n} bytes"
                    )));
                }
                let last = self.incoming[n - one..].to_vec();
                self.regs.copy_from_slice(&last[8..72]);
                self.mem_rw(0, &mut [], Some(&last[72..]));
            }
            _ => {}
        }
        Ok(())
    }

    fn save(&mut self, _state: MigState, buf: &mut [u8]) -> DeviceResult<usize> {
        let n = buf.len().min(self.out.len() - self.out_pos);
        buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
        self.out_pos += n;
        Ok(n)
    }

    fn precopy_info(&mut self) -> PrecopyInfo {
        PrecopyInfo {
            initial_bytes: (self.out.len() - self.out_pos) as u64,
            dirty_bytes: 0,
            reinit: false,
        }
    }

    fn stop_copy_size(&mut self) -> u64 {
        (MAGIC.len() + 64 + MEM) as u64
    }

    fn load(&mut self, _state: MigState, data: &[u8]) -> DeviceResult<()> {
        if self.incoming.len() + data.len() > 4 * (MAGIC.len() + 64 + MEM) {
            return Err(DeviceError::new(
                libc::EFBIG,
                "too much state for the test device",
            ));
        }
        self.incoming.extend_from_slice(data);
        Ok(())
    }
}
