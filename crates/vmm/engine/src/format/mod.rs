//! The migration stream format (documented in `docs/stream-format.md`):
//! a 16-byte stream header, then typed records, each with a 16-byte record
//! header carrying its payload length and a CRC32C over header and payload.
//!
//! - [`records`]: constants, record kinds and their payloads — where a new
//!   record kind is declared;
//! - [`codec`]: framing, caps and checksums ([`RecordWriter`],
//!   [`RecordReader`]);
//! - [`grammar`]: what may follow what ([`StreamParser`], [`Event`]), used
//!   by both the destination and the snapshot check;
//! - [`control`]: the live back channel ([`Reply`], [`ReplyReader`]);
//! - [`error`]: [`StreamError`] and [`RecordProblem`].
//!
//! Versioning follows Firecracker's snapshot format: the major version
//! breaks compatibility (a reader refuses another major), the minor adds
//! optional records an older reader skips.

pub mod codec;
pub mod control;
pub mod error;
pub mod grammar;
pub mod records;

pub use codec::{payload_crc, record_crc, Next, Record, RecordReader, RecordWriter};
pub use control::{write_reply, ReadyInfo, Reply, ReplyReader};
pub use error::{KindName, RecordProblem, StreamError};
pub use grammar::{check_ram_run, Event, StreamParser};
pub use records::*;

#[cfg(test)]
mod tests;
