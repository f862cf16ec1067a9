//! Parallel data channels (`migrate --channels N`; QEMU's multifd is the
//! model): guest RAM pages and device data spread over N connections
//! besides the main one, so that one connection's limit (a rate-held flow,
//! one core's checksum and copy) is not the migration's.
//!
//! ```text
//! main stream   … channels(N, token) setup-end ──► channels-ready(N)
//!               (N connections: header, channel-hello(token, i, N))
//!               ◄── accept
//!               channel-epoch(0) … round(0) … channel-epoch(E, last)
//!               device-end … end
//! channel i     header hello { device-chunk | ram-pages | ram-zero }*
//!               channel-sync(0) … channel-sync(E, last) end
//! ```
//!
//! - **Negotiated.** The source asks in its setup section (an optional
//!   record: a destination that does not know it answers `accept` alone,
//!   and everything goes on the main stream as before); the destination
//!   answers `channels-ready` and accepts the N connections, each set up
//!   like the main one (the caller's [`Acceptor`]: the same deadlines,
//!   TLS and stray-connection rules) and identified by the migration's
//!   random token; anything else is dropped and logged.
//! - **Order.** Device data goes as chunks carrying their offset in the
//!   device's stream; the destination writes them to the device in order
//!   ([`reorder`]). RAM runs carry their page numbers and are written in
//!   place. An epoch (a pre-copy round, or the stop-copy) is announced on
//!   the main stream and ends with a sync on every channel; the
//!   destination reads every channel to that sync before the next main
//!   record, so a page sent again in a later round never lands before its
//!   older copy.
//! - **Bounded.** The source has a pool of [`CHUNK`]-byte buffers and a
//!   two-record queue per channel; the destination two queued records per
//!   channel and at most [`REORDER_CAP`] of chunks waiting behind a gap.
//! - **Failures.** A channel that breaks, stalls (the link deadlines) or
//!   carries anything out of place fails the migration like the main
//!   link would: the source rolls back, the destination resets.
//! - **Snapshots.** `--channels N` into a file: N sender threads write
//!   whole records into the one file; chunks may be out of order there,
//!   and a restore (one reader) puts them back.

pub mod pool;
pub mod recv;
pub mod reorder;
pub mod send;

use crate::link::{DestLink, Link};
use std::time::Duration;

/// Device data bytes per chunk on a channel.
pub const CHUNK: usize = 1 << 20;
/// Most bytes of device data a destination keeps waiting behind a gap
/// before it reads only the channels that can fill it.
pub const REORDER_CAP: u64 = 16 << 20;

/// Opens data channel `i` (a live link to the same destination, set up and
/// authenticated like the main one).
pub type Connector = Box<dyn FnMut(u32) -> std::io::Result<Link> + Send>;

/// Accepts the next connection for a data channel within the given time
/// (`ErrorKind::TimedOut` when none came), set up and authenticated like
/// the main one.
pub type Acceptor = Box<dyn FnMut(Duration) -> std::io::Result<DestLink> + Send>;

/// `--channels N` for the source.
pub struct ChannelsOut {
    /// Data channels wanted (2 or more; 1 is the main stream alone).
    pub count: u32,
    /// How to open each one (live migrations; a snapshot needs none).
    pub connect: Option<Connector>,
}

/// A random token naming one migration's channels.
pub(crate) fn token() -> (u64, u64) {
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let lo = u64::from_le_bytes(b[..8].try_into().expect("8")) ^ t;
    let hi = u64::from_le_bytes(b[8..].try_into().expect("8")) ^ u64::from(std::process::id());
    (lo, hi)
}
