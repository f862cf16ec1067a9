//! From a `kernel:` endpoint to a sysfs device, its IOMMU group and the name
//! `VFIO_GROUP_GET_DEVICE_FD` wants.
//!
//! Accepted forms: an mdev UUID (`/sys/bus/mdev/devices/<uuid>`), a PCI
//! address (`0000:65:00.1` or `65:00.1`, `/sys/bus/pci/devices/<addr>`), or a
//! sysfs device path.

use std::path::{Path, PathBuf};
use thiserror::Error;

/// What form a `kernel:` spec has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecKind {
    /// An mdev UUID.
    Mdev,
    /// A PCI address.
    Pci,
    /// A sysfs device path.
    Path,
}

/// Why a device could not be located. The messages do not repeat the
/// endpoint: whoever reports them names it once.
#[derive(Debug, Error)]
pub enum LocateError {
    /// The sysfs directory the spec points to does not exist.
    #[error("{}", not_found(*.kind, .spec, .path))]
    NotFound {
        /// The endpoint as given (after `kernel:`).
        spec: String,
        /// Its form.
        kind: SpecKind,
        /// The sysfs device directory looked for.
        path: PathBuf,
    },
    /// The device has no usable `iommu_group` link: not bound to a VFIO
    /// driver.
    #[error("{}", no_group(*.kind, .spec, .path))]
    NoGroup {
        /// The endpoint as given.
        spec: String,
        /// Its form.
        kind: SpecKind,
        /// The sysfs device directory.
        path: PathBuf,
    },
    /// Reading sysfs failed for another reason (e.g. permissions).
    #[error("cannot read {path}: {source}")]
    Io {
        /// The endpoint as given.
        spec: String,
        /// The path that could not be read.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The spec is none of the accepted forms.
    #[error("'{spec}' is not an mdev UUID (8-4-4-4-12 hex digits), a PCI address ([dddd:]bb:dd.f) or a sysfs device path (/sys/...)")]
    BadSpec {
        /// The endpoint as given.
        spec: String,
    },
}

fn not_found(kind: SpecKind, spec: &str, path: &Path) -> String {
    match kind {
        SpecKind::Pci => format!(
            "no PCI device {} on this host ({} does not exist): check the address with `lspci -D`",
            path.file_name().map_or(spec.into(), |n| n.to_string_lossy()),
            path.display()
        ),
        SpecKind::Mdev => format!(
            "no mdev {spec} on this host ({} does not exist): create it with `echo {spec} > /sys/class/mdev_bus/PARENT/mdev_supported_types/TYPE/create` (the types: `ls /sys/class/mdev_bus/*/mdev_supported_types`)",
            path.display()
        ),
        SpecKind::Path => format!(
            "{} does not exist: give a sysfs device directory, a PCI address or an mdev UUID",
            path.display()
        ),
    }
}

fn no_group(kind: SpecKind, spec: &str, path: &Path) -> String {
    match kind {
        SpecKind::Pci => format!(
            "PCI device {spec} is not bound to a VFIO driver ({} has no iommu_group): bind it to vfio-pci (or its *-vfio-pci variant driver), e.g. `driverctl set-override {spec} vfio-pci`, with the IOMMU enabled",
            path.display()
        ),
        SpecKind::Mdev => format!(
            "mdev {spec} has no IOMMU group ({} has no iommu_group): load the vfio_mdev support of its parent's vendor driver (modprobe vfio_iommu_type1)",
            path.display()
        ),
        SpecKind::Path => format!(
            "{} has no iommu_group: bind the device to a VFIO driver (vfio-pci or a *-vfio-pci variant driver)",
            path.display()
        ),
    }
}

/// A located device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// The sysfs device directory.
    pub sysfs: PathBuf,
    /// Device name for `VFIO_GROUP_GET_DEVICE_FD` (UUID or PCI address).
    pub name: String,
    /// IOMMU group number.
    pub group: u32,
    /// `/dev/vfio/<group>`.
    pub group_path: PathBuf,
}

/// Where sysfs and /dev are (overridable for tests).
#[derive(Debug, Clone)]
pub struct Locator {
    /// Where sysfs is mounted (`/sys`).
    pub sysfs_root: PathBuf,
    /// Where the device nodes are (`/dev`); groups are `vfio/<n>` below it.
    pub dev_root: PathBuf,
}

impl Default for Locator {
    fn default() -> Self {
        Self {
            sysfs_root: PathBuf::from("/sys"),
            dev_root: PathBuf::from("/dev"),
        }
    }
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    parts.len() == 5
        && parts
            .iter()
            .zip(lens)
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

fn pci_addr(s: &str) -> Option<String> {
    // [dddd:]bb:dd.f
    let (dom, rest) = match s.matches(':').count() {
        2 => s.split_once(':').map(|(d, r)| (d.to_string(), r))?,
        1 => ("0000".to_string(), s),
        _ => return None,
    };
    let (bus, df) = rest.split_once(':')?;
    let (dev, func) = df.split_once('.')?;
    let hex = |x: &str, n: usize| x.len() == n && x.chars().all(|c| c.is_ascii_hexdigit());
    if hex(&dom, 4)
        && hex(bus, 2)
        && hex(dev, 2)
        && func.len() == 1
        && matches!(func.as_bytes()[0], b'0'..=b'7')
    {
        Some(format!("{dom}:{bus}:{dev}.{func}").to_lowercase())
    } else {
        None
    }
}

impl Locator {
    /// Resolves `spec` (what follows `kernel:`).
    pub fn locate(&self, spec: &str) -> Result<Located, LocateError> {
        let (sysfs, kind) = if is_uuid(spec) {
            let p = self
                .sysfs_root
                .join("bus/mdev/devices")
                .join(spec.to_lowercase());
            (p, SpecKind::Mdev)
        } else if let Some(addr) = pci_addr(spec) {
            (
                self.sysfs_root.join("bus/pci/devices").join(addr),
                SpecKind::Pci,
            )
        } else if spec.starts_with('/') {
            (PathBuf::from(spec), SpecKind::Path)
        } else {
            return Err(LocateError::BadSpec { spec: spec.into() });
        };
        if !sysfs.exists() {
            return Err(LocateError::NotFound {
                spec: spec.into(),
                kind,
                path: sysfs,
            });
        }
        let name = sysfs
            .canonicalize()
            .ok()
            .as_deref()
            .and_then(Path::file_name)
            .or_else(|| sysfs.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| LocateError::BadSpec { spec: spec.into() })?;
        let link = sysfs.join("iommu_group");
        let target = match std::fs::read_link(&link) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LocateError::NoGroup {
                    spec: spec.into(),
                    kind,
                    path: sysfs,
                })
            }
            Err(e) => {
                return Err(LocateError::Io {
                    spec: spec.into(),
                    path: link,
                    source: e,
                })
            }
        };
        let group = target
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
            .ok_or_else(|| LocateError::NoGroup {
                spec: spec.into(),
                kind,
                path: sysfs.clone(),
            })?;
        Ok(Located {
            group_path: self.dev_root.join("vfio").join(group.to_string()),
            sysfs,
            name,
            group,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn fake_root() -> PathBuf {
        let d = std::env::temp_dir().join(format!("vfio-migrate-locate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("kernel/iommu_groups/7")).unwrap();
        let mdev = d.join("bus/mdev/devices/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001");
        std::fs::create_dir_all(&mdev).unwrap();
        symlink(d.join("kernel/iommu_groups/7"), mdev.join("iommu_group")).unwrap();
        let pci = d.join("bus/pci/devices/0000:65:00.1");
        std::fs::create_dir_all(&pci).unwrap();
        d
    }

    #[test]
    fn finds_mdev_and_group() {
        let root = fake_root();
        let l = Locator {
            sysfs_root: root.clone(),
            dev_root: PathBuf::from("/dev"),
        };
        let d = l.locate("83B8F4F2-509F-382F-3C1E-E6BFE0FA1001").unwrap();
        assert_eq!(d.group, 7);
        assert_eq!(d.name, "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001");
        assert_eq!(d.group_path, PathBuf::from("/dev/vfio/7"));
        // PCI device without a group: bind it to vfio-pci.
        let e = l.locate("65:00.1").unwrap_err().to_string();
        assert!(e.contains("is not bound to a VFIO driver"), "{e}");
        assert!(e.contains("vfio-pci"), "{e}");
        // A missing mdev: create it; a missing PCI device: lspci.
        let e = l
            .locate("11111111-2222-3333-4444-555555555555")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("no mdev 11111111-"), "{e}");
        assert!(e.contains("mdev_supported_types"), "{e}");
        let e = l.locate("0000:66:00.0").unwrap_err().to_string();
        assert!(e.starts_with("no PCI device 0000:66:00.0"), "{e}");
        assert!(e.contains("lspci"), "{e}");
        assert!(!e.contains("refused"), "{e}");
        let e = l.locate("nonsense").unwrap_err().to_string();
        assert!(e.contains("not an mdev UUID"), "{e}");
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn pci_forms() {
        assert_eq!(pci_addr("65:00.1").as_deref(), Some("0000:65:00.1"));
        assert_eq!(pci_addr("0001:AB:1f.7").as_deref(), Some("0001:ab:1f.7"));
        assert_eq!(pci_addr("65:00.8"), None);
        assert_eq!(pci_addr("6:00.1"), None);
    }
}
