//! # vfio-migrate-engine
//!
//! Owns migration **policy**: moving running devices, and the guest memory
//! they DMA into, from a source to a destination with a short stop, and
//! proving nothing was lost. It sees devices only through
//! [`vfio_migrate_backend::MigrationDevice`] and guest memory only through
//! [`GuestRam`], so every backend and protocol generation migrates the same
//! way.
//!
//! - [`source::migrate_out`]: setup (descriptors, compatibility answer from
//!   the destination *before* anything stops, DMA logging on), pre-copy
//!   rounds of guest RAM dirty pages interleaved with device pre-copy data,
//!   bandwidth measured as it goes, switchover when the expected downtime
//!   is under the limit, stop (vCPUs paused, devices through the P2P states
//!   to STOP_COPY), final data, commit handshake, cleanup — and rollback to
//!   RUNNING on any failure before the destination runs.
//! - [`dest::migrate_in`]: the destination: checks descriptors, loads
//!   RESUMING, validates (→ STOP), verifies digests, runs only when told.
//! - [`format`](mod@format): the versioned, CRC32C-checked record stream
//!   (`docs/stream-format.md`), the same over TCP, UNIX sockets and files:
//!   records, codec, the one grammar parser, the reply channel;
//!   [`snapshot`] reads and checks a snapshot file whole with that parser.
//! - [`metrics`]: what a migration measures, apart from the logic.
//! - [`link`]: the transports, with the back channel of live migrations;
//!   [`channels`]: parallel data channels beside the main link.
//! - [`guest`]: the [`GuestRam`] trait and memfd RAM; [`verify`]: the
//!   device-digest hook and the RAM hash.
//! - [`progress`] and [`report`]: the phases and figures a caller sees
//!   while and after a migration runs; [`error`]: every failure, with the
//!   phase and the state the source was left in; [`cancel`]: stopping a
//!   migration from outside.
//!
//! Engine memory is O(chunk): device data and RAM move in records of at
//! most a few MiB, whatever the state size.

#![forbid(unsafe_code)]

pub mod cancel;
pub mod channels;
pub mod dest;
pub mod error;
pub mod format;
pub mod guest;
pub mod heartbeat;
pub mod link;
pub mod metrics;
pub mod pacing;
pub mod progress;
pub mod report;
pub mod snapshot;
pub mod source;
pub mod tls;
pub mod verify;

pub use cancel::{Cancel, Cancelled};
pub use channels::{Acceptor, ChannelsOut, Connector};
pub use dest::{migrate_in, DestDevice, DestFailure, DestOptions, DestReport, DeviceLeft};
pub use error::{EngineError, SourceFailure, SourceState};
pub use guest::{GuestRam, MemfdRam};
pub use link::{accept_tcp, connect_tcp, Deadlines, DestLink, Link};
pub use progress::{Phase, Progress, ProgressFn};
pub use report::{DeviceReport, MigrationReport};
pub use source::{migrate_out, Convergence, Decision, NoConverge, SourceOptions};
pub use verify::Verifier;
