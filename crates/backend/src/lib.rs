//! # vfio-migrate-backend
//!
//! Owns the **boundary between the migration engine and the device
//! backends** (the vfio-user client over v2, the v1 region or the seed
//! region; kernel VFIO; an in-process device). The engine only ever sees
//! these traits, so a migration flow is one walk through the device-state
//! interface whatever carries it:
//!
//! - [`MigrationDevice`]: the migration core every backend implements —
//!   state transitions, the data stream, size estimates, reset;
//! - capabilities a backend offers as it can, reached through the core's
//!   defaulted accessors: [`DmaDirtyLog`] (the engine uses it to migrate
//!   guest RAM a device writes), [`RegionAccess`] and [`DmaMapping`] (for
//!   VMMs, tests and the CLI), [`DataSplice`] (migration data moved
//!   without a copy through the engine); [`dma_log_of`], [`regions_of`] and
//!   [`dma_mapping_of`] turn a missing one into
//!   [`BackendError::Unsupported`].
//!
//! It also owns the protocol-independent types every backend shares:
//! [`DeviceDescriptor`] (the compatibility descriptor the destination checks
//! before the source stops), [`PrecopyInfo`], [`IovaRange`], [`DmaWindow`]
//! and [`BackendError`]; and it re-exports the v2 [`MigState`] and the
//! `MIGRATION_*` flags from `vfio-migrate-abi`, the state vocabulary every
//! backend speaks whatever its protocol.

#![forbid(unsafe_code)]

mod capability;
mod descriptor;
mod error;
mod migration;
mod types;

pub use capability::{
    dma_log_of, dma_mapping_of, regions_of, DataSplice, DeviceThrottle, DmaDirtyLog, DmaMapping,
    RegionAccess, Spliced, MAX_THROTTLE,
};
pub use descriptor::DeviceDescriptor;
pub use error::{errno_name, BackendError, Result};
pub use migration::MigrationDevice;
pub use types::{DeviceStatus, DmaWindow, IovaRange, PrecopyInfo};
pub use vfio_migrate_abi::kernel::{
    MigState, MIGRATION_P2P, MIGRATION_PRE_COPY, MIGRATION_STOP_COPY,
};

#[cfg(test)]
mod tests;
