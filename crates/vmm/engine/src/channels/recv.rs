//! The destination's side of parallel channels: accepting them (each must
//! present the migration's token; anything else is logged and dropped),
//! one reader thread per channel that checks every record (checksums in
//! parallel) and queues it, and the migration thread taking the queued
//! items epoch by epoch.
//!
//! Memory stays bounded: each channel's queue holds at most `QUEUE`
//! records, and once the chunks waiting behind a gap reach
//! [`super::REORDER_CAP`] the migration thread takes only from channels
//! that can still fill the gap (a channel's chunks of one device come in
//! offset order, so a channel past the gap cannot), leaving the others to
//! TCP flow control.

use super::pool::BufPool;
use super::Acceptor;
use crate::cancel::Cancel;
use crate::format::{
    check_ram_run, ChannelHello, ChunkHead, Epoch, Kind, RamInfo, RamRun, RecordReader,
    CHUNK_STOP_COPY,
};
use std::collections::VecDeque;
use std::io::{BufReader, Read};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Records queued per channel.
pub(crate) const QUEUE: usize = 2;

/// One checked record from a data channel.
pub(crate) enum Item {
    /// Device data: `data[ChunkHead::SIZE..]` at `offset`.
    Chunk {
        device: usize,
        offset: u64,
        stop_copy: bool,
        data: Vec<u8>,
    },
    /// Guest pages: `data[RamRun::SIZE..]` from `first_page`.
    RamPages {
        first_page: u64,
        data: Vec<u8>,
    },
    /// Zero guest pages.
    RamZero {
        first_page: u64,
        count: u32,
    },
    Sync(Epoch),
    End,
    Failed(String),
}

impl Item {
    fn chunk_at(&self) -> Option<(usize, u64)> {
        match self {
            Item::Chunk { device, offset, .. } => Some((*device, *offset)),
            _ => None,
        }
    }
}

struct Queues {
    q: Vec<VecDeque<Item>>,
    closed: bool,
}

struct Inbox {
    st: Mutex<Queues>,
    arrived: Condvar,
    space: Condvar,
}

impl Inbox {
    fn push(&self, k: usize, item: Item) -> bool {
        let mut st = self.st.lock().unwrap_or_else(|p| p.into_inner());
        while st.q[k].len() >= QUEUE && !st.closed {
            st = self.space.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if st.closed {
            return false;
        }
        st.q[k].push_back(item);
        self.arrived.notify_all();
        true
    }
}

type Rd = RecordReader<BufReader<Box<dyn Read + Send>>>;
type Closer = Box<dyn Fn() + Send>;

/// An accepted, identified channel.
pub(crate) struct Accepted {
    index: usize,
    rd: Rd,
    close: Option<Closer>,
    peer: String,
}

/// Why the channels could not be set up or failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// Fewer channels connected than agreed within the deadline.
    #[error("{got} of {want} data channels connected within {secs} s")]
    Missing {
        /// Connected.
        got: usize,
        /// Agreed.
        want: usize,
        /// The deadline.
        secs: u64,
    },
    /// Accepting a connection failed.
    #[error("accepting data channels: {0}")]
    Accept(#[source] std::io::Error),
    /// A channel broke or carried something wrong.
    #[error("data channel {index} from {peer}: {reason}")]
    Broken {
        /// The channel.
        index: usize,
        /// Its peer.
        peer: String,
        /// What happened.
        reason: String,
    },
    /// The epochs disagree.
    #[error("data channel {index}: {reason}")]
    Protocol {
        /// The channel.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// Cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// Accepts `count` data channels presenting `token` within `wait`;
/// connections that do not are logged and dropped.
pub(crate) fn accept(
    count: usize,
    token: (u64, u64),
    acceptor: &mut Acceptor,
    wait: Duration,
    cancel: &Cancel,
) -> Result<Vec<Accepted>, ChannelError> {
    let until = Instant::now() + wait;
    let mut got: Vec<Option<Accepted>> = (0..count).map(|_| None).collect();
    let mut n = 0;
    while n < count {
        if cancel.is_cancelled() {
            return Err(ChannelError::Cancelled);
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ChannelError::Missing {
                got: n,
                want: count,
                secs: wait.as_secs(),
            });
        }
        let link = match acceptor(left) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(e) => return Err(ChannelError::Accept(e)),
        };
        let peer = link.peer.clone();
        let mut close = link.close;
        let mut rd = RecordReader::new(
            BufReader::with_capacity(256 << 10, link.rx),
            format!("{peer} (data channel)"),
        );
        let hello = rd.read_stream_header().and_then(|_| rd.next_record());
        let why = match hello {
            Ok(rec) if rec.kind == Kind::ChannelHello => {
                let h = ChannelHello::decode(rd.payload()).expect("length checked");
                let i = h.index as usize;
                if (h.token_lo, h.token_hi) != token {
                    Some("it belongs to another migration (wrong token)".to_string())
                } else if h.count as usize != count || i >= count {
                    Some(format!(
                        "it is channel {i} of {}, {count} were agreed",
                        h.count
                    ))
                } else if got[i].is_some() {
                    Some(format!("channel {i} connected twice"))
                } else {
                    got[i] = Some(Accepted {
                        index: i,
                        rd,
                        close,
                        peer: peer.clone(),
                    });
                    close = None;
                    n += 1;
                    None
                }
            }
            Ok(rec) => Some(format!(
                "it began with a {} record, not a channel hello",
                rec.kind
            )),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = why {
            tracing::warn!(peer = %peer, "refused a data-channel connection: {why}");
            eprintln!("refused a data-channel connection from {peer}: {why}; still waiting");
            if let Some(c) = close {
                c();
            }
        }
    }
    Ok(got.into_iter().map(|a| a.expect("all accepted")).collect())
}

/// Where a channel is in the current epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Open,
    Synced,
    Ended,
}

/// The destination's data channels, being read.
pub(crate) struct Inbound {
    inbox: Arc<Inbox>,
    threads: Vec<JoinHandle<()>>,
    closers: Vec<Closer>,
    peers: Vec<String>,
    at: Vec<At>,
    /// Per channel, per device: offset of the last chunk taken.
    last_off: Vec<Vec<Option<u64>>>,
    pool: Arc<BufPool>,
    epoch: u64,
    rr: usize,
}

fn read_channel(
    k: usize,
    mut rd: Rd,
    inbox: Arc<Inbox>,
    pool: Arc<BufPool>,
    devices: usize,
    ram: Option<RamInfo>,
) {
    loop {
        let item = match rd.next_record() {
            Err(e) => Item::Failed(e.to_string()),
            Ok(rec) => match rec.kind {
                Kind::Heartbeat => continue,
                Kind::DeviceChunk => {
                    let h = ChunkHead::decode(rd.payload()).expect("length checked");
                    if rec.device as usize >= devices {
                        Item::Failed(format!(
                            "data for device {}, the stream describes {devices}",
                            rec.device
                        ))
                    } else if h.flags & !CHUNK_STOP_COPY != 0 || h.reserved != 0 {
                        Item::Failed(format!("device chunk flags {:#x}", h.flags))
                    } else {
                        Item::Chunk {
                            device: rec.device as usize,
                            offset: h.offset,
                            stop_copy: h.flags & CHUNK_STOP_COPY != 0,
                            data: rd.take_payload(pool.take_now()),
                        }
                    }
                }
                Kind::RamPages | Kind::RamZero => {
                    let pages = rec.kind == Kind::RamPages;
                    match check_ram_run(ram, rd.payload(), pages) {
                        Ok(run) if pages => Item::RamPages {
                            first_page: run.first_page,
                            data: rd.take_payload(pool.take_now()),
                        },
                        Ok(run) => Item::RamZero {
                            first_page: run.first_page,
                            count: run.count,
                        },
                        Err(e) => Item::Failed(e),
                    }
                }
                Kind::ChannelSync => {
                    Item::Sync(Epoch::decode(rd.payload()).expect("length checked"))
                }
                Kind::End => match rd.check_end(&rec) {
                    Ok(()) => Item::End,
                    Err(e) => Item::Failed(e.to_string()),
                },
                k => Item::Failed(format!("a {k} record does not belong on a data channel")),
            },
        };
        let stop = matches!(item, Item::End | Item::Failed(_));
        if !inbox.push(k, item) || stop {
            return;
        }
    }
}

impl Inbound {
    /// Starts a reader for each channel; records are checked against
    /// `devices` devices and guest RAM `ram`.
    pub fn start(
        chans: Vec<Accepted>,
        devices: usize,
        ram: Option<RamInfo>,
    ) -> std::io::Result<Self> {
        let n = chans.len();
        let inbox = Arc::new(Inbox {
            st: Mutex::new(Queues {
                q: (0..n).map(|_| VecDeque::new()).collect(),
                closed: false,
            }),
            arrived: Condvar::new(),
            space: Condvar::new(),
        });
        let pool = Arc::new(BufPool::new(n * (QUEUE + 2), 0));
        let mut me = Self {
            inbox: inbox.clone(),
            threads: Vec::new(),
            closers: Vec::new(),
            peers: Vec::new(),
            at: vec![At::Open; n],
            last_off: vec![vec![None; devices]; n],
            pool: pool.clone(),
            epoch: 0,
            rr: 0,
        };
        for a in chans {
            debug_assert_eq!(a.index, me.peers.len());
            me.peers.push(a.peer);
            if let Some(c) = a.close {
                me.closers.push(c);
            }
            let (ib, p, k, rd) = (inbox.clone(), pool.clone(), a.index, a.rd);
            me.threads.push(
                std::thread::Builder::new()
                    .name(format!("receive-chan{k}"))
                    .spawn(move || read_channel(k, rd, ib, p, devices, ram))?,
            );
        }
        Ok(me)
    }

    /// Gives a data buffer back to the readers.
    pub fn recycle(&self, b: Vec<u8>) {
        self.pool.give(b);
    }

    /// The next item of epoch `epoch` (`None`: every channel reached its
    /// sync, or with `last` its end). `in_order(device, offset)` says
    /// whether a chunk would be written at once; `blocked` names a device
    /// and its missing offset when the waiting chunks reached the cap.
    pub fn next(
        &mut self,
        epoch: u64,
        last: bool,
        in_order: &dyn Fn(usize, u64) -> bool,
        blocked: Option<(usize, u64)>,
        cancel: &Cancel,
    ) -> Result<Option<Item>, ChannelError> {
        if epoch != self.epoch {
            return Err(ChannelError::Protocol {
                index: 0,
                reason: format!(
                    "the main stream announces epoch {epoch}, the channels are at {}",
                    self.epoch
                ),
            });
        }
        let n = self.at.len();
        loop {
            let done = if last {
                self.at.iter().all(|a| *a == At::Ended)
            } else {
                self.at.iter().all(|a| *a == At::Synced)
            };
            if done {
                if !last {
                    self.at.fill(At::Open);
                }
                self.epoch += 1;
                return Ok(None);
            }
            if cancel.is_cancelled() {
                return Err(ChannelError::Cancelled);
            }
            let mut st = self.inbox.st.lock().unwrap_or_else(|p| p.into_inner());
            let mut pick = None;
            for j in 0..n {
                let k = (self.rr + j) % n;
                let Some(front) = st.q[k].front() else {
                    continue;
                };
                let open = match self.at[k] {
                    At::Open => true,
                    At::Synced => last,
                    At::Ended => false,
                };
                let failed = matches!(front, Item::Failed(_));
                if !open && !failed {
                    continue;
                }
                let eligible = failed
                    || match (blocked, front.chunk_at()) {
                        (None, _) => true,
                        (Some(_), Some((d, o))) if in_order(d, o) => true,
                        (Some((d, gap)), _) => self.last_off[k][d].is_none_or(|o| o < gap),
                    };
                if eligible {
                    pick = Some(k);
                    break;
                }
            }
            let Some(k) = pick else {
                let _ = self
                    .inbox
                    .arrived
                    .wait_timeout(st, Duration::from_millis(100))
                    .unwrap_or_else(|p| p.into_inner());
                continue;
            };
            let item = st.q[k].pop_front().expect("front seen");
            self.inbox.space.notify_all();
            drop(st);
            self.rr = k + 1;
            let broken = |reason: String| ChannelError::Broken {
                index: k,
                peer: self.peers[k].clone(),
                reason,
            };
            match &item {
                Item::Failed(why) => return Err(broken(why.clone())),
                Item::Sync(e) => {
                    if self.at[k] != At::Open || e.epoch != self.epoch || (e.last == 1) != last {
                        return Err(ChannelError::Protocol {
                            index: k,
                            reason: format!(
                                "sync of epoch {} (last {}) while epoch {} (last {last}) is read",
                                e.epoch, e.last, self.epoch
                            ),
                        });
                    }
                    self.at[k] = At::Synced;
                    continue;
                }
                Item::End => {
                    if !(last && self.at[k] == At::Synced) {
                        return Err(broken("the channel ended before its last sync".into()));
                    }
                    self.at[k] = At::Ended;
                    continue;
                }
                _ if self.at[k] != At::Open => {
                    return Err(broken("data after the channel's last sync".into()));
                }
                Item::Chunk { device, offset, .. } => {
                    self.last_off[k][*device] = Some(*offset);
                }
                _ => {}
            }
            return Ok(Some(item));
        }
    }

    /// Stops the readers and closes the channels.
    pub fn abort(&mut self) {
        {
            let mut st = self.inbox.st.lock().unwrap_or_else(|p| p.into_inner());
            st.closed = true;
            for q in &mut st.q {
                q.clear();
            }
        }
        self.inbox.space.notify_all();
        for c in &self.closers {
            c();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Inbound {
    fn drop(&mut self) {
        self.abort();
    }
}

/// The page data of a [`Item::RamPages`] buffer.
pub(crate) fn ram_data(data: &[u8]) -> &[u8] {
    &data[RamRun::SIZE..]
}

/// The chunk data of a [`Item::Chunk`] buffer starts here.
pub(crate) const CHUNK_DATA: usize = ChunkHead::SIZE;
