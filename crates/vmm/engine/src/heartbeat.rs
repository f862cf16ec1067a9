//! The writing end of a live link, shared by the migration and a
//! heartbeat thread: [`SharedWriter`] writes whole records under a lock,
//! and [`Heartbeat`] adds a heartbeat record whenever the link has been
//! quiet for an interval, so the peer's stall deadline only fires when this
//! side is really gone.

use crate::format::{Kind, RecordWriter, StreamError};
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// A record writer several threads write whole records to.
pub struct SharedWriter<W: Write> {
    inner: Arc<Mutex<RecordWriter<W>>>,
}

impl<W: Write> Clone for SharedWriter<W> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<W: Write> SharedWriter<W> {
    /// Shares `w`.
    pub fn new(w: RecordWriter<W>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(w)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RecordWriter<W>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the stream header.
    pub fn write_stream_header(&self) -> Result<(), StreamError> {
        self.lock().write_stream_header()
    }

    /// Writes one record whose payload is the concatenation of `parts`.
    pub fn write_parts(&self, kind: Kind, device: u32, parts: &[&[u8]]) -> Result<(), StreamError> {
        self.lock().write_parts(kind, device, parts)
    }

    /// Writes one record.
    pub fn write(&self, kind: Kind, device: u32, payload: &[u8]) -> Result<(), StreamError> {
        self.lock().write(kind, device, payload)
    }

    /// Writes the end marker.
    pub fn write_end(&self) -> Result<(), StreamError> {
        self.lock().write_end()
    }

    /// Flushes.
    pub fn flush(&self) -> Result<(), StreamError> {
        self.lock().flush()
    }

    /// Stream bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes()
    }

    /// Runs `f` on the writer under the lock (a reply and its flush).
    pub fn with<T>(&self, f: impl FnOnce(&mut RecordWriter<W>) -> T) -> T {
        f(&mut self.lock())
    }
}

/// A thread that writes a heartbeat whenever the link was quiet for
/// `every`; stopped when dropped.
pub struct Heartbeat {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Starts beating on `w`.
    pub fn start<W: Write + Send + 'static>(w: SharedWriter<W>, every: Duration) -> Self {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("migrate-heartbeat".into())
            .spawn(move || {
                let (m, cv) = &*s;
                let mut stopped = m.lock().unwrap_or_else(|p| p.into_inner());
                while !*stopped {
                    let (g, _) = cv
                        .wait_timeout(stopped, every / 2)
                        .unwrap_or_else(|p| p.into_inner());
                    stopped = g;
                    if *stopped {
                        break;
                    }
                    // Never wait behind a record being written: that write
                    // is progress already, or fails on its own deadline.
                    if let Ok(mut out) = w.inner.try_lock() {
                        if out.idle() >= every && out.write_heartbeat().is_err() {
                            break;
                        }
                    }
                }
            })
            .ok();
        Self { stop, thread }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        let (m, cv) = &*self.stop;
        *m.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
