//! # vfio-migrate-device
//!
//! The device SDK: everything a device author needs to write a migratable
//! VFIO device. Sample devices built on it are in `vfio-migrate-samples`.
//!
//! - [`fsm`]: the v2 state machine (supported states, next-hop table, path
//!   walking that never loops).
//! - [`Device`]: the trait a device implements — regions, single-arc state
//!   changes, a save stream with pre-copy info, a load stream validated when
//!   RESUMING ends.
//! - [`DeviceCore`]: walks paths, enforces which state allows which data
//!   access, owns the [`DmaSpace`].
//! - [`DmaSpace`]: guest memory mapped for DMA, with DMA dirty logging of
//!   every write.
//! - [`LocalDevice`]: an in-process [`vfio_migrate_backend::MigrationDevice`]
//!   over a `DeviceCore`, for tests and embedding.
//! - [`dirty`]: an atomic dirty-page bitmap for a device's own memory.
//! - [`irq`]: interrupts — the client's requests and [`Interrupts`], the
//!   eventfds, masks, INTx levels and MSI edges a device raises.
//! - [`pci`]: a type-0 PCI config space with write masks and BAR sizing.
//! - [`pieces`]: a save-stream chunk described as bytes and ranges of the
//!   device's memfd, sent by splice without a copy ([`SavePieces`]).
//! - [`region`]: the older migration interfaces as device regions over the
//!   same `DeviceCore`: the Linux 5.8 v1 region and the 2018 seed region.
//! - [`DeviceError`]: an errno for the wire plus a message for people.
//!
//! The SDK knows nothing of how bytes reach the device: the vfio-user
//! server and the in-process handle both drive a `DeviceCore`.

#![forbid(unsafe_code)]

pub mod core;
pub mod device;
pub mod dirty;
pub mod dma;
pub mod error;
pub mod fsm;
pub mod irq;
pub mod local;
pub mod pci;
pub mod pieces;
pub mod region;

pub use crate::core::DeviceCore;
pub use device::{Device, DeviceIdentity, IrqDesc, Region, RegionMmap};
pub use dma::DmaSpace;
pub use error::{DeviceError, DeviceResult};
pub use irq::{Interrupts, IrqRequest};
pub use local::LocalDevice;
pub use pieces::{Piece, SavePieces};
