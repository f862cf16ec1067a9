//! Which device digest register to read for verification: the CLI knows
//! the sample devices by PCI id (the engine does not).
//!
//! The vgpu's DIGEST is incremental (pages saved or loaded and not written
//! since are not hashed again); `--full-verify` also reads DIGEST_FULL,
//! every page hashed now, and refuses a difference.

use std::sync::Arc;
use vfio_migrate_backend::{BackendError, DeviceDescriptor, MigrationDevice};
use vfio_migrate_engine::Verifier;

/// PCI vendor of the samples.
const SAMPLE_VENDOR: u16 = 0x1b36;
/// `(device id, DIGEST offset, DIGEST_FULL offset)` in BAR0.
const SAMPLES: [(u16, u64, Option<u64>); 2] = [
    // vgpu
    (0x00f0, 0x38, Some(0x68)),
    // serial (its digest always hashes everything: tens of bytes)
    (0x00f1, 0x10, None),
];

fn sample(d: &DeviceDescriptor) -> Option<(u64, Option<u64>)> {
    if d.vendor_id != SAMPLE_VENDOR {
        return None;
    }
    SAMPLES
        .into_iter()
        .find(|(id, _, _)| *id == d.device_id)
        .map(|(_, off, full)| (off, full))
}

/// Reads a device's 64-bit digest (it must be stopped).
pub fn read_digest(
    dev: &mut dyn MigrationDevice,
    offset: u64,
) -> vfio_migrate_backend::Result<u64> {
    let mut b = [0u8; 8];
    vfio_migrate_backend::regions_of(dev)?.region_read(0, offset, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// The digest, and with `full` the full re-hash, which must agree.
fn digest(
    dev: &mut dyn MigrationDevice,
    (off, full_off): (u64, Option<u64>),
    full: bool,
) -> vfio_migrate_backend::Result<u64> {
    let d = read_digest(dev, off)?;
    match full_off.filter(|_| full) {
        None => Ok(d),
        Some(f) => {
            let whole = read_digest(dev, f)?;
            if whole != d {
                return Err(BackendError::protocol(
                    format!("{}: --full-verify", dev.name()),
                    format!("the incremental digest {d:#018x} differs from the full re-hash {whole:#018x}: the device's digest cache missed a change"),
                ));
            }
            Ok(whole)
        }
    }
}

/// The verifier for the sample devices; other devices are not verified.
/// `full`: also re-hash everything and check the incremental digest.
pub fn sample_verifier(full: bool) -> Verifier {
    Arc::new(
        move |desc: &DeviceDescriptor, dev: &mut dyn MigrationDevice| {
            sample(desc).map(|s| digest(dev, s, full))
        },
    )
}
