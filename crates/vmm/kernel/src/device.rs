//! [`KernelDevice`]: the migratable device handle over a kernel VFIO device.

use crate::locate::{LocateError, Located, Locator};
use crate::sys;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use vfio_migrate_abi::kernel as k;
use vfio_migrate_abi::vfio_user::{
    DeviceInfo, RegionInfo, PCI_CONFIG_REGION_INDEX, REGION_FLAG_READ, REGION_FLAG_WRITE,
};
use vfio_migrate_backend::{
    BackendError, DeviceDescriptor, DmaDirtyLog, DmaMapping, DmaWindow, IovaRange, MigState,
    MigrationDevice, PrecopyInfo, RegionAccess, Result,
};

/// One region as the device fd exposes it.
#[derive(Debug, Clone, Copy)]
struct RegionAt {
    size: u64,
    offset: u64,
    flags: u32,
}

/// A kernel VFIO device opened for migration.
pub struct KernelDevice {
    spec: String,
    located: Located,
    // Field order is drop order: device, then group, then container.
    device: File,
    data: Option<File>,
    _group: File,
    container: File,
    flags: u64,
    regions: Vec<RegionAt>,
    mappings: Vec<(u64, u64, sys::Mapping)>,
    /// Opted in to `VFIO_PRECOPY_INFO_REINIT` (the kernel has
    /// `VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2`); otherwise the flags of
    /// the pre-copy info are reserved and ignored.
    precopy_v2: bool,
}

fn hint(errno: Option<i32>) -> &'static str {
    match errno {
        Some(libc::EBUSY) => " — the device is busy: another process (a VM, another vfio-migrate) has it open; stop it first",
        Some(libc::EACCES) | Some(libc::EPERM) => " — permission denied: run as root or give this user access to /dev/vfio/*",
        Some(libc::ENOENT) | Some(libc::ENODEV) => " — the VFIO node is missing: load the modules (modprobe vfio vfio_iommu_type1, and the device's driver, e.g. mtty or a *-vfio-pci driver)",
        _ => "",
    }
}

impl KernelDevice {
    /// Opens the device named by `spec` (what follows `kernel:`).
    pub fn open(spec: &str) -> Result<Self> {
        Self::open_with(&Locator::default(), spec)
    }

    /// Opens with an explicit locator (sysfs and /dev roots).
    pub fn open_with(locator: &Locator, spec: &str) -> Result<Self> {
        let located = locator.locate(spec).map_err(|e| match e {
            LocateError::Io { path, source, .. } => {
                BackendError::io(format!("reading {}", path.display()), source)
            }
            other => BackendError::NotFound {
                detail: other.to_string(),
            },
        })?;
        // Steps do not name the device: the caller does, once.
        let step = |s: &str| s.to_string();
        let ioerr = |s: &str, e: io::Error| {
            let errno = e.raw_os_error();
            BackendError::Refused {
                step: step(s),
                errno: errno.unwrap_or(libc::EIO),
                detail: format!("{e}{}", hint(errno)),
            }
        };
        let vfio_dev = locator.dev_root.join("vfio/vfio");
        let container = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&vfio_dev)
            .map_err(|e| ioerr(&format!("open {}", vfio_dev.display()), e))?;
        let api = sys::ioctl_val(&container, k::VFIO_GET_API_VERSION, 0)
            .map_err(|e| ioerr("VFIO_GET_API_VERSION", e))?;
        if api != k::VFIO_API_VERSION {
            return Err(BackendError::protocol(
                step("VFIO_GET_API_VERSION"),
                format!("kernel VFIO API {api}, expected {}", k::VFIO_API_VERSION),
            ));
        }
        let has = sys::ioctl_val(
            &container,
            k::VFIO_CHECK_EXTENSION,
            k::VFIO_TYPE1V2_IOMMU as libc::c_ulong,
        )
        .map_err(|e| ioerr("VFIO_CHECK_EXTENSION", e))?;
        if has == 0 {
            return Err(BackendError::unsupported(
                step("VFIO_CHECK_EXTENSION"),
                "the kernel has no Type1v2 IOMMU backend: modprobe vfio_iommu_type1",
            ));
        }
        let group = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&located.group_path)
            .map_err(|e| ioerr(&format!("open {}", located.group_path.display()), e))?;
        let mut st = k::GroupStatus {
            argsz: k::GroupStatus::SIZE as u32,
            flags: 0,
        }
        .to_bytes();
        sys::ioctl_buf(&group, k::VFIO_GROUP_GET_STATUS, &mut st)
            .map_err(|e| ioerr("VFIO_GROUP_GET_STATUS", e))?;
        let st = k::GroupStatus::decode(&st)
            .map_err(|e| BackendError::protocol(step("group status"), e.to_string()))?;
        if st.flags & k::VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(BackendError::refused(
                step("VFIO_GROUP_GET_STATUS"),
                libc::EINVAL,
                format!("IOMMU group {} is not viable: every device in it must be bound to a VFIO driver", located.group),
            ));
        }
        use std::os::fd::AsRawFd;
        sys::ioctl_fd_ptr(&group, k::VFIO_GROUP_SET_CONTAINER, container.as_raw_fd())
            .map_err(|e| ioerr("VFIO_GROUP_SET_CONTAINER", e))?;
        sys::ioctl_val(
            &container,
            k::VFIO_SET_IOMMU,
            k::VFIO_TYPE1V2_IOMMU as libc::c_ulong,
        )
        .map_err(|e| ioerr("VFIO_SET_IOMMU", e))?;
        let cname = CString::new(located.name.clone())
            .map_err(|_| BackendError::protocol(step("device name"), "NUL in device name"))?;
        let device = sys::ioctl_str_fd(&group, k::VFIO_GROUP_GET_DEVICE_FD, &cname)
            .map_err(|e| ioerr("VFIO_GROUP_GET_DEVICE_FD", e))?;
        let mut d = KernelDevice {
            spec: spec.to_string(),
            located,
            device,
            data: None,
            _group: group,
            container,
            flags: 0,
            regions: Vec::new(),
            mappings: Vec::new(),
            precopy_v2: false,
        };
        d.flags = d.probe_migration()?;
        if d.flags & k::MIGRATION_PRE_COPY != 0 {
            // Older kernels do not know feature 12 (ENOTTY): the flags of
            // the pre-copy info then stay reserved.
            d.precopy_v2 = d
                .feature(k::FEATURE_SET | k::FEATURE_MIG_PRECOPY_INFO_V2, &mut [])
                .is_ok();
        }
        d.regions = d.read_regions()?;
        tracing::info!(device = %d.name(), flags = d.flags, regions = d.regions.len(), "kernel VFIO device opened");
        Ok(d)
    }

    /// Where it was found.
    pub fn located(&self) -> &Located {
        &self.located
    }

    fn step(&self, s: &str) -> String {
        s.to_string()
    }

    fn err(&self, s: &str, e: io::Error) -> BackendError {
        let errno = e.raw_os_error();
        BackendError::Refused {
            step: self.step(s),
            errno: errno.unwrap_or(libc::EIO),
            detail: format!("{e}{}", hint(errno)),
        }
    }

    /// `VFIO_DEVICE_FEATURE` with `flags` and `data` (in/out).
    fn feature(&self, flags: u32, data: &mut [u8]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(k::DeviceFeature::SIZE + data.len());
        k::DeviceFeature {
            argsz: (k::DeviceFeature::SIZE + data.len()) as u32,
            flags,
        }
        .encode(&mut buf);
        buf.extend_from_slice(data);
        sys::ioctl_buf(&self.device, k::VFIO_DEVICE_FEATURE, &mut buf)?;
        data.copy_from_slice(&buf[k::DeviceFeature::SIZE..]);
        Ok(())
    }

    fn probe_migration(&self) -> Result<u64> {
        let mut d = [0u8; 8];
        match self.feature(k::FEATURE_GET | k::FEATURE_MIGRATION, &mut d) {
            Ok(()) => Ok(u64::from_le_bytes(d)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY) | Some(libc::EINVAL)) => {
                Err(BackendError::unsupported(
                    self.step("VFIO_DEVICE_FEATURE MIGRATION"),
                    "the device's driver does not offer VFIO migration (v2, Linux ≥ 5.18); use a migration-capable variant driver",
                ))
            }
            Err(e) => Err(self.err("VFIO_DEVICE_FEATURE MIGRATION", e)),
        }
    }

    fn read_regions(&self) -> Result<Vec<RegionAt>> {
        let mut info = DeviceInfo {
            argsz: DeviceInfo::SIZE as u32,
            ..Default::default()
        }
        .to_bytes();
        sys::ioctl_buf(&self.device, k::VFIO_DEVICE_GET_INFO, &mut info)
            .map_err(|e| self.err("VFIO_DEVICE_GET_INFO", e))?;
        let info = DeviceInfo::decode(&info)
            .map_err(|e| BackendError::protocol(self.step("device info"), e.to_string()))?;
        let n = info.num_regions.min(64);
        let mut out = Vec::new();
        for index in 0..n {
            let mut r = RegionInfo {
                argsz: RegionInfo::SIZE as u32,
                index,
                ..Default::default()
            }
            .to_bytes();
            match sys::ioctl_buf(&self.device, k::VFIO_DEVICE_GET_REGION_INFO, &mut r) {
                Ok(_) => {
                    let r = RegionInfo::decode(&r).map_err(|e| {
                        BackendError::protocol(self.step("region info"), e.to_string())
                    })?;
                    out.push(RegionAt {
                        size: r.size,
                        offset: r.offset,
                        flags: r.flags,
                    });
                }
                // Absent regions (e.g. no VGA) answer EINVAL.
                Err(_) => out.push(RegionAt {
                    size: 0,
                    offset: 0,
                    flags: 0,
                }),
            }
        }
        Ok(out)
    }

    fn region(&self, index: u32, offset: u64, len: usize, write: bool) -> Result<u64> {
        let r = self
            .regions
            .get(index as usize)
            .copied()
            .unwrap_or(RegionAt {
                size: 0,
                offset: 0,
                flags: 0,
            });
        let need = if write {
            REGION_FLAG_WRITE
        } else {
            REGION_FLAG_READ
        };
        if r.flags & need == 0 {
            return Err(BackendError::refused(
                self.step("region access"),
                libc::EINVAL,
                format!(
                    "region {index} is not {}",
                    if write { "writable" } else { "readable" }
                ),
            ));
        }
        match offset.checked_add(len as u64) {
            Some(end) if end <= r.size => Ok(r.offset + offset),
            _ => Err(BackendError::refused(
                self.step("region access"),
                libc::EINVAL,
                format!(
                    "{offset:#x}+{len} is outside region {index} ({} bytes)",
                    r.size
                ),
            )),
        }
    }

    fn read_config(&self) -> Result<[u8; 64]> {
        let mut c = [0u8; 64];
        let at = self.region(PCI_CONFIG_REGION_INDEX, 0, c.len(), false)?;
        self.device
            .read_exact_at(&mut c, at)
            .map_err(|e| self.err("read config space", e))?;
        Ok(c)
    }
}

impl MigrationDevice for KernelDevice {
    fn name(&self) -> String {
        format!("kernel:{}", self.spec)
    }
    fn protocol(&self) -> &'static str {
        "kernel v2"
    }
    fn descriptor(&mut self) -> Result<DeviceDescriptor> {
        let c = self.read_config()?;
        let u16at = |o: usize| u16::from_le_bytes([c[o], c[o + 1]]);
        Ok(DeviceDescriptor::from_pci(
            u16at(0),
            u16at(2),
            u16at(0x2c),
            u16at(0x2e),
            c[8],
            self.flags,
            self.regions.iter().map(|r| r.size).collect(),
        ))
    }
    fn migration_flags(&mut self) -> Result<u64> {
        Ok(self.flags)
    }
    fn state(&mut self) -> Result<MigState> {
        let mut d = k::FeatureMigState {
            device_state: 0,
            data_fd: -1,
        }
        .to_bytes();
        self.feature(k::FEATURE_GET | k::FEATURE_MIG_DEVICE_STATE, &mut d)
            .map_err(|e| self.err("get device state", e))?;
        let s = k::FeatureMigState::decode(&d)
            .map_err(|e| BackendError::protocol(self.step("device state"), e.to_string()))?;
        MigState::from_u32(s.device_state)
            .map_err(|e| BackendError::protocol(self.step("device state"), e.to_string()))
    }
    fn set_state(&mut self, new: MigState) -> Result<()> {
        // ERROR is passed on too: the kernel itself refuses it (EINVAL).
        let mut d = k::FeatureMigState {
            device_state: new as u32,
            data_fd: -1,
        }
        .to_bytes();
        let r = self.feature(k::FEATURE_SET | k::FEATURE_MIG_DEVICE_STATE, &mut d);
        if let Err(e) = r {
            let mut err = self.err(&format!("set state {new}"), e);
            if new == MigState::Stop || new == MigState::Running {
                if let BackendError::Refused { detail, .. } = &mut err {
                    detail.push_str(" — if the device was RESUMING, the driver refused the loaded state (e.g. a state saved from a device with another port count or model)");
                }
            }
            return Err(err);
        }
        let s = k::FeatureMigState::decode(&d)
            .map_err(|e| BackendError::protocol(self.step("set state"), e.to_string()))?;
        if s.data_fd >= 0 {
            self.data = Some(sys::own_fd(s.data_fd));
        } else if !matches!(
            new,
            MigState::StopCopy | MigState::PreCopy | MigState::PreCopyP2p | MigState::Resuming
        ) {
            // PRE_COPY → STOP_COPY returns no new fd: keep reading the old one.
            self.data = None;
        }
        tracing::debug!(device = %self.name(), state = %new, "state set");
        Ok(())
    }
    fn read_data(&mut self, buf: &mut [u8]) -> Result<usize> {
        let step = self.step("read migration data");
        let f = self.data.as_mut().ok_or_else(|| {
            BackendError::refused(
                step.clone(),
                libc::EINVAL,
                "no data fd: the device is not in PRE_COPY or STOP_COPY",
            )
        })?;
        loop {
            match f.read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.raw_os_error() == Some(libc::ENOMSG) => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(BackendError::io(step, e)),
            }
        }
    }
    fn write_data(&mut self, data: &[u8]) -> Result<()> {
        let step = self.step("write migration data");
        let f = self.data.as_mut().ok_or_else(|| {
            BackendError::refused(
                step.clone(),
                libc::EINVAL,
                "no data fd: the device is not RESUMING",
            )
        })?;
        f.write_all(data).map_err(|e| {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            BackendError::refused(step, errno, format!("{e} — the driver refused the state (saved from a different device model or port count?)"))
        })
    }
    fn precopy_info(&mut self) -> Result<PrecopyInfo> {
        let step = self.step("VFIO_MIG_GET_PRECOPY_INFO");
        let f = self.data.as_ref().ok_or_else(|| {
            BackendError::refused(
                step.clone(),
                libc::EINVAL,
                "no data fd: the device is not in PRE_COPY",
            )
        })?;
        let mut b = k::PrecopyInfo {
            argsz: k::PrecopyInfo::SIZE as u32,
            ..Default::default()
        }
        .to_bytes();
        sys::ioctl_buf(f, k::VFIO_MIG_GET_PRECOPY_INFO, &mut b)
            .map_err(|e| self.err("VFIO_MIG_GET_PRECOPY_INFO", e))?;
        let p =
            k::PrecopyInfo::decode(&b).map_err(|e| BackendError::protocol(step, e.to_string()))?;
        Ok(PrecopyInfo {
            initial_bytes: p.initial_bytes,
            dirty_bytes: p.dirty_bytes,
            reinit: self.precopy_v2 && p.flags & k::PRECOPY_INFO_REINIT != 0,
        })
    }
    fn stop_copy_size(&mut self) -> Result<Option<u64>> {
        let mut d = [0u8; 8];
        match self.feature(k::FEATURE_GET | k::FEATURE_MIG_DATA_SIZE, &mut d) {
            Ok(()) => Ok(Some(u64::from_le_bytes(d))),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOTTY) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(self.err("MIG_DATA_SIZE", e)),
        }
    }

    fn reset(&mut self) -> Result<()> {
        sys::ioctl_val(&self.device, k::VFIO_DEVICE_RESET, 0)
            .map_err(|e| self.err("VFIO_DEVICE_RESET", e))?;
        // A reset device is RUNNING: any data fd is stale.
        self.data = None;
        Ok(())
    }

    fn dma_log(&mut self) -> Option<&mut dyn DmaDirtyLog> {
        let mut d = [];
        let offered = self
            .feature(
                k::FEATURE_PROBE | k::FEATURE_SET | k::FEATURE_DMA_LOGGING_START,
                &mut d,
            )
            .is_ok();
        if offered {
            Some(self)
        } else {
            None
        }
    }

    fn regions(&mut self) -> Option<&mut dyn RegionAccess> {
        Some(self)
    }

    fn dma_mapping(&mut self) -> Option<&mut dyn DmaMapping> {
        Some(self)
    }
}

impl DmaDirtyLog for KernelDevice {
    fn dma_logging_start(&mut self, page_size: u64, ranges: &[IovaRange]) -> Result<()> {
        let mut raw: Vec<u8> = Vec::with_capacity(ranges.len() * k::DmaLoggingRange::SIZE);
        for r in ranges {
            k::DmaLoggingRange {
                iova: r.iova,
                length: r.length,
            }
            .encode(&mut raw);
        }
        let mut d = k::DmaLoggingControl {
            page_size,
            num_ranges: ranges.len() as u32,
            rsvd: 0,
            ranges: raw.as_ptr() as u64,
        }
        .to_bytes();
        // The kernel reads `ranges` through the pointer while `raw` lives.
        let r = self.feature(k::FEATURE_SET | k::FEATURE_DMA_LOGGING_START, &mut d);
        drop(raw);
        r.map_err(|e| self.err("DMA_LOGGING_START", e))
    }
    fn dma_logging_report(
        &mut self,
        iova: u64,
        length: u64,
        page_size: u64,
        bitmap: &mut [u8],
    ) -> Result<()> {
        let need = k::bitmap_bytes(length, page_size).unwrap_or(u64::MAX);
        if (bitmap.len() as u64) < need {
            return Err(BackendError::refused(
                self.step("DMA_LOGGING_REPORT"),
                libc::EINVAL,
                format!("bitmap of {} bytes, {need} needed", bitmap.len()),
            ));
        }
        let mut d = k::DmaLoggingReport {
            iova,
            length,
            page_size,
            bitmap: bitmap.as_mut_ptr() as u64,
        }
        .to_bytes();
        self.feature(k::FEATURE_GET | k::FEATURE_DMA_LOGGING_REPORT, &mut d)
            .map_err(|e| self.err("DMA_LOGGING_REPORT", e))
    }
    fn dma_logging_stop(&mut self) -> Result<()> {
        let mut d = [];
        self.feature(k::FEATURE_SET | k::FEATURE_DMA_LOGGING_STOP, &mut d)
            .map_err(|e| self.err("DMA_LOGGING_STOP", e))
    }
}

impl RegionAccess for KernelDevice {
    fn region_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        let at = self.region(index, offset, buf.len(), false)?;
        self.device
            .read_exact_at(buf, at)
            .map_err(|e| self.err(&format!("read region {index}"), e))
    }
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<()> {
        let at = self.region(index, offset, data.len(), true)?;
        self.device
            .write_all_at(data, at)
            .map_err(|e| self.err(&format!("write region {index}"), e))
    }
}

impl DmaMapping for KernelDevice {
    fn dma_map(&mut self, w: DmaWindow<'_>) -> Result<()> {
        let fd = w.fd.ok_or_else(|| {
            BackendError::unsupported(
                self.step("DMA map"),
                "kernel devices need guest memory shared by fd",
            )
        })?;
        let m = sys::Mapping::new(&fd, w.offset, w.size, w.writable)
            .map_err(|e| self.err("mmap guest memory", e))?;
        let mut b = k::IommuDmaMap {
            argsz: k::IommuDmaMap::SIZE as u32,
            flags: (w.readable as u32) | ((w.writable as u32) << 1),
            vaddr: m.ptr as u64,
            iova: w.iova,
            size: w.size,
        }
        .to_bytes();
        sys::ioctl_buf(&self.container, k::VFIO_IOMMU_MAP_DMA, &mut b)
            .map_err(|e| self.err("VFIO_IOMMU_MAP_DMA", e))?;
        self.mappings.push((w.iova, w.size, m));
        Ok(())
    }
    fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<()> {
        let i = self
            .mappings
            .iter()
            .position(|(a, s, _)| *a == iova && *s == size)
            .ok_or_else(|| {
                BackendError::refused(
                    self.step("DMA unmap"),
                    libc::ENOENT,
                    format!("no DMA window {iova:#x}+{size:#x}"),
                )
            })?;
        // vfio_iommu_type1_dma_unmap has the same head as the map struct
        // minus vaddr: argsz, flags, iova, size.
        let mut b = Vec::with_capacity(24);
        b.extend_from_slice(&24u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&iova.to_le_bytes());
        b.extend_from_slice(&size.to_le_bytes());
        sys::ioctl_buf(&self.container, k::VFIO_IOMMU_UNMAP_DMA, &mut b)
            .map_err(|e| self.err("VFIO_IOMMU_UNMAP_DMA", e))?;
        self.mappings.remove(i);
        Ok(())
    }
}
