//! The source's side of parallel channels: one sender thread per channel
//! takes whole records from a short queue, checksums and writes them (so
//! the checksums and socket copies of N channels run in parallel with the
//! device reads of the migration thread), and gives the data buffer back
//! to a bounded pool. Each device's data goes as chunks carrying their
//! offset in the device's stream; a chunk goes to the channel with the
//! shortest queue, so a slow channel gets less.
//!
//! Live, each channel is its own connection with a heartbeat; an epoch
//! (a pre-copy round, or the stop-copy) ends with a sync record on every
//! channel, the last one with the channel's end marker. Into a snapshot
//! file every sender writes whole records into the one file, interleaved
//! (chunks may land out of order; a restore puts them back), and a record
//! of the main stream waits until the queues are empty.

use super::pool::BufPool;
use crate::format::{ChannelHello, ChunkHead, Epoch, Kind, RecordWriter, StreamError, NO_DEVICE};
use crate::heartbeat::{Heartbeat, SharedWriter};
use crate::link::Link;
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A channel's writer (also the main stream's type).
pub(crate) type Out = SharedWriter<BufWriter<Box<dyn Write + Send>>>;

/// Queue length of each sender.
const QUEUE: usize = 2;

enum Msg {
    Data {
        kind: Kind,
        device: u32,
        head: [u8; 16],
        head_len: usize,
        buf: Vec<u8>,
        len: usize,
    },
    Sync(Epoch),
}

/// What a sender thread shares with the migration thread.
#[derive(Default)]
struct Shared {
    /// Messages queued or being written.
    queued: AtomicUsize,
    error: Mutex<Option<String>>,
    /// When `error` was set (the first channel to fail is the cause).
    failed_at: std::sync::OnceLock<std::time::Instant>,
    idle: Condvar,
}

struct Chan {
    tx: Option<SyncSender<Msg>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    out: Out,
    close: Option<Box<dyn Fn() + Send>>,
    heartbeat: Option<Heartbeat>,
    peer: String,
}

/// A channel failed.
#[derive(Debug)]
pub(crate) struct ChannelFailed {
    /// Which channel.
    pub index: usize,
    /// Its peer.
    pub peer: String,
    /// What happened.
    pub reason: String,
}

/// The source's data channels.
pub(crate) struct ChannelSet {
    chans: Vec<Chan>,
    pool: Arc<BufPool>,
    offsets: Vec<u64>,
    epoch: u64,
    live: bool,
    next: usize,
    token: (u64, u64),
    count: usize,
}

fn sender(rx: std::sync::mpsc::Receiver<Msg>, out: Out, pool: Arc<BufPool>, sh: Arc<Shared>) {
    let done = |sh: &Shared| {
        sh.queued.fetch_sub(1, Ordering::AcqRel);
        let _g = sh.error.lock().unwrap_or_else(|p| p.into_inner());
        sh.idle.notify_all();
    };
    while let Ok(m) = rx.recv() {
        let r: Result<(), StreamError> = match m {
            Msg::Data {
                kind,
                device,
                head,
                head_len,
                buf,
                len,
            } => {
                let r = out.write_parts(kind, device, &[&head[..head_len], &buf[..len]]);
                pool.give(buf);
                r
            }
            Msg::Sync(e) => out
                .write(Kind::ChannelSync, NO_DEVICE, &e.to_bytes())
                .and_then(|()| {
                    if e.last == 1 {
                        out.write_end()?;
                    }
                    out.flush()
                }),
        };
        if let Err(e) = r {
            let _ = sh.failed_at.set(std::time::Instant::now());
            *sh.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            done(&sh);
            return;
        }
        done(&sh);
    }
}

impl ChannelSet {
    fn spawn(
        index: usize,
        out: Out,
        pool: Arc<BufPool>,
        close: Option<Box<dyn Fn() + Send>>,
        heartbeat: Option<Heartbeat>,
        peer: String,
    ) -> std::io::Result<Chan> {
        let (tx, rx) = sync_channel(QUEUE);
        let shared = Arc::new(Shared::default());
        let (o, p, s) = (out.clone(), pool, shared.clone());
        let thread = std::thread::Builder::new()
            .name(format!("migrate-chan{index}"))
            .spawn(move || sender(rx, o, p, s))?;
        Ok(Chan {
            tx: Some(tx),
            thread: Some(thread),
            shared,
            out,
            close,
            heartbeat,
            peer,
        })
    }

    fn pool(count: usize, chunk: usize) -> Arc<BufPool> {
        // Every queue full, one being read from the device.
        Arc::new(BufPool::new(count * QUEUE + 2, chunk))
    }

    /// An empty set of `count` live channels (see [`ChannelSet::add_live`]).
    pub fn live(count: usize, token: (u64, u64), devices: usize, chunk: usize) -> Self {
        Self {
            chans: Vec::with_capacity(count),
            pool: Self::pool(count, chunk),
            offsets: vec![0; devices],
            epoch: 0,
            live: true,
            next: 0,
            token,
            count,
        }
    }

    /// Opens the next live channel over `link`: its stream header and a
    /// hello with the token go out at once (a receiver admits a
    /// connection only once it spoke).
    pub fn add_live(&mut self, link: Link) -> Result<(), ChannelFailed> {
        let i = self.chans.len();
        let peer = link.peer.clone();
        let fail = |reason: String| ChannelFailed {
            index: i,
            peer: peer.clone(),
            reason,
        };
        let out: Out = SharedWriter::new(RecordWriter::new(
            BufWriter::with_capacity(64 << 10, link.tx),
            format!("{} (data channel {i})", link.peer),
        ));
        let hello = ChannelHello {
            token_lo: self.token.0,
            token_hi: self.token.1,
            index: i as u32,
            count: self.count as u32,
        };
        out.write_stream_header()
            .and_then(|()| out.write(Kind::ChannelHello, NO_DEVICE, &hello.to_bytes()))
            .and_then(|()| out.flush())
            .map_err(|e| fail(e.to_string()))?;
        let hb = link
            .heartbeat
            .map(|every| Heartbeat::start(out.clone(), every));
        let ch = Self::spawn(i, out, self.pool.clone(), link.close, hb, peer.clone())
            .map_err(|e| fail(e.to_string()))?;
        self.chans.push(ch);
        Ok(())
    }

    /// `count` senders writing into the main stream `out` (a snapshot).
    pub fn into_file(
        out: &Out,
        count: usize,
        devices: usize,
        chunk: usize,
    ) -> std::io::Result<Self> {
        let pool = Self::pool(count, chunk);
        let mut chans = Vec::new();
        for i in 0..count {
            chans.push(Self::spawn(
                i,
                out.clone(),
                pool.clone(),
                None,
                None,
                String::new(),
            )?);
        }
        Ok(Self {
            chans,
            pool,
            offsets: vec![0; devices],
            epoch: 0,
            live: false,
            next: 0,
            token: (0, 0),
            count,
        })
    }

    /// Channels in the set.
    pub fn count(&self) -> usize {
        self.chans.len()
    }

    /// True for connections of their own (not a file).
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Stream bytes the channels wrote on their own connections (into a
    /// file they count in the main stream).
    pub fn bytes(&self) -> u64 {
        if !self.live {
            return 0;
        }
        self.chans.iter().map(|c| c.out.bytes()).sum()
    }

    fn failed(&self, i: usize) -> ChannelFailed {
        let c = &self.chans[i];
        let reason = c
            .shared
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "its sender stopped".into());
        ChannelFailed {
            index: i,
            peer: c.peer.clone(),
            reason,
        }
    }

    /// The channel that failed first, if any.
    pub fn check(&self) -> Result<(), ChannelFailed> {
        let first = self
            .chans
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                c.shared
                    .error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_some()
            })
            .min_by_key(|(_, c)| c.shared.failed_at.get().copied());
        match first {
            Some((i, _)) => Err(self.failed(i)),
            None => Ok(()),
        }
    }

    /// A data buffer (waits for one to come back, up to `wait`).
    pub fn buffer(&self, wait: Duration) -> Result<Option<Vec<u8>>, ChannelFailed> {
        self.check()?;
        Ok(self.pool.take(wait))
    }

    /// Gives an unused buffer back.
    pub fn give_back(&self, b: Vec<u8>) {
        self.pool.give(b);
    }

    fn pick(&mut self) -> usize {
        let n = self.chans.len();
        let mut best = self.next % n;
        for k in 0..n {
            let i = (self.next + k) % n;
            if self.chans[i].shared.queued.load(Ordering::Acquire)
                < self.chans[best].shared.queued.load(Ordering::Acquire)
            {
                best = i;
            }
        }
        self.next = best + 1;
        best
    }

    fn send(&mut self, i: usize, m: Msg) -> Result<(), ChannelFailed> {
        let c = &self.chans[i];
        c.shared.queued.fetch_add(1, Ordering::AcqRel);
        let sent = c.tx.as_ref().map(|tx| tx.send(m));
        match sent {
            Some(Ok(())) => Ok(()),
            _ => {
                c.shared.queued.fetch_sub(1, Ordering::AcqRel);
                Err(self.failed(i))
            }
        }
    }

    /// Sends `buf[..len]`, device `device`'s data read in `stop_copy` or
    /// not, as the next chunk of its stream.
    pub fn device_chunk(
        &mut self,
        device: usize,
        stop_copy: bool,
        buf: Vec<u8>,
        len: usize,
    ) -> Result<(), ChannelFailed> {
        let h = ChunkHead {
            offset: self.offsets[device],
            flags: if stop_copy {
                crate::format::CHUNK_STOP_COPY
            } else {
                0
            },
            reserved: 0,
        };
        self.offsets[device] += len as u64;
        let mut head = [0u8; 16];
        head.copy_from_slice(&h.to_bytes());
        let i = self.pick();
        self.send(
            i,
            Msg::Data {
                kind: Kind::DeviceChunk,
                device: device as u32,
                head,
                head_len: ChunkHead::SIZE,
                buf,
                len,
            },
        )
    }

    /// Sends one whole record (a RAM run) on the least busy channel; its
    /// parts are copied into a pool buffer.
    pub fn record(
        &mut self,
        kind: Kind,
        device: u32,
        parts: &[&[u8]],
        wait: &dyn Fn() -> Result<(), ChannelFailed>,
    ) -> Result<(), ChannelFailed> {
        let (head, body) = match parts {
            [h, b] if h.len() <= 16 => (*h, *b),
            [h] if h.len() <= 16 => (*h, &[][..]),
            _ => unreachable!("RAM records are a head and page data"),
        };
        let mut buf = loop {
            wait()?;
            if let Some(b) = self.buffer(Duration::from_millis(100))? {
                break b;
            }
        };
        if buf.len() < body.len() {
            buf.resize(body.len(), 0);
        }
        buf[..body.len()].copy_from_slice(body);
        let mut h = [0u8; 16];
        h[..head.len()].copy_from_slice(head);
        let i = self.pick();
        self.send(
            i,
            Msg::Data {
                kind,
                device,
                head: h,
                head_len: head.len(),
                buf,
                len: body.len(),
            },
        )
    }

    /// Live: ends the current epoch on every channel (the last one also
    /// ends the channels); the next epoch starts. A file: waits until
    /// every queued record is written.
    pub fn end_epoch(&mut self, last: bool) -> Result<(), ChannelFailed> {
        if self.live {
            let e = Epoch {
                epoch: self.epoch,
                last: u32::from(last),
                reserved: 0,
            };
            for i in 0..self.chans.len() {
                self.send(i, Msg::Sync(e))?;
            }
            self.epoch += 1;
            if last {
                self.join()?;
            }
            return Ok(());
        }
        self.drain()
    }

    /// The epoch about to start.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Waits until every queued record was written.
    pub fn drain(&mut self) -> Result<(), ChannelFailed> {
        for i in 0..self.chans.len() {
            let sh = self.chans[i].shared.clone();
            let mut g = sh.error.lock().unwrap_or_else(|p| p.into_inner());
            while sh.queued.load(Ordering::Acquire) > 0 && g.is_none() {
                g = sh
                    .idle
                    .wait_timeout(g, Duration::from_millis(100))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            if g.is_some() {
                drop(g);
                return Err(self.failed(i));
            }
        }
        Ok(())
    }

    /// Closes the queues and waits for the senders to finish.
    fn join(&mut self) -> Result<(), ChannelFailed> {
        for c in &mut self.chans {
            c.tx = None;
        }
        for c in &mut self.chans {
            if let Some(t) = c.thread.take() {
                let _ = t.join();
            }
            c.heartbeat = None;
        }
        self.check()
    }

    /// After a failure: cuts every channel (its peer sees the end at
    /// once) and stops the senders.
    pub fn abort(&mut self) {
        for c in &mut self.chans {
            c.heartbeat = None;
            if let Some(close) = &c.close {
                close();
            }
            c.tx = None;
        }
        for c in &mut self.chans {
            if let Some(t) = c.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// After success: the connections are closed.
    pub fn close(&mut self) {
        for c in &mut self.chans {
            c.heartbeat = None;
            if let Some(close) = c.close.take() {
                close();
            }
        }
    }
}

impl Drop for ChannelSet {
    fn drop(&mut self) {
        self.abort();
    }
}
