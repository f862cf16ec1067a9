//! An in-process [`MigrationDevice`] over a shared [`DeviceCore`], so the
//! engine (and tests) can drive a device without any transport.

use crate::core::DeviceCore;
use crate::device::Device;
use crate::error::DeviceError;
use std::sync::{Arc, Mutex};
use vfio_migrate_abi::kernel::MigState;
use vfio_migrate_backend::{
    BackendError, DeviceDescriptor, DeviceStatus, DeviceThrottle, DmaDirtyLog, DmaMapping,
    DmaWindow, IovaRange, MigrationDevice, PrecopyInfo, RegionAccess, Result,
};

/// A handle to a device in this process.
pub struct LocalDevice<D: Device> {
    name: String,
    core: Arc<Mutex<DeviceCore<D>>>,
}

impl<D: Device> LocalDevice<D> {
    /// A handle named `name` to `core`.
    pub fn new(name: impl Into<String>, core: Arc<Mutex<DeviceCore<D>>>) -> Self {
        Self {
            name: name.into(),
            core,
        }
    }

    /// The shared core.
    pub fn core(&self) -> &Arc<Mutex<DeviceCore<D>>> {
        &self.core
    }
}

fn err(step: &str, e: DeviceError) -> BackendError {
    BackendError::refused(step, e.errno, e.message)
}

impl<D: Device> MigrationDevice for LocalDevice<D> {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn protocol(&self) -> &'static str {
        "in-process"
    }
    fn descriptor(&mut self) -> Result<DeviceDescriptor> {
        let c = self.core.lock().unwrap();
        let id = c.device_ref().identity();
        let regions = c.device_ref().regions();
        let n = regions.iter().map(|r| r.index + 1).max().unwrap_or(0) as usize;
        let mut region_sizes = vec![0u64; n];
        for r in regions {
            region_sizes[r.index as usize] = r.size;
        }
        Ok(DeviceDescriptor::from_pci(
            id.vendor_id,
            id.device_id,
            id.subsystem_vendor_id,
            id.subsystem_id,
            id.revision,
            c.migration_flags(),
            region_sizes,
        ))
    }
    fn migration_flags(&mut self) -> Result<u64> {
        Ok(self.core.lock().unwrap().migration_flags())
    }
    fn state(&mut self) -> Result<MigState> {
        Ok(self.core.lock().unwrap().state())
    }
    fn set_state(&mut self, new: MigState) -> Result<()> {
        self.core
            .lock()
            .unwrap()
            .set_state(new)
            .map_err(|e| err(&format!("set state {new}"), e))
    }
    fn read_data(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.core
            .lock()
            .unwrap()
            .read_data(buf)
            .map_err(|e| err("read migration data", e))
    }
    fn write_data(&mut self, data: &[u8]) -> Result<()> {
        self.core
            .lock()
            .unwrap()
            .write_data(data)
            .map_err(|e| err("write migration data", e))
    }
    fn precopy_info(&mut self) -> Result<PrecopyInfo> {
        self.core
            .lock()
            .unwrap()
            .precopy_info()
            .map_err(|e| err("pre-copy info", e))
    }
    fn stop_copy_size(&mut self) -> Result<Option<u64>> {
        Ok(Some(self.core.lock().unwrap().stop_copy_size()))
    }

    fn reset(&mut self) -> Result<()> {
        self.core
            .lock()
            .unwrap()
            .reset()
            .map_err(|e| err("device reset", e))
    }

    fn status(&mut self) -> Result<Option<DeviceStatus>> {
        Ok(Some(self.core.lock().unwrap().status()))
    }

    fn dma_log(&mut self) -> Option<&mut dyn DmaDirtyLog> {
        Some(self)
    }

    fn regions(&mut self) -> Option<&mut dyn RegionAccess> {
        Some(self)
    }

    fn dma_mapping(&mut self) -> Option<&mut dyn DmaMapping> {
        Some(self)
    }

    fn throttle(&mut self) -> Option<&mut dyn DeviceThrottle> {
        if self.core.lock().unwrap().throttle_offered() {
            Some(self)
        } else {
            None
        }
    }
}

impl<D: Device> DeviceThrottle for LocalDevice<D> {
    fn set_throttle(&mut self, percent: u32) -> Result<()> {
        self.core
            .lock()
            .unwrap()
            .set_throttle(percent)
            .map_err(|e| err("set the throttle", e))
    }
}

impl<D: Device> DmaDirtyLog for LocalDevice<D> {
    fn dma_logging_start(&mut self, page_size: u64, ranges: &[IovaRange]) -> Result<()> {
        let c = self.core.lock().unwrap();
        c.dma()
            .logging_start(page_size, ranges)
            .map_err(|e| err("DMA logging start", e))
    }
    fn dma_logging_report(
        &mut self,
        iova: u64,
        length: u64,
        page_size: u64,
        bitmap: &mut [u8],
    ) -> Result<()> {
        let c = self.core.lock().unwrap();
        c.dma()
            .logging_report(iova, length, page_size, bitmap)
            .map_err(|e| err("DMA logging report", e))
    }
    fn dma_logging_stop(&mut self) -> Result<()> {
        self.core.lock().unwrap().dma().logging_stop();
        Ok(())
    }
}

impl<D: Device> RegionAccess for LocalDevice<D> {
    fn region_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut c = self.core.lock().unwrap();
        check_region(&*c, index, offset, buf.len())?;
        c.region_read(index, offset, buf)
            .map_err(|e| err("region read", e))
    }
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<()> {
        let mut c = self.core.lock().unwrap();
        check_region(&*c, index, offset, data.len())?;
        c.region_write(index, offset, data)
            .map_err(|e| err("region write", e))
    }
}

impl<D: Device> DmaMapping for LocalDevice<D> {
    fn dma_map(&mut self, window: DmaWindow<'_>) -> Result<()> {
        let fd = match window.fd {
            Some(fd) => Some(
                fd.try_clone_to_owned()
                    .map_err(|e| BackendError::io("DMA map: duplicating the memory fd", e))?,
            ),
            None => None,
        };
        let c = self.core.lock().unwrap();
        c.dma()
            .map(
                window.iova,
                window.size,
                fd,
                window.offset,
                window.readable,
                window.writable,
            )
            .map_err(|e| err("DMA map", e))
    }
    fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<()> {
        let c = self.core.lock().unwrap();
        c.dma().unmap(iova, size).map_err(|e| err("DMA unmap", e))
    }
}

fn check_region<D: Device>(c: &DeviceCore<D>, index: u32, offset: u64, len: usize) -> Result<()> {
    let r = c
        .device_ref()
        .regions()
        .into_iter()
        .find(|r| r.index == index)
        .ok_or_else(|| {
            BackendError::refused("region access", libc::EINVAL, format!("no region {index}"))
        })?;
    match offset.checked_add(len as u64) {
        Some(end) if end <= r.size => Ok(()),
        _ => Err(BackendError::refused(
            "region access",
            libc::EINVAL,
            format!(
                "{offset:#x}+{len} is outside region {index} ({} bytes)",
                r.size
            ),
        )),
    }
}
