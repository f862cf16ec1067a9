//! # vfio-migrate-vfio-user
//!
//! What both ends of vfio-user (QEMU `docs/interop/vfio-user.rst`) share in
//! this project, beyond the wire layouts of `vfio-migrate-abi`:
//!
//! - [`sock`]: the message transport over an `AF_UNIX` stream socket: one
//!   `sendmsg` per message, partial reads and writes looped, file
//!   descriptors passed with `SCM_RIGHTS`, waits that a cancel fd or a
//!   stall deadline can end.
//! - [`ext`]: what this project adds to the spec, all optional and
//!   discoverable through VERSION capabilities and PROBE.
//!
//! The server (`vfio-migrate-server`, device side) and the client
//! (`vfio-migrate-client`, VMM side) are built on it.

#![forbid(unsafe_code)]

pub mod ext;
pub mod sock;
