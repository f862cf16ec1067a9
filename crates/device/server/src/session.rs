//! One client connection's state ([`Session`]), the reply being built
//! ([`Reply`]) and the hooks through which device-specific regions and
//! commands plug into the server ([`RegionHandler`], [`CommandHandler`]).

use std::collections::BTreeSet;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};
use vfio_migrate_abi::vfio_user::Capabilities;
use vfio_migrate_device::{Device, DeviceCore, DeviceResult, Region};

use super::ServerConfig;

/// A device-specific extra region (index ≥ 9), served next to the device's
/// own regions: e.g. a v1 or seed migration region. The server checks
/// index, bounds and access direction before calling it.
pub trait RegionHandler<D: Device>: Send {
    /// The region description (index, size, flags, type, mmap).
    fn region(&self) -> Region;
    /// Reads `buf.len()` bytes at `offset` (range checked).
    fn read(&mut self, core: &mut DeviceCore<D>, offset: u64, buf: &mut [u8]) -> DeviceResult<()>;
    /// Writes `data` at `offset` (range checked).
    fn write(&mut self, core: &mut DeviceCore<D>, offset: u64, data: &[u8]) -> DeviceResult<()>;
    /// The client went away (drop per-connection state).
    fn disconnected(&mut self, core: &mut DeviceCore<D>) {
        let _ = core;
    }
    /// DEVICE_RESET: forget any protocol state (the device core was reset).
    fn reset(&mut self) {}
}

/// An extra command the core dispatcher does not know (e.g. the old
/// `DIRTY_PAGES`). It gets the payload and fds and appends its reply
/// payload; an error becomes an error reply with its errno.
pub trait CommandHandler<D: Device>: Send {
    /// The command number it serves.
    fn command(&self) -> u16;
    /// Handles one message.
    fn handle(
        &mut self,
        core: &mut DeviceCore<D>,
        payload: &[u8],
        fds: Vec<OwnedFd>,
        reply: &mut Reply,
    ) -> DeviceResult<()>;
    /// The client went away.
    fn disconnected(&mut self, core: &mut DeviceCore<D>) {
        let _ = core;
    }
}

/// Device-specific additions to a server.
pub struct Extensions<D: Device> {
    pub(crate) regions: Vec<Box<dyn RegionHandler<D>>>,
    pub(crate) commands: Vec<Box<dyn CommandHandler<D>>>,
    /// Offer the v2 migration interface (DEVICE_FEATURE migration features
    /// and MIG_DATA_*); off when only an older protocol is served.
    pub(crate) v2_migration: bool,
}

impl<D: Device> Default for Extensions<D> {
    fn default() -> Self {
        Self {
            regions: Vec::new(),
            commands: Vec::new(),
            v2_migration: true,
        }
    }
}

/// The reply to one command: payload (buffer reused across messages),
/// fds to pass, or an errno.
#[derive(Debug, Default)]
pub struct Reply {
    /// 0 on success, else the errno of the error reply.
    pub errno: i32,
    /// Why it failed (logs only; the wire carries just the errno).
    pub message: String,
    data: Vec<u8>,
    len: usize,
    /// File descriptors sent with the reply.
    pub fds: Vec<Arc<OwnedFd>>,
    /// Close the connection after sending (the stream cannot be trusted).
    pub close: bool,
    /// Data that follows the payload on the wire, sent by splice
    /// ([`Reply::set_spliced`]): MIG_DATA_READ replies of a stopped device.
    pub(crate) pieces: vfio_migrate_device::SavePieces,
    pub(crate) spliced: bool,
    /// The pipe spliced data goes through (made on first use, kept for the
    /// connection).
    pub(crate) pipe: Option<(OwnedFd, OwnedFd)>,
}

impl Reply {
    /// An empty reply.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resets for the next message, keeping the buffer.
    pub fn reset(&mut self) {
        self.errno = 0;
        self.message.clear();
        self.len = 0;
        self.fds.clear();
        self.close = false;
        self.spliced = false;
    }

    /// The payload built so far.
    pub fn payload(&self) -> &[u8] {
        &self.data[..self.len]
    }

    /// Appends bytes.
    pub fn put(&mut self, b: &[u8]) {
        self.grow(b.len()).copy_from_slice(b);
    }

    /// Appends `n` bytes and returns them for filling (contents are
    /// whatever an earlier message left there: fill all of them or
    /// [`Reply::truncate`]).
    pub fn grow(&mut self, n: usize) -> &mut [u8] {
        let end = self.len + n;
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        let start = self.len;
        self.len = end;
        &mut self.data[start..end]
    }

    /// Shortens the payload to `len` bytes.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Mutable access to already appended bytes (to patch a length field).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.data[..self.len]
    }

    /// The data in `self.pieces` follows the payload on the wire.
    pub(crate) fn set_spliced(&mut self) {
        self.spliced = true;
    }

    /// Turns the reply into an error reply.
    pub fn fail(&mut self, errno: i32, message: impl Into<String>) {
        self.len = 0;
        self.fds.clear();
        self.spliced = false;
        self.errno = errno;
        self.message = message.into();
    }
}

/// Per-connection state: what VERSION negotiated and what this client set
/// up (DMA windows live in the device's `DmaSpace`; IRQ indices with fds
/// are remembered here so a disconnect can drop them).
pub struct Session<'a, D: Device> {
    pub(crate) core: &'a Mutex<DeviceCore<D>>,
    pub(crate) ext: &'a mut Extensions<D>,
    pub(crate) config: &'a ServerConfig,
    /// The client's capabilities once VERSION was exchanged.
    pub(crate) client: Option<Capabilities>,
    /// IRQ indices this client attached eventfds to.
    pub(crate) irqs: BTreeSet<u32>,
    /// Refused messages sent with NO_REPLY (posted writes) so far.
    pub(crate) refused_unanswered: u64,
    /// MIG_DATA_READ replies carry the data's CRC32C
    /// (`FEATURE_MIG_DATA_CRC`).
    pub(crate) mig_data_crc: bool,
    /// The client opted in to the second pre-copy info layout (with
    /// flags: REINIT), by SET on `FEATURE_PRECOPY_INFO_V2`.
    pub(crate) precopy_info_v2: bool,
}

impl<'a, D: Device> Session<'a, D> {
    /// A fresh session over a device core shared with the server.
    pub fn new(
        core: &'a Mutex<DeviceCore<D>>,
        ext: &'a mut Extensions<D>,
        config: &'a ServerConfig,
    ) -> Self {
        Self {
            core,
            ext,
            config,
            client: None,
            irqs: BTreeSet::new(),
            refused_unanswered: 0,
            mig_data_crc: false,
            precopy_info_v2: false,
        }
    }

    /// Locks the device (a poisoned lock is recovered: a panicking handler
    /// must not take the device down with it).
    pub(crate) fn lock(&self) -> MutexGuard<'a, DeviceCore<D>> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True once VERSION has been negotiated.
    pub fn negotiated(&self) -> bool {
        self.client.is_some()
    }

    /// The largest data count one message may carry towards the client.
    pub(crate) fn max_out(&self) -> usize {
        let client = self
            .client
            .as_ref()
            .map(|c| c.max_data_xfer_size)
            .unwrap_or(vfio_migrate_abi::vfio_user::DEFAULT_MAX_DATA_XFER_SIZE);
        client.min(self.config.max_data_xfer_size) as usize
    }

    /// The largest data count one message may carry towards the server.
    pub(crate) fn max_in(&self) -> usize {
        self.config.max_data_xfer_size as usize
    }

    /// How many fds the client accepts in one reply.
    pub(crate) fn client_max_fds(&self) -> u32 {
        self.client
            .as_ref()
            .map(|c| c.max_msg_fds)
            .unwrap_or(vfio_migrate_abi::vfio_user::DEFAULT_MAX_MSG_FDS)
    }

    /// Ends the session: DMA windows and logging go, IRQ fds are dropped,
    /// extensions forget the client. The device state stays.
    pub fn close(mut self) {
        let irqs = std::mem::take(&mut self.irqs);
        let mut core = self.lock();
        core.dma().clear();
        for index in irqs {
            let all = vfio_migrate_device::IrqRequest::Detach { start: 0, count: 0 };
            if let Err(e) = core.device().set_irqs(index, all) {
                tracing::warn!(index, error = %e, "dropping IRQ eventfds on disconnect failed");
            }
        }
        for r in self.ext.regions.iter_mut() {
            r.disconnected(&mut core);
        }
        for c in self.ext.commands.iter_mut() {
            c.disconnected(&mut core);
        }
        // A client that went away in the middle of a migration must not
        // leave the device half-way: see `DeviceCore::recover_orphaned`.
        if let Some(what) = core.recover_orphaned() {
            tracing::warn!("client gone mid-migration: {what}");
        }
    }
}
