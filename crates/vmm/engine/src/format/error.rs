//! What can be wrong with a stream: [`StreamError`] for the stream as a
//! whole, [`RecordProblem`] for one record.

use super::records::{Kind, FORMAT_MAJOR};
use std::io;
use thiserror::Error;

/// What was wrong with a stream.
#[derive(Debug, Error)]
pub enum StreamError {
    /// Reading or writing the channel failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being read or written.
        what: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The stream ended before its end marker.
    #[error("the stream ends early, after {records} records ({offset} bytes){}", in_record(.inside))]
    Truncated {
        /// Records read completely.
        records: u64,
        /// Bytes read.
        offset: u64,
        /// What was being read when the stream ended, if inside something.
        inside: Option<String>,
    },
    /// Not a vfio-migrate stream.
    #[error("not a migration stream: it does not begin with the vfio-migrate magic \"VFIOMIGR\" (found {})", hex8(found))]
    BadMagic {
        /// The first 8 bytes found.
        found: [u8; 8],
    },
    /// A major format version this build does not read.
    #[error("stream format version {major}.{minor} is not supported (this build reads version {FORMAT_MAJOR}.x)")]
    Version {
        /// Major version found.
        major: u16,
        /// Minor version found.
        minor: u16,
    },
    /// Header flags this build does not understand.
    #[error(
        "stream header flags {flags:#x} are not supported (version {FORMAT_MAJOR} defines none)"
    )]
    Flags {
        /// The flags found.
        flags: u32,
    },
    /// A record failed its check.
    #[error("record {index} at byte {offset}: {problem}")]
    Record {
        /// Index of the record (0 = first after the header).
        index: u64,
        /// Byte offset of its header.
        offset: u64,
        /// What was wrong.
        problem: RecordProblem,
    },
}

/// Eight bytes as text when they are printable, else in hex.
fn hex8(b: &[u8; 8]) -> String {
    if b.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
        format!("{:?}", String::from_utf8_lossy(b))
    } else {
        b.iter()
            .map(|c| format!("{c:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn in_record(inside: &Option<String>) -> String {
    match inside {
        Some(s) => format!(", inside {s}"),
        None => String::new(),
    }
}

/// Why one record was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RecordProblem {
    /// Unknown record type not marked optional.
    #[error(
        "unknown record type {0:#06x} (written by a newer version that requires it, or corrupted)"
    )]
    UnknownKind(u16),
    /// Length outside the bounds of its type.
    #[error("{kind} record of {length} bytes; this type must be {min}..={max} bytes")]
    Length {
        /// The record type (`None`: an unknown optional record).
        kind: KindName,
        /// The length found.
        length: u32,
        /// Smallest allowed.
        min: usize,
        /// Largest allowed.
        max: usize,
    },
    /// Reserved flags set.
    #[error("{kind} record has reserved flags {flags:#x} set")]
    Flags {
        /// The record type.
        kind: KindName,
        /// The flags found.
        flags: u16,
    },
    /// Device field wrong for the type.
    #[error("{kind} record names device {device:#x}, which is not valid here")]
    Device {
        /// The record type.
        kind: Kind,
        /// The device field found.
        device: u32,
    },
    /// CRC mismatch.
    #[error("{kind} record checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the data is corrupted")]
    Checksum {
        /// The record type.
        kind: KindName,
        /// CRC in the header.
        stored: u32,
        /// CRC of what was read.
        computed: u32,
    },
    /// A record that may not appear where it did.
    #[error("a {kind} record cannot appear {place}")]
    OutOfPlace {
        /// The record type.
        kind: Kind,
        /// Where it appeared (`in the setup section`, …).
        place: &'static str,
    },
    /// The record names a device the stream did not describe.
    #[error("device {device} was not described in the setup section (the stream has {described})")]
    UnknownDevice {
        /// The device index.
        device: u32,
        /// Devices described.
        described: usize,
    },
    /// The record is well-formed but inconsistent with the stream.
    #[error("{0}")]
    Invalid(String),
}

/// A record type as named in messages: a known [`Kind`] or a raw number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindName {
    /// A kind this build knows.
    Known(Kind),
    /// An optional kind this build does not know.
    Unknown(u16),
}

impl std::fmt::Display for KindName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KindName::Known(k) => k.fmt(f),
            KindName::Unknown(v) => write!(f, "optional type {v:#06x}"),
        }
    }
}
