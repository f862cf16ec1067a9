//! Device, region and IRQ commands: DEVICE_GET_INFO, DEVICE_GET_REGION_INFO
//! (capability chain parsed), REGION_READ/WRITE, DEVICE_GET_IRQ_INFO,
//! DEVICE_SET_IRQS, DEVICE_RESET, and the compatibility descriptor.

use super::*;

impl Client {
    /// DEVICE_GET_INFO.
    pub fn device_info(&mut self) -> Result<DeviceInfo> {
        let step = "DEVICE_GET_INFO";
        let req = DeviceInfo {
            argsz: DeviceInfo::SIZE as u32,
            ..Default::default()
        };
        let (_, n, _) = self.call(step, Command::DeviceGetInfo as u16, &[&req.to_bytes()], &[])?;
        DeviceInfo::decode(&self.scratch[..n])
            .map_err(|e| BackendError::protocol(step, e.to_string()))
    }

    /// DEVICE_GET_REGION_INFO, capabilities parsed, fd kept.
    pub fn region_info(&mut self, index: u32) -> Result<RegionDesc> {
        let step = format!("DEVICE_GET_REGION_INFO {index}");
        let mut argsz = RegionInfo::SIZE as u32;
        loop {
            let req = RegionInfo {
                argsz,
                index,
                ..Default::default()
            };
            let (_, n, mut fds) = self.call(
                &step,
                Command::DeviceGetRegionInfo as u16,
                &[&req.to_bytes()],
                &[],
            )?;
            let p = &self.scratch[..n];
            let info =
                RegionInfo::decode(p).map_err(|e| BackendError::protocol(&step, e.to_string()))?;
            if info.argsz > argsz && info.cap_offset == 0 {
                if info.argsz > MAX_REGION_INFO {
                    return Err(BackendError::protocol(
                        &step,
                        format!("region info of {} bytes", info.argsz),
                    ));
                }
                argsz = info.argsz;
                continue;
            }
            let (region_type, sparse_areas) =
                parse_caps(p, info.cap_offset).map_err(|d| BackendError::protocol(&step, d))?;
            let fd = if info.flags & vfio_migrate_abi::vfio_user::REGION_FLAG_MMAP != 0 {
                fds.drain(..).next()
            } else {
                None
            };
            return Ok(RegionDesc {
                index,
                flags: info.flags,
                size: info.size,
                offset: info.offset,
                region_type,
                sparse_areas,
                fd,
            });
        }
    }

    /// REGION_READ of `buf.len()` bytes, in chunks within the limits, each
    /// reply read straight into `buf`.
    pub fn region_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        let step = format!("REGION_READ region {index} at {offset:#x}");
        let chunk = self.max_recv_chunk();
        let mut done = 0usize;
        while done < buf.len() {
            let n = (buf.len() - done).min(chunk);
            let head = RegionAccess {
                offset: offset + done as u64,
                region: index,
                count: n as u32,
            };
            let req = self.send(&step, Command::RegionRead as u16, &[&head.to_bytes()], &[])?;
            let mut rf = RecvFds::default();
            let h = self.recv_header(&step, &req, &mut rf)?;
            if h.is_error() {
                return Err(self.refused(&step, &h, &mut rf));
            }
            let plen = h.msg_size as usize - HEADER_SIZE;
            let mut hb = [0u8; RegionAccess::SIZE];
            if plen < hb.len() + n {
                self.conn
                    .discard(plen, &mut rf)
                    .map_err(|e| io_err(&step, e))?;
                return Err(BackendError::protocol(
                    &step,
                    format!("reply of {plen} bytes for a {n}-byte read"),
                ));
            }
            self.conn
                .recv_exact(&mut hb, &mut rf, false)
                .map_err(|e| io_err(&step, e))?;
            self.conn
                .recv_exact(&mut buf[done..done + n], &mut rf, false)
                .map_err(|e| io_err(&step, e))?;
            self.conn
                .discard(plen - hb.len() - n, &mut rf)
                .map_err(|e| io_err(&step, e))?;
            done += n;
        }
        Ok(())
    }

    /// REGION_WRITE of `data`, in chunks within the limits.
    pub fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<()> {
        let step = format!("REGION_WRITE region {index} at {offset:#x}");
        let chunk = self.write_chunk().max(8);
        let mut done = 0usize;
        loop {
            let n = (data.len() - done).min(chunk);
            let head = RegionAccess {
                offset: offset + done as u64,
                region: index,
                count: n as u32,
            };
            self.call(
                &step,
                Command::RegionWrite as u16,
                &[&head.to_bytes(), &data[done..done + n]],
                &[],
            )?;
            done += n;
            if done >= data.len() {
                return Ok(());
            }
        }
    }

    /// DEVICE_GET_IRQ_INFO.
    pub fn irq_info(&mut self, index: u32) -> Result<IrqInfo> {
        let step = format!("DEVICE_GET_IRQ_INFO {index}");
        let req = IrqInfo {
            argsz: IrqInfo::SIZE as u32,
            index,
            ..Default::default()
        };
        let (_, n, _) = self.call(
            &step,
            Command::DeviceGetIrqInfo as u16,
            &[&req.to_bytes()],
            &[],
        )?;
        IrqInfo::decode(&self.scratch[..n])
            .map_err(|e| BackendError::protocol(&step, e.to_string()))
    }

    /// DEVICE_SET_IRQS with `flags` (`IRQ_SET_*`) and the given eventfds.
    pub fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: &[BorrowedFd<'_>],
    ) -> Result<()> {
        let step = format!("DEVICE_SET_IRQS {index}");
        let req = IrqSet {
            argsz: IrqSet::SIZE as u32,
            flags,
            index,
            start,
            count,
        };
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        self.call(
            &step,
            Command::DeviceSetIrqs as u16,
            &[&req.to_bytes()],
            &raw,
        )?;
        Ok(())
    }

    /// DEVICE_RESET.
    pub fn reset(&mut self) -> Result<()> {
        self.call("DEVICE_RESET", Command::DeviceReset as u16, &[], &[])?;
        self.mig_flags = None;
        Ok(())
    }

    /// Reads PCI IDs from config space (region 7) and region sizes, and
    /// builds the compatibility descriptor.
    pub(crate) fn read_descriptor(&mut self) -> Result<DeviceDescriptor> {
        let flags = self.mig_flags()?;
        self.read_descriptor_with(flags)
    }

    /// The descriptor with the given migration flags. Migration regions
    /// (v1, seed) are protocol plumbing, not device configuration: they
    /// count as absent, so the same device model has the same descriptor
    /// whichever protocols its server offers.
    pub(crate) fn read_descriptor_with(&mut self, flags: u64) -> Result<DeviceDescriptor> {
        let mut cfg = [0u8; 0x30];
        self.region_read(
            vfio_migrate_abi::vfio_user::PCI_CONFIG_REGION_INDEX,
            0,
            &mut cfg,
        )?;
        let u16_at = |o: usize| u16::from_le_bytes([cfg[o], cfg[o + 1]]);
        let info = self.device_info()?;
        let mut sizes = Vec::with_capacity(info.num_regions.min(64) as usize);
        for i in 0..info.num_regions.min(64) {
            let r = self.region_info(i)?;
            let migration = matches!(
                r.region_type,
                Some(t) if t == (vfio_migrate_abi::v1::REGION_TYPE, vfio_migrate_abi::v1::REGION_SUBTYPE)
                    || t == (vfio_migrate_abi::seed::REGION_TYPE, vfio_migrate_abi::seed::REGION_SUBTYPE)
            );
            sizes.push(if migration { 0 } else { r.size });
        }
        while sizes.last() == Some(&0) {
            sizes.pop();
        }
        Ok(DeviceDescriptor::from_pci(
            u16_at(0),
            u16_at(2),
            u16_at(0x2c),
            u16_at(0x2e),
            cfg[8],
            flags,
            sizes,
        ))
    }
}

/// Region type and sparse-mmap areas found in a capability chain.
type ParsedCaps = (Option<(u32, u32)>, Vec<(u64, u64)>);

/// Walks a region-info capability chain (offsets from the start of the
/// info); stops at `next == 0`, refuses loops and out-of-bounds entries.
fn parse_caps(p: &[u8], first: u32) -> std::result::Result<ParsedCaps, String> {
    let mut ty = None;
    let mut areas = Vec::new();
    let mut at = first as usize;
    let mut last = 0usize;
    while at != 0 {
        if at <= last || at < RegionInfo::SIZE {
            return Err(format!("capability chain goes backwards to offset {at}"));
        }
        let h = CapHeader::decode(p.get(at..).unwrap_or(&[])).map_err(|e| e.to_string())?;
        let body = &p[at + CapHeader::SIZE..];
        match h.id {
            REGION_INFO_CAP_TYPE => {
                let t = CapType::decode(body).map_err(|e| e.to_string())?;
                ty = Some((t.ty, t.subtype));
            }
            REGION_INFO_CAP_SPARSE_MMAP => {
                let s = CapSparseMmap::decode(body).map_err(|e| e.to_string())?;
                let mut off = CapSparseMmap::SIZE;
                for _ in 0..s.nr_areas.min(1024) {
                    let a = SparseMmapArea::decode(body.get(off..).unwrap_or(&[]))
                        .map_err(|e| e.to_string())?;
                    areas.push((a.offset, a.size));
                    off += SparseMmapArea::SIZE;
                }
            }
            _ => {}
        }
        last = at;
        at = h.next as usize;
    }
    Ok((ty, areas))
}
