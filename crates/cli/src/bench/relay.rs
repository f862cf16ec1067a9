//! The yardstick of the data-path figures: a raw relay that moves the same
//! number of bytes through the same socket hops as a migration, and does
//! nothing else — a sender thread writes, one relay thread per middle
//! process reads each hop and writes the next, a receiver reads. Each hop
//! is a connected pair of its kind (AF_UNIX or TCP loopback) with the
//! 4 MiB send buffer the vfio-user sockets ask for; buffers are reused,
//! so the relay pays exactly the socket copies, the least any mover must.

use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

/// One socket hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// An AF_UNIX stream socket pair.
    Unix,
    /// A TCP connection over loopback.
    Tcp,
}

trait Stream: Read + Write + Send + 'static {}
impl<T: Read + Write + Send + 'static> Stream for T {}

fn pair(h: Hop) -> anyhow::Result<(Box<dyn Stream>, Box<dyn Stream>)> {
    Ok(match h {
        Hop::Unix => {
            let (a, b) = UnixStream::pair()?;
            // As the vfio-user sockets ask (best effort).
            let _ = vfio_migrate_sys::sock::set_send_buffer(a.as_fd(), 4 << 20);
            (Box::new(a), Box::new(b))
        }
        Hop::Tcp => {
            let l = TcpListener::bind("127.0.0.1:0")?;
            let a = TcpStream::connect(l.local_addr()?)?;
            let (b, _) = l.accept()?;
            a.set_nodelay(true)?;
            (Box::new(a), Box::new(b))
        }
    })
}

/// A relay run: wall seconds, and CPU seconds of all its threads.
#[derive(Debug, Clone, Copy)]
pub struct Relayed {
    /// From the first write to the last byte read.
    pub secs: f64,
    /// User + system time of this process meanwhile (the relay's threads).
    pub cpu: f64,
}

/// Moves `bytes` through `hops` in `chunk`-byte reads and writes.
pub fn relay(hops: &[Hop], bytes: u64, chunk: usize) -> anyhow::Result<Relayed> {
    let cpu0 = crate::procstat::cpu_seconds(None).unwrap_or(0.0);
    let mut ends = Vec::new();
    for h in hops {
        ends.push(pair(*h)?);
    }
    let mut threads = Vec::new();
    // Middle relays: read hop k, write hop k+1.
    let mut readers: Vec<Box<dyn Stream>> = Vec::new();
    let mut writers: Vec<Box<dyn Stream>> = Vec::new();
    for (w, r) in ends {
        writers.push(w);
        readers.push(r);
    }
    let mut first = Some(writers.remove(0));
    let last = readers.pop().expect("at least one hop");
    for (mut r, mut w) in readers.into_iter().zip(writers) {
        threads.push(std::thread::spawn(move || -> std::io::Result<u64> {
            let mut buf = vec![0u8; chunk];
            let mut n = 0u64;
            loop {
                let k = r.read(&mut buf)?;
                if k == 0 {
                    return Ok(n);
                }
                w.write_all(&buf[..k])?;
                n += k as u64;
            }
        }));
    }
    let receiver = std::thread::spawn(move || -> std::io::Result<u64> {
        let mut r = last;
        let mut buf = vec![0u8; chunk];
        let mut n = 0u64;
        loop {
            let k = r.read(&mut buf)?;
            if k == 0 {
                return Ok(n);
            }
            n += k as u64;
        }
    });
    let buf = vec![0x5au8; chunk];
    let t = Instant::now();
    {
        let mut w = first.take().expect("sender");
        let mut left = bytes;
        while left > 0 {
            let k = left.min(chunk as u64) as usize;
            w.write_all(&buf[..k]).context("relay sender")?;
            left -= k as u64;
        }
    }
    for th in threads {
        th.join()
            .map_err(|_| anyhow::anyhow!("relay thread panicked"))??;
    }
    let got = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("relay receiver panicked"))??;
    let secs = t.elapsed().as_secs_f64();
    if got != bytes {
        bail!("the relay moved {got} of {bytes} bytes");
    }
    let cpu = crate::procstat::cpu_seconds(None).unwrap_or(0.0) - cpu0;
    Ok(Relayed { secs, cpu })
}

/// The fastest of reads and writes of 256 KiB, 1 MiB and 8 MiB (the
/// strongest yardstick).
pub fn best_relay(hops: &[Hop], bytes: u64) -> anyhow::Result<Relayed> {
    let mut best: Option<Relayed> = None;
    for chunk in [256 << 10, 1 << 20, 8 << 20] {
        let r = relay(hops, bytes, chunk)?;
        if best.is_none_or(|b| r.secs < b.secs) {
            best = Some(r);
        }
    }
    Ok(best.expect("three runs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relays_every_byte_through_mixed_hops() {
        relay(&[Hop::Unix, Hop::Tcp, Hop::Unix], 3 << 20 | 5, 1 << 16).unwrap();
        relay(&[Hop::Unix], 1, 4096).unwrap();
    }
}
