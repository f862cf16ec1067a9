//! Framing: [`RecordWriter`] writes the stream header and CRC-checked
//! records; [`RecordReader`] reads them back, checking every length against
//! its cap *before* allocating or reading, every checksum before handing a
//! payload out, and skipping optional records of kinds this build does not
//! know. What may follow what is not decided here but in
//! [`super::grammar`].

use super::error::{KindName, RecordProblem, StreamError};
use super::records::{
    magic_u64, End, Kind, RecordHeader, StreamHeader, FLAG_OPTIONAL, FORMAT_MAJOR, FORMAT_MINOR,
    MAX_DEVICES, MAX_OPTIONAL, NO_DEVICE, RECORD_HEADER_SIZE, STREAM_HEADER_SIZE,
};
use std::io::{self, Read, Write};

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
    /// When the last record was written.
    last: std::time::Instant,
}

impl<W: Write> RecordWriter<W> {
    /// A writer over `w`; `what` names the channel in errors.
    pub fn new(w: W, what: impl Into<String>) -> Self {
        Self {
            w,
            records: 0,
            bytes: 0,
            what: what.into(),
            last: std::time::Instant::now(),
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
            major: FORMAT_MAJOR,
            minor: FORMAT_MINOR,
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
        let (min, max) = kind.length_bounds();
        let len: usize = parts.iter().map(|p| p.len()).sum();
        debug_assert!((min..=max).contains(&len), "{kind} record of {len} bytes");
        self.write_raw(kind as u16, 0, device, parts)
    }

    /// Writes one record of any type number and flags (for writers of
    /// optional records, and for tests of what a reader does with them).
    pub fn write_raw(
        &mut self,
        kind: u16,
        flags: u16,
        device: u32,
        parts: &[&[u8]],
    ) -> Result<(), StreamError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut h = RecordHeader {
            kind,
            flags,
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
        self.last = std::time::Instant::now();
        Ok(())
    }

    /// Writes one record whose `len`-byte payload, of CRC32C `data_crc`,
    /// does not pass through this process: the header goes out (and is
    /// flushed), then `payload` moves the bytes into the channel itself
    /// (a splice). The record's checksum is combined from the header's and
    /// `data_crc`, not computed over the data.
    pub fn write_spliced(
        &mut self,
        kind: Kind,
        device: u32,
        len: usize,
        data_crc: u32,
        payload: impl FnOnce(usize) -> io::Result<()>,
    ) -> Result<(), StreamError> {
        self.begin_spliced(kind, device, len, data_crc)?;
        payload(len).map_err(|e| self.io(e))?;
        self.end_spliced(len);
        Ok(())
    }

    /// The first half of [`RecordWriter::write_spliced`] for a payload
    /// moved in parts: writes the record's header (flushed); the caller
    /// then moves exactly `len` payload bytes into the channel and calls
    /// [`RecordWriter::end_spliced`].
    pub fn begin_spliced(
        &mut self,
        kind: Kind,
        device: u32,
        len: usize,
        data_crc: u32,
    ) -> Result<(), StreamError> {
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
        let crc = vfio_migrate_abi::crc::combine(crc32c::crc32c(&h[..12]), data_crc, len);
        h[12..16].copy_from_slice(&crc.to_le_bytes());
        self.w.write_all(&h).map_err(|e| self.io(e))?;
        self.w.flush().map_err(|e| self.io(e))
    }

    /// The record begun by [`RecordWriter::begin_spliced`] is complete.
    pub fn end_spliced(&mut self, len: usize) {
        self.records += 1;
        self.bytes += (RECORD_HEADER_SIZE + len) as u64;
        self.last = std::time::Instant::now();
    }

    /// A channel error as the writer reports it.
    pub fn channel_error(&self, e: io::Error) -> StreamError {
        self.io(e)
    }

    /// Writes a heartbeat (optional, so readers of minor 0 skip it) and
    /// flushes.
    pub fn write_heartbeat(&mut self) -> Result<(), StreamError> {
        self.write_raw(Kind::Heartbeat as u16, FLAG_OPTIONAL, NO_DEVICE, &[])?;
        self.flush()
    }

    /// Time since the last record was written.
    pub fn idle(&self) -> std::time::Duration {
        self.last.elapsed()
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

    /// The underlying writer, by value.
    pub fn into_inner(self) -> W {
        self.w
    }
}

/// One record read and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// Its type.
    pub kind: Kind,
    /// Its device field.
    pub device: u32,
    /// Index of this record in the stream (0 = first after the header).
    pub index: u64,
    /// Byte offset of its header in the stream.
    pub offset: u64,
}

/// The next record, or (see [`RecordReader::next_record_or_defer`]) the
/// header of one whose payload the caller moves itself.
#[derive(Debug, Clone, Copy)]
pub enum Next {
    /// Read and checked, its payload in [`RecordReader::payload`].
    Record(Record),
    /// Its header was read and checked; its `len` payload bytes are next
    /// in the reader, unread, and must be checked against `data_crc` by
    /// whoever takes them.
    Deferred {
        /// The record.
        rec: Record,
        /// Its payload length.
        len: usize,
        /// The CRC32C its payload must have (from the record's checksum).
        data_crc: u32,
    },
}

/// The CRC32C that the payload of a record must have, given the record's
/// checksum and its header: the record's checksum is the header's
/// combined with the payload's (`vfio_migrate_abi::crc::combine` is linear in the second
/// checksum).
pub fn payload_crc(hdr12: &[u8], record_crc: u32, len: usize) -> u32 {
    record_crc ^ vfio_migrate_abi::crc::shift(crc32c::crc32c(&hdr12[..12]), len)
}

/// Reads and checks records; the payload of the last one stays in an
/// internal buffer (reused, never larger than the biggest cap).
pub struct RecordReader<R: Read> {
    r: R,
    /// Grows to the largest payload read so far and is never cleared (no
    /// memset per record); the last payload is `buf[..len]`.
    buf: Vec<u8>,
    len: usize,
    records: u64,
    offset: u64,
    skipped: u64,
    minor: u16,
    what: String,
}

impl<R: Read> RecordReader<R> {
    /// A reader over `r`; `what` names the channel in errors.
    pub fn new(r: R, what: impl Into<String>) -> Self {
        Self {
            r,
            buf: Vec::new(),
            len: 0,
            records: 0,
            offset: 0,
            skipped: 0,
            minor: 0,
            what: what.into(),
        }
    }

    /// Reads exactly `dst.len()` bytes; `inside` names what was being
    /// read when the stream ends early.
    fn fill(
        &mut self,
        len: usize,
        inside: impl FnOnce() -> Option<String>,
    ) -> Result<(), StreamError> {
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        self.len = len;
        let mut got = 0usize;
        while got < len {
            match self.r.read(&mut self.buf[got..len]) {
                Ok(0) => {
                    return Err(StreamError::Truncated {
                        records: self.records,
                        offset: self.offset + got as u64,
                        inside: inside(),
                    })
                }
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(StreamError::Io {
                        what: format!("reading from {}", self.what),
                        source: e,
                    })
                }
            }
        }
        self.offset += len as u64;
        Ok(())
    }

    fn read16(&mut self, inside: Option<&str>) -> Result<[u8; 16], StreamError> {
        self.fill(16, || inside.map(str::to_string))?;
        Ok(self.buf[..16].try_into().expect("16 bytes"))
    }

    /// Reads and checks the stream header: the magic, a major version this
    /// build reads (any minor), no flags. Returns `(major, minor)`.
    pub fn read_stream_header(&mut self) -> Result<(u16, u16), StreamError> {
        let b = self.read16(Some("the stream header"))?;
        let h = StreamHeader::decode(&b).expect("16 bytes");
        if h.magic != magic_u64() {
            return Err(StreamError::BadMagic {
                found: h.magic.to_le_bytes(),
            });
        }
        if h.major != FORMAT_MAJOR {
            return Err(StreamError::Version {
                major: h.major,
                minor: h.minor,
            });
        }
        if h.flags != 0 {
            return Err(StreamError::Flags { flags: h.flags });
        }
        self.minor = h.minor;
        Ok((h.major, h.minor))
    }

    fn problem(index: u64, offset: u64, problem: RecordProblem) -> StreamError {
        StreamError::Record {
            index,
            offset,
            problem,
        }
    }

    /// Reads the next record, checking type, flags, device field, length
    /// cap (before reading the payload) and checksum. Optional records of
    /// kinds this build does not know are checked and skipped.
    pub fn next_record(&mut self) -> Result<Record, StreamError> {
        match self.next_record_or_defer(&|_, _| false)? {
            Next::Record(r) => Ok(r),
            Next::Deferred { .. } => unreachable!("nothing deferred"),
        }
    }

    /// Like [`RecordReader::next_record`], but a record for which
    /// `defer(kind, len)` holds is returned after its header: its payload
    /// is left in the underlying reader for the caller to move (counted
    /// as read), with the checksum it must have.
    pub fn next_record_or_defer(
        &mut self,
        defer: &dyn Fn(Kind, usize) -> bool,
    ) -> Result<Next, StreamError> {
        loop {
            let index = self.records;
            let offset = self.offset;
            let b = self.read16(None)?;
            let h = RecordHeader::decode(&b).expect("16 bytes");
            let kind = Kind::from_u16(h.kind);
            let name = kind.map_or(KindName::Unknown(h.kind), KindName::Known);
            if kind.is_none() && h.flags & FLAG_OPTIONAL == 0 {
                return Err(Self::problem(
                    index,
                    offset,
                    RecordProblem::UnknownKind(h.kind),
                ));
            }
            let (min, max) = kind.map_or((0, MAX_OPTIONAL), Kind::length_bounds);
            if (h.length as usize) < min || h.length as usize > max {
                let problem = RecordProblem::Length {
                    kind: name,
                    length: h.length,
                    min,
                    max,
                };
                return Err(Self::problem(index, offset, problem));
            }
            if h.flags & !FLAG_OPTIONAL != 0 {
                let problem = RecordProblem::Flags {
                    kind: name,
                    flags: h.flags,
                };
                return Err(Self::problem(index, offset, problem));
            }
            if let Some(kind) = kind {
                let device_ok = if kind.per_device() {
                    (h.device as usize) < MAX_DEVICES
                } else {
                    h.device == NO_DEVICE
                };
                if !device_ok {
                    let problem = RecordProblem::Device {
                        kind,
                        device: h.device,
                    };
                    return Err(Self::problem(index, offset, problem));
                }
            }
            let len = h.length as usize;
            if let Some(k) = kind.filter(|k| defer(*k, len)) {
                self.records += 1;
                self.offset += len as u64;
                self.len = 0;
                return Ok(Next::Deferred {
                    rec: Record {
                        kind: k,
                        device: h.device,
                        index,
                        offset,
                    },
                    len,
                    data_crc: payload_crc(&b, h.crc, len),
                });
            }
            self.fill(len, || {
                Some(format!("record {index} ({name}, {len} bytes)"))
            })?;
            let computed = record_crc(&b, self.payload());
            if computed != h.crc {
                let problem = RecordProblem::Checksum {
                    kind: name,
                    stored: h.crc,
                    computed,
                };
                return Err(Self::problem(index, offset, problem));
            }
            self.records += 1;
            match kind {
                Some(kind) => {
                    return Ok(Next::Record(Record {
                        kind,
                        device: h.device,
                        index,
                        offset,
                    }))
                }
                None => {
                    tracing::debug!(kind = h.kind, len, "skipping an optional record");
                    self.skipped += 1;
                }
            }
        }
    }

    /// Payload of the last record read.
    pub fn payload(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Takes the last payload out (`[..payload len]` of a buffer that may
    /// have more capacity) and reads on into `spare`: hands the bytes to
    /// another thread without copying them.
    pub fn take_payload(&mut self, spare: Vec<u8>) -> Vec<u8> {
        let mut out = std::mem::replace(&mut self.buf, spare);
        out.truncate(self.len);
        self.len = 0;
        out
    }

    /// The payload as UTF-8 text (lossy), for reasons.
    pub fn payload_text(&self) -> String {
        String::from_utf8_lossy(self.payload()).into_owned()
    }

    /// Records read so far (skipped optional ones included).
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Optional records of unknown kinds skipped so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Bytes read so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The minor format version of the stream (after the header).
    pub fn minor(&self) -> u16 {
        self.minor
    }

    /// Checks an [`End`] payload against what was read before it.
    pub fn check_end(&self, rec: &Record) -> Result<(), StreamError> {
        let end = End::decode(self.payload()).expect("length checked");
        // `records`/`offset` now include the end record itself.
        let before_records = self.records - 1;
        let before_bytes = rec.offset;
        if end.records != before_records || end.bytes != before_bytes {
            return Err(self.invalid(
                rec,
                format!(
                    "end marker says {} records / {} bytes came before it, but {} / {} did: records are missing",
                    end.records, end.bytes, before_records, before_bytes
                ),
            ));
        }
        Ok(())
    }

    /// A problem with record `rec`, as a stream error.
    pub fn invalid(&self, rec: &Record, what: impl Into<String>) -> StreamError {
        Self::problem(rec.index, rec.offset, RecordProblem::Invalid(what.into()))
    }

    /// A problem of kind `problem` with record `rec`.
    pub fn refuse(&self, rec: &Record, problem: RecordProblem) -> StreamError {
        Self::problem(rec.index, rec.offset, problem)
    }

    /// The underlying reader.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.r
    }
}
