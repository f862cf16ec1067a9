//! Which device digest register to read for verification: the CLI knows
//! the sample devices by PCI id (the engine does not).

use std::sync::Arc;
use vfio_migrate_backend::{DeviceDescriptor, MigrationDevice};
use vfio_migrate_engine::Verifier;

/// PCI vendor of the samples.
const SAMPLE_VENDOR: u16 = 0x1b36;
/// vgpu: DIGEST at BAR0 + 0x38.
const VGPU: (u16, u64) = (0x00f0, 0x38);
/// serial: DIGEST at BAR0 + 0x10.
const SERIAL: (u16, u64) = (0x00f1, 0x10);

/// BAR0 offset of the digest register of a device, when known.
pub fn digest_offset(d: &DeviceDescriptor) -> Option<u64> {
    if d.vendor_id != SAMPLE_VENDOR {
        return None;
    }
    [VGPU, SERIAL]
        .into_iter()
        .find(|(id, _)| *id == d.device_id)
        .map(|(_, off)| off)
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

/// The verifier for the sample devices; other devices are not verified.
pub fn sample_verifier() -> Verifier {
    Arc::new(|desc: &DeviceDescriptor, dev: &mut dyn MigrationDevice| {
        digest_offset(desc).map(|off| read_digest(dev, off))
    })
}
