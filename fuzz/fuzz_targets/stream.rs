//! The migration stream as a hostile sender would write it: the input is a
//! stream (a valid header is prepended half the time, so the fuzzer gets
//! past the magic), fed to the parser that `receive` and restores use, then
//! to a whole destination load into a small in-process vgpu. Nothing may
//! panic; a load that fails must leave the device out of RUNNING unless it
//! was never touched.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, Mutex};
use vfio_migrate_backend::{MigState, MigrationDevice};
use vfio_migrate_device::{DeviceCore, DmaSpace, LocalDevice};
use vfio_migrate_engine::format::{Event, RecordWriter, StreamParser};
use vfio_migrate_engine::{migrate_in, DestLink, DestOptions};
use vfio_migrate_samples::vgpu::{Vgpu, VgpuConfig};

fuzz_target!(|data: &[u8]| {
    let mut input = Vec::with_capacity(data.len() + 16);
    if data.first().is_some_and(|b| b & 1 == 1) {
        let mut w = RecordWriter::new(Vec::new(), "fuzz");
        w.write_stream_header().unwrap();
        input.extend(w.into_inner());
        input.extend_from_slice(&data[1..]);
    } else {
        input.extend_from_slice(data);
    }

    let mut p = StreamParser::new(&input[..], "fuzz");
    if p.read_header().is_ok() {
        while !matches!(p.read_event(), Ok(Event::End) | Err(_)) {}
    }

    let dma = Arc::new(DmaSpace::new());
    let dev = Vgpu::new(
        VgpuConfig {
            mem_size: 16 << 10,
            ..Default::default()
        },
        dma.clone(),
    )
    .unwrap();
    let mut d = LocalDevice::new("fuzz", Arc::new(Mutex::new(DeviceCore::new(dev, dma))));
    let r = migrate_in(
        std::slice::from_mut(&mut d),
        None,
        DestLink::reader(std::io::Cursor::new(input), "fuzz"),
        DestOptions::default(),
    );
    if let Err(f) = r {
        if !f.devices.is_empty() {
            assert_ne!(d.state().unwrap(), MigState::Running);
        }
    }
});
