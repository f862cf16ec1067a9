//! Parallel data channels (`--channels N`) end to end against in-process
//! vgpus: a live migration with pre-copy rounds and guest RAM spread over
//! four socket-pair channels; chunks arriving out of order (a slow channel,
//! and a snapshot whose chunks were shuffled); a channel dying in the
//! middle (the source rolls back, intact; the destination resets); a
//! stray connection with the wrong token; a destination that does not
//! offer channels; streams that claim more or other data than they carry;
//! and a snapshot written by four writer threads restored by one reader.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use vfio_migrate_backend::{MigState, MigrationDevice};
use vfio_migrate_engine::error::SourceState;
use vfio_migrate_engine::format::{
    ChunkHead, Kind, RecordWriter, StreamHeader, FLAG_OPTIONAL, NO_DEVICE,
};
use vfio_migrate_engine::{
    migrate_in, migrate_out, snapshot, Acceptor, ChannelsOut, Connector, Deadlines, DestLink,
    DestOptions, EngineError, GuestRam, Link, MemfdRam, SourceOptions,
};
use vfio_migrate_harness::{SimGuest, VcpuConfig};

mod common;
use common::{rd, verifier, vgpu, wr, Dev, CONTROL, DIGEST, MIB, RENDER_RATE, SEED};

fn digest(d: &mut Dev) -> u64 {
    rd(d, DIGEST)
}

/// Fills device memory with the render engine, then stops it (the digest
/// stays put from then on).
fn render(d: &mut Dev) {
    wr(d, SEED, 9);
    wr(d, RENDER_RATE, 1024 * MIB);
    wr(d, CONTROL, 1);
    std::thread::sleep(Duration::from_millis(60));
    wr(d, CONTROL, 0);
}

/// How the test's channel `i` behaves at the source.
type Wrap = Arc<dyn Fn(u32, UnixStream) -> Link + Send + Sync>;

fn plain() -> Wrap {
    Arc::new(|i, s| Link::unix(s, format!("chan{i}"), &Deadlines::default()).unwrap())
}

/// Socket-pair channels: the source end goes through `wrap`, the far end
/// to the destination's acceptor (after `strays` connections that are
/// not ours).
fn pairs(wrap: Wrap, strays: Vec<UnixStream>) -> (Connector, Acceptor) {
    let (tx, rx) = mpsc::channel::<UnixStream>();
    for s in strays {
        tx.send(s).unwrap();
    }
    let connect: Connector = Box::new(move |i| {
        let (a, b) = UnixStream::pair()?;
        tx.send(b).unwrap();
        Ok(wrap(i, a))
    });
    let accept: Acceptor = Box::new(move |wait| match rx.recv_timeout(wait) {
        Ok(s) => DestLink::unix(s, "test-source-chan", &Deadlines::default()),
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "none")),
    });
    (connect, accept)
}

struct Run {
    source: Result<vfio_migrate_engine::MigrationReport, vfio_migrate_engine::SourceFailure>,
    dest: Result<vfio_migrate_engine::DestReport, vfio_migrate_engine::DestFailure>,
}

#[allow(clippy::too_many_arguments)]
fn migrate(
    src: &mut Dev,
    guest: Option<&SimGuest>,
    dst: &mut Dev,
    dst_ram: Option<&MemfdRam>,
    channels: u32,
    wrap: Wrap,
    strays: Vec<UnixStream>,
    offer: bool,
    precopy: bool,
) -> Run {
    let (a, b) = UnixStream::pair().unwrap();
    let (connect, accept) = pairs(wrap, strays);
    std::thread::scope(|s| {
        let dest = s.spawn(move || {
            migrate_in(
                std::slice::from_mut(dst),
                dst_ram.map(|r| r as &dyn GuestRam),
                DestLink::unix(b, "test-source", &Deadlines::default()).unwrap(),
                DestOptions {
                    verifier: Some(verifier()),
                    hash_ram: true,
                    channels: offer.then_some(accept),
                    channel_wait: Duration::from_secs(5),
                    ..Default::default()
                },
            )
        });
        let source = migrate_out(
            std::slice::from_mut(src),
            guest.map(|g| g as &dyn GuestRam),
            Link::unix(a, "test-dest", &Deadlines::default()).unwrap(),
            SourceOptions {
                verifier: Some(verifier()),
                precopy,
                channels: Some(ChannelsOut {
                    count: channels,
                    connect: Some(connect),
                }),
                ..Default::default()
            },
        );
        Run {
            source,
            dest: dest.join().unwrap(),
        }
    })
}

#[test]
fn four_channels_carry_precopy_rounds_device_data_and_guest_ram() {
    let mut guest = SimGuest::new(32 * MIB).unwrap();
    let dst_ram = MemfdRam::new("dest", 32 * MIB).unwrap();
    let mut src = vgpu("src", 16 * MIB, Some(guest.ram()));
    let mut dst = vgpu("dst", 16 * MIB, Some(&dst_ram));
    wr(&mut src, SEED, 42);
    wr(&mut src, RENDER_RATE, 64 * MIB);
    wr(&mut src, CONTROL, 1);
    guest
        .start_vcpu(VcpuConfig {
            rate: 32 * MIB,
            offset: 0,
            length: 16 * MIB,
            seed: 7,
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let run = migrate(
        &mut src,
        Some(&guest),
        &mut dst,
        Some(&dst_ram),
        4,
        plain(),
        Vec::new(),
        true,
        true,
    );
    let rep = run.source.expect("migration");
    run.dest.expect("destination");
    assert_eq!(rep.channels, 4, "{rep:#?}");
    assert!(rep.verified, "{rep:#?}");
    assert!(rep.precopy_iterations >= 1);
    assert_eq!(rep.devices[0].digest_source, rep.devices[0].digest_dest);
    assert!(rep.ram_hash_source.is_some() && rep.ram_hash_source == rep.ram_hash_dest);
    assert_eq!(dst.state().unwrap(), MigState::Running);
}

/// Writes after a pause on every write: a channel much slower than the
/// others, so their chunks arrive first.
struct Slow(UnixStream);

impl Write for Slow {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        std::thread::sleep(Duration::from_millis(3));
        self.0.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_slow_channel_reorders_chunks_and_the_destination_puts_them_back() {
    let mut src = vgpu("src", 32 * MIB, None);
    let mut dst = vgpu("dst", 32 * MIB, None);
    render(&mut src);
    let before = digest(&mut src);
    let wrap: Wrap = Arc::new(|i, s| {
        if i == 0 {
            Link::writer(Slow(s), "slow-chan0")
        } else {
            Link::unix(s, format!("chan{i}"), &Deadlines::default()).unwrap()
        }
    });
    let run = migrate(
        &mut src,
        None,
        &mut dst,
        None,
        3,
        wrap,
        Vec::new(),
        true,
        false,
    );
    let rep = run.source.expect("migration");
    run.dest.expect("destination");
    assert!(rep.verified);
    assert_eq!(digest(&mut dst), before);
}

/// A channel that breaks after `left` bytes (the socket is shut down, so
/// the destination sees it end too).
struct Breaks {
    s: UnixStream,
    left: usize,
}

impl Write for Breaks {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            let _ = self.s.shutdown(std::net::Shutdown::Both);
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the test cut this channel",
            ));
        }
        let n = self.s.write(&b[..b.len().min(self.left)])?;
        self.left -= n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_channel_dying_mid_transfer_fails_cleanly_and_rolls_back() {
    let mut src = vgpu("src", 32 * MIB, None);
    let mut dst = vgpu("dst", 32 * MIB, None);
    render(&mut src);
    let before = digest(&mut src);
    let wrap: Wrap = Arc::new(|i, s| {
        if i == 1 {
            Link::writer(Breaks { s, left: 3 << 20 }, "chan1")
        } else {
            Link::unix(s, format!("chan{i}"), &Deadlines::default()).unwrap()
        }
    });
    let run = migrate(
        &mut src,
        None,
        &mut dst,
        None,
        3,
        wrap,
        Vec::new(),
        true,
        false,
    );
    let f = run
        .source
        .expect_err("a cut channel must fail the migration");
    // The cut is seen at both ends at once: the source names a channel
    // that broke (the cut one, or another the failing destination closed
    // first), or passes on the destination's word that channel 1 ended.
    let e = f.error.to_string();
    match &f.error {
        EngineError::Channel { .. } => assert!(e.contains("data channel"), "{e}"),
        EngineError::DestinationFailed { .. } => assert!(e.contains("data channel 1"), "{e}"),
        _ => panic!("{e}"),
    }
    assert_eq!(f.state, SourceState::Restored);
    // The source runs again, its state intact.
    assert_eq!(src.state().unwrap(), MigState::Running);
    assert_eq!(digest(&mut src), before);
    // The destination never ran: reset, stopped.
    let d = run.dest.expect_err("the destination must fail");
    assert!(d.devices.iter().all(|x| x.reset), "{d}");
    assert_eq!(dst.state().unwrap(), MigState::Stop);
}

#[test]
fn a_stray_connection_is_dropped_and_an_old_destination_gets_one_stream() {
    // A connection that speaks our format with another migration's token.
    let (stray, far) = UnixStream::pair().unwrap();
    let mut w = RecordWriter::new(&stray, "stray");
    w.write_stream_header().unwrap();
    let hello = vfio_migrate_engine::format::ChannelHello {
        token_lo: 1,
        token_hi: 2,
        index: 0,
        count: 2,
    };
    w.write(Kind::ChannelHello, NO_DEVICE, &hello.to_bytes())
        .unwrap();
    let mut src = vgpu("src", 8 * MIB, None);
    let mut dst = vgpu("dst", 8 * MIB, None);
    render(&mut src);
    let run = migrate(
        &mut src,
        None,
        &mut dst,
        None,
        2,
        plain(),
        vec![far],
        true,
        false,
    );
    let rep = run.source.expect("the stray is ignored");
    run.dest.expect("destination");
    assert_eq!(rep.channels, 2);
    assert!(rep.verified);
    // The stray was closed.
    let mut b = [0u8; 1];
    assert_eq!((&stray).read(&mut b).unwrap_or(0), 0);

    // A destination that does not offer channels: everything on the main
    // stream, as before.
    let mut src = vgpu("src", 8 * MIB, None);
    let mut dst = vgpu("dst", 8 * MIB, None);
    render(&mut src);
    let run = migrate(
        &mut src,
        None,
        &mut dst,
        None,
        4,
        plain(),
        Vec::new(),
        false,
        false,
    );
    let rep = run.source.expect("migration on one stream");
    run.dest.expect("destination");
    assert_eq!(rep.channels, 1);
    assert!(rep.verified);
}

/// A snapshot of a rendered vgpu written by `channels` writer threads.
fn snapshot_bytes(src: &mut Dev, channels: u32) -> Vec<u8> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    struct W(Arc<Mutex<Vec<u8>>>);
    impl Write for W {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    migrate_out(
        std::slice::from_mut(src),
        None,
        Link::writer(W(buf.clone()), "memory"),
        SourceOptions {
            verifier: Some(verifier()),
            channels: Some(ChannelsOut {
                count: channels,
                connect: None,
            }),
            ..Default::default()
        },
    )
    .expect("snapshot");
    let b = buf.lock().unwrap().clone();
    b
}

fn restore(stream: Vec<u8>, dst: &mut Dev) -> Result<(), String> {
    let sum = snapshot::check(std::io::Cursor::new(stream.clone()), "memory");
    if !sum.ok {
        return Err(sum.problems.join("; "));
    }
    migrate_in(
        std::slice::from_mut(dst),
        None,
        DestLink::reader(std::io::Cursor::new(stream), "memory"),
        DestOptions {
            verifier: Some(verifier()),
            ..Default::default()
        },
    )
    .map(|r| assert!(r.verified))
    .map_err(|e| e.to_string())
}

/// The records of a stream after its header: (kind, flags, device, payload).
fn records(b: &[u8]) -> Vec<(u16, u16, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = StreamHeader::SIZE;
    while at < b.len() {
        let h = vfio_migrate_engine::format::RecordHeader::decode(&b[at..at + 16]).unwrap();
        let len = h.length as usize;
        out.push((
            h.kind,
            h.flags,
            h.device,
            b[at + 16..at + 16 + len].to_vec(),
        ));
        at += 16 + len;
    }
    out
}

/// Writes `recs` as a stream (its end marker recomputed).
fn stream_of(recs: &[(u16, u16, u32, Vec<u8>)]) -> Vec<u8> {
    let mut w = RecordWriter::new(Vec::new(), "test");
    w.write_stream_header().unwrap();
    for (k, f, d, p) in recs {
        if *k == Kind::End as u16 {
            w.write_end().unwrap();
        } else {
            w.write_raw(*k, *f, *d, &[p]).unwrap();
        }
    }
    w.into_inner()
}

#[test]
fn a_snapshot_written_with_channels_restores_with_one_reader_even_shuffled() {
    let mut src = vgpu("src", 16 * MIB, None);
    render(&mut src);
    let want = digest(&mut src);
    let snap = snapshot_bytes(&mut src, 4);
    let recs = records(&snap);
    let chunks = recs
        .iter()
        .filter(|r| r.0 == Kind::DeviceChunk as u16)
        .count();
    assert!(chunks >= 16, "{chunks} chunks");
    let mut dst = vgpu("dst", 16 * MIB, None);
    restore(snap, &mut dst).expect("restore");
    assert_eq!(digest(&mut dst), want);

    // Reverse the order of every device chunk: still the same state.
    let mut rev = recs.clone();
    let at: Vec<usize> = (0..rev.len())
        .filter(|&i| rev[i].0 == Kind::DeviceChunk as u16)
        .collect();
    let taken: Vec<_> = at.iter().rev().map(|&i| recs[i].clone()).collect();
    for (slot, r) in at.iter().zip(taken) {
        rev[*slot] = r;
    }
    let mut dst = vgpu("dst", 16 * MIB, None);
    restore(stream_of(&rev), &mut dst).expect("restore of shuffled chunks");
    assert_eq!(digest(&mut dst), want);
    // The order really changed.
    assert_ne!(stream_of(&rev), stream_of(&recs));
}

#[test]
fn streams_claiming_other_data_than_they_carry_are_refused() {
    let mut src = vgpu("src", 4 * MIB, None);
    render(&mut src);
    let recs = records(&snapshot_bytes(&mut src, 2));
    let chunk_at = |r: &(u16, u16, u32, Vec<u8>)| ChunkHead::decode(&r.3).unwrap().offset;
    let first_chunk = recs
        .iter()
        .position(|r| r.0 == Kind::DeviceChunk as u16)
        .unwrap();

    // 1. A device end announcing fewer bytes than the chunks carried.
    let mut more = recs.clone();
    let end = more
        .iter()
        .position(|r| r.0 == Kind::DeviceEnd as u16)
        .unwrap();
    let total = u64::from_le_bytes(more[end].3[..8].try_into().unwrap());
    more[end].3 = (total - 100).to_le_bytes().to_vec();
    // 2. A chunk that overlaps another (a duplicate offset).
    let mut dup = recs.clone();
    let second = dup
        .iter()
        .enumerate()
        .filter(|r| r.1 .0 == Kind::DeviceChunk as u16)
        .map(|r| r.0)
        .nth(1)
        .unwrap();
    let first_off = chunk_at(&dup[first_chunk]);
    dup[second].3[..8].copy_from_slice(&first_off.to_le_bytes());
    // 3. A gap: one chunk's offset moved past the end (the total matches).
    let mut gap = recs.clone();
    let far = total + 4096;
    gap[first_chunk].3[..8].copy_from_slice(&far.to_le_bytes());
    // 4. Channel records that do not belong in a file.
    let mut epoch = recs.clone();
    epoch.insert(
        first_chunk,
        (Kind::ChannelEpoch as u16, 0, NO_DEVICE, vec![0u8; 16]),
    );

    for (what, r, want) in [
        ("more than announced", more, "bytes of state"),
        ("overlap", dup, "overlaps"),
        ("gap", gap, "gap"),
        ("epoch in a file", epoch, "channel"),
    ] {
        let s = stream_of(&r);
        let sum = snapshot::check(std::io::Cursor::new(s.clone()), "memory");
        assert!(!sum.ok, "{what}: the check must refuse it");
        assert!(
            sum.problems.join("; ").contains(want),
            "{what}: {:?}",
            sum.problems
        );
        // Loaded without the check (as a live destination would): the
        // destination refuses it and never runs it.
        let mut dst = vgpu("dst", 4 * MIB, None);
        let e = migrate_in(
            std::slice::from_mut(&mut dst),
            None,
            DestLink::reader(std::io::Cursor::new(s), "memory"),
            DestOptions {
                verifier: Some(verifier()),
                ..Default::default()
            },
        )
        .expect_err(what);
        assert!(e.to_string().contains(want), "{what}: {e}");
        assert_ne!(dst.state().unwrap(), MigState::Running, "{what}");
    }
    // An optional record of a kind from the future is still skipped.
    let mut fut = recs.clone();
    fut.insert(1, (0x2f, FLAG_OPTIONAL, NO_DEVICE, vec![1, 2, 3]));
    let mut dst = vgpu("dst", 4 * MIB, None);
    restore(stream_of(&fut), &mut dst).expect("optional record skipped");
}
