//! Front-end tests for the v1 and seed regions over a small test device:
//! every state and action, and every class of bad access.

use super::*;
use crate::device::{Device, DeviceIdentity, Region};
use crate::dma::DmaSpace;
use crate::error::DeviceResult;
use vfio_migrate_abi::kernel::{MigState, MIGRATION_P2P, MIGRATION_PRE_COPY, MIGRATION_STOP_COPY};
use vfio_migrate_abi::seed::{self as sabi, SeedState};
use vfio_migrate_abi::v1 as vabi;
use vfio_migrate_backend::PrecopyInfo;

/// A device whose state is `n` bytes; pre-copy sends them all, stop-copy
/// sends them again plus an 8-byte checksum trailer; load validates length
/// and checksum when RESUMING ends.
struct Blob {
    flags: u64,
    state: Vec<u8>,
    cursor: usize,
    phase_stop: bool,
    loaded: Vec<u8>,
}

impl Blob {
    fn new(flags: u64, n: usize) -> Self {
        Self {
            flags,
            state: (0..n).map(|i| (i * 7 + 3) as u8).collect(),
            cursor: 0,
            phase_stop: false,
            loaded: Vec::new(),
        }
    }
    fn stream(&self) -> Vec<u8> {
        let mut v = self.state.clone();
        v.extend_from_slice(&(crc32c::crc32c(&self.state) as u64).to_le_bytes());
        v
    }
}

impl Device for Blob {
    fn identity(&self) -> DeviceIdentity {
        DeviceIdentity {
            model: "blob".into(),
            version: "1".into(),
            vendor_id: 1,
            device_id: 2,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
            revision: 0,
            class_code: 0,
        }
    }
    fn regions(&self) -> Vec<Region> {
        Vec::new()
    }
    fn region_read(&mut self, _: MigState, _: u32, _: u64, _: &mut [u8]) -> DeviceResult<()> {
        Ok(())
    }
    fn region_write(&mut self, _: MigState, _: u32, _: u64, _: &[u8]) -> DeviceResult<()> {
        Ok(())
    }
    fn migration_flags(&self) -> u64 {
        self.flags
    }
    fn transition(&mut self, from: MigState, to: MigState) -> DeviceResult<()> {
        match (from, to) {
            (_, MigState::PreCopy) => {
                self.cursor = 0;
                self.phase_stop = false;
            }
            (MigState::PreCopyP2p | MigState::PreCopy, MigState::StopCopy)
            | (MigState::Stop, MigState::StopCopy) => {
                self.cursor = 0;
                self.phase_stop = true;
            }
            (MigState::Stop, MigState::Resuming) => self.loaded.clear(),
            (MigState::Resuming, MigState::Stop) => {
                let n = self.state.len();
                let l = &self.loaded;
                let ok =
                    l.len() == n + 8 && l[n..] == (crc32c::crc32c(&l[..n]) as u64).to_le_bytes();
                if !ok {
                    return Err(DeviceError::inval(format!(
                        "bad state: {} bytes, want {}",
                        l.len(),
                        n + 8
                    )));
                }
                self.state = l[..n].to_vec();
            }
            _ => {}
        }
        Ok(())
    }
    fn save(&mut self, _: MigState, buf: &mut [u8]) -> DeviceResult<usize> {
        let src = if self.phase_stop {
            self.stream()
        } else {
            self.state.clone()
        };
        let n = buf.len().min(src.len() - self.cursor);
        buf[..n].copy_from_slice(&src[self.cursor..self.cursor + n]);
        self.cursor += n;
        Ok(n)
    }
    fn precopy_info(&mut self) -> PrecopyInfo {
        PrecopyInfo {
            initial_bytes: (self.state.len() - self.cursor.min(self.state.len())) as u64,
            dirty_bytes: 0,
            reinit: false,
        }
    }
    fn stop_copy_size(&mut self) -> u64 {
        if self.phase_stop {
            (self.stream().len() - self.cursor) as u64
        } else {
            self.stream().len() as u64
        }
    }
    fn load(&mut self, _: MigState, data: &[u8]) -> DeviceResult<()> {
        self.loaded.extend_from_slice(data);
        Ok(())
    }
}

const ALL: u64 = MIGRATION_STOP_COPY | MIGRATION_P2P | MIGRATION_PRE_COPY;

fn core(flags: u64, n: usize) -> DeviceCore<Blob> {
    DeviceCore::new(Blob::new(flags, n), std::sync::Arc::new(DmaSpace::new()))
}

fn r32<F: FnMut(u64, &mut [u8]) -> DeviceResult<()>>(mut f: F, off: u64) -> DeviceResult<u32> {
    let mut b = [0u8; 4];
    f(off, &mut b)?;
    Ok(u32::from_le_bytes(b))
}
fn r64<F: FnMut(u64, &mut [u8]) -> DeviceResult<()>>(mut f: F, off: u64) -> DeviceResult<u64> {
    let mut b = [0u8; 8];
    f(off, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Saves through the v1 protocol loop; returns the stream.
fn v1_save(r: &mut V1Region, c: &mut DeviceCore<Blob>, bits: u32) -> Vec<u8> {
    r.write(c, vabi::OFF_DEVICE_STATE, &bits.to_le_bytes())
        .unwrap();
    let mut out = Vec::new();
    loop {
        let pending = r64(|o, b| r.read(c, o, b), vabi::OFF_PENDING_BYTES).unwrap();
        if pending == 0 {
            break;
        }
        let off = r64(|o, b| r.read(c, o, b), vabi::OFF_DATA_OFFSET).unwrap();
        let size = r64(|o, b| r.read(c, o, b), vabi::OFF_DATA_SIZE).unwrap();
        let mut d = vec![0u8; size as usize];
        r.read(c, off, &mut d).unwrap();
        out.extend_from_slice(&d);
        if size == 0 && bits & vabi::STATE_RUNNING != 0 {
            break;
        }
    }
    out
}

fn v1_load(
    r: &mut V1Region,
    c: &mut DeviceCore<Blob>,
    data: &[u8],
    chunk: usize,
) -> DeviceResult<()> {
    r.write(
        c,
        vabi::OFF_DEVICE_STATE,
        &vabi::STATE_RESUMING.to_le_bytes(),
    )?;
    for piece in data.chunks(chunk) {
        let off = r64(|o, b| r.read(c, o, b), vabi::OFF_DATA_OFFSET)?;
        r.write(c, off, piece)?;
        r.write(c, vabi::OFF_DATA_SIZE, &(piece.len() as u64).to_le_bytes())?;
    }
    r.write(
        c,
        vabi::OFF_DEVICE_STATE,
        &vabi::STATE_RUNNING.to_le_bytes(),
    )
}

#[test]
fn v1_every_state_and_a_round_trip() {
    let mut src = core(ALL, 10_000);
    let mut r = V1Region::new(9, 4096).unwrap();
    assert!(
        r64(|o, b| r.read(&mut src, o, b), 8).is_err(),
        "pending outside saving"
    );
    assert_eq!(
        r32(|o, b| r.read(&mut src, o, b), 0).unwrap(),
        vabi::STATE_RUNNING
    );
    let pre = v1_save(&mut r, &mut src, vabi::STATE_SAVING | vabi::STATE_RUNNING);
    assert_eq!(src.state(), MigState::PreCopy);
    assert_eq!(pre.len(), 10_000);
    assert_eq!(r32(|o, b| r.read(&mut src, o, b), 0).unwrap(), 3);
    let stream = v1_save(&mut r, &mut src, vabi::STATE_SAVING);
    assert_eq!(src.state(), MigState::StopCopy);
    assert_eq!(stream.len(), 10_008);
    // SAVING -> SAVING|RUNNING is refused; the device stays put and usable.
    assert!(r.write(&mut src, 0, &3u32.to_le_bytes()).is_err());
    assert_eq!(src.state(), MigState::StopCopy);
    r.write(&mut src, 0, &0u32.to_le_bytes()).unwrap();
    assert_eq!(src.state(), MigState::Stop);
    assert_eq!(r32(|o, b| r.read(&mut src, o, b), 0).unwrap(), 0);

    let mut dst = core(ALL, 10_000);
    dst.device().state.iter_mut().for_each(|b| *b = 0);
    let mut rd = V1Region::new(9, 4096).unwrap();
    v1_load(&mut rd, &mut dst, &stream, 3000).unwrap();
    assert_eq!(dst.state(), MigState::Running);
    assert_eq!(dst.device().state, src.device().state);
}

#[test]
fn v1_without_precopy_and_bad_resume() {
    let mut src = core(MIGRATION_STOP_COPY, 5000);
    let mut r = V1Region::new(9, 4096).unwrap();
    // SAVING|RUNNING on a STOP_COPY-only device: nothing pending.
    assert!(v1_save(&mut r, &mut src, 3).is_empty());
    assert_eq!(src.state(), MigState::Running);
    assert_eq!(r32(|o, b| r.read(&mut src, o, b), 0).unwrap(), 3);
    let stream = v1_save(&mut r, &mut src, vabi::STATE_SAVING);
    assert_eq!(stream.len(), 5008);
    let mut dst = core(MIGRATION_STOP_COPY, 5000);
    let mut rd = V1Region::new(9, 4096).unwrap();
    let e = v1_load(&mut rd, &mut dst, &stream[..4000], 4096).unwrap_err();
    assert_eq!(
        e.errno,
        libc::EINVAL,
        "the device refuses the loaded state: {e}"
    );
    assert_eq!(
        dst.state(),
        MigState::Resuming,
        "refused resume stays RESUMING"
    );
    // Still usable: a complete load works after re-entering RESUMING.
    rd.write(&mut dst, 0, &0u32.to_le_bytes()).unwrap_err();
    dst.reset().unwrap();
    v1_load(&mut rd, &mut dst, &stream, 4096).unwrap();
    assert_eq!(dst.state(), MigState::Running);
}

#[test]
fn v1_bad_accesses_change_nothing() {
    let mut c = core(ALL, 100);
    let mut r = V1Region::new(9, 4096).unwrap();
    let mut b2 = [0u8; 2];
    let mut b8 = [0u8; 8];
    assert!(r.read(&mut c, 0, &mut b2).is_err(), "narrow");
    assert!(r.read(&mut c, 0, &mut b8).is_err(), "wide");
    assert!(r.read(&mut c, 10, &mut b8).is_err(), "misaligned");
    assert!(r.read(&mut c, 12, &mut [0u8; 4]).is_err(), "inside a field");
    assert!(r.read(&mut c, 32, &mut b8).is_err(), "past the header");
    assert!(r.write(&mut c, 4, &[0; 4]).is_err(), "reserved is RO");
    assert!(r.write(&mut c, 8, &[0; 8]).is_err(), "pending RO");
    assert!(r.write(&mut c, 16, &[0; 8]).is_err(), "data_offset RO");
    assert!(
        r.write(&mut c, 24, &8u64.to_le_bytes()).is_err(),
        "data_size outside RESUMING"
    );
    for bad in [5u32, 6, 7, 8, 0xffff_ffff] {
        let e = r.write(&mut c, 0, &bad.to_le_bytes()).unwrap_err();
        assert_eq!(e.errno, libc::EINVAL, "{bad}");
    }
    assert!(
        r.read(&mut c, DATA_SECTION_OFFSET + 4090, &mut b8).is_err(),
        "data outside the section"
    );
    r.write(&mut c, 0, &vabi::STATE_RESUMING.to_le_bytes())
        .unwrap();
    assert!(
        r.write(&mut c, 24, &5000u64.to_le_bytes()).is_err(),
        "size beyond the section"
    );
    assert_eq!(c.state(), MigState::Resuming);
    c.reset().unwrap();
    assert_eq!(c.state(), MigState::Running);
    assert_eq!(r32(|o, b| r.read(&mut c, o, b), 0).unwrap(), 1);
}

fn sw(r: &mut SeedRegion, c: &mut DeviceCore<Blob>, s: SeedState) -> DeviceResult<()> {
    r.write(c, sabi::OFF_DEVICE_STATE, &(s as u32).to_le_bytes())
}

fn seed_save_loop(r: &mut SeedRegion, c: &mut DeviceCore<Blob>, stop: bool) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let a = r64(|o, b| r.read(c, o, b), sabi::OFF_PENDING_PRECOPY_ONLY).unwrap();
        let b_ = r64(|o, b| r.read(c, o, b), sabi::OFF_PENDING_COMPATIBLE).unwrap();
        let p = r64(|o, b| r.read(c, o, b), sabi::OFF_PENDING_POSTCOPY_ONLY).unwrap();
        let pending = if stop { a + b_ + p } else { a + b_ };
        if pending == 0 {
            return out;
        }
        let off = r64(|o, b| r.read(c, o, b), sabi::OFF_DATA_OFFSET).unwrap();
        let size = r64(|o, b| r.read(c, o, b), sabi::OFF_DATA_SIZE).unwrap();
        let mut d = vec![0u8; size as usize];
        r.read(c, off, &mut d).unwrap();
        out.extend_from_slice(&d);
    }
}

/// memfd "guest memory" of `pages` pages mapped at IOVA 0.
fn map_guest(c: &DeviceCore<Blob>, pages: u64) {
    let fd = vfio_migrate_sys::memfd::create_sized(c"guest", pages * 4096).unwrap();
    c.dma()
        .map(0, pages * 4096, Some(fd), 0, true, true)
        .unwrap();
}

#[test]
fn seed_full_save_resume_with_threshold_and_dirty_pages() {
    let mut src = core(ALL, 20_000);
    map_guest(&src, 100_000);
    let mut r = SeedRegion::new(10, 4096).unwrap();
    assert_eq!(
        r32(|o, b| r.read(&mut src, o, b), 0).unwrap(),
        SeedState::Running as u32
    );
    r.write(
        &mut src,
        sabi::OFF_PENDING_THRESHOLD_SIZE,
        &1000u64.to_le_bytes(),
    )
    .unwrap();
    sw(&mut r, &mut src, SeedState::Setup).unwrap();
    assert_eq!(src.state(), MigState::PreCopy);
    assert!(src.dma().logging());
    // Get pending: compatible = the pre-copy data.
    assert_eq!(
        r64(
            |o, b| r.read(&mut src, o, b),
            sabi::OFF_PENDING_PRECOPY_ONLY
        )
        .unwrap(),
        0
    );
    assert_eq!(
        r64(|o, b| r.read(&mut src, o, b), sabi::OFF_PENDING_COMPATIBLE).unwrap(),
        20_000
    );
    // Get buffer honours the threshold.
    r64(|o, b| r.read(&mut src, o, b), sabi::OFF_DATA_OFFSET).unwrap();
    assert_eq!(
        r64(|o, b| r.read(&mut src, o, b), sabi::OFF_DATA_SIZE).unwrap(),
        1000
    );
    sw(&mut r, &mut src, SeedState::Precopy).unwrap();
    let pre = seed_save_loop(&mut r, &mut src, false);
    assert_eq!(pre.len(), 19_000);
    // Device DMA dirties pages 3 and 70_000 (beyond one section's 32768 bits).
    src.dma().write(3 * 4096, &[1]).unwrap();
    src.dma().write(70_000 * 4096, &[1]).unwrap();
    sw(&mut r, &mut src, SeedState::StopNCopy).unwrap();
    assert_eq!(src.state(), MigState::StopCopy);
    r.write(
        &mut src,
        sabi::OFF_PENDING_THRESHOLD_SIZE,
        &0u64.to_le_bytes(),
    )
    .unwrap();
    let stream = seed_save_loop(&mut r, &mut src, true);
    assert_eq!(stream.len(), 20_008);
    // Dirty bitmap, with copied < total continuation.
    let mut start = 0u64;
    let mut total = 100_000u64;
    let mut dirty = Vec::new();
    while total > 0 {
        r.write(&mut src, sabi::OFF_DIRTY_START_ADDR, &start.to_le_bytes())
            .unwrap();
        r.write(&mut src, sabi::OFF_DIRTY_TOTAL, &total.to_le_bytes())
            .unwrap();
        let copied = r64(|o, b| r.read(&mut src, o, b), sabi::OFF_DIRTY_COPIED).unwrap();
        assert!(copied > 0 && copied <= 4096 * 8);
        let mut bm = vec![0u8; copied.div_ceil(8) as usize];
        r.read(&mut src, DATA_SECTION_OFFSET, &mut bm).unwrap();
        for p in 0..copied {
            if bm[(p / 8) as usize] & (1 << (p % 8)) != 0 {
                dirty.push(start / 4096 + p);
            }
        }
        start += copied * 4096;
        total -= copied;
    }
    assert_eq!(dirty, vec![3, 70_000]);
    sw(&mut r, &mut src, SeedState::SaveCompleted).unwrap();
    assert_eq!(src.state(), MigState::Stop);
    assert!(!src.dma().logging());

    let mut dst = core(ALL, 20_000);
    dst.device().state.iter_mut().for_each(|b| *b = 0);
    let mut rd = SeedRegion::new(10, 4096).unwrap();
    sw(&mut rd, &mut dst, SeedState::Resume).unwrap();
    assert_eq!(dst.state(), MigState::Resuming);
    for piece in stream.chunks(3000) {
        // Put each buffer at a different place in the section.
        let at = DATA_SECTION_OFFSET + 100;
        rd.write(&mut dst, at, piece).unwrap();
        rd.write(&mut dst, sabi::OFF_DATA_OFFSET, &at.to_le_bytes())
            .unwrap();
        rd.write(
            &mut dst,
            sabi::OFF_DATA_SIZE,
            &(piece.len() as u64).to_le_bytes(),
        )
        .unwrap();
    }
    sw(&mut rd, &mut dst, SeedState::ResumeCompleted).unwrap();
    assert_eq!(dst.state(), MigState::Stop);
    sw(&mut rd, &mut dst, SeedState::Running).unwrap();
    assert_eq!(dst.state(), MigState::Running);
    assert_eq!(dst.device().state, src.device().state);
}

#[test]
fn seed_failed_and_cancelled() {
    // Source side: FAILED from PRECOPY and CANCELLED from STOPNCOPY run on.
    for (mid, end) in [
        (SeedState::Precopy, SeedState::Failed),
        (SeedState::StopNCopy, SeedState::Cancelled),
    ] {
        let mut c = core(ALL, 1000);
        let before = c.device().state.clone();
        let mut r = SeedRegion::new(10, 4096).unwrap();
        sw(&mut r, &mut c, SeedState::Setup).unwrap();
        sw(&mut r, &mut c, mid).unwrap();
        sw(&mut r, &mut c, end).unwrap();
        assert_eq!(c.state(), MigState::Running, "{mid:?} -> {end:?}");
        assert_eq!(c.device().state, before);
        assert_eq!(r32(|o, b| r.read(&mut c, o, b), 0).unwrap(), end as u32);
        sw(&mut r, &mut c, SeedState::Running).unwrap();
        // And a new migration may start.
        sw(&mut r, &mut c, SeedState::Setup).unwrap();
    }
    // Destination side: a partial state is discarded and never runs.
    let mut c = core(ALL, 1000);
    let mut r = SeedRegion::new(10, 4096).unwrap();
    sw(&mut r, &mut c, SeedState::Resume).unwrap();
    r.write(&mut c, DATA_SECTION_OFFSET, &[9; 10]).unwrap();
    r.write(&mut c, sabi::OFF_DATA_SIZE, &10u64.to_le_bytes())
        .unwrap();
    let e = sw(&mut r, &mut c, SeedState::ResumeCompleted).unwrap_err();
    assert_eq!(
        e.errno,
        libc::EINVAL,
        "the device refuses the loaded state: {e}"
    );
    assert_eq!(
        r32(|o, b| r.read(&mut c, o, b), 0).unwrap(),
        SeedState::Resume as u32
    );
    sw(&mut r, &mut c, SeedState::Failed).unwrap();
    assert_eq!(c.state(), MigState::Stop);
    assert!(c.device().loaded.is_empty() || c.state() != MigState::Running);
    // CANCELLED from RESUME likewise.
    sw(&mut r, &mut c, SeedState::Resume).unwrap();
    sw(&mut r, &mut c, SeedState::Cancelled).unwrap();
    assert_eq!(c.state(), MigState::Stop);
}

#[test]
fn seed_state_table_and_bad_accesses() {
    let mut c = core(MIGRATION_STOP_COPY, 100);
    let mut r = SeedRegion::new(10, 4096).unwrap();
    // NONE can't be requested; values past CANCELLED are not states.
    assert!(sw(&mut r, &mut c, SeedState::None).is_err());
    assert!(r.write(&mut c, 0, &10u32.to_le_bytes()).is_err());
    // Not allowed from RUNNING: PRECOPY, STOPNCOPY, SAVE_COMPLETED, RESUME_COMPLETED.
    for s in [
        SeedState::Precopy,
        SeedState::StopNCopy,
        SeedState::SaveCompleted,
        SeedState::ResumeCompleted,
    ] {
        assert!(sw(&mut r, &mut c, s).is_err(), "{s:?}");
        assert_eq!(r.seed_state(), SeedState::Running);
        assert_eq!(c.state(), MigState::Running);
    }
    // SETUP on a device without pre-copy: RUNNING, nothing compatible.
    sw(&mut r, &mut c, SeedState::Setup).unwrap();
    assert_eq!(c.state(), MigState::Running);
    assert_eq!(
        r64(|o, b| r.read(&mut c, o, b), sabi::OFF_PENDING_PRECOPY_ONLY).unwrap(),
        0
    );
    assert_eq!(
        r64(|o, b| r.read(&mut c, o, b), sabi::OFF_PENDING_COMPATIBLE).unwrap(),
        0
    );
    assert_eq!(
        r64(|o, b| r.read(&mut c, o, b), sabi::OFF_PENDING_POSTCOPY_ONLY).unwrap(),
        108
    );
    // Bad accesses.
    let mut b4 = [0u8; 4];
    assert!(r.read(&mut c, 4, &mut b4).is_err(), "narrow u64");
    assert!(r.read(&mut c, 0, &mut [0u8; 8]).is_err(), "wide u32");
    assert!(r.read(&mut c, 5, &mut [0u8; 8]).is_err(), "inside a field");
    assert!(
        r.read(&mut c, 76, &mut [0u8; 8]).is_err(),
        "past the header"
    );
    assert!(
        r.write(&mut c, sabi::OFF_PENDING_COMPATIBLE, &[0; 8])
            .is_err(),
        "RO"
    );
    assert!(
        r.write(&mut c, sabi::OFF_DIRTY_COPIED, &[0; 8]).is_err(),
        "RO"
    );
    assert!(
        r.write(&mut c, sabi::OFF_DATA_SIZE, &[0; 8]).is_err(),
        "set buffer outside RESUME"
    );
    assert!(
        r.read(&mut c, DATA_SECTION_OFFSET + 4096, &mut b4).is_err(),
        "outside section"
    );
    // No dirty log without DMA windows: a clear error.
    r.write(&mut c, sabi::OFF_DIRTY_TOTAL, &10u64.to_le_bytes())
        .unwrap();
    let e = r
        .read(&mut c, sabi::OFF_DIRTY_COPIED, &mut [0u8; 8])
        .unwrap_err();
    assert_eq!(e.errno, libc::EINVAL, "no dirty page log: {e}");
    // Still usable.
    sw(&mut r, &mut c, SeedState::StopNCopy).unwrap();
    let s = seed_save_loop(&mut r, &mut c, true);
    assert_eq!(s.len(), 108);
    sw(&mut r, &mut c, SeedState::Resume).unwrap_err();
    sw(&mut r, &mut c, SeedState::SaveCompleted).unwrap();
    assert_eq!(c.state(), MigState::Stop);
    // Resume: data.offset outside the section.
    let mut c2 = core(MIGRATION_STOP_COPY, 100);
    let mut r2 = SeedRegion::new(10, 4096).unwrap();
    sw(&mut r2, &mut c2, SeedState::Resume).unwrap();
    assert!(r2
        .write(&mut c2, sabi::OFF_DATA_OFFSET, &10u64.to_le_bytes())
        .is_err());
    r2.write(
        &mut c2,
        sabi::OFF_DATA_OFFSET,
        &(DATA_SECTION_OFFSET + 4000).to_le_bytes(),
    )
    .unwrap();
    assert!(
        r2.write(&mut c2, sabi::OFF_DATA_SIZE, &200u64.to_le_bytes())
            .is_err(),
        "buffer runs past the section"
    );
    assert_eq!(c2.state(), MigState::Resuming);
}
