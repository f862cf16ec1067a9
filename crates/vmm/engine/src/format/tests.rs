//! Codec and grammar tests: round trips, every flipped byte caught,
//! truncation named, caps before allocation, versions, optional records,
//! and records out of place.

use super::*;

fn header(w: &mut RecordWriter<Vec<u8>>) {
    w.write_stream_header().unwrap();
}

fn stream(records: &[(Kind, u32, Vec<u8>)], end: bool) -> Vec<u8> {
    let mut w = RecordWriter::new(Vec::new(), "test");
    header(&mut w);
    for (k, d, p) in records {
        w.write(*k, *d, p).unwrap();
    }
    if end {
        w.write_end().unwrap();
    }
    w.into_inner()
}

fn read_all(b: &[u8]) -> Result<Vec<(Kind, u32, Vec<u8>)>, StreamError> {
    let mut r = RecordReader::new(b, "test");
    r.read_stream_header()?;
    let mut out = Vec::new();
    loop {
        let rec = r.next_record()?;
        if rec.kind == Kind::End {
            r.check_end(&rec)?;
            return Ok(out);
        }
        out.push((rec.kind, rec.device, r.payload().to_vec()));
    }
}

fn descriptor() -> Vec<u8> {
    let d = vfio_migrate_backend::DeviceDescriptor::from_pci(1, 2, 3, 4, 5, 7, vec![4096]);
    serde_json::to_vec(&d).unwrap()
}

/// A valid one-device stream: setup, some data, its end, the end marker.
fn valid_stream(extra: impl FnOnce(&mut RecordWriter<Vec<u8>>)) -> Vec<u8> {
    let mut w = RecordWriter::new(Vec::new(), "test");
    header(&mut w);
    w.write(Kind::Device, 0, &descriptor()).unwrap();
    w.write(
        Kind::SetupEnd,
        NO_DEVICE,
        &SetupEnd {
            devices: 1,
            flags: 0,
        }
        .to_bytes(),
    )
    .unwrap();
    w.write(Kind::DevicePrecopy, 0, &[1u8; 10]).unwrap();
    extra(&mut w);
    w.write(Kind::DeviceStopCopy, 0, &[2u8; 5]).unwrap();
    w.write(Kind::DeviceEnd, 0, &DeviceEnd { bytes: 15 }.to_bytes())
        .unwrap();
    w.write_end().unwrap();
    w.into_inner()
}

/// Parses a whole forward stream; returns a short name per event.
fn parse(b: &[u8]) -> Result<Vec<String>, StreamError> {
    let mut p = StreamParser::new(b, "test");
    p.read_header()?;
    let mut out = Vec::new();
    loop {
        let ev = p.read_event()?;
        let name = match ev {
            Event::Device { index, .. } => format!("device {index}"),
            Event::Ram(_) => "ram".into(),
            Event::RunState { index, running } => format!("run-state {index} {running}"),
            Event::SetupEnd { devices } => format!("setup-end {devices}"),
            Event::Caps { flags } => format!("caps {flags}"),
            Event::InitialSent { index, generation } => {
                format!("initial-sent {index} {generation}")
            }
            Event::DeviceData {
                index,
                stop_copy,
                data,
            } => format!("data {index} {stop_copy} {}", data.len()),
            Event::DeviceEnd { index, bytes } => format!("device-end {index} {bytes}"),
            Event::Round { iteration } => format!("round {iteration}"),
            Event::Verify { index, .. } => format!("verify {index}"),
            Event::RamPages { count, .. } => format!("pages {count}"),
            Event::RamZero { count, .. } => format!("zero {count}"),
            Event::Abort { reason } => format!("abort {reason}"),
            Event::Verified { compared, devices } => format!("verified {compared}/{devices}"),
            Event::Go => "go".into(),
            Event::Channels { count, .. } => format!("channels {count}"),
            Event::DeviceChunk {
                index,
                offset,
                data,
                ..
            } => format!("chunk {index} {offset} {}", data.len()),
            Event::ChannelEpoch { epoch, last } => format!("epoch {epoch} {last}"),
            Event::DeviceDataDeferred { index, len, .. } => format!("deferred {index} {len}"),
            Event::End => {
                out.push("end".into());
                return Ok(out);
            }
        };
        out.push(name);
    }
}

#[test]
fn round_trip() {
    let recs = vec![
        (Kind::Device, 0, b"{}".to_vec()),
        (
            Kind::Ram,
            NO_DEVICE,
            RamInfo {
                size: 1 << 20,
                page_size: 4096,
            }
            .to_bytes(),
        ),
        (Kind::DevicePrecopy, 0, vec![7u8; 1000]),
    ];
    assert_eq!(read_all(&stream(&recs, true)).unwrap(), recs);
}

#[test]
fn every_flipped_byte_is_caught() {
    let recs = vec![
        (Kind::DevicePrecopy, 0, vec![7u8; 64]),
        (Kind::Verify, 0, vec![1; 8]),
    ];
    let good = stream(&recs, true);
    for i in 0..good.len() {
        // The minor version (bytes 10..12) may be anything.
        if (10..12).contains(&i) {
            continue;
        }
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        assert!(read_all(&bad).is_err(), "flip at byte {i} went unnoticed");
    }
}

#[test]
fn truncation_is_named() {
    let good = stream(&[(Kind::DevicePrecopy, 0, vec![7u8; 64])], true);
    for cut in 0..good.len() {
        let e = read_all(&good[..cut]).unwrap_err();
        assert!(matches!(e, StreamError::Truncated { .. }), "cut {cut}: {e}");
    }
    // A stream cut exactly on a record boundary before the end marker.
    let no_end = stream(&[(Kind::DevicePrecopy, 0, vec![7u8; 64])], false);
    assert!(matches!(
        read_all(&no_end),
        Err(StreamError::Truncated { .. })
    ));
}

#[test]
fn oversized_length_is_refused_before_reading() {
    let mut b = StreamHeader {
        magic: magic_u64(),
        major: FORMAT_MAJOR,
        minor: FORMAT_MINOR,
        flags: 0,
    }
    .to_bytes();
    b.extend(
        RecordHeader {
            kind: Kind::DevicePrecopy as u16,
            flags: 0,
            device: 0,
            length: u32::MAX,
            crc: 0,
        }
        .to_bytes(),
    );
    let e = read_all(&b).unwrap_err();
    assert!(
        matches!(
            e,
            StreamError::Record {
                problem: RecordProblem::Length {
                    kind: KindName::Known(Kind::DevicePrecopy),
                    length: u32::MAX,
                    ..
                },
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn major_version_and_magic_are_checked() {
    let mut b = stream(&[], true);
    b[8] = 2;
    assert!(matches!(
        read_all(&b),
        Err(StreamError::Version {
            major: 2,
            minor: FORMAT_MINOR
        })
    ));
    let mut b = stream(&[], true);
    b[0] = b'X';
    assert!(matches!(read_all(&b), Err(StreamError::BadMagic { .. })));
}

#[test]
fn a_newer_minor_version_is_read() {
    let mut b = valid_stream(|_| {});
    b[10] = FORMAT_MINOR as u8 + 3;
    let mut p = StreamParser::new(&b[..], "test");
    assert_eq!(p.read_header().unwrap(), (FORMAT_MAJOR, FORMAT_MINOR + 3));
    assert_eq!(parse(&b).unwrap().last().unwrap(), "end");
}

#[test]
fn optional_records_of_unknown_kinds_are_skipped() {
    let b = valid_stream(|w| {
        w.write_raw(0x4242, FLAG_OPTIONAL, NO_DEVICE, &[&[9u8; 100]])
            .unwrap();
        w.write_raw(0x4243, FLAG_OPTIONAL, 3, &[]).unwrap();
    });
    assert_eq!(
        parse(&b).unwrap(),
        [
            "device 0",
            "setup-end 1",
            "data 0 false 10",
            "data 0 true 5",
            "device-end 0 15",
            "end"
        ]
    );
    let mut p = StreamParser::new(&b[..], "test");
    p.read_header().unwrap();
    while !matches!(p.read_event().unwrap(), Event::End) {}
    assert_eq!(p.skipped(), 2);
}

#[test]
fn unknown_kinds_not_marked_optional_are_refused() {
    let b = valid_stream(|w| {
        w.write_raw(0x4242, 0, NO_DEVICE, &[&[9u8; 4]]).unwrap();
    });
    assert!(matches!(
        parse(&b),
        Err(StreamError::Record {
            problem: RecordProblem::UnknownKind(0x4242),
            ..
        })
    ));
    // Other flag bits are reserved, optional or not.
    let b = valid_stream(|w| {
        w.write_raw(0x4242, FLAG_OPTIONAL | 2, NO_DEVICE, &[])
            .unwrap();
    });
    assert!(matches!(
        parse(&b),
        Err(StreamError::Record {
            problem: RecordProblem::Flags { .. },
            ..
        })
    ));
}

#[test]
fn dropped_record_is_caught_by_end_marker() {
    let recs = vec![
        (Kind::DevicePrecopy, 0, vec![1u8; 10]),
        (Kind::DevicePrecopy, 0, vec![2u8; 10]),
    ];
    let good = stream(&recs, true);
    let rec_len = RECORD_HEADER_SIZE + 10;
    let mut bad = good[..STREAM_HEADER_SIZE].to_vec();
    bad.extend_from_slice(&good[STREAM_HEADER_SIZE + rec_len..]);
    let e = read_all(&bad).unwrap_err();
    assert!(e.to_string().contains("records are missing"), "{e}");
}

#[test]
fn grammar_refuses_records_out_of_place() {
    // Data before the setup section ended.
    let b = stream(&[(Kind::DevicePrecopy, 0, vec![1u8; 4])], true);
    assert!(matches!(
        parse(&b),
        Err(StreamError::Record {
            problem: RecordProblem::OutOfPlace {
                kind: Kind::DevicePrecopy,
                ..
            },
            ..
        })
    ));
    // A reply on the forward channel.
    let b = valid_stream(|w| w.write(Kind::Accept, NO_DEVICE, &[]).unwrap());
    assert!(matches!(
        parse(&b),
        Err(StreamError::Record {
            problem: RecordProblem::OutOfPlace {
                kind: Kind::Accept,
                ..
            },
            ..
        })
    ));
    // A device that was not described.
    let b = valid_stream(|w| w.write(Kind::DevicePrecopy, 1, &[1]).unwrap());
    assert!(matches!(
        parse(&b),
        Err(StreamError::Record {
            problem: RecordProblem::UnknownDevice { device: 1, .. },
            ..
        })
    ));
    // RAM pages without a RAM layout.
    let run = RamRun {
        first_page: 0,
        count: 1,
        reserved: 0,
    };
    let b = valid_stream(|w| w.write(Kind::RamZero, NO_DEVICE, &run.to_bytes()).unwrap());
    assert!(matches!(
        parse(&b),
        Err(StreamError::Record {
            problem: RecordProblem::Invalid(_),
            ..
        })
    ));
}

#[test]
fn device_end_must_match_the_data() {
    let mut w = RecordWriter::new(Vec::new(), "test");
    header(&mut w);
    w.write(Kind::Device, 0, &descriptor()).unwrap();
    w.write(
        Kind::SetupEnd,
        NO_DEVICE,
        &SetupEnd {
            devices: 1,
            flags: 0,
        }
        .to_bytes(),
    )
    .unwrap();
    w.write(Kind::DevicePrecopy, 0, &[1u8; 10]).unwrap();
    w.write(Kind::DeviceEnd, 0, &DeviceEnd { bytes: 11 }.to_bytes())
        .unwrap();
    w.write_end().unwrap();
    let e = parse(&w.into_inner()).unwrap_err();
    assert!(
        e.to_string().contains("11 bytes of state, 10 arrived"),
        "{e}"
    );
}

#[test]
fn replies_round_trip() {
    let mut w = RecordWriter::new(Vec::new(), "test");
    w.write_stream_header().unwrap();
    let replies = [
        Reply::Accept,
        Reply::RoundAck(4),
        Reply::Ready(ReadyInfo {
            digests: vec![Some(1), None],
            ram_hash: Some(9),
            digest_ms: 1.5,
            validate_ms: 0.5,
            after_end_ms: 2.5,
        }),
        Reply::Refuse("no".into()),
        Reply::Failed("bad".into()),
        Reply::Running,
        Reply::Caps(CAP_SWITCHOVER_ACK),
        Reply::SwitchoverAck {
            device: 3,
            generation: 2,
        },
    ];
    for r in &replies {
        write_reply(&mut w, r).unwrap();
    }
    let b = w.into_inner();
    // The minor-3 replies are optional: an older source skips them.
    let mut at = STREAM_HEADER_SIZE;
    let mut flags = Vec::new();
    while at < b.len() {
        let h = RecordHeader::decode(&b[at..at + RECORD_HEADER_SIZE]).unwrap();
        flags.push((h.kind, h.flags));
        at += RECORD_HEADER_SIZE + h.length as usize;
    }
    for (k, f) in flags {
        let minor2 = k == Kind::CapsReply as u16 || k == Kind::SwitchoverAck as u16;
        assert_eq!(f == FLAG_OPTIONAL, minor2, "kind {k:#x}");
    }
    let mut rd = ReplyReader::new(&b[..], "test");
    rd.read_header().unwrap();
    for r in &replies {
        assert_eq!(&rd.next_reply().unwrap(), r);
    }
}

#[test]
fn channel_records_in_their_places() {
    let desc = descriptor();
    let req = |count: u32| {
        ChannelsRequest {
            count,
            flags: 0,
            token_lo: 1,
            token_hi: 2,
        }
        .to_bytes()
    };
    let chunk = |offset: u64, n: usize| {
        let mut p = ChunkHead {
            offset,
            flags: CHUNK_STOP_COPY,
            reserved: 0,
        }
        .to_bytes()
        .to_vec();
        p.extend(std::iter::repeat_n(7u8, n));
        p
    };
    let build = |count: u32, end_bytes: u64| {
        let mut w = RecordWriter::new(Vec::new(), "test");
        w.write_stream_header().unwrap();
        w.write(Kind::Device, 0, &desc).unwrap();
        w.write_raw(
            Kind::Channels as u16,
            FLAG_OPTIONAL,
            NO_DEVICE,
            &[&req(count)],
        )
        .unwrap();
        w.write(
            Kind::SetupEnd,
            NO_DEVICE,
            &SetupEnd {
                devices: 1,
                flags: 0,
            }
            .to_bytes(),
        )
        .unwrap();
        let e = Epoch {
            epoch: 0,
            last: 1,
            reserved: 0,
        };
        w.write(Kind::ChannelEpoch, NO_DEVICE, &e.to_bytes())
            .unwrap();
        w.write(Kind::DeviceChunk, 0, &chunk(10, 5)).unwrap();
        w.write(Kind::DeviceChunk, 0, &chunk(0, 10)).unwrap();
        w.write(
            Kind::DeviceEnd,
            0,
            &DeviceEnd { bytes: end_bytes }.to_bytes(),
        )
        .unwrap();
        w.write_end().unwrap();
        w.into_inner()
    };
    assert_eq!(
        parse(&build(4, 15)).unwrap(),
        [
            "device 0",
            "channels 4",
            "setup-end 1",
            "epoch 0 true",
            "chunk 0 10 5",
            "chunk 0 0 10",
            "device-end 0 15",
            "end"
        ]
    );
    // Chunks count towards the device's total.
    let e = parse(&build(4, 14)).unwrap_err().to_string();
    assert!(e.contains("15 arrived"), "{e}");
    // One channel is no parallel set; more than the cap is refused.
    for n in [0, 1, MAX_CHANNELS + 1] {
        let e = parse(&build(n, 15)).unwrap_err().to_string();
        assert!(e.contains("data channels asked for"), "{n}: {e}");
    }
}

#[test]
fn switchover_ack_records_parse_where_they_belong() {
    let mut w = RecordWriter::new(Vec::new(), "test");
    w.write_stream_header().unwrap();
    w.write(Kind::Device, 0, &descriptor()).unwrap();
    let caps = Caps {
        flags: CAP_SWITCHOVER_ACK,
    };
    w.write_raw(
        Kind::Caps as u16,
        FLAG_OPTIONAL,
        NO_DEVICE,
        &[&caps.to_bytes()],
    )
    .unwrap();
    w.write(
        Kind::SetupEnd,
        NO_DEVICE,
        &SetupEnd {
            devices: 1,
            flags: 0,
        }
        .to_bytes(),
    )
    .unwrap();
    w.write(Kind::DevicePrecopy, 0, &[1u8; 4]).unwrap();
    let g = InitialGen { generation: 1 };
    w.write_raw(Kind::InitialSent as u16, FLAG_OPTIONAL, 0, &[&g.to_bytes()])
        .unwrap();
    w.write(Kind::DeviceEnd, 0, &DeviceEnd { bytes: 4 }.to_bytes())
        .unwrap();
    w.write_end().unwrap();
    let ev = parse(&w.into_inner()).unwrap();
    assert_eq!(
        ev,
        [
            "device 0",
            "caps 1",
            "setup-end 1",
            "data 0 false 4",
            "initial-sent 0 1",
            "device-end 0 4",
            "end"
        ]
    );
    // Out of place (initial-sent in the setup section) is refused.
    let mut w = RecordWriter::new(Vec::new(), "test");
    w.write_stream_header().unwrap();
    w.write(Kind::Device, 0, &descriptor()).unwrap();
    w.write_raw(Kind::InitialSent as u16, FLAG_OPTIONAL, 0, &[&g.to_bytes()])
        .unwrap();
    assert!(parse(&w.into_inner()).is_err());
}

#[test]
fn verified_comes_after_the_end_and_before_go_only() {
    let v = Verdict {
        compared: 1,
        devices: 1,
    };
    let mut b = valid_stream(|_| {});
    let mut tail = Vec::new();
    {
        let mut t = RecordWriter::new(&mut tail, "test");
        t.write_raw(
            Kind::Verified as u16,
            FLAG_OPTIONAL,
            NO_DEVICE,
            &[&v.to_bytes()],
        )
        .unwrap();
        t.write(Kind::Go, NO_DEVICE, &[]).unwrap();
    }
    b.extend_from_slice(&tail);
    let mut p = StreamParser::new(&b[..], "test");
    p.read_header().unwrap();
    while !matches!(p.read_event().unwrap(), Event::End) {}
    assert!(matches!(
        p.read_event().unwrap(),
        Event::Verified {
            compared: 1,
            devices: 1
        }
    ));
    assert!(matches!(p.read_event().unwrap(), Event::Go));
    // Before the end it is out of place.
    let b = valid_stream(|w| {
        w.write_raw(
            Kind::Verified as u16,
            FLAG_OPTIONAL,
            NO_DEVICE,
            &[&v.to_bytes()],
        )
        .unwrap();
    });
    assert!(matches!(
        parse(&b),
        Err(StreamError::Record {
            problem: RecordProblem::OutOfPlace { .. },
            ..
        })
    ));
}
