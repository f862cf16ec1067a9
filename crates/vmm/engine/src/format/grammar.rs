//! The one place that decides what a forward stream may contain and in
//! which order: [`StreamParser`] reads records through the codec and turns
//! them into [`Event`]s, refusing anything out of place — so the
//! destination (loading) and `inspect` / restore (checking a file) enforce
//! exactly the same rules.
//!
//! ```text
//! header
//! device(0..n) [caps] [channels] [ram] setup-end        ── setup
//! { device-precopy | device-stopcopy | device-end | device-chunk
//!   | round | initial-sent | verify | ram-pages | ram-zero
//!   | channel-epoch }*  end                              ── body
//! [ go ]                                                ── live only
//! abort may come anywhere (the source gives up).
//! ```

use super::codec::{Next, Record, RecordReader};
use super::error::{RecordProblem, StreamError};
use super::records::{
    Caps, ChannelsRequest, ChunkHead, DeviceEnd, Digest, Epoch, InitialGen, Kind, RamInfo, RamRun,
    Round, RunState, SetupEnd, CHUNK_STOP_COPY, MAX_CHANNELS, MAX_PAGE_SIZE,
};
use std::io::Read;
use vfio_migrate_backend::DeviceDescriptor;

/// One checked step of a forward stream.
#[derive(Debug, PartialEq)]
pub enum Event<'a> {
    /// Device `index`'s compatibility descriptor (indices come in order).
    Device {
        /// Device index.
        index: usize,
        /// What the destination must match.
        descriptor: DeviceDescriptor,
    },
    /// The run state of device `index` at the source (after its
    /// descriptor; streams of minor 0 have none: the device was RUNNING).
    RunState {
        /// Device index.
        index: usize,
        /// The source device was RUNNING (else STOP).
        running: bool,
    },
    /// The guest RAM layout.
    Ram(RamInfo),
    /// The source asks for parallel data channels.
    Channels {
        /// Channels asked for.
        count: u32,
        /// The token each channel will present.
        token: (u64, u64),
    },
    /// A chunk of device `index`'s save stream at `offset` (chunks may
    /// come in any order; written to the device in offset order).
    DeviceChunk {
        /// Device index.
        index: usize,
        /// Offset in the device's save stream.
        offset: u64,
        /// Read in STOP_COPY.
        stop_copy: bool,
        /// The bytes.
        data: &'a [u8],
    },
    /// A record of device `index`'s data whose `len` payload bytes were
    /// left unread in the underlying reader for the caller to move (see
    /// [`StreamParser::read_event_deferring`]); they must have CRC32C
    /// `data_crc`.
    DeviceDataDeferred {
        /// Device index.
        index: usize,
        /// Read in STOP_COPY.
        stop_copy: bool,
        /// Payload bytes to move.
        len: usize,
        /// Their CRC32C.
        data_crc: u32,
    },
    /// An epoch's data comes on the data channels now.
    ChannelEpoch {
        /// Its number.
        epoch: u64,
        /// The channels end after it.
        last: bool,
    },
    /// What the source offers (minor 3): `CAP_*` bits.
    Caps {
        /// The bits.
        flags: u64,
    },
    /// Device `index`'s initial pre-copy data of `generation` was sent
    /// whole (minor 3).
    InitialSent {
        /// Device index.
        index: usize,
        /// Which initial data (0, then one more per REINIT).
        generation: u64,
    },
    /// End of the setup section: `devices` were described.
    SetupEnd {
        /// Devices described.
        devices: usize,
    },
    /// A chunk of device `index`'s save stream.
    DeviceData {
        /// Device index.
        index: usize,
        /// Read in STOP_COPY (else PRE_COPY).
        stop_copy: bool,
        /// The bytes, in stream order.
        data: &'a [u8],
    },
    /// Device `index`'s save stream is complete (`bytes` in total, checked).
    DeviceEnd {
        /// Device index.
        index: usize,
        /// Bytes of state sent for it.
        bytes: u64,
    },
    /// A pre-copy round ended.
    Round {
        /// The round number.
        iteration: u64,
    },
    /// The source's digest of device `index`.
    Verify {
        /// Device index.
        index: usize,
        /// The digest.
        digest: u64,
    },
    /// `count` guest pages from `first_page` (checked to lie in guest RAM).
    RamPages {
        /// First page.
        first_page: u64,
        /// Pages.
        count: u32,
        /// `count × page_size` bytes.
        data: &'a [u8],
    },
    /// `count` all-zero guest pages from `first_page`.
    RamZero {
        /// First page.
        first_page: u64,
        /// Pages.
        count: u32,
    },
    /// The source gave up.
    Abort {
        /// Its reason.
        reason: String,
    },
    /// The end marker (record count and size checked, every device ended).
    End,
    /// Live only, after the end, before go: the source compared
    /// `compared` of `devices` device digests and all were equal.
    Verified {
        /// Digests compared.
        compared: u32,
        /// Devices in the migration.
        devices: u32,
    },
    /// Live only, after the end: the destination may run.
    Go,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Setup,
    Body,
    Ended,
    Done,
}

#[derive(Debug, Clone, Copy, Default)]
struct DeviceTrack {
    bytes: u64,
    ended: bool,
}

/// Reads a forward stream and enforces its grammar (see the module doc).
pub struct StreamParser<R: Read> {
    rd: RecordReader<R>,
    stage: Stage,
    devices: Vec<DeviceTrack>,
    announced: usize,
    ram: Option<RamInfo>,
    last: Option<Record>,
    channels_asked: bool,
}

impl<R: Read> StreamParser<R> {
    /// A parser over `r`; `what` names the channel in errors.
    pub fn new(r: R, what: impl Into<String>) -> Self {
        Self {
            rd: RecordReader::new(r, what),
            stage: Stage::Setup,
            devices: Vec::new(),
            announced: 0,
            ram: None,
            last: None,
            channels_asked: false,
        }
    }

    /// Reads and checks the stream header; returns `(major, minor)`.
    pub fn read_header(&mut self) -> Result<(u16, u16), StreamError> {
        self.rd.read_stream_header()
    }

    /// The next event. After [`Event::End`] only [`Event::Go`] or
    /// [`Event::Abort`] may follow; after [`Event::Go`] nothing.
    pub fn read_event(&mut self) -> Result<Event<'_>, StreamError> {
        self.read_event_deferring(None)
    }

    /// Like [`StreamParser::read_event`], but a device-data record (pre-
    /// or stop-copy) whose length is in `defer` (if any) comes as
    /// [`Event::DeviceDataDeferred`]: checked up to its payload, which the
    /// caller then moves out of the underlying reader itself (and has
    /// checked against its checksum by whoever takes it).
    pub fn read_event_deferring(
        &mut self,
        defer: Option<std::ops::RangeInclusive<usize>>,
    ) -> Result<Event<'_>, StreamError> {
        let body = self.stage == Stage::Body;
        let defer = |k: Kind, len: usize| {
            body && defer.as_ref().is_some_and(|d| d.contains(&len))
                && matches!(k, Kind::DevicePrecopy | Kind::DeviceStopCopy)
        };
        let rec = loop {
            match self.rd.next_record_or_defer(&defer)? {
                // Heartbeats may come anywhere; they only prove the source
                // lives.
                Next::Record(r) if r.kind == Kind::Heartbeat => continue,
                Next::Record(r) => break r,
                Next::Deferred { rec, len, data_crc } => {
                    self.last = Some(rec);
                    let index = self.device(rec)?;
                    self.count_channel_data(index, len as u64)
                        .map_err(|e| self.invalid(e))?;
                    return Ok(Event::DeviceDataDeferred {
                        index,
                        stop_copy: rec.kind == Kind::DeviceStopCopy,
                        len,
                        data_crc,
                    });
                }
            }
        };
        self.last = Some(rec);
        if rec.kind == Kind::Abort {
            return Ok(Event::Abort {
                reason: self.rd.payload_text(),
            });
        }
        let place = match self.stage {
            Stage::Setup => "in the setup section",
            Stage::Body => "after the setup section",
            Stage::Ended => "after the end marker",
            Stage::Done => "after go",
        };
        let out_of_place = || RecordProblem::OutOfPlace {
            kind: rec.kind,
            place,
        };
        match (self.stage, rec.kind) {
            (Stage::Setup, Kind::Device) => {
                let index = self.devices.len();
                if rec.device as usize != index {
                    return Err(self.invalid(format!(
                        "descriptor of device {} out of order (expected device {index})",
                        rec.device
                    )));
                }
                let descriptor = serde_json::from_slice(self.rd.payload())
                    .map_err(|e| self.invalid(format!("device descriptor is not valid: {e}")))?;
                self.devices.push(DeviceTrack::default());
                Ok(Event::Device { index, descriptor })
            }
            (Stage::Setup, Kind::RunState) => {
                let index = rec.device as usize;
                if index >= self.devices.len() {
                    return Err(self.rd.refuse(
                        &rec,
                        RecordProblem::UnknownDevice {
                            device: rec.device,
                            described: self.devices.len(),
                        },
                    ));
                }
                let r = RunState::decode(self.rd.payload()).expect("length checked");
                let running = match vfio_migrate_abi::kernel::MigState::from_u32(r.state) {
                    Ok(vfio_migrate_abi::kernel::MigState::Running) => true,
                    Ok(vfio_migrate_abi::kernel::MigState::Stop) => false,
                    _ => {
                        return Err(self.invalid(format!(
                            "device {index}: run state {} is neither RUNNING nor STOP",
                            r.state
                        )))
                    }
                };
                Ok(Event::RunState { index, running })
            }
            (Stage::Setup, Kind::Ram) if self.ram.is_none() => {
                let info = RamInfo::decode(self.rd.payload()).expect("length checked");
                if !info.page_size.is_power_of_two()
                    || info.page_size > MAX_PAGE_SIZE
                    || !info.size.is_multiple_of(info.page_size)
                {
                    return Err(self.invalid(format!(
                        "guest RAM of {} bytes in pages of {} is not valid",
                        info.size, info.page_size
                    )));
                }
                self.ram = Some(info);
                Ok(Event::Ram(info))
            }
            (Stage::Setup, Kind::Channels) if !self.channels_asked => {
                self.channels_asked = true;
                let c = ChannelsRequest::decode(self.rd.payload()).expect("length checked");
                if !(2..=MAX_CHANNELS).contains(&c.count) || c.flags != 0 {
                    return Err(self.invalid(format!(
                        "{} data channels asked for (2 to {MAX_CHANNELS} allowed)",
                        c.count
                    )));
                }
                Ok(Event::Channels {
                    count: c.count,
                    token: (c.token_lo, c.token_hi),
                })
            }
            (Stage::Setup, Kind::Caps) => Ok(Event::Caps {
                flags: Caps::decode(self.rd.payload())
                    .expect("length checked")
                    .flags,
            }),
            (Stage::Body, Kind::InitialSent) => {
                let index = self.device(rec)?;
                let generation = InitialGen::decode(self.rd.payload())
                    .expect("length checked")
                    .generation;
                Ok(Event::InitialSent { index, generation })
            }
            (Stage::Setup, Kind::SetupEnd) => {
                let e = SetupEnd::decode(self.rd.payload()).expect("length checked");
                if e.devices as usize != self.devices.len() || e.flags != 0 {
                    return Err(self.invalid(format!(
                        "the setup section announces {} devices but describes {}",
                        e.devices,
                        self.devices.len()
                    )));
                }
                self.announced = self.devices.len();
                self.stage = Stage::Body;
                Ok(Event::SetupEnd {
                    devices: self.announced,
                })
            }
            (Stage::Body, Kind::DevicePrecopy | Kind::DeviceStopCopy) => {
                let index = self.device(rec)?;
                if self.devices[index].ended {
                    return Err(self.invalid(format!("data for device {index} after its end")));
                }
                self.devices[index].bytes += self.rd.payload().len() as u64;
                Ok(Event::DeviceData {
                    index,
                    stop_copy: rec.kind == Kind::DeviceStopCopy,
                    data: self.rd.payload(),
                })
            }
            (Stage::Body, Kind::DeviceChunk) => {
                let index = self.device(rec)?;
                let p = self.rd.payload();
                let h = ChunkHead::decode(p).expect("length checked");
                let data_len = (p.len() - ChunkHead::SIZE) as u64;
                if h.flags & !CHUNK_STOP_COPY != 0 || h.reserved != 0 {
                    return Err(self.invalid(format!("device chunk flags {:#x}", h.flags)));
                }
                self.count_channel_data(index, data_len)
                    .map_err(|e| self.invalid(e))?;
                Ok(Event::DeviceChunk {
                    index,
                    offset: h.offset,
                    stop_copy: h.flags & CHUNK_STOP_COPY != 0,
                    data: &self.rd.payload()[ChunkHead::SIZE..],
                })
            }
            (Stage::Body, Kind::ChannelEpoch) => {
                let e = Epoch::decode(self.rd.payload()).expect("length checked");
                if e.last > 1 || e.reserved != 0 {
                    return Err(self.invalid("channel epoch with unknown flags"));
                }
                Ok(Event::ChannelEpoch {
                    epoch: e.epoch,
                    last: e.last == 1,
                })
            }
            (Stage::Body, Kind::DeviceEnd) => {
                let index = self.device(rec)?;
                let e = DeviceEnd::decode(self.rd.payload()).expect("length checked");
                let d = &mut self.devices[index];
                if d.ended {
                    return Err(self.invalid(format!("device {index} ended twice")));
                }
                if e.bytes != d.bytes {
                    let have = d.bytes;
                    return Err(self.invalid(format!(
                        "device {index}: the source sent {} bytes of state, {have} arrived",
                        e.bytes
                    )));
                }
                d.ended = true;
                Ok(Event::DeviceEnd {
                    index,
                    bytes: e.bytes,
                })
            }
            (Stage::Body, Kind::Round) => Ok(Event::Round {
                iteration: Round::decode(self.rd.payload())
                    .expect("length checked")
                    .iteration,
            }),
            (Stage::Body, Kind::Verify) => {
                let index = self.device(rec)?;
                let digest = Digest::decode(self.rd.payload())
                    .expect("length checked")
                    .digest;
                Ok(Event::Verify { index, digest })
            }
            (Stage::Body, Kind::RamPages | Kind::RamZero) => {
                let run = self.ram_run(rec.kind == Kind::RamPages)?;
                Ok(if rec.kind == Kind::RamPages {
                    Event::RamPages {
                        first_page: run.first_page,
                        count: run.count,
                        data: &self.rd.payload()[RamRun::SIZE..],
                    }
                } else {
                    Event::RamZero {
                        first_page: run.first_page,
                        count: run.count,
                    }
                })
            }
            (Stage::Body, Kind::End) => {
                self.rd.check_end(&rec)?;
                if let Some(i) = self.devices.iter().position(|d| !d.ended) {
                    return Err(self.invalid(format!(
                        "the stream ends without the end of device {i}'s state"
                    )));
                }
                self.stage = Stage::Ended;
                Ok(Event::End)
            }
            (Stage::Ended, Kind::Verified) => {
                let v = crate::format::Verdict::decode(self.rd.payload()).expect("length checked");
                Ok(Event::Verified {
                    compared: v.compared,
                    devices: v.devices,
                })
            }
            (Stage::Ended, Kind::Go) => {
                self.stage = Stage::Done;
                Ok(Event::Go)
            }
            _ => Err(self.rd.refuse(&rec, out_of_place())),
        }
    }

    fn device(&self, rec: Record) -> Result<usize, StreamError> {
        let i = rec.device as usize;
        if i >= self.announced {
            return Err(self.rd.refuse(
                &rec,
                RecordProblem::UnknownDevice {
                    device: rec.device,
                    described: self.announced,
                },
            ));
        }
        Ok(i)
    }

    fn ram_run(&self, with_data: bool) -> Result<RamRun, StreamError> {
        check_ram_run(self.ram, self.rd.payload(), with_data).map_err(|e| self.invalid(e))
    }

    /// Counts `bytes` of device `index`'s data that arrived outside this
    /// stream (on a data channel, or in a chunk): refused after the
    /// device's end, so its end checks the total.
    pub fn count_channel_data(&mut self, index: usize, bytes: u64) -> Result<(), String> {
        let Some(d) = self
            .devices
            .get_mut(index)
            .filter(|_| index < self.announced)
        else {
            return Err(format!("data for device {index}, which was not described"));
        };
        if d.ended {
            return Err(format!("data for device {index} after its end"));
        }
        d.bytes += bytes;
        Ok(())
    }

    /// The last record read (to name it in errors).
    pub fn last_record(&self) -> Option<Record> {
        self.last
    }

    /// An error naming the last record read.
    pub fn invalid(&self, what: impl Into<String>) -> StreamError {
        match &self.last {
            Some(rec) => self.rd.invalid(rec, what),
            None => StreamError::Record {
                index: 0,
                offset: self.rd.offset(),
                problem: RecordProblem::Invalid(what.into()),
            },
        }
    }

    /// Payload bytes of the last record read.
    pub fn payload_len(&self) -> usize {
        self.rd.payload().len()
    }

    /// The guest RAM layout, once announced.
    pub fn ram(&self) -> Option<RamInfo> {
        self.ram
    }

    /// Devices described so far.
    pub fn devices(&self) -> usize {
        self.devices.len()
    }

    /// Bytes of state received for device `index` so far.
    pub fn device_bytes(&self, index: usize) -> u64 {
        self.devices.get(index).map_or(0, |d| d.bytes)
    }

    /// True once the end marker was read.
    pub fn ended(&self) -> bool {
        matches!(self.stage, Stage::Ended | Stage::Done)
    }

    /// Bytes read so far.
    pub fn offset(&self) -> u64 {
        self.rd.offset()
    }

    /// Records read so far.
    pub fn records(&self) -> u64 {
        self.rd.records()
    }

    /// Optional records of unknown kinds skipped.
    pub fn skipped(&self) -> u64 {
        self.rd.skipped()
    }

    /// The stream's minor format version.
    pub fn minor(&self) -> u16 {
        self.rd.minor()
    }

    /// The underlying reader (e.g. to drain or check what follows the end).
    pub fn get_mut(&mut self) -> &mut R {
        self.rd.get_mut()
    }
}

/// Checks a RAM run payload (`ram-pages` with data, `ram-zero` without)
/// against the announced guest RAM layout.
pub fn check_ram_run(
    ram: Option<RamInfo>,
    payload: &[u8],
    with_data: bool,
) -> Result<RamRun, String> {
    let Some(info) = ram else {
        return Err("guest RAM pages, but the stream announced no guest RAM".into());
    };
    let run = RamRun::decode(payload).expect("length checked");
    let data_len = (payload.len() - RamRun::SIZE) as u64;
    let ps = info.page_size;
    let pages = info.size / ps;
    let want = if with_data {
        u64::from(run.count) * ps
    } else {
        0
    };
    let fits = matches!(run.first_page.checked_add(u64::from(run.count)), Some(e) if e <= pages);
    if run.reserved != 0 || run.count == 0 || data_len != want || !fits {
        return Err(format!(
            "RAM run of {} pages at page {} with {} bytes does not fit {} pages of {} bytes",
            run.count, run.first_page, data_len, pages, ps
        ));
    }
    Ok(run)
}
