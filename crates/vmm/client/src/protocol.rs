//! Opening a vfio-user device with one migration protocol: v2 (DEVICE_FEATURE
//! + MIG_DATA_*), the v1 region or the seed region, forced or detected.

use std::path::Path;
use vfio_migrate_abi::kernel::{FEATURE_GET, FEATURE_MIGRATION};
use vfio_migrate_backend::{BackendError, MigrationDevice, Result};

use super::{Client, ClientConfig, SeedDevice, V1Device};

/// Which migration protocol to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// v2 if the MIGRATION feature answers, else the v1 region, else the
    /// seed region.
    #[default]
    Auto,
    /// DEVICE_FEATURE migration + MIG_DATA_READ/WRITE.
    V2,
    /// The Linux 5.8 v1 migration region + DIRTY_PAGES.
    V1,
    /// The 2018 seed proposal's migration region.
    Seed,
}

/// Connects to the server at `path` and returns the device driven through
/// `protocol` (data sections through their mmap when the server passes the
/// region fd).
pub fn open(path: impl AsRef<Path>, protocol: Protocol) -> Result<Box<dyn MigrationDevice>> {
    open_with(path, protocol, ClientConfig::default())
}

/// [`open`] with explicit limits, deadlines and cancel fd.
pub fn open_with(
    path: impl AsRef<Path>,
    protocol: Protocol,
    config: ClientConfig,
) -> Result<Box<dyn MigrationDevice>> {
    let mut c = Client::connect_with(path, config)?;
    Ok(match protocol {
        Protocol::V2 => {
            if !c.feature_probe(FEATURE_MIGRATION, FEATURE_GET)? {
                return Err(BackendError::unsupported(
                    format!("{}: v2 migration", c.name),
                    "the server does not offer the v2 migration interface (DEVICE_FEATURE MIGRATION): serve it with --protocol v2 or all, or pick --protocol v1/seed",
                ));
            }
            Box::new(c)
        }
        Protocol::V1 => Box::new(V1Device::new(c, true)?),
        Protocol::Seed => Box::new(SeedDevice::new(c, true)?),
        Protocol::Auto => {
            if c.feature_probe(FEATURE_MIGRATION, FEATURE_GET)? {
                return Ok(Box::new(c));
            }
            let v1 = (
                vfio_migrate_abi::v1::REGION_TYPE,
                vfio_migrate_abi::v1::REGION_SUBTYPE,
            );
            let seed = (
                vfio_migrate_abi::seed::REGION_TYPE,
                vfio_migrate_abi::seed::REGION_SUBTYPE,
            );
            let n = c.device_info()?.num_regions.min(64);
            let mut types = Vec::new();
            for i in 0..n {
                types.extend(c.region_info(i)?.region_type);
            }
            if types.contains(&v1) {
                Box::new(V1Device::new(c, true)?)
            } else if types.contains(&seed) {
                Box::new(SeedDevice::new(c, true)?)
            } else {
                // No migration at all: v2 reports it when asked.
                Box::new(c)
            }
        }
    })
}
