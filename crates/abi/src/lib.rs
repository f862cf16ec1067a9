//! # vfio-migrate-abi
//!
//! Every wire layout that vfio-migrate speaks to devices, as plain data
//! with encode/decode and nothing else (no I/O, no threads, no devices):
//!
//! - [`vfio_user`]: the vfio-user message header, commands and payloads
//!   (QEMU `docs/interop/vfio-user.rst`, plus the older `DIRTY_PAGES`
//!   command number).
//! - [`kernel`]: the Linux VFIO uAPI v2 migration interface (5.18+): feature
//!   structs, device states, ioctl numbers, pre-copy info, DMA logging, and
//!   the group/container/IOMMU structs the kernel backend opens devices
//!   with.
//! - [`v1`]: the Linux 5.8 "v1" migration region (`vfio_device_migration_info`)
//!   and the payloads of the old vfio-user `DIRTY_PAGES` command.
//! - [`seed`]: the 2018 proposal's migration region, exactly as in the seed
//!   patch (packed, 76 bytes).
//! - [`crc`]: CRC32C combining, for checksums of data moved unread.
//! - [`wire`]: the encoding itself: [`wire_struct!`] (which the engine
//!   also uses for its stream records), [`Reader`] and [`WireError`].
//!
//! All integers are little-endian and all structs packed. Decoders never
//! panic on short or hostile input; they return [`wire::WireError`].

#![forbid(unsafe_code)]

pub mod crc;
pub mod wire;

pub mod kernel;
pub mod seed;
pub mod v1;
pub mod vfio_user;

pub use wire::{Reader, WireError};
