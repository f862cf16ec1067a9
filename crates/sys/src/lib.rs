//! # vfio-migrate-sys
//!
//! The one home of `unsafe` in vfio-migrate. Every raw syscall, every
//! memory mapping and every pointer the project needs lives here, behind a
//! small safe function or type; every other crate of the workspace starts
//! with `#![forbid(unsafe_code)]`. The single exception is the kernel VFIO
//! ioctls, which stay next to the uAPI they speak, in the kernel backend's
//! own small `sys` module (`crates/vmm/kernel/src/sys.rs`).
//!
//! What it owns:
//!
//! - [`mmap`]: [`MmapRegion`], an owned mapping of an fd or of anonymous
//!   memory (shared or private, read-only or read-write), unmapped on drop,
//!   with bounds-checked copies in and out, fills and mapping-to-mapping
//!   copies (one `memcpy` each, no bounce buffer), an exclusive slice view
//!   through `&mut`, and its address for the kernel. The model is rust-vmm
//!   vm-memory's `src/mmap/unix.rs`: every `unsafe` about the mapping sits
//!   behind one type.
//! - [`memfd`]: anonymous files for shared memory: create, size, find holes
//!   and data (`SEEK_DATA`/`SEEK_HOLE`), punch holes.
//! - [`fd`]: pipes (and their size), eventfds, `O_NONBLOCK`, `fstat`,
//!   positioned reads and writes, `splice`, `poll`.
//! - [`sock`]: `AF_UNIX` stream sockets: `sendmsg`/`recvmsg` with
//!   `SCM_RIGHTS`, the send buffer size, and socket + bind + listen as
//!   separate steps (so a caller can chmod the path before listening).
//! - [`signal`]: signal handlers that only do async-signal-safe work (set a
//!   static flag, or write one byte to a pipe), sending a signal to a child
//!   process, and the clock tick rate of `/proc` CPU times.
//!
//! Rules: every `unsafe` block carries a `// SAFETY:` comment saying why it
//! is sound (enforced by `clippy::undocumented_unsafe_blocks`); no function
//! of this crate is `unsafe` to call; file descriptors are taken as
//! [`BorrowedFd`](std::os::fd::BorrowedFd) and returned as
//! [`OwnedFd`](std::os::fd::OwnedFd) wherever the caller has one, so
//! ownership stays with the type system. Errors are [`std::io::Error`]s
//! carrying the errno of the failed call, for the caller to word.

pub mod fd;
pub mod memfd;
pub mod mmap;
pub mod signal;
pub mod sock;

pub use mmap::MmapRegion;

/// `Err(last_os_error)` when `r` is negative, else `Ok(r)`.
fn cvt<T: Default + PartialOrd>(r: T) -> std::io::Result<T> {
    if r < T::default() {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}
