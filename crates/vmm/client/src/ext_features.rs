//! This project's vfio-user extensions on the migration path (see
//! `vfio_migrate_vfio_user::ext`): pre-copy info, with flags once the
//! connection opted in (REINIT), and the device throttle.

use super::Client;
use vfio_migrate_abi::kernel::FEATURE_GET;
use vfio_migrate_abi::kernel::FEATURE_SET;
use vfio_migrate_backend::{BackendError, DeviceThrottle, PrecopyInfo, Result};
use vfio_migrate_vfio_user::ext::{
    FeatureThrottle, FEATURE_PRECOPY_INFO, FEATURE_PRECOPY_INFO_V2, FEATURE_THROTTLE,
    PRECOPY_FLAG_REINIT,
};

fn u64_at(d: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(d[at..at + 8].try_into().expect("8 bytes"))
}

impl Client {
    /// Opts in to pre-copy info with flags, once per connection, where the
    /// server offers it.
    fn precopy_v2(&mut self) -> Result<bool> {
        if let Some(v) = self.precopy_v2 {
            return Ok(v);
        }
        let v = self.feature_probe(FEATURE_PRECOPY_INFO_V2, FEATURE_SET)?
            && self.feature_set(FEATURE_PRECOPY_INFO_V2, &[]).is_ok();
        self.precopy_v2 = Some(v);
        Ok(v)
    }

    /// The pre-copy info extension: `{initial, dirty}`, plus flags (REINIT)
    /// after the opt-in.
    pub(crate) fn precopy_info_ext(&mut self) -> Result<PrecopyInfo> {
        if !self.feature_probe(FEATURE_PRECOPY_INFO, FEATURE_GET)? {
            return Err(BackendError::unsupported(
                "pre-copy info",
                "the server does not offer the pre-copy info feature",
            ));
        }
        let v2 = self.precopy_v2()?;
        let want = if v2 { 24 } else { 16 };
        let d = self.feature_get(FEATURE_PRECOPY_INFO, &[], want)?;
        if d.len() < want {
            return Err(BackendError::protocol(
                "pre-copy info",
                format!("{} bytes of data, {want} expected", d.len()),
            ));
        }
        let flags = if v2 {
            u32::from_le_bytes(d[16..20].try_into().expect("4 bytes"))
        } else {
            0
        };
        Ok(PrecopyInfo {
            initial_bytes: u64_at(&d, 0),
            dirty_bytes: u64_at(&d, 8),
            reinit: flags & PRECOPY_FLAG_REINIT != 0,
        })
    }
}

impl DeviceThrottle for Client {
    fn set_throttle(&mut self, percent: u32) -> Result<()> {
        let t = FeatureThrottle {
            percent,
            reserved: 0,
        };
        self.feature_set(FEATURE_THROTTLE, &t.to_bytes())
            .map_err(|e| super::migration::rename(e, format!("set the throttle to {percent}%")))?;
        Ok(())
    }
}
