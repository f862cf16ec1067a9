//! Reading a snapshot file whole: what it holds (devices, their
//! descriptors, record counts and sizes, guest RAM) and whether every
//! record and the structure around them check out. `inspect` prints this;
//! a restore runs it first so that a damaged file is refused before any
//! device is touched.

use crate::format::{
    self, DeviceEnd, Digest, Kind, RamInfo, RamRun, RecordReader, SetupEnd, StreamError,
};
use crate::report::digest_hex;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Read;
use vfio_migrate_backend::DeviceDescriptor;

/// Count and payload bytes of one record type.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Count {
    pub records: u64,
    pub bytes: u64,
}

/// One device in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotDevice {
    pub index: u32,
    pub descriptor: DeviceDescriptor,
    pub precopy: Count,
    pub stopcopy: Count,
    /// The device's save stream is complete (its end record was seen).
    pub complete: bool,
    /// Digest recorded at the source.
    pub digest: Option<String>,
}

/// Guest RAM in a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotRam {
    pub size: u64,
    pub page_size: u64,
    pub runs: Count,
    /// Distinct pages present.
    pub pages_present: u64,
}

/// What a snapshot holds and whether it checks out.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotSummary {
    pub name: String,
    pub format_version: u32,
    pub bytes: u64,
    pub records: u64,
    pub devices: Vec<SnapshotDevice>,
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
        format_version: format::VERSION,
        bytes: 0,
        records: 0,
        devices: Vec::new(),
        ram: None,
        record_types: BTreeMap::new(),
        ok: false,
        problems: Vec::new(),
    };
    let mut rd = RecordReader::new(
        std::io::BufReader::with_capacity(1 << 20, r),
        name.to_string(),
    );
    let res = walk(&mut rd, &mut s);
    s.bytes = rd.offset();
    s.records = rd.records();
    match res {
        Ok(()) => {
            // Nothing may follow the end marker.
            let mut extra = 0u64;
            let mut buf = [0u8; 8192];
            loop {
                match rd.get_mut().read(&mut buf) {
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

fn walk<R: Read>(rd: &mut RecordReader<R>, s: &mut SnapshotSummary) -> Result<(), StreamError> {
    rd.read_stream_header()?;
    let mut setup_done = false;
    let mut pages: Vec<u64> = Vec::new();
    loop {
        let rec = rd.next_record()?;
        let c = s
            .record_types
            .entry(rec.kind.name().to_string())
            .or_default();
        c.records += 1;
        c.bytes += rd.payload().len() as u64;
        let dev = rec.device as usize;
        let need_dev = |s: &SnapshotSummary| -> Result<(), StreamError> {
            if dev >= s.devices.len() {
                return Err(rd.invalid(
                    &rec,
                    format!("device {dev} was not described in the setup section"),
                ));
            }
            Ok(())
        };
        match rec.kind {
            Kind::Device if !setup_done => {
                if dev != s.devices.len() {
                    return Err(
                        rd.invalid(&rec, format!("descriptor of device {dev} out of order"))
                    );
                }
                let descriptor: DeviceDescriptor =
                    serde_json::from_slice(rd.payload()).map_err(|e| {
                        rd.invalid(&rec, format!("device descriptor is not valid: {e}"))
                    })?;
                s.devices.push(SnapshotDevice {
                    index: rec.device,
                    descriptor,
                    precopy: Count::default(),
                    stopcopy: Count::default(),
                    complete: false,
                    digest: None,
                });
            }
            Kind::Ram if !setup_done && s.ram.is_none() => {
                let info = RamInfo::decode(rd.payload()).expect("length checked");
                if !info.page_size.is_power_of_two()
                    || info.page_size > format::MAX_PAGE_SIZE
                    || !info.size.is_multiple_of(info.page_size)
                {
                    return Err(rd.invalid(
                        &rec,
                        format!(
                            "guest RAM of {} bytes in pages of {} is not valid",
                            info.size, info.page_size
                        ),
                    ));
                }
                pages = vec![0; (info.size / info.page_size).div_ceil(64) as usize];
                s.ram = Some(SnapshotRam {
                    size: info.size,
                    page_size: info.page_size,
                    runs: Count::default(),
                    pages_present: 0,
                });
            }
            Kind::SetupEnd if !setup_done => {
                let e = SetupEnd::decode(rd.payload()).expect("length checked");
                if e.devices as usize != s.devices.len() || e.flags != 0 {
                    return Err(rd.invalid(
                        &rec,
                        format!(
                            "announces {} devices but {} were described",
                            e.devices,
                            s.devices.len()
                        ),
                    ));
                }
                setup_done = true;
            }
            Kind::DevicePrecopy | Kind::DeviceStopCopy if setup_done => {
                need_dev(s)?;
                let d = &mut s.devices[dev];
                if d.complete {
                    return Err(rd.invalid(&rec, format!("data for device {dev} after its end")));
                }
                let c = if rec.kind == Kind::DevicePrecopy {
                    &mut d.precopy
                } else {
                    &mut d.stopcopy
                };
                c.records += 1;
                c.bytes += rd.payload().len() as u64;
            }
            Kind::DeviceEnd if setup_done => {
                need_dev(s)?;
                let d = &mut s.devices[dev];
                let e = DeviceEnd::decode(rd.payload()).expect("length checked");
                if e.bytes != d.precopy.bytes + d.stopcopy.bytes {
                    return Err(rd.invalid(
                        &rec,
                        format!(
                            "device {dev}: {} bytes of state announced, {} present",
                            e.bytes,
                            d.precopy.bytes + d.stopcopy.bytes
                        ),
                    ));
                }
                d.complete = true;
            }
            Kind::Round if setup_done => {}
            Kind::Verify if setup_done => {
                need_dev(s)?;
                s.devices[dev].digest = Some(digest_hex(
                    Digest::decode(rd.payload()).expect("length checked").digest,
                ));
            }
            Kind::RamPages | Kind::RamZero if setup_done => {
                let Some(ram) = s.ram.as_mut() else {
                    return Err(rd.invalid(
                        &rec,
                        "guest RAM pages, but the snapshot announced no guest RAM",
                    ));
                };
                let run = RamRun::decode(rd.payload()).expect("length checked");
                let data = rd.payload().len() - RamRun::SIZE;
                let total = ram.size / ram.page_size;
                let fits = matches!(run.first_page.checked_add(u64::from(run.count)), Some(e) if e <= total);
                let want = if rec.kind == Kind::RamPages {
                    u64::from(run.count) * ram.page_size
                } else {
                    0
                };
                if run.reserved != 0 || run.count == 0 || data as u64 != want || !fits {
                    return Err(rd.invalid(
                        &rec,
                        format!(
                            "RAM run of {} pages at page {} does not fit guest RAM",
                            run.count, run.first_page
                        ),
                    ));
                }
                ram.runs.records += 1;
                ram.runs.bytes += data as u64;
                for p in run.first_page..run.first_page + u64::from(run.count) {
                    let (w, b) = ((p / 64) as usize, 1u64 << (p % 64));
                    if pages[w] & b == 0 {
                        pages[w] |= b;
                        ram.pages_present += 1;
                    }
                }
            }
            Kind::End if setup_done => {
                rd.check_end(&rec)?;
                if let Some(d) = s.devices.iter().find(|d| !d.complete) {
                    return Err(
                        rd.invalid(&rec, format!("device {}'s state is incomplete", d.index))
                    );
                }
                return Ok(());
            }
            k => {
                return Err(rd.invalid(
                    &rec,
                    format!(
                        "a {k} record does not belong {}",
                        if setup_done {
                            "after setup"
                        } else {
                            "in the setup section"
                        }
                    ),
                ))
            }
        }
    }
}
