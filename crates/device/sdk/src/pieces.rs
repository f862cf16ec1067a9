//! A chunk of a save stream described instead of copied ([`SavePieces`]):
//! bytes the device wrote, and ranges of a file — its memfd-backed memory —
//! that whoever sends the chunk moves by `splice` (the pipe takes the
//! file's pages, nothing is copied through the server). The device gives
//! each range's CRC32C, which it computes anyway for its own records, so
//! the chunk's checksum (`FEATURE_MIG_DATA_CRC`) costs no pass over the
//! data either.
//!
//! A range is read when it is sent, not when it is described: only a
//! device whose memory cannot change meanwhile (stopped: STOP_COPY) may
//! describe its memory so. Should it change anyway, the checksum no longer
//! matches and the destination refuses the data.

use std::os::fd::OwnedFd;
use std::sync::Arc;

/// One piece of a chunk, in stream order.
#[derive(Debug, Clone)]
pub enum Piece {
    /// `SavePieces::bytes()[range]`.
    Bytes(std::ops::Range<usize>),
    /// `len` bytes of `fd` from `offset`.
    File {
        /// The file (a memfd the device's memory is mapped from).
        fd: Arc<OwnedFd>,
        /// Where the range starts in the file.
        offset: u64,
        /// Its length.
        len: usize,
    },
}

/// The pieces of one chunk, their total length and CRC32C. Reused from
/// chunk to chunk ([`SavePieces::clear`]).
#[derive(Debug, Default)]
pub struct SavePieces {
    bytes: Vec<u8>,
    pieces: Vec<Piece>,
    len: usize,
    crc: u32,
}

impl SavePieces {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets every piece, keeping the buffers.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.pieces.clear();
        self.len = 0;
        self.crc = 0;
    }

    /// Appends bytes (copied here; meant for record framing and small
    /// records).
    pub fn put(&mut self, b: &[u8]) {
        self.put_crc(b, crc32c::crc32c(b));
    }

    /// [`SavePieces::put`] of bytes whose CRC32C the caller already has
    /// (e.g. a record it just checksummed): no second pass over them.
    pub fn put_crc(&mut self, b: &[u8], crc: u32) {
        if b.is_empty() {
            return;
        }
        let start = self.bytes.len();
        self.bytes.extend_from_slice(b);
        match self.pieces.last_mut() {
            Some(Piece::Bytes(r)) if r.end == start => r.end = self.bytes.len(),
            _ => self.pieces.push(Piece::Bytes(start..self.bytes.len())),
        }
        self.crc = vfio_migrate_abi::crc::combine(self.crc, crc, b.len());
        self.len += b.len();
    }

    /// Appends `len` bytes of `fd` from `offset`, whose CRC32C is `crc`.
    pub fn put_file(&mut self, fd: &Arc<OwnedFd>, offset: u64, len: usize, crc: u32) {
        if len == 0 {
            return;
        }
        self.pieces.push(Piece::File {
            fd: Arc::clone(fd),
            offset,
            len,
        });
        self.crc = vfio_migrate_abi::crc::combine(self.crc, crc, len);
        self.len += len;
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// CRC32C of all the bytes, in order.
    pub fn crc(&self) -> u32 {
        self.crc
    }

    /// The pieces in order.
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// The bytes that [`Piece::Bytes`] ranges index.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_checksum_is_that_of_the_bytes_in_order_and_bytes_merge() {
        let mut f = tempfile_with(&[7u8; 10_000]);
        f.flush().unwrap();
        let fd: Arc<OwnedFd> = Arc::new(f.into());
        let mut p = SavePieces::new();
        p.put(b"head");
        p.put_crc(b"er", crc32c::crc32c(b"er"));
        p.put_file(&fd, 100, 8192, crc32c::crc32c(&[7u8; 8192]));
        p.put(b"tail");
        let mut all = b"header".to_vec();
        all.extend_from_slice(&[7u8; 8192]);
        all.extend_from_slice(b"tail");
        assert_eq!(p.len(), all.len());
        assert_eq!(p.crc(), crc32c::crc32c(&all));
        assert_eq!(p.pieces().len(), 3, "adjacent bytes are one piece");
        p.clear();
        assert!(p.is_empty() && p.pieces().is_empty() && p.crc() == 0);
    }

    fn tempfile_with(data: &[u8]) -> std::fs::File {
        let dir = std::env::temp_dir().join(format!("sdk-pieces-{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&dir)
            .unwrap();
        std::fs::remove_file(&dir).unwrap();
        f.write_all(data).unwrap();
        f
    }
}
