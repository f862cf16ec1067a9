//! Reading a snapshot file whole: what it holds (devices, their
//! descriptors, record counts and sizes, guest RAM) and whether every
//! record and the structure around them check out — by the same
//! [`StreamParser`] the destination loads with. `inspect` prints this; a
//! restore runs it first so that a damaged file is refused before any
//! device is touched.

use crate::format::{Event, StreamError, StreamParser};
use crate::report::digest_hex;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Read;
use vfio_migrate_backend::DeviceDescriptor;

/// Count and payload bytes of one record type.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Count {
    /// Records.
    pub records: u64,
    /// Payload bytes.
    pub bytes: u64,
}

impl Count {
    fn add(&mut self, bytes: usize) {
        self.records += 1;
        self.bytes += bytes as u64;
    }
}

/// One device in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotDevice {
    /// Its index in the stream.
    pub index: u32,
    /// What a destination must match.
    pub descriptor: DeviceDescriptor,
    /// Pre-copy data records.
    pub precopy: Count,
    /// Stop-copy data records.
    pub stopcopy: Count,
    /// The device's save stream is complete (its end record was seen).
    pub complete: bool,
    /// Digest recorded at the source.
    pub digest: Option<String>,
    /// The source device was RUNNING when saved (a restore ends RUNNING);
    /// false: it was stopped (a restore ends in STOP).
    pub running: bool,
}

/// Guest RAM in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotRam {
    /// Size in bytes.
    pub size: u64,
    /// Page size.
    pub page_size: u64,
    /// Page runs (with data or zero).
    pub runs: Count,
    /// Distinct pages present.
    pub pages_present: u64,
}

/// What a snapshot holds and whether it checks out.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotSummary {
    /// The file, as named by the caller.
    pub name: String,
    /// Format version `major.minor`, once the header was read.
    pub format_version: Option<String>,
    /// Bytes read.
    pub bytes: u64,
    /// Records read.
    pub records: u64,
    /// Optional records of kinds this build does not know, skipped.
    pub skipped_records: u64,
    /// The devices described.
    pub devices: Vec<SnapshotDevice>,
    /// Guest RAM, when the snapshot carries it.
    pub ram: Option<SnapshotRam>,
    /// Record counts by type name.
    pub record_types: BTreeMap<String, Count>,
    /// Every record's checksum held and the structure is complete.
    pub ok: bool,
    /// What was wrong (empty when ok).
    pub problems: Vec<String>,
}

/// Reads `r` (named `name` in messages) to its end and checks it.
pub fn check(r: impl Read, name: &str) -> SnapshotSummary {
    let mut s = SnapshotSummary {
        name: name.to_string(),
        format_version: None,
        bytes: 0,
        records: 0,
        skipped_records: 0,
        devices: Vec::new(),
        ram: None,
        record_types: BTreeMap::new(),
        ok: false,
        problems: Vec::new(),
    };
    let mut p = StreamParser::new(
        std::io::BufReader::with_capacity(1 << 20, r),
        name.to_string(),
    );
    let res = walk(&mut p, &mut s);
    s.bytes = p.offset();
    s.records = p.records();
    s.skipped_records = p.skipped();
    match res {
        Ok(()) => {
            // Nothing may follow the end marker.
            let mut extra = 0u64;
            let mut buf = [0u8; 8192];
            loop {
                match p.get_mut().read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => extra += n as u64,
                    Err(e) => {
                        s.problems.push(format!("reading past the end marker: {e}"));
                        break;
                    }
                }
            }
            if extra > 0 {
                s.problems
                    .push(format!("{extra} bytes follow the end marker"));
            }
        }
        Err(e) => s.problems.push(e.to_string()),
    }
    s.ok = s.problems.is_empty();
    s
}

fn walk<R: Read>(p: &mut StreamParser<R>, s: &mut SnapshotSummary) -> Result<(), StreamError> {
    let (major, minor) = p.read_header()?;
    s.format_version = Some(format!("{major}.{minor}"));
    let mut pages: Vec<u64> = Vec::new();
    // Devices whose data came as chunks (a snapshot written with several
    // channels): which bytes of their stream arrived.
    let mut chunks: Vec<Option<crate::channels::reorder::Coverage>> = Vec::new();
    loop {
        let ev = p.read_event()?;
        let name = match &ev {
            Event::Device { .. } => "device",
            Event::Ram(_) => "ram",
            Event::RunState { .. } => "run-state",
            Event::SetupEnd { .. } => "setup-end",
            Event::Caps { .. } => "caps",
            Event::InitialSent { .. } => "initial-sent",
            Event::DeviceData {
                stop_copy: false, ..
            } => "device-precopy",
            Event::DeviceData { .. } => "device-stopcopy",
            Event::DeviceEnd { .. } => "device-end",
            Event::Round { .. } => "round",
            Event::Verify { .. } => "verify",
            Event::RamPages { .. } => "ram-pages",
            Event::RamZero { .. } => "ram-zero",
            Event::Abort { .. } => "abort",
            Event::End => "end",
            Event::Verified { .. } => "verified",
            Event::Go => "go",
            Event::Channels { .. } => "channels",
            Event::DeviceChunk { .. } => "device-chunk",
            Event::ChannelEpoch { .. } => "channel-epoch",
            Event::DeviceDataDeferred { .. } => unreachable!("nothing is deferred here"),
        };
        let mut end = false;
        match ev {
            Event::Device { index, descriptor } => {
                chunks.push(None);
                s.devices.push(SnapshotDevice {
                index: index as u32,
                descriptor,
                precopy: Count::default(),
                stopcopy: Count::default(),
                complete: false,
                digest: None,
                running: true,
                })
            }
            Event::RunState { index, running } => s.devices[index].running = running,
            Event::Ram(info) => {
                pages = vec![0; (info.size / info.page_size).div_ceil(64) as usize];
                s.ram = Some(SnapshotRam {
                    size: info.size,
                    page_size: info.page_size,
                    runs: Count::default(),
                    pages_present: 0,
                });
            }
            Event::DeviceData {
                index,
                stop_copy,
                data,
            } => {
                let d = &mut s.devices[index];
                if stop_copy {
                    &mut d.stopcopy
                } else {
                    &mut d.precopy
                }
                .add(data.len());
            }
            Event::DeviceChunk {
                index,
                offset,
                stop_copy,
                data,
            } => {
                let len = data.len();
                let c = chunks[index].get_or_insert_with(Default::default);
                c.add(offset, len as u64)
                    .map_err(|e| p.invalid(format!("device {index}: {e}")))?;
                let d = &mut s.devices[index];
                if stop_copy {
                    &mut d.stopcopy
                } else {
                    &mut d.precopy
                }
                .add(len);
            }
            Event::DeviceEnd { index, bytes } => {
                if let Some(c) = &chunks[index] {
                    c.finish(bytes)
                        .map_err(|e| p.invalid(format!("device {index}: {e}")))?;
                }
                s.devices[index].complete = true
            }
            Event::DeviceDataDeferred { .. } => unreachable!("nothing is deferred here"),
            Event::Channels { .. } | Event::ChannelEpoch { .. } => {
                return Err(p.invalid(
                    "a snapshot carries no data channels (channels and channel-epoch records do not belong in a file)",
                ))
            }
            Event::Verify { index, digest } => s.devices[index].digest = Some(digest_hex(digest)),
            Event::RamPages {
                first_page,
                count,
                data,
            } => note_run(s, &mut pages, first_page, count, data.len()),
            Event::RamZero { first_page, count } => note_run(s, &mut pages, first_page, count, 0),
            Event::Abort { reason } => {
                return Err(p.invalid(format!("the source aborted this stream: {reason}")))
            }
            Event::Go | Event::Verified { .. } => {
                return Err(p.invalid(format!("a {name} record does not belong in a snapshot")))
            }
            Event::End => end = true,
            Event::SetupEnd { .. }
            | Event::Round { .. }
            | Event::Caps { .. }
            | Event::InitialSent { .. } => {}
        }
        s.record_types
            .entry(name.to_string())
            .or_default()
            .add(p.payload_len());
        if end {
            return Ok(());
        }
    }
}

/// Counts a RAM run (the parser checked it fits guest RAM).
fn note_run(s: &mut SnapshotSummary, pages: &mut [u64], first: u64, count: u32, data: usize) {
    let Some(ram) = s.ram.as_mut() else { return };
    ram.runs.add(data);
    for p in first..first + u64::from(count) {
        let (w, b) = ((p / 64) as usize, 1u64 << (p % 64));
        if pages[w] & b == 0 {
            pages[w] |= b;
            ram.pages_present += 1;
        }
    }
}
