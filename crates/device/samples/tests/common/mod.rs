//! Helpers shared by the device SDK integration tests: building sample
//! devices behind `LocalDevice` handles, register access, and moving a
//! save stream from one handle to another.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use vfio_migrate_backend::{DmaWindow, MigrationDevice};
use vfio_migrate_device::{DeviceCore, DmaSpace, LocalDevice};
use vfio_migrate_samples::mem::SharedMemory;
use vfio_migrate_samples::serial::Serial;
use vfio_migrate_samples::vgpu::{Vgpu, VgpuConfig};

pub const MIB: u64 = 1 << 20;

/// Guest IOVA of the test guest-memory window.
pub const GUEST_IOVA: u64 = 0x4000_0000;

pub type VgpuHandle = LocalDevice<Vgpu>;
pub type SerialHandle = LocalDevice<Serial>;

/// A vgpu with `mem_size` bytes of device memory behind a handle.
pub fn vgpu(name: &str, mem_size: u64) -> VgpuHandle {
    let dma = Arc::new(DmaSpace::new());
    let dev = Vgpu::new(
        VgpuConfig {
            mem_size,
            ..Default::default()
        },
        dma.clone(),
    )
    .expect("vgpu");
    LocalDevice::new(name, Arc::new(Mutex::new(DeviceCore::new(dev, dma))))
}

/// A serial device behind a handle.
pub fn serial(name: &str) -> SerialHandle {
    let dma = Arc::new(DmaSpace::new());
    LocalDevice::new(
        name,
        Arc::new(Mutex::new(DeviceCore::new(Serial::new(), dma))),
    )
}

/// Maps `guest` at [`GUEST_IOVA`] for the device behind `h`.
pub fn map_guest(h: &mut impl MigrationDevice, guest: &SharedMemory) {
    h.dma_mapping()
        .expect("DMA mapping")
        .dma_map(DmaWindow {
            iova: GUEST_IOVA,
            size: guest.len(),
            fd: Some(std::os::fd::AsFd::as_fd(&**guest.fd())),
            offset: 0,
            readable: true,
            writable: true,
        })
        .expect("DMA map");
}

pub fn read_reg(h: &mut impl MigrationDevice, off: u64) -> u64 {
    let mut b = [0u8; 8];
    h.regions()
        .expect("region access")
        .region_read(0, off, &mut b)
        .expect("register read");
    u64::from_le_bytes(b)
}

pub fn write_reg(h: &mut impl MigrationDevice, off: u64, v: u64) {
    h.regions()
        .expect("region access")
        .region_write(0, off, &v.to_le_bytes())
        .expect("register write");
}

/// Reads the save stream until `read_data` returns 0 and gives every
/// chunk to `sink`; returns the bytes read.
pub fn drain(src: &mut impl MigrationDevice, chunk: usize, mut sink: impl FnMut(&[u8])) -> u64 {
    let mut buf = vec![0u8; chunk];
    let mut total = 0u64;
    loop {
        let n = src.read_data(&mut buf).expect("read migration data");
        if n == 0 {
            return total;
        }
        total += n as u64;
        sink(&buf[..n]);
    }
}

/// The whole STOP_COPY stream of `src` (which must be in STOP_COPY).
pub fn stop_copy_stream(src: &mut impl MigrationDevice, chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    drain(src, chunk, |b| out.extend_from_slice(b));
    out
}

/// Fills device memory (BAR2) of a running vgpu with bytes from `seed`.
pub fn fill_bar2(h: &mut impl MigrationDevice, mem_size: u64, seed: u64) {
    let mut page = vec![0u8; 64 << 10];
    let mut at = 0;
    while at < mem_size {
        vfio_migrate_samples::hash::fill_pseudo_random(seed ^ at, &mut page);
        h.regions()
            .expect("region access")
            .region_write(2, at, &page)
            .expect("BAR2 write");
        at += page.len() as u64;
    }
}
