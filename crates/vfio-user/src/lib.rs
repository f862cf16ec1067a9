//! # vfio-migrate-vfio-user
//!
//! Owns vfio-user (QEMU `docs/interop/vfio-user.rst`) over `AF_UNIX`
//! sockets, written from the spec:
//!
//! - [`server`]: serves any [`vfio_migrate_device::Device`] to one client
//!   at a time — VERSION, device/region/IRQ info, region access, DMA
//!   map/unmap with fds, IRQ eventfds, reset, DEVICE_FEATURE (migration,
//!   device state incl. P2P, DMA logging, and the MIG_DATA_SIZE /
//!   pre-copy-info extensions) and MIG_DATA_READ/WRITE. Malformed input is
//!   answered with a specific errno (table in [`server::dispatch`]) and the
//!   server keeps serving; the dispatcher runs without sockets for tests
//!   and fuzzing; extra regions and commands plug in through
//!   [`server::RegionHandler`] and [`server::CommandHandler`].
//! - [`client`]: the same messages from the VMM side, usable against other
//!   implementations (reference-peer quirks handled), and the
//!   engine-facing [`vfio_migrate_handle::MigrationDevice`].
//! - the older migration protocols: [`server::migregion`] serves the v1
//!   and seed migration regions and `DIRTY_PAGES`; [`client::V1Device`]
//!   and [`client::SeedDevice`] drive them; [`client::open`] picks one.
//! - [`ext`]: what we add to the spec, all optional and discoverable.
//!
//! It does not decide migration policy: that is the engine's.

pub mod client;
pub mod ext;
pub mod server;
pub mod sock;

pub use client::{
    forward_mig_data, open, Client, ClientConfig, MigRegion, Protocol, RawReply, RegionDesc,
    SeedDevice, V1Device,
};
pub use server::{Listener, Server, ServerConfig, ServerError, Shutdown};
