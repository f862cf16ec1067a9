//! Reassembly of one device's save stream from chunks that carry their
//! offset ([`crate::format::Kind::DeviceChunk`]) and may arrive in any
//! order: in-order bytes go to the device at once, early chunks wait
//! (bounded by the caller, see [`super::recv`]), and anything that
//! overlaps what arrived already is refused.

use std::collections::BTreeMap;

/// What is wrong with a chunk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// It overlaps bytes that already arrived (a duplicate, or a stream
    /// that lies about its offsets).
    #[error("chunk of {len} bytes at offset {offset} overlaps data that already arrived (the stream is at {next}{})", if *.pending { ", with later chunks waiting" } else { "" })]
    Overlap {
        /// Its offset.
        offset: u64,
        /// Its length.
        len: u64,
        /// Bytes written in order so far.
        next: u64,
        /// Whether later chunks wait.
        pending: bool,
    },
    /// The stream ended with a gap.
    #[error("the device's data has a gap at offset {next}: {waiting} bytes arrived after it and the bytes before them never did")]
    Gap {
        /// First missing byte.
        next: u64,
        /// Bytes waiting behind the gap.
        waiting: u64,
    },
    /// Its end does not fit in 64 bits.
    #[error("chunk at offset {offset} of {len} bytes runs past the largest offset")]
    TooFar {
        /// Its offset.
        offset: u64,
        /// Its length.
        len: u64,
    },
}

/// One device's stream being put back in order.
#[derive(Debug, Default)]
pub struct Reassembly {
    next: u64,
    /// Early chunks by offset: a buffer and where the data starts in it.
    pending: BTreeMap<u64, (Vec<u8>, usize)>,
    pending_bytes: u64,
}

impl Reassembly {
    /// Bytes handed to the device in order so far.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Bytes waiting behind a gap.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), ChunkError> {
        let end = offset
            .checked_add(len)
            .ok_or(ChunkError::TooFar { offset, len })?;
        let overlap = ChunkError::Overlap {
            offset,
            len,
            next: self.next,
            pending: !self.pending.is_empty(),
        };
        if offset < self.next {
            return Err(overlap);
        }
        if let Some((&o, (b, at))) = self.pending.range(..=offset).next_back() {
            if o + (b.len() - at) as u64 > offset {
                return Err(overlap);
            }
        }
        if let Some((&o, _)) = self.pending.range(offset..).next() {
            if o < end {
                return Err(overlap);
            }
        }
        Ok(())
    }

    /// Takes `data` at `offset`: written through `write` when it is next
    /// (then whatever waited behind it), else kept (copied) until then.
    pub fn push<E>(
        &mut self,
        offset: u64,
        data: &[u8],
        write: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), PushError<E>> {
        self.check(offset, data.len() as u64)
            .map_err(PushError::Chunk)?;
        if offset != self.next {
            self.pending_bytes += data.len() as u64;
            self.pending.insert(offset, (data.to_vec(), 0));
            return Ok(());
        }
        write(data).map_err(PushError::Write)?;
        self.next += data.len() as u64;
        self.flush(write, &mut |_| {})
    }

    /// Like [`Reassembly::push`] for `buf[at..]`, a buffer already owned
    /// (no copy when it has to wait). Buffers done with go to `recycle`.
    pub fn push_owned<E>(
        &mut self,
        offset: u64,
        buf: Vec<u8>,
        at: usize,
        write: &mut dyn FnMut(&[u8]) -> Result<(), E>,
        recycle: &mut dyn FnMut(Vec<u8>),
    ) -> Result<(), PushError<E>> {
        let len = (buf.len() - at) as u64;
        if let Err(e) = self.check(offset, len) {
            recycle(buf);
            return Err(PushError::Chunk(e));
        }
        if offset != self.next {
            self.pending_bytes += len;
            self.pending.insert(offset, (buf, at));
            return Ok(());
        }
        let r = write(&buf[at..]);
        recycle(buf);
        r.map_err(PushError::Write)?;
        self.next += len;
        self.flush(write, recycle)
    }

    fn flush<E>(
        &mut self,
        write: &mut dyn FnMut(&[u8]) -> Result<(), E>,
        recycle: &mut dyn FnMut(Vec<u8>),
    ) -> Result<(), PushError<E>> {
        while let Some((b, at)) = self.pending.remove(&self.next) {
            let len = (b.len() - at) as u64;
            self.pending_bytes -= len;
            let r = write(&b[at..]);
            recycle(b);
            r.map_err(PushError::Write)?;
            self.next += len;
        }
        Ok(())
    }

    /// `len` bytes went to the device in order by another way (a splice);
    /// false when chunks wait behind a gap (they would have come first).
    pub fn passed(&mut self, len: u64) -> bool {
        if !self.pending.is_empty() {
            return false;
        }
        self.next += len;
        true
    }

    /// The stream is over: nothing may wait behind a gap.
    pub fn finish(&self) -> Result<(), ChunkError> {
        if self.pending.is_empty() {
            Ok(())
        } else {
            Err(ChunkError::Gap {
                next: self.next,
                waiting: self.pending_bytes,
            })
        }
    }
}

/// Which bytes of a device's stream a reader has seen, for a check that
/// keeps no data (`inspect`, the check before a restore).
#[derive(Debug, Default)]
pub struct Coverage {
    /// Disjoint `[start, end)` ranges by start.
    ranges: BTreeMap<u64, u64>,
}

impl Coverage {
    /// Notes `len` bytes at `offset`; refuses an overlap.
    pub fn add(&mut self, offset: u64, len: u64) -> Result<(), ChunkError> {
        let end = offset
            .checked_add(len)
            .ok_or(ChunkError::TooFar { offset, len })?;
        let overlap = |next| ChunkError::Overlap {
            offset,
            len,
            next,
            pending: false,
        };
        if let Some((_, &e)) = self.ranges.range(..=offset).next_back() {
            if e > offset {
                return Err(overlap(e));
            }
        }
        if let Some((&s, _)) = self.ranges.range(offset..).next() {
            if s < end {
                return Err(overlap(s));
            }
        }
        let mut start = offset;
        let mut stop = end;
        if let Some((&s, &e)) = self.ranges.range(..=offset).next_back() {
            if e == offset {
                start = s;
                self.ranges.remove(&s);
            }
        }
        if let Some(e) = self.ranges.remove(&end) {
            stop = e;
        }
        self.ranges.insert(start, stop);
        Ok(())
    }

    /// The bytes seen are exactly `[0, total)`.
    pub fn finish(&self, total: u64) -> Result<(), ChunkError> {
        let mut it = self.ranges.iter();
        match (it.next(), it.next()) {
            (None, None) if total == 0 => Ok(()),
            (Some((&0, &e)), None) if e == total => Ok(()),
            (Some((&s, &e)), _) => Err(ChunkError::Gap {
                next: if s == 0 { e } else { 0 },
                waiting: self.ranges.values().sum::<u64>() - self.ranges.keys().sum::<u64>(),
            }),
            _ => Err(ChunkError::Gap {
                next: 0,
                waiting: 0,
            }),
        }
    }
}

/// A chunk refused, or the write of an in-order one failed.
#[derive(Debug)]
pub enum PushError<E> {
    /// The chunk does not fit the stream.
    Chunk(ChunkError),
    /// Writing to the device failed.
    Write(E),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(
        r: &mut Reassembly,
        out: &mut Vec<u8>,
        off: u64,
        d: &[u8],
    ) -> Result<(), ChunkError> {
        r.push::<()>(off, d, &mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })
        .map_err(|e| match e {
            PushError::Chunk(c) => c,
            PushError::Write(()) => unreachable!(),
        })
    }

    #[test]
    fn puts_chunks_back_in_order_whatever_order_they_come_in() {
        let data: Vec<u8> = (0..100u8).collect();
        for order in [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]] {
            let mut r = Reassembly::default();
            let mut out = Vec::new();
            let cuts = [0usize, 10, 45, 46, 100];
            for &k in &order {
                collect(
                    &mut r,
                    &mut out,
                    cuts[k] as u64,
                    &data[cuts[k]..cuts[k + 1]],
                )
                .unwrap();
            }
            r.finish().unwrap();
            assert_eq!(out, data, "order {order:?}");
            assert_eq!(r.pending_bytes(), 0);
        }
    }

    #[test]
    fn coverage_merges_and_finds_gaps() {
        let mut c = Coverage::default();
        c.add(10, 10).unwrap();
        c.add(0, 10).unwrap();
        assert!(c.add(5, 1).is_err());
        assert!(c.finish(20).is_ok());
        c.add(30, 5).unwrap();
        assert!(c.finish(35).is_err());
        c.add(20, 10).unwrap();
        c.finish(35).unwrap();
        assert!(Coverage::default().finish(0).is_ok());
    }

    #[test]
    fn overlaps_duplicates_and_gaps_are_refused() {
        let mut r = Reassembly::default();
        let mut out = Vec::new();
        collect(&mut r, &mut out, 0, &[1; 10]).unwrap();
        assert!(matches!(
            collect(&mut r, &mut out, 0, &[1; 10]),
            Err(ChunkError::Overlap { .. })
        ));
        assert!(collect(&mut r, &mut out, 5, &[1; 10]).is_err());
        collect(&mut r, &mut out, 20, &[1; 10]).unwrap();
        assert!(collect(&mut r, &mut out, 25, &[1; 2]).is_err());
        assert!(collect(&mut r, &mut out, 15, &[1; 6]).is_err());
        assert!(collect(&mut r, &mut out, u64::MAX, &[1; 2]).is_err());
        assert_eq!(
            r.finish(),
            Err(ChunkError::Gap {
                next: 10,
                waiting: 10
            })
        );
        collect(&mut r, &mut out, 10, &[1; 10]).unwrap();
        r.finish().unwrap();
        assert_eq!(out.len(), 30);
    }
}
