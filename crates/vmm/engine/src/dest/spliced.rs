//! Device data that never passes through this process: when the link is a
//! plaintext socket, no data channels are open and every device's backend
//! takes spliced data with its checksum (our vfio-user servers,
//! [`vfio_migrate_backend::DataSplice`]), a device-data record's payload
//! goes link → pipe → device server by `splice`, a pipeful at a time, with
//! the checksum derived from the record's; the server checks it before the
//! device takes a byte. No copy into or out of this process, no checksum
//! pass here. Bytes the stream reader had already buffered go into the
//! pipe first.

use super::Dest;
use crate::error::EngineError;
use crate::format::StreamError;
use crate::link::Pipe;
use std::io::{BufRead, Read, Write};
use std::os::fd::AsFd;
use vfio_migrate_backend::MigrationDevice;

/// The pipe's size: a whole 1 MiB record usually fits (it need not).
const PIPE: usize = 1 << 20;
/// Smaller device-data records are read and written as usual.
pub(super) const SPLICE_MIN: usize = 256 << 10;

impl<D: MigrationDevice> Dest<'_, D> {
    /// After setup: sets up the pipe when the link and every device can
    /// take spliced data (else records are read as usual).
    pub(super) fn prepare_splice(&mut self) {
        let ready = self.st.splice.is_some()
            && self.st.inbound.is_none()
            && self.st.devs.iter_mut().all(|d| d.h.data_splice().is_some());
        if !ready {
            return;
        }
        match Pipe::new(PIPE) {
            Ok(p) => self.st.pipe = Some(p),
            Err(e) => tracing::debug!(error = %e, "no pipe for splicing: reading records instead"),
        }
    }

    fn io_err(&self, e: std::io::Error) -> EngineError {
        EngineError::stream(
            self.st.phase,
            &self.st.peer,
            StreamError::Io {
                what: format!("reading from the source {}", self.st.peer),
                source: e,
            },
        )
    }

    /// Moves the `len` payload bytes of a device-data record of device `i`
    /// (next in the link, unread) into the device; they must have CRC32C
    /// `crc`, which the device's server checks (or, for a backend that
    /// cannot take them spliced, this process).
    pub(super) fn splice_device(
        &mut self,
        i: usize,
        stop_copy: bool,
        len: usize,
        crc: u32,
    ) -> Result<(), EngineError> {
        if !self.st.reasm[i].passed(len as u64) {
            return Err(self.unexpected("(device data while chunks of it wait behind a gap)"));
        }
        let sink = self.st.splice.clone().expect("deferred only with a splice");
        let mut pipe = self.st.pipe.take().expect("deferred only with a pipe");
        let phase = self.st.phase;
        let mut link_failed: Option<std::io::Error> = None;
        let r = {
            let input = &mut self.input;
            let w = &mut pipe.w;
            let mut fill = |max: usize| -> std::io::Result<usize> {
                let rd = input.get_mut();
                let ahead = rd.buffer();
                let r = if ahead.is_empty() {
                    sink.fill_pipe(w.as_fd(), max)
                } else {
                    // The pipe is empty and holds far more than the
                    // reader's small buffer.
                    let k = ahead.len().min(max);
                    let r = w.write_all(&ahead[..k]).map(|()| k);
                    rd.consume(k);
                    r
                };
                r.map_err(|e| {
                    let told = std::io::Error::new(e.kind(), e.to_string());
                    link_failed = Some(e);
                    told
                })
            };
            let d = &mut self.st.devs[i];
            match d.h.data_splice() {
                Some(s) => s
                    .write_data_spliced(pipe.r.as_fd(), len, crc, &mut fill)
                    .map_err(|e| EngineError::device(phase, d.name.clone(), e)),
                None => Ok(false),
            }
        };
        if let Some(e) = link_failed {
            return Err(self.io_err(e));
        }
        // After a failure the pipe may hold bytes: it is not reused (the
        // migration is over anyway).
        let spliced = r?;
        self.st.pipe = Some(pipe);
        if !spliced {
            return self.read_device(i, stop_copy, len, crc);
        }
        let d = &mut self.st.devs[i];
        d.took(len, stop_copy);
        d.spliced += len as u64;
        Ok(())
    }

    /// Waits until device `only` (or every device) answered its spliced
    /// writes: before an acknowledgement that says the device took the
    /// data, and at the end of the stream, so no refusal goes unseen.
    pub(super) fn settle_writes(&mut self, only: Option<usize>) -> Result<(), EngineError> {
        if self.st.pipe.is_none() {
            return Ok(());
        }
        let phase = self.st.phase;
        for (i, d) in self.st.devs.iter_mut().enumerate() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            if let Some(s) = d.h.data_splice() {
                s.flush_writes()
                    .map_err(|e| EngineError::device(phase, d.name.clone(), e))?;
            }
        }
        Ok(())
    }

    /// The record's payload read and checked here, then written as usual
    /// (a backend that cannot take it spliced).
    fn read_device(
        &mut self,
        i: usize,
        stop_copy: bool,
        len: usize,
        crc: u32,
    ) -> Result<(), EngineError> {
        let mut buf = vec![0u8; len];
        if let Err(e) = self.input.get_mut().read_exact(&mut buf) {
            return Err(self.io_err(e));
        }
        if crc32c::crc32c(&buf) != crc {
            let e = self
                .input
                .invalid("device data does not match its record's checksum: corrupted");
            return Err(EngineError::stream(self.st.phase, &self.st.peer, e));
        }
        self.st.write_device(i, &buf, stop_copy)
    }
}
