//! The migration stream format (documented in `docs/stream-format.md`):
//! a 16-byte stream header, then typed records, each with a 16-byte record
//! header carrying its payload length and a CRC32C over header and payload.
//!
//! Reading is strict: every length is checked against the cap of its
//! record type *before* anything is allocated or read, every checksum is
//! verified before the payload is handed out, and every error names the
//! record (number, type, byte offset) that was wrong.

use std::io::{self, Read, Write};
use thiserror::Error;
use vfio_migrate_abi::wire_struct;

/// The first 8 bytes of every stream.
pub const MAGIC: [u8; 8] = *b"VFIOMIGR";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Stream header size.
pub const STREAM_HEADER_SIZE: usize = StreamHeader::SIZE;
/// Record header size.
pub const RECORD_HEADER_SIZE: usize = RecordHeader::SIZE;
/// `device` value of records that belong to no device.
pub const NO_DEVICE: u32 = u32::MAX;
/// Most devices one stream may carry.
pub const MAX_DEVICES: usize = 64;
/// Largest device-data payload (pre-copy or stop-copy) in one record.
pub const MAX_DEVICE_DATA: usize = 8 << 20;
/// Largest run of guest pages in one record, in bytes of page data.
pub const MAX_RAM_RUN_BYTES: usize = 8 << 20;
/// Largest guest page size accepted.
pub const MAX_PAGE_SIZE: u64 = 1 << 21;
/// Largest descriptor / control JSON payload.
pub const MAX_JSON: usize = 64 << 10;
/// Largest reason text in a refusal or failure.
pub const MAX_REASON: usize = 4096;

wire_struct! {
    /// Stream header: magic, format version, flags (0 in version 1).
    pub struct StreamHeader {
        pub magic: u64,
        pub version: u32,
        pub flags: u32,
    }
}

wire_struct! {
    /// Record header. `crc` is CRC32C over the first 12 bytes of this header
    /// followed by the payload.
    pub struct RecordHeader {
        pub kind: u16,
        pub flags: u16,
        pub device: u32,
        pub length: u32,
        pub crc: u32,
    }
}

wire_struct! {
    /// Payload of [`Kind::Ram`]: the guest RAM layout.
    pub struct RamInfo {
        pub size: u64,
        pub page_size: u64,
    }
}

wire_struct! {
    /// Payload of [`Kind::SetupEnd`].
    pub struct SetupEnd {
        pub devices: u32,
        pub flags: u32,
    }
}

wire_struct! {
    /// Head of a [`Kind::RamPages`] payload; `count` pages of data follow.
    pub struct RamRun {
        pub first_page: u64,
        pub count: u32,
        pub reserved: u32,
    }
}

wire_struct! {
    /// Payload of [`Kind::DeviceEnd`]: bytes of device data sent in total.
    pub struct DeviceEnd {
        pub bytes: u64,
    }
}

wire_struct! {
    /// Payload of [`Kind::Round`]: the round just completed.
    pub struct Round {
        pub iteration: u64,
    }
}

wire_struct! {
    /// Payload of [`Kind::Verify`]: the device digest at the source, read
    /// while the device was stopped.
    pub struct Digest {
        pub digest: u64,
    }
}

wire_struct! {
    /// Payload of [`Kind::End`]: how many records came before it and their
    /// total size (headers included), so a truncated stream is detected
    /// even when it ends on a record boundary.
    pub struct End {
        pub records: u64,
        pub bytes: u64,
    }
}

/// `StreamHeader::magic` as a little-endian integer.
pub fn magic_u64() -> u64 {
    u64::from_le_bytes(MAGIC)
}

/// Record types. Forward records go source → destination; replies go
/// back on live migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum Kind {
    /// A device's compatibility descriptor (JSON).
    Device = 0x01,
    /// Guest RAM layout ([`RamInfo`]).
    Ram = 0x02,
    /// End of the setup section ([`SetupEnd`]); a live source waits for
    /// [`Kind::Accept`] or [`Kind::Refuse`] here.
    SetupEnd = 0x03,
    /// Device pre-copy data.
    DevicePrecopy = 0x10,
    /// Device stop-copy data.
    DeviceStopCopy = 0x11,
    /// A device's save stream is complete ([`DeviceEnd`]).
    DeviceEnd = 0x12,
    /// End of a pre-copy round ([`Round`]): the destination checks that
    /// its devices are still there.
    Round = 0x13,
    /// A run of guest RAM pages ([`RamRun`] + data).
    RamPages = 0x20,
    /// A run of guest RAM pages that are all zero ([`RamRun`], no data).
    RamZero = 0x21,
    /// A device digest for verification ([`Digest`]).
    Verify = 0x30,
    /// The source gives up; payload is the reason.
    Abort = 0x7e,
    /// End of the stream ([`End`]).
    End = 0x7f,
    /// Source → destination after [`Kind::Ready`]: start running.
    Go = 0x80,
    /// Reply: the devices are compatible and RESUMING.
    Accept = 0x81,
    /// Reply: refused at setup; payload is the reason.
    Refuse = 0x82,
    /// Reply: loaded, validated and verified; payload is JSON
    /// ([`crate::dest::ReadyInfo`]).
    Ready = 0x83,
    /// Reply: the destination failed; payload is the reason.
    Failed = 0x84,
    /// Reply: the destination devices are RUNNING.
    Running = 0x85,
    /// Reply: everything up to this pre-copy round ([`Round`]) is loaded.
    RoundAck = 0x86,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 19] = [
        Kind::Device,
        Kind::Ram,
        Kind::SetupEnd,
        Kind::DevicePrecopy,
        Kind::DeviceStopCopy,
        Kind::DeviceEnd,
        Kind::Round,
        Kind::RamPages,
        Kind::RamZero,
        Kind::Verify,
        Kind::Abort,
        Kind::End,
        Kind::Go,
        Kind::Accept,
        Kind::Refuse,
        Kind::Ready,
        Kind::Failed,
        Kind::Running,
        Kind::RoundAck,
    ];

    /// The kind for a wire value.
    pub fn from_u16(v: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| *k as u16 == v)
    }

    /// Short name, for messages and `inspect`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Device => "device",
            Kind::Ram => "ram",
            Kind::SetupEnd => "setup-end",
            Kind::DevicePrecopy => "device-precopy",
            Kind::DeviceStopCopy => "device-stopcopy",
            Kind::DeviceEnd => "device-end",
            Kind::Round => "round",
            Kind::RamPages => "ram-pages",
            Kind::RamZero => "ram-zero",
            Kind::Verify => "verify",
            Kind::Abort => "abort",
            Kind::End => "end",
            Kind::Go => "go",
            Kind::Accept => "accept",
            Kind::Refuse => "refuse",
            Kind::Ready => "ready",
            Kind::Failed => "failed",
            Kind::Running => "running",
            Kind::RoundAck => "round-ack",
        }
    }

    /// The payload sizes allowed: `(min, max)`.
    pub fn length_bounds(self) -> (usize, usize) {
        match self {
            Kind::Device | Kind::Ready => (2, MAX_JSON),
            Kind::Ram => (RamInfo::SIZE, RamInfo::SIZE),
            Kind::SetupEnd => (SetupEnd::SIZE, SetupEnd::SIZE),
            Kind::DevicePrecopy | Kind::DeviceStopCopy => (1, MAX_DEVICE_DATA),
            Kind::DeviceEnd => (DeviceEnd::SIZE, DeviceEnd::SIZE),
            Kind::Round | Kind::RoundAck => (Round::SIZE, Round::SIZE),
            Kind::RamPages => (RamRun::SIZE + 1, RamRun::SIZE + MAX_RAM_RUN_BYTES),
            Kind::RamZero => (RamRun::SIZE, RamRun::SIZE),
            Kind::Verify => (Digest::SIZE, Digest::SIZE),
            Kind::End => (End::SIZE, End::SIZE),
            Kind::Abort | Kind::Refuse | Kind::Failed => (0, MAX_REASON),
            Kind::Go | Kind::Accept | Kind::Running => (0, 0),
        }
    }

    /// True when the record belongs to one device (its `device` field is an
    /// index); false when it must be [`NO_DEVICE`].
    pub fn per_device(self) -> bool {
        matches!(
            self,
            Kind::Device
                | Kind::DevicePrecopy
                | Kind::DeviceStopCopy
                | Kind::DeviceEnd
                | Kind::Verify
        )
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What was wrong with a stream.
#[derive(Debug, Error)]
pub enum StreamError {
    /// Reading or writing the channel failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The stream ended before its end marker.
    #[error("the stream ends early, after {records} records ({offset} bytes){}", in_record(.inside))]
    Truncated {
        records: u64,
        offset: u64,
        inside: Option<String>,
    },
    /// Not a vfio-migrate stream.
    #[error("not a vfio-migrate stream (bad magic {found:02x?}; expected \"VFIOMIGR\")")]
    BadMagic { found: [u8; 8] },
    /// A format version this build does not read.
    #[error("stream format version {found} is not supported (this build reads version {VERSION})")]
    Version { found: u32 },
    /// Header flags this build does not understand.
    #[error("stream header flags {flags:#x} are not supported (version {VERSION} defines none)")]
    Flags { flags: u32 },
    /// A record failed its check.
    #[error("record {index} at byte {offset}: {problem}")]
    Record {
        index: u64,
        offset: u64,
        problem: RecordProblem,
    },
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
    /// Unknown record type.
    #[error("unknown record type {0:#06x} (written by a newer version, or corrupted)")]
    UnknownKind(u16),
    /// Length outside the bounds of its type.
    #[error("{kind} record of {length} bytes; this type must be {min}..={max} bytes")]
    Length {
        kind: Kind,
        length: u32,
        min: usize,
        max: usize,
    },
    /// Reserved flags set.
    #[error("{kind} record has reserved flags {flags:#x} set")]
    Flags { kind: Kind, flags: u16 },
    /// Device field wrong for the type.
    #[error("{kind} record names device {device:#x}, which is not valid here")]
    Device { kind: Kind, device: u32 },
    /// CRC mismatch.
    #[error("{kind} record checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the data is corrupted")]
    Checksum {
        kind: Kind,
        stored: u32,
        computed: u32,
    },
    /// The record is well-formed but out of place or inconsistent.
    #[error("{0}")]
    Invalid(String),
}

/// CRC32C of a record: header bytes 0..12, then the payload.
pub fn record_crc(hdr12: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&hdr12[..12]), payload)
}

/// Writes records. Counts records and bytes for the end marker.
pub struct RecordWriter<W: Write> {
    w: W,
    records: u64,
    bytes: u64,
    what: String,
}

impl<W: Write> RecordWriter<W> {
    /// A writer over `w`; `what` names the channel in errors.
    pub fn new(w: W, what: impl Into<String>) -> Self {
        Self {
            w,
            records: 0,
            bytes: 0,
            what: what.into(),
        }
    }

    fn io(&self, e: io::Error) -> StreamError {
        StreamError::Io {
            what: format!("writing to {}", self.what),
            source: e,
        }
    }

    /// Writes the stream header.
    pub fn write_stream_header(&mut self) -> Result<(), StreamError> {
        let h = StreamHeader {
            magic: magic_u64(),
            version: VERSION,
            flags: 0,
        };
        self.w.write_all(&h.to_bytes()).map_err(|e| self.io(e))?;
        self.bytes += STREAM_HEADER_SIZE as u64;
        Ok(())
    }

    /// Writes one record with `payload`.
    pub fn write(&mut self, kind: Kind, device: u32, payload: &[u8]) -> Result<(), StreamError> {
        self.write_parts(kind, device, &[payload])
    }

    /// Writes one record whose payload is the concatenation of `parts`.
    pub fn write_parts(
        &mut self,
        kind: Kind,
        device: u32,
        parts: &[&[u8]],
    ) -> Result<(), StreamError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let (min, max) = kind.length_bounds();
        debug_assert!((min..=max).contains(&len), "{kind} record of {len} bytes");
        let mut h = RecordHeader {
            kind: kind as u16,
            flags: 0,
            device,
            length: len as u32,
            crc: 0,
        }
        .to_bytes();
        let mut crc = crc32c::crc32c(&h[..12]);
        for p in parts {
            crc = crc32c::crc32c_append(crc, p);
        }
        h[12..16].copy_from_slice(&crc.to_le_bytes());
        self.w.write_all(&h).map_err(|e| self.io(e))?;
        for p in parts {
            self.w.write_all(p).map_err(|e| self.io(e))?;
        }
        self.records += 1;
        self.bytes += (RECORD_HEADER_SIZE + len) as u64;
        Ok(())
    }

    /// Writes the end marker.
    pub fn write_end(&mut self) -> Result<(), StreamError> {
        let end = End {
            records: self.records,
            bytes: self.bytes,
        };
        self.write(Kind::End, NO_DEVICE, &end.to_bytes())
    }

    /// Flushes buffered records to the channel.
    pub fn flush(&mut self) -> Result<(), StreamError> {
        self.w.flush().map_err(|e| self.io(e))
    }

    /// Bytes written so far (headers included).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The underlying writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.w
    }
}

/// One record read and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub kind: Kind,
    pub device: u32,
    /// Index of this record in the stream (0 = first after the header).
    pub index: u64,
    /// Byte offset of its header in the stream.
    pub offset: u64,
}

/// Reads and checks records; the payload of the last one stays in an
/// internal buffer (reused, never larger than the biggest cap).
pub struct RecordReader<R: Read> {
    r: R,
    buf: Vec<u8>,
    records: u64,
    offset: u64,
    what: String,
}

impl<R: Read> RecordReader<R> {
    /// A reader over `r`; `what` names the channel in errors.
    pub fn new(r: R, what: impl Into<String>) -> Self {
        Self {
            r,
            buf: Vec::new(),
            records: 0,
            offset: 0,
            what: what.into(),
        }
    }

    /// Reads exactly `dst.len()` bytes; `inside` names what was being
    /// read when the stream ends early.
    fn read_exact_into(
        r: &mut R,
        dst: &mut [u8],
        at: u64,
        records: u64,
        what: &str,
        inside: impl FnOnce() -> Option<String>,
    ) -> Result<(), StreamError> {
        let mut got = 0usize;
        while got < dst.len() {
            match r.read(&mut dst[got..]) {
                Ok(0) => {
                    return Err(StreamError::Truncated {
                        records,
                        offset: at + got as u64,
                        inside: inside(),
                    })
                }
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(StreamError::Io {
                        what: format!("reading from {what}"),
                        source: e,
                    })
                }
            }
        }
        Ok(())
    }

    fn read_array(&mut self, inside: Option<&str>) -> Result<[u8; 16], StreamError> {
        let mut b = [0u8; 16];
        Self::read_exact_into(
            &mut self.r,
            &mut b,
            self.offset,
            self.records,
            &self.what,
            || inside.map(str::to_string),
        )?;
        self.offset += 16;
        Ok(b)
    }

    /// Reads and checks the stream header.
    pub fn read_stream_header(&mut self) -> Result<(), StreamError> {
        let b = self.read_array(Some("the stream header"))?;
        let h = StreamHeader::decode(&b).expect("16 bytes");
        if h.magic != magic_u64() {
            return Err(StreamError::BadMagic {
                found: h.magic.to_le_bytes(),
            });
        }
        if h.version != VERSION {
            return Err(StreamError::Version { found: h.version });
        }
        if h.flags != 0 {
            return Err(StreamError::Flags { flags: h.flags });
        }
        Ok(())
    }

    fn problem(&self, index: u64, offset: u64, problem: RecordProblem) -> StreamError {
        StreamError::Record {
            index,
            offset,
            problem,
        }
    }

    /// Reads the next record, checking type, flags, device field, length
    /// cap (before reading the payload) and checksum.
    pub fn next_record(&mut self) -> Result<Record, StreamError> {
        let index = self.records;
        let offset = self.offset;
        let b = self.read_array(None)?;
        let h = RecordHeader::decode(&b).expect("16 bytes");
        let kind = Kind::from_u16(h.kind)
            .ok_or_else(|| self.problem(index, offset, RecordProblem::UnknownKind(h.kind)))?;
        let (min, max) = kind.length_bounds();
        if (h.length as usize) < min || h.length as usize > max {
            return Err(self.problem(
                index,
                offset,
                RecordProblem::Length {
                    kind,
                    length: h.length,
                    min,
                    max,
                },
            ));
        }
        if h.flags != 0 {
            return Err(self.problem(
                index,
                offset,
                RecordProblem::Flags {
                    kind,
                    flags: h.flags,
                },
            ));
        }
        let device_ok = if kind.per_device() {
            (h.device as usize) < MAX_DEVICES
        } else {
            h.device == NO_DEVICE
        };
        if !device_ok {
            return Err(self.problem(
                index,
                offset,
                RecordProblem::Device {
                    kind,
                    device: h.device,
                },
            ));
        }
        self.buf.resize(h.length as usize, 0);
        Self::read_exact_into(
            &mut self.r,
            &mut self.buf,
            self.offset,
            self.records,
            &self.what,
            || Some(format!("record {index} ({kind}, {} bytes)", h.length)),
        )?;
        self.offset += u64::from(h.length);
        let computed = record_crc(&b, &self.buf);
        if computed != h.crc {
            return Err(self.problem(
                index,
                offset,
                RecordProblem::Checksum {
                    kind,
                    stored: h.crc,
                    computed,
                },
            ));
        }
        self.records += 1;
        Ok(Record {
            kind,
            device: h.device,
            index,
            offset,
        })
    }

    /// Payload of the last record read.
    pub fn payload(&self) -> &[u8] {
        &self.buf
    }

    /// Records read so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Bytes read so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Checks an [`End`] payload against what was read before it.
    pub fn check_end(&self, rec: &Record) -> Result<(), StreamError> {
        let end = End::decode(self.payload()).expect("length checked");
        // `records`/`offset` now include the end record itself.
        let before_records = self.records - 1;
        let before_bytes = rec.offset;
        if end.records != before_records || end.bytes != before_bytes {
            return Err(self.problem(
                rec.index,
                rec.offset,
                RecordProblem::Invalid(format!(
                    "end marker says {} records / {} bytes came before it, but {} / {} did: records are missing",
                    end.records, end.bytes, before_records, before_bytes
                )),
            ));
        }
        Ok(())
    }

    /// A problem with record `rec`, as a stream error.
    pub fn invalid(&self, rec: &Record, what: impl Into<String>) -> StreamError {
        self.problem(rec.index, rec.offset, RecordProblem::Invalid(what.into()))
    }

    /// The underlying reader.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.r
    }

    /// The payload as UTF-8 text (lossy), for reasons.
    pub fn payload_text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }
}

/// Truncates a reason to what fits in a record.
pub fn reason_bytes(reason: &str) -> &[u8] {
    let b = reason.as_bytes();
    if b.len() <= MAX_REASON {
        return b;
    }
    let mut n = MAX_REASON;
    while !reason.is_char_boundary(n) {
        n -= 1;
    }
    &b[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(records: &[(Kind, u32, Vec<u8>)], end: bool) -> Vec<u8> {
        let mut w = RecordWriter::new(Vec::new(), "test");
        w.write_stream_header().unwrap();
        for (k, d, p) in records {
            w.write(*k, *d, p).unwrap();
        }
        if end {
            w.write_end().unwrap();
        }
        w.w
    }

    fn read_all(b: &[u8]) -> Result<Vec<(Kind, u32, Vec<u8>)>, StreamError> {
        let mut r = RecordReader::new(b, "test");
        r.read_stream_header()?;
        let mut out = Vec::new();
        loop {
            let rec = r.next_record()?;
            if rec.kind == Kind::End {
                r.check_end(&rec)?;
                return Ok(out);
            }
            out.push((rec.kind, rec.device, r.payload().to_vec()));
        }
    }

    #[test]
    fn round_trip() {
        let recs = vec![
            (Kind::Device, 0, b"{}".to_vec()),
            (
                Kind::Ram,
                NO_DEVICE,
                RamInfo {
                    size: 1 << 20,
                    page_size: 4096,
                }
                .to_bytes(),
            ),
            (Kind::DevicePrecopy, 0, vec![7u8; 1000]),
        ];
        assert_eq!(read_all(&stream(&recs, true)).unwrap(), recs);
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let recs = vec![
            (Kind::DevicePrecopy, 0, vec![7u8; 64]),
            (Kind::Verify, 0, vec![1; 8]),
        ];
        let good = stream(&recs, true);
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(read_all(&bad).is_err(), "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn truncation_is_named() {
        let good = stream(&[(Kind::DevicePrecopy, 0, vec![7u8; 64])], true);
        for cut in 0..good.len() {
            let e = read_all(&good[..cut]).unwrap_err();
            assert!(matches!(e, StreamError::Truncated { .. }), "cut {cut}: {e}");
        }
        // A stream cut exactly on a record boundary before the end marker.
        let no_end = stream(&[(Kind::DevicePrecopy, 0, vec![7u8; 64])], false);
        assert!(matches!(
            read_all(&no_end),
            Err(StreamError::Truncated { .. })
        ));
    }

    #[test]
    fn oversized_length_is_refused_before_reading() {
        let mut h = RecordHeader {
            kind: Kind::DevicePrecopy as u16,
            flags: 0,
            device: 0,
            length: u32::MAX,
            crc: 0,
        }
        .to_bytes();
        let mut b = StreamHeader {
            magic: magic_u64(),
            version: VERSION,
            flags: 0,
        }
        .to_bytes();
        b.append(&mut h);
        let e = read_all(&b).unwrap_err();
        assert!(
            e.to_string()
                .contains("device-precopy record of 4294967295 bytes"),
            "{e}"
        );
    }

    #[test]
    fn version_and_magic_are_checked() {
        let mut b = stream(&[], true);
        b[8] = 2;
        assert!(read_all(&b)
            .unwrap_err()
            .to_string()
            .contains("version 2 is not supported"));
        let mut b = stream(&[], true);
        b[0] = b'X';
        assert!(matches!(read_all(&b), Err(StreamError::BadMagic { .. })));
    }

    #[test]
    fn dropped_record_is_caught_by_end_marker() {
        let recs = vec![
            (Kind::DevicePrecopy, 0, vec![1u8; 10]),
            (Kind::DevicePrecopy, 0, vec![2u8; 10]),
        ];
        let good = stream(&recs, true);
        let rec_len = RECORD_HEADER_SIZE + 10;
        let mut bad = good[..STREAM_HEADER_SIZE].to_vec();
        bad.extend_from_slice(&good[STREAM_HEADER_SIZE + rec_len..]);
        let e = read_all(&bad).unwrap_err();
        assert!(e.to_string().contains("records are missing"), "{e}");
    }
}
