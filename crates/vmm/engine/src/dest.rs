//! The destination side of a migration: [`migrate_in`].
//!
//! ```text
//! setup     read descriptors + RAM layout; check them against the local
//!           devices and RAM; devices → RESUMING; answer ACCEPT / REFUSE
//! load      device data → write_data, RAM runs → guest RAM (RAM hash kept
//!           up to date page by page), digests remembered, until END
//! resume    devices → STOP (validates); compare digests; answer READY;
//!           wait for GO (live); devices → RUNNING; answer RUNNING
//! ```
//!
//! The destination never runs on partial or unverified state: any failure
//! leaves its devices out of RUNNING and is answered with FAILED (live).

use crate::cancel::Cancel;
use crate::error::EngineError;
use crate::format::{
    self, DeviceEnd, Digest, Kind, RamInfo, RamRun, Record, RecordReader, RecordWriter, SetupEnd,
    NO_DEVICE,
};
use crate::guest::GuestRam;
use crate::link::DestLink;
use crate::progress::Phase;
use crate::report::digest_hex;
use crate::verify::{ram_hash, RamHash, Verifier};
use serde::{Deserialize, Serialize};
use std::io::{BufReader, Read, Write};
use std::time::{Duration, Instant};
use vfio_migrate_backend::{DeviceDescriptor, MigState, MigrationDevice};

/// What the destination reports when it is loaded and validated.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReadyInfo {
    /// Each device's digest after RESUMING → STOP, when known.
    pub digests: Vec<Option<u64>>,
    /// Guest RAM hash as loaded, when kept.
    pub ram_hash: Option<u64>,
    /// Time spent reading digests (part of the downtime), ms.
    #[serde(default)]
    pub digest_ms: f64,
}

/// How the destination loads.
#[derive(Default)]
pub struct DestOptions {
    /// Reads device digests to compare with the source's.
    pub verifier: Option<Verifier>,
    /// Keep a hash of guest RAM as pages arrive, for the source to compare.
    pub hash_ram: bool,
    /// Cancels the load (the destination then never runs).
    pub cancel: Cancel,
    /// Called with the stream bytes read so far, about every 64 MiB and at
    /// phase changes.
    pub progress: Option<Box<dyn FnMut(Phase, u64) + Send>>,
}

/// What the destination loaded.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DestReport {
    pub devices: Vec<DestDevice>,
    /// Stream bytes read.
    pub bytes: u64,
    /// Guest RAM page bytes written.
    pub ram_bytes: u64,
    /// Guest RAM hash as loaded, when kept.
    pub ram_hash: Option<String>,
    /// Every device digest compared and equal, and at least one compared.
    pub verified: bool,
    /// Time from the first byte to RUNNING.
    pub total_ms: f64,
}

/// One destination device's part.
#[derive(Debug, Clone, Serialize)]
pub struct DestDevice {
    pub name: String,
    pub model: String,
    pub data_bytes: u64,
    pub digest_source: Option<String>,
    pub digest_dest: Option<String>,
    pub verified: Option<bool>,
}

struct DevIn<'a, D> {
    h: &'a mut D,
    name: String,
    written: u64,
    ended: bool,
    source_digest: Option<u64>,
    dest_digest: Option<u64>,
}

struct Dest<'a, D> {
    devs: Vec<DevIn<'a, D>>,
    descs: Vec<DeviceDescriptor>,
    guest: Option<&'a dyn GuestRam>,
    ram: Option<RamInfo>,
    rd: RecordReader<BufReader<Box<dyn Read + Send>>>,
    wr: Option<RecordWriter<Box<dyn Write + Send>>>,
    peer: String,
    opts: DestOptions,
    phase: Phase,
    hash: Option<RamHash>,
    old_page: Vec<u8>,
    ram_bytes: u64,
    next_progress: u64,
    /// REFUSE was sent already.
    refused: bool,
    /// Zeros to clear pages with (allocated on first use).
    zeros: Vec<u8>,
    /// CRC32C of a zero page, for the RAM hash.
    zero_crc: u32,
    /// Last time the devices were checked between rounds.
    last_check: Instant,
}

/// Loads a migration from `link` into `devices` (and `guest` RAM), and
/// starts them. Live links are answered at every step; a snapshot file is
/// checked record by record (use [`crate::snapshot::check`] first to refuse
/// a damaged file before any device is touched).
pub fn migrate_in<D: MigrationDevice>(
    devices: &mut [D],
    guest: Option<&dyn GuestRam>,
    link: DestLink,
    opts: DestOptions,
) -> Result<DestReport, EngineError> {
    let t0 = Instant::now();
    let peer = link.peer.clone();
    let mut d = Dest {
        devs: Vec::new(),
        descs: Vec::new(),
        guest,
        ram: None,
        rd: RecordReader::new(
            BufReader::with_capacity(256 << 10, link.rx),
            format!("the source {peer}"),
        ),
        wr: link
            .tx
            .map(|w| RecordWriter::new(w, format!("the source {peer}"))),
        peer,
        opts,
        phase: Phase::Setup,
        hash: None,
        old_page: Vec::new(),
        ram_bytes: 0,
        next_progress: 0,
        refused: false,
        zeros: Vec::new(),
        zero_crc: 0,
        last_check: t0,
    };
    let r = d.run(devices);
    let r = match r {
        Ok(()) => {
            let devices: Vec<DestDevice> = d
                .devs
                .iter()
                .zip(&d.descs)
                .map(|(x, desc)| DestDevice {
                    name: x.name.clone(),
                    model: desc.model.clone(),
                    data_bytes: x.written,
                    digest_source: x.source_digest.map(digest_hex),
                    digest_dest: x.dest_digest.map(digest_hex),
                    verified: match (x.source_digest, x.dest_digest) {
                        (Some(a), Some(b)) => Some(a == b),
                        _ => None,
                    },
                })
                .collect();
            let compared: Vec<bool> = devices.iter().filter_map(|x| x.verified).collect();
            Ok(DestReport {
                verified: !compared.is_empty() && compared.iter().all(|v| *v),
                devices,
                bytes: d.rd.offset(),
                ram_bytes: d.ram_bytes,
                ram_hash: d.hash.map(|h| digest_hex(h.0)),
                total_ms: t0.elapsed().as_secs_f64() * 1000.0,
            })
        }
        Err(e) => {
            d.fail(&e);
            Err(e)
        }
    };
    if let Some(close) = link.close {
        close();
    }
    r
}

impl<'a, D: MigrationDevice> Dest<'a, D> {
    fn run(&mut self, devices: &'a mut [D]) -> Result<(), EngineError> {
        if let Some(w) = self.wr.as_mut() {
            w.write_stream_header()
                .map_err(|e| stream(Phase::Setup, &self.peer, e))?;
            w.flush().map_err(|e| stream(Phase::Setup, &self.peer, e))?;
        }
        self.rd
            .read_stream_header()
            .map_err(|e| stream(Phase::Setup, &self.peer, e))?;
        self.setup(devices)?;
        self.phase = Phase::PreCopy;
        self.load()?;
        self.phase = Phase::Resume;
        self.progress();
        self.resume()
    }

    fn next(&mut self) -> Result<Record, EngineError> {
        if self.opts.cancel.is_cancelled() {
            return Err(EngineError::Cancelled { phase: self.phase });
        }
        let rec = self
            .rd
            .next_record()
            .map_err(|e| stream(self.phase, &self.peer, e))?;
        if rec.kind == Kind::Abort {
            return Err(EngineError::SourceAborted {
                phase: self.phase,
                peer: self.peer.clone(),
                reason: self.rd.payload_text(),
            });
        }
        Ok(rec)
    }

    fn bad(&self, rec: &Record, what: impl Into<String>) -> EngineError {
        stream(self.phase, &self.peer, self.rd.invalid(rec, what))
    }

    fn reply(&mut self, kind: Kind, payload: &[u8]) -> Result<(), EngineError> {
        let Some(w) = self.wr.as_mut() else {
            return Ok(());
        };
        match w.write(kind, NO_DEVICE, payload).and_then(|()| w.flush()) {
            Ok(()) => Ok(()),
            Err(e) => Err(self
                .closed_early()
                .unwrap_or_else(|| stream(self.phase, &self.peer, e))),
        }
    }

    /// The source closed its side: if it said why (ABORT) in what is still
    /// unread, that is the error to report.
    fn closed_early(&mut self) -> Option<EngineError> {
        for _ in 0..1024 {
            match self.rd.next_record() {
                Ok(r) if r.kind == Kind::Abort => {
                    return Some(EngineError::SourceAborted {
                        phase: self.phase,
                        peer: self.peer.clone(),
                        reason: self.rd.payload_text(),
                    })
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    fn progress(&mut self) {
        if let Some(f) = self.opts.progress.as_mut() {
            f(self.phase, self.rd.offset());
        }
    }

    /// Reads the setup section and answers it.
    fn setup(&mut self, devices: &'a mut [D]) -> Result<(), EngineError> {
        let mut descs: Vec<DeviceDescriptor> = Vec::new();
        let setup_end = loop {
            let rec = self.next()?;
            match rec.kind {
                Kind::Device => {
                    if rec.device as usize != descs.len() {
                        return Err(self.bad(
                            &rec,
                            format!("descriptor of device {} out of order", rec.device),
                        ));
                    }
                    let d = serde_json::from_slice(self.rd.payload()).map_err(|e| {
                        self.bad(&rec, format!("device descriptor is not valid: {e}"))
                    })?;
                    descs.push(d);
                }
                Kind::Ram if self.ram.is_none() => {
                    let info = RamInfo::decode(self.rd.payload()).expect("length checked");
                    if !info.page_size.is_power_of_two()
                        || info.page_size > format::MAX_PAGE_SIZE
                        || !info.size.is_multiple_of(info.page_size)
                    {
                        return Err(self.bad(
                            &rec,
                            format!(
                                "guest RAM of {} bytes in pages of {} is not valid",
                                info.size, info.page_size
                            ),
                        ));
                    }
                    self.ram = Some(info);
                }
                Kind::SetupEnd => {
                    break SetupEnd::decode(self.rd.payload()).expect("length checked")
                }
                k => {
                    return Err(self.bad(
                        &rec,
                        format!("a {k} record cannot appear in the setup section"),
                    ))
                }
            }
        };
        if setup_end.devices as usize != descs.len() || setup_end.flags != 0 {
            return Err(EngineError::invalid(
                Phase::Setup,
                format!(
                    "the setup section announces {} devices but describes {}",
                    setup_end.devices,
                    descs.len()
                ),
            ));
        }
        match self.check_compatible(devices, &descs) {
            Ok(()) => {}
            Err(reason) => {
                let _ = self.reply(Kind::Refuse, format::reason_bytes(&reason));
                self.refused = true;
                return Err(EngineError::invalid(
                    Phase::Setup,
                    format!("incompatible: {reason}"),
                ));
            }
        }
        for h in devices.iter_mut() {
            self.devs.push(DevIn {
                name: h.name(),
                h,
                written: 0,
                ended: false,
                source_digest: None,
                dest_digest: None,
            });
        }
        self.descs = descs;
        for i in 0..self.devs.len() {
            let d = &mut self.devs[i];
            if let Err(e) = d.h.set_state(MigState::Resuming) {
                let err = EngineError::device(Phase::Setup, d.name.clone(), e);
                let _ = self.reply(Kind::Refuse, format::reason_bytes(&err.to_string()));
                self.refused = true;
                return Err(err);
            }
        }
        if let (Some(g), true) = (self.guest, self.opts.hash_ram && self.ram.is_some()) {
            let h = ram_hash(g).map_err(|e| EngineError::Guest {
                phase: Phase::Setup,
                source: e,
            })?;
            self.hash = Some(h);
            self.old_page = vec![0u8; g.page_size() as usize];
            self.zero_crc = crate::verify::zero_page_crc(g.page_size());
        }
        self.reply(Kind::Accept, &[])?;
        Ok(())
    }

    /// Why state from `descs` cannot be loaded here, if it cannot.
    fn check_compatible(
        &self,
        devices: &mut [D],
        descs: &[DeviceDescriptor],
    ) -> Result<(), String> {
        if descs.len() != devices.len() {
            return Err(format!(
                "the stream carries {} device(s), the destination has {}",
                descs.len(),
                devices.len()
            ));
        }
        let mut why = Vec::new();
        for (i, (h, src)) in devices.iter_mut().zip(descs).enumerate() {
            match h.descriptor() {
                Ok(local) => {
                    if let Err(r) = src.check_compatible(&local) {
                        why.push(format!("device {i} ({}): {r}", h.name()));
                    }
                }
                Err(e) => why.push(format!(
                    "device {i} ({}): cannot read its descriptor: {e}",
                    h.name()
                )),
            }
            match h.state() {
                Ok(MigState::Running | MigState::Stop) => {}
                Ok(s) => why.push(format!(
                    "device {i} ({}) is in {s}; a destination must be RUNNING or STOP to load",
                    h.name()
                )),
                Err(e) => why.push(format!(
                    "device {i} ({}): cannot read its state: {e}",
                    h.name()
                )),
            }
        }
        match (self.ram, self.guest) {
            (Some(r), Some(g)) if r.size != g.size() || r.page_size != g.page_size() => why.push(format!(
                "guest RAM is {} bytes in {}-byte pages at the source, {} bytes in {}-byte pages here",
                r.size,
                r.page_size,
                g.size(),
                g.page_size()
            )),
            (Some(r), None) => why.push(format!(
                "the stream carries {} bytes of guest RAM but the destination has no guest RAM",
                r.size
            )),
            _ => {}
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why.join("; "))
        }
    }

    fn device_index(&self, rec: &Record) -> Result<usize, EngineError> {
        let i = rec.device as usize;
        if i >= self.devs.len() {
            return Err(self.bad(
                rec,
                format!(
                    "device {i} does not exist (the stream has {})",
                    self.devs.len()
                ),
            ));
        }
        Ok(i)
    }

    /// Loads records until the end marker.
    fn load(&mut self) -> Result<(), EngineError> {
        loop {
            let rec = self.next()?;
            if self.rd.offset() >= self.next_progress {
                self.progress();
                self.next_progress = self.rd.offset() + (64 << 20);
            }
            match rec.kind {
                Kind::DevicePrecopy | Kind::DeviceStopCopy => {
                    if rec.kind == Kind::DeviceStopCopy {
                        self.phase = Phase::StopCopy;
                    }
                    let i = self.device_index(&rec)?;
                    if self.devs[i].ended {
                        return Err(self.bad(&rec, format!("data for device {i} after its end")));
                    }
                    let d = &mut self.devs[i];
                    let chunk = d.h.preferred_chunk().max(1);
                    for part in self.rd.payload().chunks(chunk) {
                        d.h.write_data(part)
                            .map_err(|e| EngineError::device(self.phase, d.name.clone(), e))?;
                    }
                    d.written += self.rd.payload().len() as u64;
                }
                Kind::DeviceEnd => {
                    let i = self.device_index(&rec)?;
                    let end = DeviceEnd::decode(self.rd.payload()).expect("length checked");
                    if end.bytes != self.devs[i].written {
                        return Err(self.bad(
                            &rec,
                            format!(
                                "device {i}: the source sent {} bytes of state, {} arrived",
                                end.bytes, self.devs[i].written
                            ),
                        ));
                    }
                    self.devs[i].ended = true;
                }
                Kind::Verify => {
                    let i = self.device_index(&rec)?;
                    self.devs[i].source_digest = Some(
                        Digest::decode(self.rd.payload())
                            .expect("length checked")
                            .digest,
                    );
                }
                Kind::Round => {
                    self.check_devices()?;
                    let ack = self.rd.payload().to_vec();
                    self.reply(Kind::RoundAck, &ack)?;
                }
                Kind::RamPages => self.load_ram(&rec)?,
                Kind::RamZero => self.load_zero(&rec)?,
                Kind::End => {
                    self.rd
                        .check_end(&rec)
                        .map_err(|e| stream(self.phase, &self.peer, e))?;
                    if let Some(i) = self.devs.iter().position(|d| !d.ended) {
                        return Err(self.bad(
                            &rec,
                            format!("the stream ends without the end of device {i}'s state"),
                        ));
                    }
                    return Ok(());
                }
                k => {
                    return Err(self.bad(
                        &rec,
                        format!("a {k} record cannot appear after the setup section"),
                    ))
                }
            }
        }
    }

    /// Between pre-copy rounds (at most every 100 ms): every device must
    /// still answer and be RESUMING, so a dead destination is found before
    /// the source stops.
    fn check_devices(&mut self) -> Result<(), EngineError> {
        if self.last_check.elapsed() < Duration::from_millis(100) {
            return Ok(());
        }
        self.last_check = Instant::now();
        for d in &mut self.devs {
            match d.h.state() {
                Ok(MigState::Resuming) => {}
                Ok(s) => {
                    return Err(EngineError::invalid(
                        self.phase,
                        format!(
                            "device {} left RESUMING (it is {s}): someone else is using it",
                            d.name
                        ),
                    ))
                }
                Err(e) => return Err(EngineError::device(self.phase, d.name.clone(), e)),
            }
        }
        Ok(())
    }

    /// The RAM run of `rec` after checking it fits guest RAM; `data` says
    /// whether page data follows.
    fn ram_run(
        &self,
        rec: &Record,
        data: bool,
    ) -> Result<(RamRun, &'a dyn GuestRam, u64), EngineError> {
        let (Some(info), Some(g)) = (self.ram, self.guest) else {
            return Err(self.bad(
                rec,
                "guest RAM pages, but the stream announced no guest RAM",
            ));
        };
        let p = self.rd.payload();
        let run = RamRun::decode(p).expect("length checked");
        let data_len = (p.len() - RamRun::SIZE) as u64;
        let ps = info.page_size;
        let pages = info.size / ps;
        let want = if data { u64::from(run.count) * ps } else { 0 };
        if run.reserved != 0
            || run.count == 0
            || data_len != want
            || !matches!(run.first_page.checked_add(u64::from(run.count)), Some(e) if e <= pages)
        {
            return Err(self.bad(
                rec,
                format!(
                    "RAM run of {} pages at page {} with {} bytes does not fit {} pages of {} bytes",
                    run.count,
                    run.first_page,
                    data_len,
                    pages,
                    ps
                ),
            ));
        }
        Ok((run, g, ps))
    }

    fn load_ram(&mut self, rec: &Record) -> Result<(), EngineError> {
        let (run, g, ps) = self.ram_run(rec, true)?;
        let data = &self.rd.payload()[RamRun::SIZE..];
        if let Some(h) = self.hash.as_mut() {
            for (k, new) in data.chunks_exact(ps as usize).enumerate() {
                let page = run.first_page + k as u64;
                g.read_pages(page, &mut self.old_page)
                    .map_err(|e| EngineError::Guest {
                        phase: self.phase,
                        source: e,
                    })?;
                h.replace(page, &self.old_page, new);
            }
        }
        g.write_pages(run.first_page, data)
            .map_err(|e| EngineError::Guest {
                phase: self.phase,
                source: e,
            })?;
        self.ram_bytes += data.len() as u64;
        Ok(())
    }

    /// A zero run: pages that are holes here already read as zero; the
    /// others are cleared.
    fn load_zero(&mut self, rec: &Record) -> Result<(), EngineError> {
        let (run, g, ps) = self.ram_run(rec, false)?;
        let end = run.first_page + u64::from(run.count);
        let per = ((1u64 << 20) / ps).max(1);
        if self.zeros.is_empty() {
            self.zeros = vec![0u8; (per * ps) as usize];
        }
        let guest_err = |e| EngineError::Guest {
            phase: self.phase,
            source: e,
        };
        let mut p = run.first_page;
        while p < end {
            let holes = g.zero_pages_at(p);
            if holes > 0 {
                p += holes.min(end - p);
                continue;
            }
            let n = g.data_pages_at(p).max(1).min(end - p).min(per);
            if let Some(h) = self.hash.as_mut() {
                for page in p..p + n {
                    g.read_pages(page, &mut self.old_page).map_err(guest_err)?;
                    h.replace_with_zero(page, &self.old_page, self.zero_crc);
                }
            }
            g.write_pages(p, &self.zeros[..(n * ps) as usize])
                .map_err(guest_err)?;
            p += n;
        }
        Ok(())
    }

    /// Validates, verifies, and (after GO) runs.
    fn resume(&mut self) -> Result<(), EngineError> {
        for d in &mut self.devs {
            d.h.set_state(MigState::Stop)
                .map_err(|e| EngineError::device(Phase::Resume, d.name.clone(), e))?;
        }
        let t = Instant::now();
        if let Some(v) = self.opts.verifier.clone() {
            for (d, desc) in self.devs.iter_mut().zip(&self.descs) {
                match v(desc, &mut *d.h) {
                    Some(Ok(x)) => d.dest_digest = Some(x),
                    Some(Err(e)) => {
                        return Err(EngineError::device(Phase::Resume, d.name.clone(), e))
                    }
                    None => {}
                }
                if let (Some(a), Some(b)) = (d.source_digest, d.dest_digest) {
                    if a != b {
                        return Err(EngineError::invalid(
                            Phase::Resume,
                            format!(
                                "device {}: the loaded state has digest {}, the source had {}: not starting it",
                                d.name,
                                digest_hex(b),
                                digest_hex(a)
                            ),
                        ));
                    }
                }
            }
        }
        if self.wr.is_some() {
            let info = ReadyInfo {
                digests: self.devs.iter().map(|d| d.dest_digest).collect(),
                ram_hash: self.hash.map(|h| h.0),
                digest_ms: t.elapsed().as_secs_f64() * 1000.0,
            };
            let json = serde_json::to_vec(&info).expect("ready info serializes");
            self.reply(Kind::Ready, &json)?;
            let rec = self.next()?;
            if rec.kind != Kind::Go {
                return Err(self.bad(&rec, format!("expected go after ready, got {}", rec.kind)));
            }
        }
        for d in &mut self.devs {
            d.h.set_state(MigState::Running)
                .map_err(|e| EngineError::device(Phase::Resume, d.name.clone(), e))?;
        }
        self.reply(Kind::Running, &[])?;
        self.phase = Phase::Done;
        self.progress();
        Ok(())
    }

    /// After a failure: tell the source, and let it finish sending so the
    /// reason is not lost to a connection reset.
    fn fail(&mut self, e: &EngineError) {
        if self.refused {
            return;
        }
        let Some(mut w) = self.wr.take() else { return };
        let reason = e.to_string();
        if w.write(Kind::Failed, NO_DEVICE, format::reason_bytes(&reason))
            .and_then(|()| w.flush())
            .is_err()
        {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut sink = [0u8; 64 << 10];
        while Instant::now() < deadline {
            match self.rd_inner().read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    fn rd_inner(&mut self) -> &mut impl Read {
        self.rd.get_mut()
    }
}

fn stream(phase: Phase, peer: &str, e: format::StreamError) -> EngineError {
    EngineError::Stream {
        phase,
        peer: peer.to_string(),
        source: e,
    }
}
