//! # vfio-migrate-kernel
//!
//! The kernel VFIO backend: a [`vfio_migrate_backend::MigrationDevice`] over a
//! device that a Linux VFIO driver exposes (an mdev such as the kernel's
//! `mtty` sample, or a PCI function bound to a migration-capable
//! `*-vfio-pci` driver).
//!
//! It owns:
//! - locating the device from a `kernel:` endpoint (mdev UUID, PCI address or
//!   sysfs path) and its IOMMU group ([`locate`]);
//! - opening it through the container + group API ([`KernelDevice::open`]);
//! - the v2 migration uAPI: `VFIO_DEVICE_FEATURE` MIGRATION,
//!   MIG_DEVICE_STATE, MIG_DATA_SIZE and DMA_LOGGING_*, the data fd
//!   (read/write in chunks, `VFIO_MIG_GET_PRECOPY_INFO`), region access
//!   through the device fd, and IOMMU DMA mappings.
//!
//! Errors name the device, the step and the errno, and say what the user can
//! do about it.
//!
//! ```text
//!  engine                 KernelDevice                      kernel driver
//!    │ set_state(PRE_COPY) ──▶ FEATURE SET MIG_DEVICE_STATE ──▶ RUNNING→PRE_COPY, new data fd
//!    │ precopy_info()      ──▶ VFIO_MIG_GET_PRECOPY_INFO(fd)
//!    │ read_data(buf)      ──▶ read(data fd)   (ENOMSG/0: nothing now)
//!    │ set_state(STOP_COPY)──▶ … data fd −1: keep reading the PRE_COPY fd
//!    │ read_data(buf)      ──▶ read(data fd)   (0: whole state read)
//! ```

// Every `unsafe` of this crate is a VFIO ioctl, in `sys` (which allows
// it); the rest of the OS comes safe from `vfio-migrate-sys`.
#![deny(unsafe_code)]

pub mod device;
pub mod locate;
mod sys;

pub use device::KernelDevice;
pub use locate::{Located, Locator};
