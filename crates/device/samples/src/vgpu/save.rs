//! The vgpu save stream: header, page records copied straight from device
//! memory into the caller's buffer, then (in STOP_COPY) the registers and
//! an end record. Memory use is O(1) in the state size: one small outbox
//! for records that do not fit the caller's buffer, and a page-index batch.
//!
//! Pre-copy: on entry every page is "initial". The initial pass walks the
//! pages in order, taking each page's dirty bit before copying it; pages
//! the engines dirty meanwhile are re-sent from the dirty bitmap
//! afterwards (take first, copy second — see [`vfio_migrate_device::dirty`]).
//!
//! Stopped (STOP_COPY), the stream can also be described instead of
//! copied ([`SaveStream::save_pieces`]): runs of consecutive pages become
//! page-run records whose pages are ranges of the memfd, which the server
//! splices into its socket unread; each page is hashed once, for the
//! record's CRC and the digest cache.

use super::engines::{Shared, PAGE};
use super::pagehash::{append_page_crc, term_of_crc};
use super::regs::{encode_state, STATE_LEN};
use crate::stream::{
    finish_crc, put_header, Outbox, StreamEnd, StreamHeader, HEADER_LEN, KIND_END, KIND_HEADER,
    KIND_PAGES, KIND_PAGE_RUN, KIND_STATE, OVERHEAD,
};
use vfio_migrate_device::error::DeviceResult;
use vfio_migrate_device::pci::CONFIG_SIZE;
use vfio_migrate_device::SavePieces;

/// Magic of a vgpu stream header.
pub const MAGIC: [u8; 8] = *b"VGPUSTAT";
/// Stream format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Bytes of one page entry: page index (u32) + page data.
pub const ENTRY: usize = 4 + PAGE as usize;
/// Most pages in one record (≈ 4 MiB).
pub const MAX_BATCH: usize = 1024;
/// Head of a page-run record: first page index (u32), page count (u32);
/// the pages follow in order.
pub const RUN_HEAD: usize = 8;
/// Smallest room a page-run record is written into (one page).
const RUN_MIN: usize = OVERHEAD + RUN_HEAD + PAGE as usize;
/// Shorter runs of consecutive pages go copied, as a pages record.
const MIN_RUN: u32 = 16;

/// Size of a whole header record.
const HEADER_RECORD: u64 = (OVERHEAD + StreamHeader::LEN) as u64;
/// Size of the registers and end records together.
const TAIL_RECORDS: u64 = (OVERHEAD + STATE_LEN + OVERHEAD + StreamEnd::LEN) as u64;

/// Upper bound of the stream bytes for `n` page entries. How many pages
/// share a record depends on the reader's buffer sizes (up to
/// [`MAX_BATCH`] with large buffers, one with tiny ones), so count a
/// record's framing per page: at most 0.4 % too high, never too low.
fn pages_bytes(n: u64) -> u64 {
    n * (ENTRY + OVERHEAD) as u64
}

/// Upper bound of the bytes of a complete stop-copy stream of a vgpu with
/// `pages` pages.
pub fn full_stream_bytes(pages: u64) -> u64 {
    HEADER_RECORD + pages_bytes(pages) + TAIL_RECORDS
}

/// One save stream (from PRE_COPY or STOP_COPY entry to its end).
#[derive(Debug)]
pub struct SaveStream {
    pages: u64,
    mem_size: u64,
    stop_copy: bool,
    header_done: bool,
    initial_next: u64,
    dirty_cursor: u64,
    state_done: bool,
    end_done: bool,
    records: u64,
    page_entries: u64,
    outbox: Outbox,
    batch: Vec<u32>,
    /// `(page, term)` of the pages of the record being written, for the
    /// digest cache ([`super::pagehash`]).
    terms: Vec<(u64, u64)>,
    /// The initial data restarted and nobody was told yet.
    reinit: bool,
    /// A page taken (its dirty bit cleared) that did not continue a run:
    /// it goes next.
    peeked: Option<u32>,
    /// Framing and small records for [`SaveStream::save_pieces`].
    scratch: Vec<u8>,
    /// One page, hashed before its range is handed out.
    page: Vec<u8>,
}

impl SaveStream {
    /// A new stream over `shared`; every page is initial, so the dirty
    /// bitmap is cleared (and with it the digest cache, which relies on
    /// it). `stop_copy` when it starts in STOP_COPY.
    pub fn new(shared: &Shared, stop_copy: bool) -> Self {
        shared.hashes.forget_all();
        shared.dirty.clear_all();
        Self {
            pages: shared.pages(),
            mem_size: shared.mem.len(),
            stop_copy,
            header_done: false,
            initial_next: 0,
            dirty_cursor: 0,
            state_done: false,
            end_done: false,
            records: 0,
            page_entries: 0,
            outbox: Outbox::default(),
            batch: Vec::with_capacity(MAX_BATCH),
            terms: Vec::with_capacity(MAX_BATCH),
            reinit: false,
            peeked: None,
            scratch: Vec::new(),
            page: vec![0; PAGE as usize],
        }
    }

    /// The device re-initialised its memory (a mode change): every page is
    /// initial again, and the next pre-copy info reports REINIT. The dirty
    /// bits are cleared (every page goes again anyway), so the digest cache
    /// is forgotten too.
    pub fn reinit(&mut self, shared: &Shared) {
        shared.hashes.forget_all();
        shared.dirty.clear_all();
        self.initial_next = 0;
        self.dirty_cursor = 0;
        self.peeked = None;
        self.reinit = true;
    }

    /// Whether the initial data restarted since the last call (read and
    /// clear, as `VFIO_PRECOPY_INFO_REINIT` is reported once).
    pub fn take_reinit(&mut self) -> bool {
        std::mem::take(&mut self.reinit)
    }

    /// PRE_COPY_P2P → STOP_COPY: the engines are stopped; send the rest.
    pub fn enter_stop_copy(&mut self) {
        self.stop_copy = true;
    }

    /// True once the end record has been handed out completely.
    pub fn complete(&self) -> bool {
        self.end_done && self.outbox.pending() == 0
    }

    fn next_page(&mut self, shared: &Shared) -> Option<u32> {
        if let Some(p) = self.peeked.take() {
            return Some(p);
        }
        if self.initial_next < self.pages {
            let p = self.initial_next;
            self.initial_next += 1;
            shared.dirty.take(p);
            return Some(p as u32);
        }
        let p = shared.dirty.take_next_wrapping(self.dirty_cursor)?;
        self.dirty_cursor = p + 1;
        Some(p as u32)
    }

    /// Writes a pages record for `self.batch` into `out` (which must hold
    /// it) straight from device memory, hashing each page copied for the
    /// digest cache; returns its size.
    fn write_pages(&mut self, shared: &Shared, out: &mut [u8]) -> usize {
        let len = self.batch.len() * ENTRY;
        let mut crc = put_header(out, KIND_PAGES, len as u32);
        let mut at = HEADER_LEN;
        self.terms.clear();
        for &p in &self.batch {
            let e = &mut out[at..at + ENTRY];
            e[..4].copy_from_slice(&p.to_le_bytes());
            shared
                .mem
                .read(p as u64 * PAGE, &mut e[4..])
                .expect("page index below the page count");
            // One CRC pass over the page while it is in cache gives both
            // its digest term (after the stop no page that was sent and
            // not dirtied again is hashed twice) and the record's CRC.
            let page_crc = crc32c::crc32c(&e[4..]);
            crc = append_page_crc(crc32c::crc32c_append(crc, &e[..4]), page_crc);
            self.terms
                .push((u64::from(p), term_of_crc(u64::from(p), page_crc)));
            at += ENTRY;
        }
        shared.hashes.set(&self.terms);
        finish_crc(&mut out[at..], crc);
        at + 4
    }

    /// Fills `buf` with as much of the stream as is available now.
    pub fn save(&mut self, shared: &Shared, config: &[u8; CONFIG_SIZE], buf: &mut [u8]) -> usize {
        let mut out = 0;
        loop {
            out += self.outbox.drain_into(&mut buf[out..]);
            if out == buf.len() {
                break;
            }
            let room = buf.len() - out;
            if !self.header_done {
                self.header_done = true;
                self.records += 1;
                let h = StreamHeader {
                    magic: MAGIC,
                    version: VERSION,
                    page_size: PAGE as u32,
                    mem_size: self.mem_size,
                };
                out += self.outbox.emit(KIND_HEADER, &h.encode(), &mut buf[out..]);
                continue;
            }
            let cap = if room >= OVERHEAD + ENTRY {
                ((room - OVERHEAD) / ENTRY).min(MAX_BATCH)
            } else {
                1
            };
            self.batch.clear();
            while self.batch.len() < cap {
                match self.next_page(shared) {
                    Some(p) => self.batch.push(p),
                    None => break,
                }
            }
            if !self.batch.is_empty() {
                self.records += 1;
                self.page_entries += self.batch.len() as u64;
                let size = OVERHEAD + self.batch.len() * ENTRY;
                if size <= room {
                    out += self.write_pages(shared, &mut buf[out..out + size]);
                } else {
                    let mut b = std::mem::take(self.outbox.buffer());
                    b.resize(size, 0);
                    self.write_pages(shared, &mut b);
                    *self.outbox.buffer() = b;
                }
                continue;
            }
            if !self.stop_copy {
                break;
            }
            if !self.state_done {
                self.state_done = true;
                self.records += 1;
                let regs = shared.regs.snapshot();
                let payload = encode_state(&regs, config);
                out += self.outbox.emit(KIND_STATE, &payload, &mut buf[out..]);
                continue;
            }
            if !self.end_done {
                self.end_done = true;
                let end = StreamEnd {
                    records: self.records,
                    page_entries: self.page_entries,
                };
                out += self.outbox.emit(KIND_END, &end.encode(), &mut buf[out..]);
                continue;
            }
            break;
        }
        out
    }

    /// The next chunk of the stream, up to `max` bytes (all of them unless
    /// the stream ends), described in `out`: runs of consecutive pages as
    /// [`KIND_PAGE_RUN`] records whose pages are ranges of the memfd (each
    /// page hashed for the record's CRC and the digest cache, never
    /// copied), everything else as [`SaveStream::save`] writes it. For a
    /// stopped device only: the ranges are read when they are sent.
    pub fn save_pieces(
        &mut self,
        shared: &Shared,
        config: &[u8; CONFIG_SIZE],
        max: usize,
        out: &mut SavePieces,
    ) -> DeviceResult<()> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let r = self.fill_pieces(shared, config, max, out, &mut scratch);
        self.scratch = scratch;
        r
    }

    fn fill_pieces(
        &mut self,
        shared: &Shared,
        config: &[u8; CONFIG_SIZE],
        max: usize,
        out: &mut SavePieces,
        scratch: &mut Vec<u8>,
    ) -> DeviceResult<()> {
        loop {
            let room = max - out.len();
            if room == 0 {
                return Ok(());
            }
            let framed = self.outbox.pending() == 0 && self.header_done;
            if framed && room >= RUN_MIN {
                if let Some(first) = self.next_page(shared) {
                    // (as many pages as either record form fits in the room)
                    let cap = ((room - OVERHEAD - RUN_HEAD) / PAGE as usize)
                        .min((room - OVERHEAD) / ENTRY)
                        .min(MAX_BATCH) as u32;
                    let mut count = 1u32;
                    while count < cap {
                        match self.next_page(shared) {
                            Some(p) if p == first + count => count += 1,
                            Some(p) => {
                                self.peeked = Some(p);
                                break;
                            }
                            None => break,
                        }
                    }
                    if count < MIN_RUN {
                        // Scattered pages (a few dirty ones): one copy each
                        // in an ordinary pages record costs less than a
                        // splice per page.
                        self.batch.clear();
                        self.batch.extend(first..first + count);
                        self.records += 1;
                        self.page_entries += u64::from(count);
                        let size = OVERHEAD + count as usize * ENTRY;
                        scratch.resize(size, 0);
                        self.write_pages(shared, &mut scratch[..size]);
                        // The record's checksum covers all but its
                        // trailer: the chunk's CRC needs no second pass.
                        let trailer = &scratch[size - 4..size];
                        let rec = u32::from_le_bytes(trailer.try_into().expect("4 bytes"));
                        let all = vfio_migrate_abi::crc::combine(rec, crc32c::crc32c(trailer), 4);
                        out.put_crc(&scratch[..size], all);
                    } else {
                        self.put_run(shared, first, count, out)?;
                    }
                    continue;
                }
            }
            // The header, what is left of a record, the registers and the
            // end — and page records when the room is too small for a run
            // — exactly as `save` writes them, copied (small).
            let k = if !self.header_done {
                HEADER_RECORD as usize
            } else if self.outbox.pending() > 0 {
                self.outbox.pending()
            } else {
                64 << 10
            }
            .min(room);
            scratch.resize(k, 0);
            let n = self.save(shared, config, &mut scratch[..k]);
            if n == 0 {
                return Ok(());
            }
            out.put(&scratch[..n]);
        }
    }

    /// A page-run record of pages `first..first + count`.
    fn put_run(
        &mut self,
        shared: &Shared,
        first: u32,
        count: u32,
        out: &mut SavePieces,
    ) -> DeviceResult<()> {
        let len = RUN_HEAD + count as usize * PAGE as usize;
        let mut head = [0u8; HEADER_LEN + RUN_HEAD];
        let mut crc = put_header(&mut head, KIND_PAGE_RUN, len as u32);
        head[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&first.to_le_bytes());
        head[HEADER_LEN + 4..].copy_from_slice(&count.to_le_bytes());
        crc = crc32c::crc32c_append(crc, &head[HEADER_LEN..]);
        let mut data_crc = 0u32;
        self.terms.clear();
        for p in u64::from(first)..u64::from(first) + u64::from(count) {
            shared.mem.read(p * PAGE, &mut self.page)?;
            let page_crc = crc32c::crc32c(&self.page);
            crc = append_page_crc(crc, page_crc);
            data_crc = append_page_crc(data_crc, page_crc);
            self.terms.push((p, term_of_crc(p, page_crc)));
        }
        shared.hashes.set(&self.terms);
        out.put(&head);
        out.put_file(
            shared.mem.fd(),
            u64::from(first) * PAGE,
            count as usize * PAGE as usize,
            data_crc,
        );
        out.put(&crc.to_le_bytes());
        self.records += 1;
        self.page_entries += u64::from(count);
        Ok(())
    }

    /// Bytes of the initial pass not handed out yet.
    pub fn initial_bytes(&self) -> u64 {
        let header = if self.header_done { 0 } else { HEADER_RECORD };
        let pending = if self.initial_next < self.pages || !self.header_done {
            self.outbox.pending() as u64
        } else {
            0
        };
        header + pages_bytes(self.pages - self.initial_next) + pending
    }

    /// Bytes of pages dirtied after they were sent.
    pub fn dirty_bytes(&self, shared: &Shared) -> u64 {
        pages_bytes(shared.dirty.count_range(0, self.initial_next))
    }

    /// Bytes the rest of the stream will take if it switches to STOP_COPY
    /// now (with no more dirtying).
    pub fn remaining_bytes(&self, shared: &Shared) -> u64 {
        let tail = match (self.state_done, self.end_done) {
            (false, _) => TAIL_RECORDS,
            (true, false) => (OVERHEAD + StreamEnd::LEN) as u64,
            (true, true) => 0,
        };
        let pending = self.outbox.pending() as u64;
        let header = if self.header_done { 0 } else { HEADER_RECORD };
        header
            + pages_bytes(self.pages - self.initial_next)
            + self.dirty_bytes(shared)
            + tail
            + pending
    }
}
