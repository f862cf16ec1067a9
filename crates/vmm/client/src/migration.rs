//! [`MigrationDevice`] over a vfio-user [`Client`]: the v2 migration
//! protocol (DEVICE_FEATURE + MIG_DATA_*), DMA logging, guest memory maps
//! and region access, with the extensions probed before use.

use vfio_migrate_abi::kernel::{
    FeatureMigDataSize, FeatureMigState, MigState, FEATURE_DMA_LOGGING_START,
    FEATURE_DMA_LOGGING_STOP, FEATURE_GET, FEATURE_MIG_DEVICE_STATE, FEATURE_SET,
};
use vfio_migrate_abi::vfio_user::{DMA_FLAG_READ, DMA_FLAG_WRITE};
use vfio_migrate_backend::{
    BackendError, DeviceDescriptor, DeviceStatus, DeviceThrottle, DmaDirtyLog, DmaMapping,
    DmaWindow, IovaRange, MigrationDevice, PrecopyInfo, RegionAccess, Result,
};

use super::Client;
use vfio_migrate_vfio_user::ext::{
    FEATURE_DEVICE_STATUS, FEATURE_MIG_DATA_SIZE, FEATURE_THROTTLE, STATUS_INCOMING,
    STATUS_MIGRATED_OUT, STATUS_PRISTINE,
};

impl MigrationDevice for Client {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn protocol(&self) -> &'static str {
        "vfio-user v2"
    }
    fn descriptor(&mut self) -> Result<DeviceDescriptor> {
        if let Some(d) = &self.descriptor {
            return Ok(d.clone());
        }
        let d = self.read_descriptor()?;
        self.descriptor = Some(d.clone());
        Ok(d)
    }
    fn migration_flags(&mut self) -> Result<u64> {
        self.mig_flags()
    }
    fn state(&mut self) -> Result<MigState> {
        let d = self.feature_get(FEATURE_MIG_DEVICE_STATE, &[], FeatureMigState::SIZE)?;
        let s = FeatureMigState::decode(&d)
            .map_err(|e| BackendError::protocol("get device state", e.to_string()))?;
        MigState::from_u32(s.device_state)
            .map_err(|e| BackendError::protocol("get device state", e.to_string()))
    }
    fn set_state(&mut self, new: MigState) -> Result<()> {
        let req = FeatureMigState {
            device_state: new as u32,
            data_fd: -1,
        };
        self.feature_set(FEATURE_MIG_DEVICE_STATE, &req.to_bytes())
            .map_err(|e| rename(e, format!("set state {new}")))?;
        Ok(())
    }
    fn read_data(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.mig_data_read(buf)
    }
    fn write_data(&mut self, data: &[u8]) -> Result<()> {
        self.mig_data_write(data)
    }
    fn precopy_info(&mut self) -> Result<PrecopyInfo> {
        self.precopy_info_ext()
    }
    fn stop_copy_size(&mut self) -> Result<Option<u64>> {
        if !self.feature_probe(FEATURE_MIG_DATA_SIZE, FEATURE_GET)? {
            return Ok(None);
        }
        let d = self.feature_get(FEATURE_MIG_DATA_SIZE, &[], FeatureMigDataSize::SIZE)?;
        let v = FeatureMigDataSize::decode(&d)
            .map_err(|e| BackendError::protocol("MIG_DATA_SIZE", e.to_string()))?;
        Ok(Some(v.stop_copy_length))
    }
    fn preferred_chunk(&self) -> usize {
        self.max_recv_chunk()
    }

    fn reset(&mut self) -> Result<()> {
        Client::reset(self)
    }

    fn status(&mut self) -> Result<Option<DeviceStatus>> {
        self.device_status()
    }

    fn dma_log(&mut self) -> Option<&mut dyn DmaDirtyLog> {
        // Offered only when the server answers the PROBE.
        let offered = self
            .feature_probe(FEATURE_DMA_LOGGING_START, FEATURE_SET)
            .unwrap_or(false);
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

    fn data_splice(&mut self) -> Option<&mut dyn vfio_migrate_backend::DataSplice> {
        // Only our servers checksum their replies.
        self.peer_is_vfio_migrate().then_some(self as _)
    }

    fn throttle(&mut self) -> Option<&mut dyn DeviceThrottle> {
        // Offered only when the server answers the PROBE.
        let offered = self
            .feature_probe(FEATURE_THROTTLE, FEATURE_SET)
            .unwrap_or(false);
        if offered {
            Some(self)
        } else {
            None
        }
    }
}

impl DmaDirtyLog for Client {
    fn dma_logging_start(&mut self, page_size: u64, ranges: &[IovaRange]) -> Result<()> {
        let mut data = Vec::with_capacity(16 + ranges.len() * 16);
        data.extend_from_slice(&page_size.to_le_bytes());
        data.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
        data.extend_from_slice(&0u32.to_le_bytes());
        for r in ranges {
            data.extend_from_slice(&r.iova.to_le_bytes());
            data.extend_from_slice(&r.length.to_le_bytes());
        }
        self.feature_set(FEATURE_DMA_LOGGING_START, &data)
            .map_err(|e| rename(e, "DMA logging start".into()))?;
        Ok(())
    }
    fn dma_logging_report(
        &mut self,
        iova: u64,
        length: u64,
        page_size: u64,
        bitmap: &mut [u8],
    ) -> Result<()> {
        self.dma_logging_report_into(iova, length, page_size, bitmap)
    }
    fn dma_logging_stop(&mut self) -> Result<()> {
        self.feature_set(FEATURE_DMA_LOGGING_STOP, &[])
            .map_err(|e| rename(e, "DMA logging stop".into()))?;
        Ok(())
    }
}

impl RegionAccess for Client {
    fn region_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        Client::region_read(self, index, offset, buf)
    }
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<()> {
        Client::region_write(self, index, offset, data)
    }
}

impl DmaMapping for Client {
    fn dma_map(&mut self, w: DmaWindow<'_>) -> Result<()> {
        let mut flags = 0;
        if w.readable {
            flags |= DMA_FLAG_READ;
        }
        if w.writable {
            flags |= DMA_FLAG_WRITE;
        }
        self.dma_map_fd(w.iova, w.size, w.fd, w.offset, flags)
    }
    fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<()> {
        self.dma_unmap_window(iova, size)
    }
}

impl Client {
    /// The device status extension ([`FEATURE_DEVICE_STATUS`]), `None` when
    /// the server does not offer it.
    pub fn device_status(&mut self) -> Result<Option<DeviceStatus>> {
        if !self.feature_probe(FEATURE_DEVICE_STATUS, FEATURE_GET)? {
            return Ok(None);
        }
        let d = self.feature_get(FEATURE_DEVICE_STATUS, &[], 8)?;
        if d.len() < 4 {
            return Err(BackendError::protocol(
                "device status",
                format!("{} bytes of data", d.len()),
            ));
        }
        let flags = u32::from_le_bytes(d[..4].try_into().expect("4 bytes"));
        Ok(Some(DeviceStatus {
            pristine: flags & STATUS_PRISTINE != 0,
            incoming: flags & STATUS_INCOMING != 0,
            migrated_out: flags & STATUS_MIGRATED_OUT != 0,
        }))
    }
}

/// Replaces the step name of an error with a user-facing one.
pub(crate) fn rename(e: BackendError, step: String) -> BackendError {
    match e {
        BackendError::Refused { errno, detail, .. } => BackendError::Refused {
            step,
            errno,
            detail,
        },
        BackendError::Io { source, .. } => BackendError::Io { step, source },
        BackendError::Protocol { detail, .. } => BackendError::Protocol { step, detail },
        BackendError::Unsupported { detail, .. } => BackendError::Unsupported { step, detail },
        e @ BackendError::NotFound { .. } => e,
    }
}
