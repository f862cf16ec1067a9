//! [`DeviceDescriptor`]: what a destination device must match before the
//! source stops, built the same way by every backend.

use crate::MIGRATION_STOP_COPY;
use serde::{Deserialize, Serialize};

/// What the destination must match before the source is stopped.
///
/// Built by each backend from what the device tells about itself (PCI IDs
/// from config space, region sizes, migration flags), so it does not depend
/// on the protocol that carried it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceDescriptor {
    /// Human-readable model, e.g. `vgpu` or `pci 1b36:0001`.
    pub model: String,
    /// Device model version string (device-defined; empty when unknown).
    pub version: String,
    /// PCI vendor ID (config space offset 0x00).
    pub vendor_id: u16,
    /// PCI device ID (config space offset 0x02).
    pub device_id: u16,
    /// PCI subsystem vendor ID (config space offset 0x2c).
    pub subsystem_vendor_id: u16,
    /// PCI subsystem ID (config space offset 0x2e).
    pub subsystem_id: u16,
    /// PCI revision ID (config space offset 0x08).
    pub revision: u8,
    /// `VFIO_MIGRATION_*` flags.
    pub migration_flags: u64,
    /// Size of every region, by index (0 for absent ones).
    pub region_sizes: Vec<u64>,
}

impl DeviceDescriptor {
    /// The descriptor every backend builds from what any VFIO transport
    /// shows: PCI IDs from config space, revision, migration flags and the
    /// region sizes. `model` and `version` are derived from the IDs so that
    /// the same device gives the same descriptor over every protocol.
    pub fn from_pci(
        vendor_id: u16,
        device_id: u16,
        subsystem_vendor_id: u16,
        subsystem_id: u16,
        revision: u8,
        migration_flags: u64,
        region_sizes: Vec<u64>,
    ) -> Self {
        Self {
            model: format!("pci {vendor_id:04x}:{device_id:04x}"),
            version: format!(
                "subsys {subsystem_vendor_id:04x}:{subsystem_id:04x} rev {revision:02x}"
            ),
            vendor_id,
            device_id,
            subsystem_vendor_id,
            subsystem_id,
            revision,
            migration_flags,
            region_sizes,
        }
    }

    /// A name for the device kind when the PCI ids are ones this project
    /// knows (its sample devices, libvfio-user's sample server), for
    /// messages; `None` otherwise.
    pub fn known_kind(&self) -> Option<&'static str> {
        KNOWN_KINDS
            .iter()
            .find(|(v, d, _)| (*v, *d) == (self.vendor_id, self.device_id))
            .map(|(_, _, name)| *name)
    }

    /// Checks that state saved from `self` can be loaded into `dest`.
    /// Returns every mismatch, in words a user understands.
    pub fn check_compatible(&self, dest: &DeviceDescriptor) -> std::result::Result<(), String> {
        let mut why = Vec::new();
        if (self.vendor_id, self.device_id) != (dest.vendor_id, dest.device_id) {
            why.push(format!(
                "PCI id {:04x}:{:04x}{} at the source, {:04x}:{:04x}{} at the destination",
                self.vendor_id,
                self.device_id,
                kind_suffix(self),
                dest.vendor_id,
                dest.device_id,
                kind_suffix(dest)
            ));
        }
        if (self.subsystem_vendor_id, self.subsystem_id)
            != (dest.subsystem_vendor_id, dest.subsystem_id)
        {
            why.push(format!(
                "subsystem id {:04x}:{:04x} at the source, {:04x}:{:04x} at the destination",
                self.subsystem_vendor_id,
                self.subsystem_id,
                dest.subsystem_vendor_id,
                dest.subsystem_id
            ));
        }
        if self.revision != dest.revision {
            why.push(format!(
                "revision {} at the source, {} at the destination",
                self.revision, dest.revision
            ));
        }
        if self.model != dest.model || self.version != dest.version {
            why.push(format!(
                "model '{} {}' at the source, '{} {}' at the destination",
                self.model, self.version, dest.model, dest.version
            ));
        }
        let n = self.region_sizes.len().max(dest.region_sizes.len());
        for i in 0..n {
            let a = self.region_sizes.get(i).copied().unwrap_or(0);
            let b = dest.region_sizes.get(i).copied().unwrap_or(0);
            if a != b {
                why.push(format!(
                    "region {i} is {a} bytes at the source, {b} bytes at the destination"
                ));
            }
        }
        if dest.migration_flags & MIGRATION_STOP_COPY == 0 {
            why.push("the destination device does not support migration (no STOP_COPY)".into());
        }
        if why.is_empty() {
            Ok(())
        } else if self.region_sizes != dest.region_sizes
            && (self.vendor_id, self.device_id) == (dest.vendor_id, dest.device_id)
        {
            Err(format!(
                "{} (the devices are configured differently, e.g. another port count or memory size: create the destination with the source's configuration)",
                why.join("; ")
            ))
        } else {
            Err(why.join("; "))
        }
    }
}

/// PCI ids with a name for messages: `(vendor, device, kind)`.
const KNOWN_KINDS: &[(u16, u16, &str)] = &[
    (0x1b36, 0x00f0, "vfio-migrate vgpu"),
    (0x1b36, 0x00f1, "vfio-migrate serial"),
    (0xdead, 0xbeef, "libvfio-user sample device"),
];

/// ` (kind)` for a known device, empty otherwise.
fn kind_suffix(d: &DeviceDescriptor) -> String {
    d.known_kind()
        .map(|k| format!(" ({k})"))
        .unwrap_or_default()
}
