//! The record framing of the sample devices' save streams.
//!
//! A stream is a sequence of records:
//!
//! ```text
//!  offset  size  field
//!  0       4     tag      "VMRC" (0x43524d56 little-endian)
//!  4       4     kind     record kind (device-defined; see below)
//!  8       4     len      payload length in bytes
//!  12      len   payload
//!  12+len  4     crc32c   CRC-32C of the 12 header bytes and the payload
//! ```
//!
//! Kinds shared by both samples: [`KIND_HEADER`] (first record: device
//! magic, format version, page size, memory size), [`KIND_PAGES`] (page
//! entries: index + page), [`KIND_PAGE_RUN`] (first index and count, then
//! that many consecutive pages: the vgpu's zero-copy form, added without a
//! version bump — an older reader refuses it by name), [`KIND_STATE`]
//! (registers), [`KIND_END`] (last record: how many records and page
//! entries came before it). Everything is little-endian.
//!
//! The writer side is [`put_header`]/[`finish_crc`] for records written in
//! place and [`Outbox`] for records that do not fit the caller's buffer.
//! The reader side, [`RecordReader`], is a push parser: input may be split
//! at any byte boundary; payload bytes are handed to a [`RecordSink`] as
//! they arrive, and every record's CRC is checked at its end.

use vfio_migrate_device::error::{DeviceError, DeviceResult};

/// Record tag.
pub const TAG: u32 = u32::from_le_bytes(*b"VMRC");
/// Record header size.
pub const HEADER_LEN: usize = 12;
/// Record trailer (CRC) size.
pub const TRAILER_LEN: usize = 4;
/// Framing bytes per record.
pub const OVERHEAD: usize = HEADER_LEN + TRAILER_LEN;

/// Stream header record.
pub const KIND_HEADER: u32 = 1;
/// Memory pages record.
pub const KIND_PAGES: u32 = 2;
/// Device registers record.
pub const KIND_STATE: u32 = 3;
/// End record.
pub const KIND_END: u32 = 4;
/// Memory pages record, as one run of consecutive pages (the vgpu's
/// zero-copy form: the pages are a contiguous range of its memory).
pub const KIND_PAGE_RUN: u32 = 5;

/// Human name of a record kind, for messages.
pub fn kind_name(kind: u32) -> String {
    match kind {
        KIND_HEADER => "header".into(),
        KIND_PAGES => "pages".into(),
        KIND_STATE => "registers".into(),
        KIND_END => "end".into(),
        KIND_PAGE_RUN => "page run".into(),
        k => format!("unknown kind {k}"),
    }
}

/// Payload of a [`KIND_HEADER`] record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHeader {
    /// Device model magic (8 bytes, e.g. `b"VGPUSTAT"`).
    pub magic: [u8; 8],
    /// Format version.
    pub version: u32,
    /// Page size of page records (0 when the device has none).
    pub page_size: u32,
    /// Device memory size in bytes (0 when the device has none).
    pub mem_size: u64,
}

impl StreamHeader {
    /// Encoded size.
    pub const LEN: usize = 24;

    /// Encodes the payload.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..8].copy_from_slice(&self.magic);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.page_size.to_le_bytes());
        b[16..24].copy_from_slice(&self.mem_size.to_le_bytes());
        b
    }

    /// Decodes a payload of exactly [`Self::LEN`] bytes.
    pub fn decode(b: &[u8]) -> DeviceResult<Self> {
        if b.len() != Self::LEN {
            return Err(DeviceError::inval(format!(
                "header record has {} bytes, {} expected",
                b.len(),
                Self::LEN
            )));
        }
        Ok(Self {
            magic: b[0..8].try_into().expect("8 bytes"),
            version: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
            page_size: u32::from_le_bytes(b[12..16].try_into().expect("4 bytes")),
            mem_size: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
        })
    }
}

/// Payload of a [`KIND_END`] record: what came before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamEnd {
    /// Records before the end record (header included).
    pub records: u64,
    /// Page entries in all page records.
    pub page_entries: u64,
}

impl StreamEnd {
    /// Encoded size.
    pub const LEN: usize = 16;

    /// Encodes the payload.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..8].copy_from_slice(&self.records.to_le_bytes());
        b[8..16].copy_from_slice(&self.page_entries.to_le_bytes());
        b
    }

    /// Decodes a payload of exactly [`Self::LEN`] bytes.
    pub fn decode(b: &[u8]) -> DeviceResult<Self> {
        if b.len() != Self::LEN {
            return Err(DeviceError::inval(format!(
                "end record has {} bytes, {} expected",
                b.len(),
                Self::LEN
            )));
        }
        Ok(Self {
            records: u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
            page_entries: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
        })
    }
}

/// Writes a record header into `out[..HEADER_LEN]` and returns the CRC of
/// it, to be continued over the payload with `crc32c::crc32c_append`.
pub fn put_header(out: &mut [u8], kind: u32, len: u32) -> u32 {
    out[0..4].copy_from_slice(&TAG.to_le_bytes());
    out[4..8].copy_from_slice(&kind.to_le_bytes());
    out[8..12].copy_from_slice(&len.to_le_bytes());
    crc32c::crc32c(&out[..HEADER_LEN])
}

/// Writes the trailer for a record whose running CRC is `crc`.
pub fn finish_crc(out: &mut [u8], crc: u32) {
    out[..TRAILER_LEN].copy_from_slice(&crc.to_le_bytes());
}

/// Appends a whole record with `payload` to `out`.
pub fn encode_record(kind: u32, payload: &[u8], out: &mut Vec<u8>) {
    let at = out.len();
    out.resize(at + OVERHEAD + payload.len(), 0);
    let len = u32::try_from(payload.len()).expect("record payload below 4 GiB");
    let crc = put_header(&mut out[at..], kind, len);
    out[at + HEADER_LEN..at + HEADER_LEN + payload.len()].copy_from_slice(payload);
    let crc = crc32c::crc32c_append(crc, payload);
    finish_crc(&mut out[at + HEADER_LEN + payload.len()..], crc);
}

/// Bytes of a record that did not fit the caller's buffer, handed out on
/// the next reads. Reused, so a stream allocates it once.
#[derive(Debug, Default)]
pub struct Outbox {
    buf: Vec<u8>,
    pos: usize,
}

impl Outbox {
    /// Bytes still to hand out.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Copies as much as fits into `out`; returns the bytes copied.
    pub fn drain_into(&mut self, out: &mut [u8]) -> usize {
        let n = self.pending().min(out.len());
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        n
    }

    /// The buffer to append a record to (only when nothing is pending).
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        debug_assert_eq!(self.pending(), 0);
        self.buf.clear();
        self.pos = 0;
        &mut self.buf
    }

    /// Emits a record: straight into `out` when it fits, otherwise through
    /// the outbox. Returns the bytes written into `out`.
    pub fn emit(&mut self, kind: u32, payload: &[u8], out: &mut [u8]) -> usize {
        let b = self.buffer();
        encode_record(kind, payload, b);
        self.drain_into(out)
    }
}

/// What a [`RecordReader`] hands records to.
pub trait RecordSink {
    /// A record of `kind` with `len` payload bytes starts. Refuse kinds
    /// and lengths that are not allowed here.
    fn start(&mut self, kind: u32, len: u32) -> DeviceResult<()>;
    /// The next payload bytes of the current record.
    fn data(&mut self, chunk: &[u8]) -> DeviceResult<()>;
    /// [`RecordSink::data`], continuing `crc` — the record's running
    /// CRC32C — over the chunk and returning it: a sink that reads the
    /// bytes anyway may fold the CRC into its own pass.
    fn data_crc(&mut self, chunk: &[u8], crc: u32) -> DeviceResult<u32> {
        self.data(chunk)?;
        Ok(crc32c::crc32c_append(crc, chunk))
    }
    /// The current record ended and its CRC matched.
    fn end(&mut self) -> DeviceResult<()>;
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Header {
        buf: [u8; HEADER_LEN],
        have: usize,
    },
    Payload {
        kind: u32,
        len: u32,
        have: u32,
        crc: u32,
    },
    Trailer {
        kind: u32,
        buf: [u8; TRAILER_LEN],
        have: usize,
        crc: u32,
    },
}

/// Push parser for a record stream; its first error sticks.
#[derive(Debug)]
pub struct RecordReader {
    what: &'static str,
    phase: Phase,
    offset: u64,
    record_start: u64,
    records: u64,
    failed: Option<DeviceError>,
}

impl RecordReader {
    /// A reader for the state of device model `what` (used in messages).
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            phase: Phase::Header {
                buf: [0; HEADER_LEN],
                have: 0,
            },
            offset: 0,
            record_start: 0,
            records: 0,
            failed: None,
        }
    }

    /// Stream bytes consumed.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Complete records read.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The first error, if any.
    pub fn error(&self) -> Option<&DeviceError> {
        self.failed.as_ref()
    }

    fn fail(&mut self, e: DeviceError) -> DeviceError {
        let e = DeviceError::new(
            e.errno,
            format!(
                "{} state: record {} at stream byte {}: {}",
                self.what, self.records, self.record_start, e.message
            ),
        );
        self.failed = Some(e.clone());
        e
    }

    /// Feeds `data` (any split of the stream) to `sink`.
    pub fn push(&mut self, mut data: &[u8], sink: &mut impl RecordSink) -> DeviceResult<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        while !data.is_empty() {
            match self.phase {
                Phase::Header { mut buf, have } => {
                    if have == 0 {
                        self.record_start = self.offset;
                    }
                    let n = (HEADER_LEN - have).min(data.len());
                    buf[have..have + n].copy_from_slice(&data[..n]);
                    data = &data[n..];
                    self.offset += n as u64;
                    if have + n < HEADER_LEN {
                        self.phase = Phase::Header {
                            buf,
                            have: have + n,
                        };
                        continue;
                    }
                    let tag = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
                    if tag != TAG {
                        return Err(self.fail(DeviceError::inval(format!(
                            "bad record tag {tag:#010x} (want {TAG:#010x}): this is not a \
                             vfio-migrate sample-device state, or it is corrupt"
                        ))));
                    }
                    let kind = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
                    let len = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
                    if let Err(e) = sink.start(kind, len) {
                        return Err(self.fail(e));
                    }
                    let crc = crc32c::crc32c(&buf);
                    self.phase = if len == 0 {
                        Phase::Trailer {
                            kind,
                            buf: [0; TRAILER_LEN],
                            have: 0,
                            crc,
                        }
                    } else {
                        Phase::Payload {
                            kind,
                            len,
                            have: 0,
                            crc,
                        }
                    };
                }
                Phase::Payload {
                    kind,
                    len,
                    have,
                    crc,
                } => {
                    let n = ((len - have) as usize).min(data.len());
                    let chunk = &data[..n];
                    let crc = match sink.data_crc(chunk, crc) {
                        Ok(c) => c,
                        Err(e) => return Err(self.fail(e)),
                    };
                    data = &data[n..];
                    self.offset += n as u64;
                    let have = have + n as u32;
                    self.phase = if have == len {
                        Phase::Trailer {
                            kind,
                            buf: [0; TRAILER_LEN],
                            have: 0,
                            crc,
                        }
                    } else {
                        Phase::Payload {
                            kind,
                            len,
                            have,
                            crc,
                        }
                    };
                }
                Phase::Trailer {
                    kind,
                    mut buf,
                    have,
                    crc,
                } => {
                    let n = (TRAILER_LEN - have).min(data.len());
                    buf[have..have + n].copy_from_slice(&data[..n]);
                    data = &data[n..];
                    self.offset += n as u64;
                    if have + n < TRAILER_LEN {
                        self.phase = Phase::Trailer {
                            kind,
                            buf,
                            have: have + n,
                            crc,
                        };
                        continue;
                    }
                    let stored = u32::from_le_bytes(buf);
                    if stored != crc {
                        return Err(self.fail(DeviceError::inval(format!(
                            "{} record checksum mismatch (stored {stored:#010x}, computed \
                             {crc:#010x}): the state is corrupt",
                            kind_name(kind)
                        ))));
                    }
                    if let Err(e) = sink.end() {
                        return Err(self.fail(e));
                    }
                    self.records += 1;
                    self.phase = Phase::Header {
                        buf: [0; HEADER_LEN],
                        have: 0,
                    };
                }
            }
        }
        Ok(())
    }

    /// Checks that the stream stopped at a record boundary without error.
    pub fn finish(&self) -> DeviceResult<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let cut = |detail: String| {
            Err(DeviceError::inval(format!(
                "{} state is truncated: the stream ends {detail} of record {} (at stream byte {}, \
                 {} bytes received in all)",
                self.what, self.records, self.record_start, self.offset
            )))
        };
        match self.phase {
            Phase::Header { have: 0, .. } => Ok(()),
            Phase::Header { have, .. } => {
                cut(format!("after {have} of the {HEADER_LEN} header bytes"))
            }
            Phase::Payload {
                kind, len, have, ..
            } => cut(format!(
                "after {have} of the {len} payload bytes of the {} record",
                kind_name(kind)
            )),
            Phase::Trailer { kind, .. } => cut(format!(
                "before the checksum of the {} record",
                kind_name(kind)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect {
        records: Vec<(u32, Vec<u8>)>,
        cur: Option<(u32, Vec<u8>)>,
    }

    impl RecordSink for Collect {
        fn start(&mut self, kind: u32, len: u32) -> DeviceResult<()> {
            if kind == 99 {
                return Err(DeviceError::inval("kind 99 refused"));
            }
            self.cur = Some((kind, Vec::with_capacity(len as usize)));
            Ok(())
        }
        fn data(&mut self, chunk: &[u8]) -> DeviceResult<()> {
            self.cur.as_mut().unwrap().1.extend_from_slice(chunk);
            Ok(())
        }
        fn end(&mut self) -> DeviceResult<()> {
            self.records.push(self.cur.take().unwrap());
            Ok(())
        }
    }

    fn sample() -> Vec<u8> {
        let mut s = Vec::new();
        encode_record(KIND_HEADER, b"0123456789abcdefghijklmn", &mut s);
        encode_record(KIND_STATE, &[], &mut s);
        encode_record(KIND_PAGES, &[7u8; 5000], &mut s);
        s
    }

    #[test]
    fn any_split_parses_the_same() {
        let s = sample();
        for step in [1, 2, 3, 5, 11, 12, 13, 16, 4099, 10_000] {
            let mut r = RecordReader::new("test");
            let mut c = Collect::default();
            for chunk in s.chunks(step) {
                r.push(chunk, &mut c).unwrap();
            }
            r.finish().unwrap();
            assert_eq!(r.records(), 3);
            assert_eq!(c.records.len(), 3, "step {step}");
            assert_eq!(c.records[2], (KIND_PAGES, vec![7u8; 5000]));
            assert_eq!(c.records[1], (KIND_STATE, vec![]));
        }
    }

    #[test]
    fn truncation_is_named() {
        let s = sample();
        for cut in [1, 12, 20, 44, 50, s.len() - 1] {
            let mut r = RecordReader::new("test");
            r.push(&s[..cut], &mut Collect::default()).unwrap();
            let e = r.finish().unwrap_err();
            assert!(e.message.contains("truncated"), "cut {cut}: {e}");
        }
    }

    #[test]
    fn corruption_sticks() {
        let mut s = sample();
        s[100] ^= 0x40; // inside the pages payload
        let mut r = RecordReader::new("test");
        let e = r.push(&s, &mut Collect::default()).unwrap_err();
        assert!(e.message.contains("pages record checksum mismatch"), "{e}");
        assert!(e.message.contains("record 2 at stream byte 56"), "{e}");
        assert_eq!(r.push(b"x", &mut Collect::default()).unwrap_err(), e);
        assert_eq!(r.finish().unwrap_err(), e);
    }

    #[test]
    fn bad_tag_and_sink_refusal() {
        let mut r = RecordReader::new("test");
        let e = r.push(&[0u8; 16], &mut Collect::default()).unwrap_err();
        assert!(e.message.contains("bad record tag"), "{e}");
        let mut s = Vec::new();
        encode_record(99, b"x", &mut s);
        let mut r = RecordReader::new("test");
        let e = r.push(&s, &mut Collect::default()).unwrap_err();
        assert!(e.message.contains("kind 99 refused"), "{e}");
    }

    #[test]
    fn outbox_hands_out_in_pieces() {
        let mut o = Outbox::default();
        let mut out = [0u8; 10];
        let n = o.emit(KIND_END, &[1u8; 16], &mut out);
        assert_eq!(n, 10);
        assert_eq!(o.pending(), 22);
        let mut all = out.to_vec();
        while o.pending() > 0 {
            let n = o.drain_into(&mut out[..7]);
            all.extend_from_slice(&out[..n]);
        }
        let mut want = Vec::new();
        encode_record(KIND_END, &[1u8; 16], &mut want);
        assert_eq!(all, want);
    }

    #[test]
    fn header_and_end_round_trip() {
        let h = StreamHeader {
            magic: *b"VGPUSTAT",
            version: 1,
            page_size: 4096,
            mem_size: 1 << 28,
        };
        assert_eq!(StreamHeader::decode(&h.encode()).unwrap(), h);
        assert!(StreamHeader::decode(&[0; 23]).is_err());
        let e = StreamEnd {
            records: 9,
            page_entries: 4,
        };
        assert_eq!(StreamEnd::decode(&e.encode()).unwrap(), e);
    }
}
