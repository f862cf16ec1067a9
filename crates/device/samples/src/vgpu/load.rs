//! The vgpu load stream: page data goes straight into device memory as it
//! arrives (records may be split at any byte); the header, registers and
//! end record are checked, and [`LoadStream::finish`] refuses a stream
//! that is truncated, corrupt, from another device size, or incomplete.

use super::engines::{Shared, PAGE};
use super::pagehash::{append_page_crc, term_of_crc};
use super::regs::{decode_state, RegSnapshot, STATE_LEN};
use super::save::{ENTRY, MAGIC, MAX_BATCH, RUN_HEAD, VERSION};
use crate::stream::{
    kind_name, RecordReader, RecordSink, StreamEnd, StreamHeader, KIND_END, KIND_HEADER,
    KIND_PAGES, KIND_PAGE_RUN, KIND_STATE,
};
use std::sync::Arc;
use vfio_migrate_device::error::{DeviceError, DeviceResult};
use vfio_migrate_device::pci::CONFIG_SIZE;

/// Human size: `256 MiB (268435456 bytes)`.
pub fn size_words(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB ({bytes} bytes)", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

/// What the load stream delivered, applied when RESUMING ends.
#[derive(Debug)]
pub struct Loaded {
    /// The registers record's register values.
    pub regs: RegSnapshot,
    /// The registers record's PCI config space.
    pub config: [u8; CONFIG_SIZE],
}

#[derive(Debug)]
struct Sink {
    shared: Arc<Shared>,
    pages: u64,
    header: Option<StreamHeader>,
    state: Option<(RegSnapshot, [u8; CONFIG_SIZE])>,
    end: Option<StreamEnd>,
    kind: u32,
    small: Vec<u8>,
    idx: [u8; 4],
    idx_have: usize,
    page: u64,
    page_off: usize,
    /// Page-run records: the run's head, its length, and the pages of the
    /// run still to come after the current one.
    run_head: [u8; RUN_HEAD],
    run_len: usize,
    run_left: u64,
    /// CRC32C of the page being written, fed as its bytes arrive (its
    /// digest term, see [`super::pagehash`]).
    page_crc: u32,
    received: Vec<u64>,
    received_count: u64,
    records: u64,
    page_entries: u64,
}

impl Sink {
    fn page_index_done(&mut self) -> DeviceResult<()> {
        let p = u32::from_le_bytes(self.idx) as u64;
        if p >= self.pages {
            return Err(DeviceError::inval(format!(
                "page index {p} is outside this vgpu's {} pages",
                self.pages
            )));
        }
        self.page_starts(p);
        Ok(())
    }

    /// A run's head arrived: its pages must be the record's and inside
    /// device memory.
    fn run_head_done(&mut self) -> DeviceResult<()> {
        let first = u64::from(u32::from_le_bytes(
            self.run_head[..4].try_into().expect("4"),
        ));
        let count = u64::from(u32::from_le_bytes(
            self.run_head[4..].try_into().expect("4"),
        ));
        let fits = (self.run_len - RUN_HEAD) as u64 / PAGE;
        if count != fits {
            return Err(DeviceError::inval(format!(
                "page run of {count} pages in a record with room for {fits}"
            )));
        }
        if first + count > self.pages {
            return Err(DeviceError::inval(format!(
                "page run {first}..{} is outside this vgpu's {} pages",
                first + count,
                self.pages
            )));
        }
        self.run_left = count - 1;
        self.page_starts(first);
        Ok(())
    }

    fn page_starts(&mut self, p: u64) {
        self.page = p;
        self.page_off = 0;
        self.page_crc = 0;
        self.page_entries += 1;
        let (w, b) = ((p / 64) as usize, p % 64);
        if self.received[w] & (1 << b) == 0 {
            self.received[w] |= 1 << b;
            self.received_count += 1;
        }
    }

    /// Page bytes of the current page: into device memory, hashed (one
    /// pass). Returns how many were taken and the record's CRC so far.
    fn page_bytes(&mut self, chunk: &[u8], mut crc: u32) -> DeviceResult<(usize, u32)> {
        let n = (PAGE as usize - self.page_off).min(chunk.len());
        let piece = &chunk[..n];
        self.shared
            .mem
            .write(self.page * PAGE + self.page_off as u64, piece)?;
        if n == PAGE as usize {
            // A whole page in one piece (the usual case): one pass.
            self.page_crc = crc32c::crc32c(piece);
            crc = append_page_crc(crc, self.page_crc);
        } else {
            self.page_crc = crc32c::crc32c_append(self.page_crc, piece);
            crc = crc32c::crc32c_append(crc, piece);
        }
        self.page_off += n;
        if self.page_off == PAGE as usize {
            self.shared
                .hashes
                .set(&[(self.page, term_of_crc(self.page, self.page_crc))]);
        }
        Ok((n, crc))
    }

    /// A page-run record's payload: its head, then its pages in order.
    fn run_bytes(&mut self, mut chunk: &[u8], mut crc: u32) -> DeviceResult<u32> {
        while !chunk.is_empty() {
            if self.idx_have < RUN_HEAD {
                let n = (RUN_HEAD - self.idx_have).min(chunk.len());
                self.run_head[self.idx_have..self.idx_have + n].copy_from_slice(&chunk[..n]);
                crc = crc32c::crc32c_append(crc, &chunk[..n]);
                self.idx_have += n;
                chunk = &chunk[n..];
                if self.idx_have == RUN_HEAD {
                    self.run_head_done()?;
                }
                continue;
            }
            if self.page_off == PAGE as usize {
                self.run_left = self
                    .run_left
                    .checked_sub(1)
                    .ok_or_else(|| DeviceError::inval("page run longer than its head says"))?;
                self.page_starts(self.page + 1);
            }
            let (n, c) = self.page_bytes(chunk, crc)?;
            crc = c;
            chunk = &chunk[n..];
        }
        Ok(crc)
    }
}

impl RecordSink for Sink {
    fn start(&mut self, kind: u32, len: u32) -> DeviceResult<()> {
        if self.end.is_some() {
            return Err(DeviceError::inval(format!(
                "a {} record follows the end record",
                kind_name(kind)
            )));
        }
        if self.header.is_none() && kind != KIND_HEADER {
            return Err(DeviceError::inval(format!(
                "the stream starts with a {} record, not a header: it is not the start of a \
                 vgpu state",
                kind_name(kind)
            )));
        }
        let len = len as usize;
        let want = match kind {
            KIND_HEADER if self.header.is_some() => {
                return Err(DeviceError::inval("a second header record"));
            }
            KIND_HEADER => StreamHeader::LEN,
            KIND_STATE if self.state.is_some() => {
                return Err(DeviceError::inval("a second registers record"));
            }
            KIND_STATE => STATE_LEN,
            KIND_END => StreamEnd::LEN,
            KIND_PAGES => {
                if len == 0 || !len.is_multiple_of(ENTRY) || len > MAX_BATCH * ENTRY {
                    return Err(DeviceError::inval(format!(
                        "pages record of {len} bytes: must be 1 to {MAX_BATCH} entries of \
                         {ENTRY} bytes"
                    )));
                }
                len
            }
            KIND_PAGE_RUN => {
                let pages = len.saturating_sub(RUN_HEAD) / PAGE as usize;
                if len <= RUN_HEAD
                    || !(len - RUN_HEAD).is_multiple_of(PAGE as usize)
                    || pages > MAX_BATCH
                {
                    return Err(DeviceError::inval(format!(
                        "page run record of {len} bytes: must be a {RUN_HEAD}-byte head and 1 \
                         to {MAX_BATCH} pages of {PAGE} bytes"
                    )));
                }
                self.run_len = len;
                len
            }
            k => {
                return Err(DeviceError::inval(format!(
                    "unknown record kind {k}: the state was written by a newer or different \
                     device model"
                )))
            }
        };
        if len != want {
            return Err(DeviceError::inval(format!(
                "{} record of {len} bytes, {want} expected",
                kind_name(kind)
            )));
        }
        self.kind = kind;
        self.small.clear();
        self.idx_have = 0;
        Ok(())
    }

    fn data(&mut self, chunk: &[u8]) -> DeviceResult<()> {
        self.data_crc(chunk, 0).map(|_| ())
    }

    /// Page data goes into device memory; each page's CRC32C is its digest
    /// term and, folded in, the record's CRC (one pass over the bytes).
    fn data_crc(&mut self, mut chunk: &[u8], mut crc: u32) -> DeviceResult<u32> {
        if self.kind == KIND_PAGE_RUN {
            return self.run_bytes(chunk, crc);
        }
        if self.kind != KIND_PAGES {
            self.small.extend_from_slice(chunk);
            return Ok(crc32c::crc32c_append(crc, chunk));
        }
        while !chunk.is_empty() {
            if self.idx_have < 4 {
                let n = (4 - self.idx_have).min(chunk.len());
                self.idx[self.idx_have..self.idx_have + n].copy_from_slice(&chunk[..n]);
                crc = crc32c::crc32c_append(crc, &chunk[..n]);
                self.idx_have += n;
                chunk = &chunk[n..];
                if self.idx_have == 4 {
                    self.page_index_done()?;
                }
                continue;
            }
            let (n, c) = self.page_bytes(chunk, crc)?;
            crc = c;
            chunk = &chunk[n..];
            if self.page_off == PAGE as usize {
                self.idx_have = 0;
            }
        }
        Ok(crc)
    }

    fn end(&mut self) -> DeviceResult<()> {
        match self.kind {
            KIND_HEADER => {
                let h = StreamHeader::decode(&self.small)?;
                if h.magic != MAGIC {
                    return Err(DeviceError::inval(format!(
                        "header magic {:?} is not a vgpu state (want {:?})",
                        String::from_utf8_lossy(&h.magic),
                        String::from_utf8_lossy(&MAGIC)
                    )));
                }
                if h.version != VERSION {
                    return Err(DeviceError::inval(format!(
                        "the state has format version {}; this vgpu reads version {VERSION}",
                        h.version
                    )));
                }
                if h.page_size as u64 != PAGE {
                    return Err(DeviceError::inval(format!(
                        "the state uses {}-byte pages; this vgpu uses {PAGE}",
                        h.page_size
                    )));
                }
                let mine = self.shared.mem.len();
                if h.mem_size != mine {
                    return Err(DeviceError::inval(format!(
                        "the state is from a vgpu with {} of device memory; this vgpu has {}: \
                         create the destination with the same mem_size",
                        size_words(h.mem_size),
                        size_words(mine)
                    )));
                }
                self.header = Some(h);
            }
            KIND_STATE => self.state = Some(decode_state(&self.small)?),
            KIND_PAGES | KIND_PAGE_RUN => {}
            KIND_END => {
                let e = StreamEnd::decode(&self.small)?;
                if e.records != self.records || e.page_entries != self.page_entries {
                    return Err(DeviceError::inval(format!(
                        "the end record counts {} records and {} pages before it, but {} records \
                         and {} pages arrived: records were lost or duplicated",
                        e.records, e.page_entries, self.records, self.page_entries
                    )));
                }
                self.end = Some(e);
                return Ok(());
            }
            _ => unreachable!("start() refused other kinds"),
        }
        self.records += 1;
        Ok(())
    }
}

/// One RESUMING session.
#[derive(Debug)]
pub struct LoadStream {
    reader: RecordReader,
    sink: Sink,
}

impl LoadStream {
    /// A load into `shared`'s memory (the digest cache starts empty: the
    /// pages are hashed as they are loaded).
    pub fn new(shared: Arc<Shared>) -> Self {
        shared.hashes.forget_all();
        let pages = shared.pages();
        Self {
            reader: RecordReader::new("vgpu"),
            sink: Sink {
                shared,
                pages,
                header: None,
                state: None,
                end: None,
                kind: 0,
                small: Vec::new(),
                idx: [0; 4],
                idx_have: 0,
                page: 0,
                page_off: 0,
                run_head: [0; RUN_HEAD],
                run_len: 0,
                run_left: 0,
                page_crc: 0,
                received: vec![0u64; pages.div_ceil(64) as usize],
                received_count: 0,
                records: 0,
                page_entries: 0,
            },
        }
    }

    /// Takes the next piece of the stream. The first error sticks.
    pub fn load(&mut self, data: &[u8]) -> DeviceResult<()> {
        self.reader.push(data, &mut self.sink)
    }

    /// Checks that the stream is complete and returns the registers to
    /// apply; on error nothing is applied.
    pub fn finish(&self) -> DeviceResult<Loaded> {
        self.reader.finish()?;
        let s = &self.sink;
        let got = self.reader.offset();
        if s.header.is_none() {
            return Err(DeviceError::inval(
                "vgpu state is empty: no data was written while RESUMING",
            ));
        }
        if s.end.is_none() {
            return Err(DeviceError::inval(format!(
                "vgpu state is truncated: no end record after {} records ({got} bytes); the \
                 source did not finish STOP_COPY or the transfer was cut",
                self.reader.records()
            )));
        }
        if s.received_count < s.pages {
            return Err(DeviceError::inval(format!(
                "vgpu state is incomplete: {} of the {} pages of device memory never arrived",
                s.pages - s.received_count,
                s.pages
            )));
        }
        let (regs, config) = s.state.ok_or_else(|| {
            DeviceError::inval("vgpu state is incomplete: it has no registers record")
        })?;
        Ok(Loaded { regs, config })
    }
}
