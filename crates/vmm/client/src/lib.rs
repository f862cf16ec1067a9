//! # vfio-migrate-client
//!
//! The vfio-user client (VMM side): one connection to a server (ours or any other
//! implementation of the spec), the raw operations as public methods, and
//! [`vfio_migrate_backend::MigrationDevice`] on top (see `migration.rs`).
//!
//! Every request is one `sendmsg` (header, struct and data as iovecs, fds
//! as `SCM_RIGHTS`); every reply is read to its last byte (`msg_size`),
//! error replies and padding included; data replies are read straight
//! into the caller's buffer. Chunk sizes stay within the negotiated
//! `max_data_xfer_size`, and MIG_DATA_WRITE chunks within 32 KiB unless the
//! peer announced our extension (see [`vfio_migrate_vfio_user::ext`]), because the
//! reference C server cannot take larger messages reliably.

#![forbid(unsafe_code)]

mod forward;
mod migration;
mod migregion;
mod protocol;
mod seed;
mod v1;

pub use forward::forward_mig_data;
pub use migregion::MigRegion;
pub use protocol::{open, Protocol};
pub use seed::SeedDevice;
pub use v1::V1Device;

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use vfio_migrate_abi::kernel::{
    bitmap_bytes, DeviceFeature, FEATURE_DMA_LOGGING_REPORT, FEATURE_GET, FEATURE_PROBE,
    FEATURE_SET,
};
use vfio_migrate_abi::vfio_user::{
    CapHeader, CapSparseMmap, CapType, Capabilities, Command, DeviceInfo, DmaMap, DmaUnmap, Header,
    IrqInfo, IrqSet, MigData, MigrationCaps, RegionAccess, RegionInfo, SparseMmapArea, Version,
    FLAGS_TYPE_MASK, HEADER_SIZE, REGION_INFO_CAP_SPARSE_MMAP, REGION_INFO_CAP_TYPE, TYPE_COMMAND,
    TYPE_REPLY, VERSION_MAJOR, VERSION_MINOR,
};
use vfio_migrate_backend::{BackendError, DeviceDescriptor, Result};

use vfio_migrate_vfio_user::ext::{VersionCaps, EXT_VERSION};
use vfio_migrate_vfio_user::sock::{set_send_buffer, Conn, RecvFds};

/// MIG_DATA_WRITE chunk limit for peers not known to read large messages
/// whole (the reference C server's receive path).
pub const SAFE_WRITE_CHUNK: usize = 32 << 10;

/// Room for structs on top of `max_data_xfer_size` in a reply.
const REPLY_ALLOWANCE: usize = 64 << 10;

/// Largest region info (with capabilities) we accept.
const MAX_REGION_INFO: u32 = 64 << 10;

/// Client-side limits announced in VERSION.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Largest data count we accept in one reply.
    pub max_data_xfer_size: u32,
    /// Most fds we accept in one reply.
    pub max_msg_fds: u32,
    /// Socket send buffer to ask for.
    pub socket_buffer: usize,
    /// Propose our extension capability.
    pub propose_extension: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            max_data_xfer_size: 8 << 20,
            max_msg_fds: 8,
            socket_buffer: 4 << 20,
            propose_extension: true,
        }
    }
}

/// A reply as received, not interpreted (for callers that speak the
/// protocol themselves, e.g. tests of malformed requests).
#[derive(Debug)]
pub struct RawReply {
    pub header: Header,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl RawReply {
    /// The errno when the reply is an error.
    pub fn errno(&self) -> Option<i32> {
        self.header
            .is_error()
            .then_some(self.header.error_no as i32)
    }
}

/// What DEVICE_GET_REGION_INFO says about a region.
#[derive(Debug)]
pub struct RegionDesc {
    pub index: u32,
    /// `REGION_FLAG_*`.
    pub flags: u32,
    pub size: u64,
    /// mmap offset of the region in `fd`.
    pub offset: u64,
    /// `(type, subtype)` from the type capability.
    pub region_type: Option<(u32, u32)>,
    /// `(offset, size)` areas from the sparse-mmap capability.
    pub sparse_areas: Vec<(u64, u64)>,
    /// The fd to mmap, when the region is mmap-able.
    pub fd: Option<OwnedFd>,
}

/// A connection to a vfio-user server.
pub struct Client {
    conn: Conn,
    name: String,
    config: ClientConfig,
    next_id: u16,
    peer: VersionCaps,
    scratch: Vec<u8>,
    probed: HashMap<u32, bool>,
    descriptor: Option<DeviceDescriptor>,
    mig_flags: Option<u64>,
}

fn io_err(step: &str, e: std::io::Error) -> BackendError {
    BackendError::io(step, e)
}

impl Client {
    /// Connects to `path` and negotiates VERSION.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self> {
        Self::connect_with(path, ClientConfig::default())
    }

    /// Connects with explicit limits.
    pub fn connect_with(path: impl AsRef<Path>, config: ClientConfig) -> Result<Self> {
        let path = path.as_ref();
        let name = format!("unix:{}", path.display());
        let s =
            UnixStream::connect(path).map_err(|e| io_err(&format!("connecting to {name}"), e))?;
        let mut c = Self::without_version(s, name, config);
        c.negotiate()?;
        Ok(c)
    }

    /// Wraps a connected stream without sending VERSION (call
    /// [`Client::negotiate`], or speak raw requests).
    pub fn without_version(
        stream: UnixStream,
        name: impl Into<String>,
        config: ClientConfig,
    ) -> Self {
        set_send_buffer(stream.as_fd(), config.socket_buffer);
        Self {
            conn: Conn::blocking(stream.into()),
            name: name.into(),
            config,
            next_id: 0,
            peer: VersionCaps {
                caps: Capabilities::default(),
                ext: None,
            },
            scratch: Vec::new(),
            probed: HashMap::new(),
            descriptor: None,
            mig_flags: None,
        }
    }

    /// The server's capabilities (defaults until VERSION).
    pub fn peer_caps(&self) -> &Capabilities {
        &self.peer.caps
    }

    /// True when the server announced our extension (it is a vfio-migrate
    /// server: robust receive path, extension features).
    pub fn peer_is_vfio_migrate(&self) -> bool {
        self.peer.ext.is_some()
    }

    /// Largest data count per message towards the server.
    pub fn max_send_chunk(&self) -> usize {
        self.peer.caps.max_data_xfer_size.max(1) as usize
    }

    /// Largest data count per message from the server.
    pub fn max_recv_chunk(&self) -> usize {
        self.peer
            .caps
            .max_data_xfer_size
            .min(self.config.max_data_xfer_size)
            .max(1) as usize
    }

    /// MIG_DATA_WRITE chunk size used.
    pub fn write_chunk(&self) -> usize {
        if self.peer_is_vfio_migrate() {
            self.max_send_chunk()
        } else {
            self.max_send_chunk().min(SAFE_WRITE_CHUNK)
        }
    }

    /// Sends VERSION and records the server's capabilities.
    pub fn negotiate(&mut self) -> Result<()> {
        let ours = VersionCaps {
            caps: Capabilities {
                max_msg_fds: self.config.max_msg_fds,
                max_data_xfer_size: self.config.max_data_xfer_size,
                migration: Some(MigrationCaps {
                    pgsize: 4096,
                    max_bitmap_size: None,
                }),
            },
            ext: self.config.propose_extension.then_some(EXT_VERSION),
        };
        let head = Version {
            major: VERSION_MAJOR,
            minor: VERSION_MINOR,
        }
        .to_bytes();
        let json = ours.to_json_bytes();
        let step = "VERSION";
        let (_, n, _) = self.call(step, Command::Version as u16, &[&head, &json], &[])?;
        let p = &self.scratch[..n];
        let v = Version::decode(p).map_err(|e| BackendError::protocol(step, e.to_string()))?;
        if v.major != VERSION_MAJOR {
            return Err(BackendError::protocol(
                step,
                format!(
                    "server answered major version {} to our {VERSION_MAJOR}",
                    v.major
                ),
            ));
        }
        let theirs = VersionCaps::from_json_bytes(&p[Version::SIZE..])
            .map_err(|e| BackendError::protocol(step, e.to_string()))?;
        tracing::debug!(server = %self.name, caps = ?theirs, "VERSION negotiated");
        self.peer = theirs;
        Ok(())
    }

    fn next_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    fn send(&mut self, step: &str, cmd: u16, parts: &[&[u8]], fds: &[RawFd]) -> Result<Header> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let msg_size = u32::try_from(HEADER_SIZE + len).map_err(|_| {
            BackendError::protocol(step, format!("message of {len} bytes is too large"))
        })?;
        let h = Header {
            msg_id: self.next_id(),
            cmd,
            msg_size,
            flags: TYPE_COMMAND,
            error_no: 0,
        };
        let hb = h.to_bytes();
        let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        all.push(&hb);
        all.extend_from_slice(parts);
        self.conn.send(&all, fds).map_err(|e| io_err(step, e))?;
        Ok(h)
    }

    /// Reads reply headers until the one answering `req` (server-to-client
    /// commands in between are drained and refused with ENOTSUP). Returns
    /// the header with its fds; the payload is still unread.
    fn recv_header(&mut self, step: &str, req: &Header, fds: &mut RecvFds) -> Result<Header> {
        loop {
            let mut hb = [0u8; HEADER_SIZE];
            if !self
                .conn
                .recv_exact(&mut hb, fds, true)
                .map_err(|e| io_err(step, e))?
            {
                return Err(BackendError::io(
                    step,
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    ),
                ));
            }
            let h = Header::decode(&hb).expect("16 bytes");
            let plen = h.payload_len().map_err(|_| {
                BackendError::protocol(step, format!("reply msg_size {} < 16", h.msg_size))
            })?;
            let cap = self.config.max_data_xfer_size as usize + REPLY_ALLOWANCE;
            if plen > cap {
                return Err(BackendError::protocol(
                    step,
                    format!("reply of {plen} bytes exceeds our limit of {cap}; the connection is unusable"),
                ));
            }
            if h.flags & FLAGS_TYPE_MASK == TYPE_COMMAND {
                // A server-to-client command (DMA_READ/WRITE): not offered.
                self.conn.discard(plen, fds).map_err(|e| io_err(step, e))?;
                fds.fds.clear();
                let r = Header {
                    msg_id: h.msg_id,
                    cmd: h.cmd,
                    msg_size: HEADER_SIZE as u32,
                    flags: TYPE_REPLY | vfio_migrate_abi::vfio_user::FLAG_ERROR,
                    error_no: libc::ENOTSUP as u32,
                };
                if !h.no_reply() {
                    self.conn
                        .send(&[&r.to_bytes()], &[])
                        .map_err(|e| io_err(step, e))?;
                }
                continue;
            }
            if h.flags & FLAGS_TYPE_MASK != TYPE_REPLY || h.msg_id != req.msg_id || h.cmd != req.cmd
            {
                self.conn.discard(plen, fds).map_err(|e| io_err(step, e))?;
                return Err(BackendError::protocol(
                    step,
                    format!(
                        "expected the reply to message {} (command {}), got type {} id {} command {}",
                        req.msg_id,
                        req.cmd,
                        h.flags & FLAGS_TYPE_MASK,
                        h.msg_id,
                        h.cmd
                    ),
                ));
            }
            return Ok(h);
        }
    }

    /// Drains an error reply's payload and turns it into `Refused`.
    fn refused(&mut self, step: &str, h: &Header, fds: &mut RecvFds) -> BackendError {
        let plen = h.msg_size as usize - HEADER_SIZE;
        if let Err(e) = self.conn.discard(plen, fds) {
            return io_err(step, e);
        }
        BackendError::refused(step, h.error_no as i32, "")
    }

    /// One request/reply; the reply payload lands in `self.scratch[..n]`.
    fn call(
        &mut self,
        step: &str,
        cmd: u16,
        parts: &[&[u8]],
        fds: &[RawFd],
    ) -> Result<(Header, usize, Vec<OwnedFd>)> {
        let req = self.send(step, cmd, parts, fds)?;
        let mut rf = RecvFds::default();
        let h = self.recv_header(step, &req, &mut rf)?;
        if h.is_error() {
            return Err(self.refused(step, &h, &mut rf));
        }
        let plen = h.msg_size as usize - HEADER_SIZE;
        if self.scratch.len() < plen {
            self.scratch.resize(plen, 0);
        }
        self.conn
            .recv_exact(&mut self.scratch[..plen], &mut rf, false)
            .map_err(|e| io_err(step, e))?;
        Ok((h, plen, rf.fds))
    }

    /// Sends any command and returns the reply as is (no error mapping).
    pub fn request(
        &mut self,
        cmd: u16,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<RawReply> {
        let step = "raw request";
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let req = self.send(step, cmd, &[payload], &raw)?;
        let mut rf = RecvFds::default();
        let h = self.recv_header(step, &req, &mut rf)?;
        let mut payload = vec![0u8; h.msg_size as usize - HEADER_SIZE];
        self.conn
            .recv_exact(&mut payload, &mut rf, false)
            .map_err(|e| io_err(step, e))?;
        Ok(RawReply {
            header: h,
            payload,
            fds: rf.fds,
        })
    }

    /// DEVICE_GET_INFO.
    pub fn device_info(&mut self) -> Result<DeviceInfo> {
        let step = "DEVICE_GET_INFO";
        let req = DeviceInfo {
            argsz: DeviceInfo::SIZE as u32,
            ..Default::default()
        };
        let (_, n, _) = self.call(step, Command::DeviceGetInfo as u16, &[&req.to_bytes()], &[])?;
        DeviceInfo::decode(&self.scratch[..n])
            .map_err(|e| BackendError::protocol(step, e.to_string()))
    }

    /// DEVICE_GET_REGION_INFO, capabilities parsed, fd kept.
    pub fn region_info(&mut self, index: u32) -> Result<RegionDesc> {
        let step = format!("DEVICE_GET_REGION_INFO {index}");
        let mut argsz = RegionInfo::SIZE as u32;
        loop {
            let req = RegionInfo {
                argsz,
                index,
                ..Default::default()
            };
            let (_, n, mut fds) = self.call(
                &step,
                Command::DeviceGetRegionInfo as u16,
                &[&req.to_bytes()],
                &[],
            )?;
            let p = &self.scratch[..n];
            let info =
                RegionInfo::decode(p).map_err(|e| BackendError::protocol(&step, e.to_string()))?;
            if info.argsz > argsz && info.cap_offset == 0 {
                if info.argsz > MAX_REGION_INFO {
                    return Err(BackendError::protocol(
                        &step,
                        format!("region info of {} bytes", info.argsz),
                    ));
                }
                argsz = info.argsz;
                continue;
            }
            let (region_type, sparse_areas) =
                parse_caps(p, info.cap_offset).map_err(|d| BackendError::protocol(&step, d))?;
            let fd = if info.flags & vfio_migrate_abi::vfio_user::REGION_FLAG_MMAP != 0 {
                fds.drain(..).next()
            } else {
                None
            };
            return Ok(RegionDesc {
                index,
                flags: info.flags,
                size: info.size,
                offset: info.offset,
                region_type,
                sparse_areas,
                fd,
            });
        }
    }

    /// REGION_READ of `buf.len()` bytes, in chunks within the limits, each
    /// reply read straight into `buf`.
    pub fn region_read(&mut self, index: u32, offset: u64, buf: &mut [u8]) -> Result<()> {
        let step = format!("REGION_READ region {index} at {offset:#x}");
        let chunk = self.max_recv_chunk();
        let mut done = 0usize;
        while done < buf.len() {
            let n = (buf.len() - done).min(chunk);
            let head = RegionAccess {
                offset: offset + done as u64,
                region: index,
                count: n as u32,
            };
            let req = self.send(&step, Command::RegionRead as u16, &[&head.to_bytes()], &[])?;
            let mut rf = RecvFds::default();
            let h = self.recv_header(&step, &req, &mut rf)?;
            if h.is_error() {
                return Err(self.refused(&step, &h, &mut rf));
            }
            let plen = h.msg_size as usize - HEADER_SIZE;
            let mut hb = [0u8; RegionAccess::SIZE];
            if plen < hb.len() + n {
                self.conn
                    .discard(plen, &mut rf)
                    .map_err(|e| io_err(&step, e))?;
                return Err(BackendError::protocol(
                    &step,
                    format!("reply of {plen} bytes for a {n}-byte read"),
                ));
            }
            self.conn
                .recv_exact(&mut hb, &mut rf, false)
                .map_err(|e| io_err(&step, e))?;
            self.conn
                .recv_exact(&mut buf[done..done + n], &mut rf, false)
                .map_err(|e| io_err(&step, e))?;
            self.conn
                .discard(plen - hb.len() - n, &mut rf)
                .map_err(|e| io_err(&step, e))?;
            done += n;
        }
        Ok(())
    }

    /// REGION_WRITE of `data`, in chunks within the limits.
    pub fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<()> {
        let step = format!("REGION_WRITE region {index} at {offset:#x}");
        let chunk = self.write_chunk().max(8);
        let mut done = 0usize;
        loop {
            let n = (data.len() - done).min(chunk);
            let head = RegionAccess {
                offset: offset + done as u64,
                region: index,
                count: n as u32,
            };
            self.call(
                &step,
                Command::RegionWrite as u16,
                &[&head.to_bytes(), &data[done..done + n]],
                &[],
            )?;
            done += n;
            if done >= data.len() {
                return Ok(());
            }
        }
    }

    /// DMA_MAP of `[iova, iova+size)`, backed by `fd` at `offset` when given.
    pub fn dma_map_fd(
        &mut self,
        iova: u64,
        size: u64,
        fd: Option<BorrowedFd<'_>>,
        offset: u64,
        flags: u32,
    ) -> Result<()> {
        let step = format!("DMA_MAP {iova:#x}+{size:#x}");
        let req = DmaMap {
            argsz: DmaMap::SIZE as u32,
            flags,
            offset,
            addr: iova,
            size,
        };
        let raw: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
        self.call(&step, Command::DmaMap as u16, &[&req.to_bytes()], &raw)?;
        Ok(())
    }

    /// DMA_UNMAP of a window mapped before.
    pub fn dma_unmap_window(&mut self, iova: u64, size: u64) -> Result<()> {
        let step = format!("DMA_UNMAP {iova:#x}+{size:#x}");
        let req = DmaUnmap {
            argsz: DmaUnmap::SIZE as u32,
            flags: 0,
            addr: iova,
            size,
        };
        self.call(&step, Command::DmaUnmap as u16, &[&req.to_bytes()], &[])?;
        Ok(())
    }

    /// DEVICE_GET_IRQ_INFO.
    pub fn irq_info(&mut self, index: u32) -> Result<IrqInfo> {
        let step = format!("DEVICE_GET_IRQ_INFO {index}");
        let req = IrqInfo {
            argsz: IrqInfo::SIZE as u32,
            index,
            ..Default::default()
        };
        let (_, n, _) = self.call(
            &step,
            Command::DeviceGetIrqInfo as u16,
            &[&req.to_bytes()],
            &[],
        )?;
        IrqInfo::decode(&self.scratch[..n])
            .map_err(|e| BackendError::protocol(&step, e.to_string()))
    }

    /// DEVICE_SET_IRQS with `flags` (`IRQ_SET_*`) and the given eventfds.
    pub fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: &[BorrowedFd<'_>],
    ) -> Result<()> {
        let step = format!("DEVICE_SET_IRQS {index}");
        let req = IrqSet {
            argsz: IrqSet::SIZE as u32,
            flags,
            index,
            start,
            count,
        };
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        self.call(
            &step,
            Command::DeviceSetIrqs as u16,
            &[&req.to_bytes()],
            &raw,
        )?;
        Ok(())
    }

    /// DEVICE_RESET.
    pub fn reset(&mut self) -> Result<()> {
        self.call("DEVICE_RESET", Command::DeviceReset as u16, &[], &[])?;
        self.mig_flags = None;
        Ok(())
    }

    fn feature(
        &mut self,
        step: &str,
        flags: u32,
        data: &[u8],
        reply_data: usize,
    ) -> Result<Vec<u8>> {
        let argsz = DeviceFeature::SIZE + data.len().max(reply_data);
        let head = DeviceFeature {
            argsz: argsz as u32,
            flags,
        };
        let (_, n, _) = self.call(
            step,
            Command::DeviceFeature as u16,
            &[&head.to_bytes(), data],
            &[],
        )?;
        if n < DeviceFeature::SIZE {
            return Err(BackendError::protocol(
                step,
                format!("DEVICE_FEATURE reply of {n} bytes"),
            ));
        }
        Ok(self.scratch[DeviceFeature::SIZE..n].to_vec())
    }

    /// DEVICE_FEATURE GET: returns the feature data (`reply_data` bytes
    /// expected; `data` is sent as the request body).
    pub fn feature_get(&mut self, feature: u32, data: &[u8], reply_data: usize) -> Result<Vec<u8>> {
        self.feature(
            &format!("DEVICE_FEATURE GET {feature}"),
            feature | FEATURE_GET,
            data,
            reply_data,
        )
    }

    /// DEVICE_FEATURE SET: returns the reply data (the echoed request).
    pub fn feature_set(&mut self, feature: u32, data: &[u8]) -> Result<Vec<u8>> {
        self.feature(
            &format!("DEVICE_FEATURE SET {feature}"),
            feature | FEATURE_SET,
            data,
            0,
        )
    }

    /// DEVICE_FEATURE PROBE for `ops` (`FEATURE_GET` and/or `FEATURE_SET`):
    /// Ok(false) when the server refuses, cached per connection.
    pub fn feature_probe(&mut self, feature: u32, ops: u32) -> Result<bool> {
        let key = feature | ops;
        if let Some(&v) = self.probed.get(&key) {
            return Ok(v);
        }
        let r = match self.feature(
            &format!("DEVICE_FEATURE PROBE {feature}"),
            feature | ops | FEATURE_PROBE,
            &[],
            0,
        ) {
            Ok(_) => true,
            Err(BackendError::Refused { .. }) => false,
            Err(e) => return Err(e),
        };
        self.probed.insert(key, r);
        Ok(r)
    }

    /// MIG_DATA_READ into `buf` (at most one message's worth); the data
    /// goes straight from the socket into `buf`; padding after `size` is
    /// drained.
    pub fn mig_data_read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let step = "MIG_DATA_READ";
        let size = buf.len().min(self.max_recv_chunk());
        let head = MigData {
            argsz: (MigData::SIZE + size) as u32,
            size: size as u32,
        };
        let req = self.send(step, Command::MigDataRead as u16, &[&head.to_bytes()], &[])?;
        let mut rf = RecvFds::default();
        let h = self.recv_header(step, &req, &mut rf)?;
        if h.is_error() {
            return Err(self.refused(step, &h, &mut rf));
        }
        let plen = h.msg_size as usize - HEADER_SIZE;
        let mut hb = [0u8; MigData::SIZE];
        if plen < hb.len() {
            self.conn
                .discard(plen, &mut rf)
                .map_err(|e| io_err(step, e))?;
            return Err(BackendError::protocol(
                step,
                format!("reply of {plen} bytes has no head"),
            ));
        }
        self.conn
            .recv_exact(&mut hb, &mut rf, false)
            .map_err(|e| io_err(step, e))?;
        let got = MigData::decode(&hb).expect("8 bytes").size as usize;
        if got > size || got > plen - hb.len() {
            self.conn
                .discard(plen - hb.len(), &mut rf)
                .map_err(|e| io_err(step, e))?;
            return Err(BackendError::protocol(
                step,
                format!("reply claims {got} bytes for a {size}-byte read in a {plen}-byte payload"),
            ));
        }
        self.conn
            .recv_exact(&mut buf[..got], &mut rf, false)
            .map_err(|e| io_err(step, e))?;
        self.conn
            .discard(plen - hb.len() - got, &mut rf)
            .map_err(|e| io_err(step, e))?;
        Ok(got)
    }

    /// MIG_DATA_WRITE of `data`, in chunks of [`Client::write_chunk`].
    pub fn mig_data_write(&mut self, data: &[u8]) -> Result<()> {
        let step = "MIG_DATA_WRITE";
        let chunk = self.write_chunk();
        for piece in data.chunks(chunk) {
            let head = MigData {
                argsz: MigData::SIZE as u32,
                size: piece.len() as u32,
            };
            self.call(
                step,
                Command::MigDataWrite as u16,
                &[&head.to_bytes(), piece],
                &[],
            )?;
        }
        Ok(())
    }

    /// DMA_LOGGING_REPORT of `[iova, iova+length)` into `bitmap`, split
    /// into requests whose bitmaps fit the transfer limit.
    pub fn dma_logging_report_into(
        &mut self,
        iova: u64,
        length: u64,
        page_size: u64,
        bitmap: &mut [u8],
    ) -> Result<()> {
        let step = "DMA_LOGGING_REPORT";
        let need = bitmap_bytes(length, page_size)
            .ok_or_else(|| BackendError::refused(step, libc::EINVAL, "page size 0"))?
            as usize;
        if bitmap.len() < need {
            return Err(BackendError::refused(
                step,
                libc::EINVAL,
                format!("bitmap has {} bytes, {need} needed", bitmap.len()),
            ));
        }
        // Pages per request: a multiple of 64 so bitmaps join on u64 words.
        let limit = self.max_recv_chunk().saturating_sub(64).max(8);
        let pages_per = ((limit / 8) * 64) as u64;
        let total_pages = length.div_ceil(page_size);
        let mut page = 0u64;
        while page < total_pages {
            let n = (total_pages - page).min(pages_per);
            let start = iova + page * page_size;
            let len = if page + n == total_pages {
                length - page * page_size
            } else {
                n * page_size
            };
            let mut req = Vec::with_capacity(24);
            req.extend_from_slice(&start.to_le_bytes());
            req.extend_from_slice(&len.to_le_bytes());
            req.extend_from_slice(&page_size.to_le_bytes());
            let bytes = bitmap_bytes(len, page_size).expect("page size checked") as usize;
            let data = self.feature_get(FEATURE_DMA_LOGGING_REPORT, &req, 24 + bytes)?;
            if data.len() < 24 + bytes {
                return Err(BackendError::protocol(
                    step,
                    format!(
                        "reply bitmap has {} bytes, {bytes} expected",
                        data.len().saturating_sub(24)
                    ),
                ));
            }
            let at = (page / 8) as usize;
            bitmap[at..at + bytes].copy_from_slice(&data[24..24 + bytes]);
            page += n;
        }
        Ok(())
    }

    /// Reads PCI IDs from config space (region 7) and region sizes, and
    /// builds the compatibility descriptor.
    fn read_descriptor(&mut self) -> Result<DeviceDescriptor> {
        let flags = self.mig_flags()?;
        self.read_descriptor_with(flags)
    }

    /// The descriptor with the given migration flags. Migration regions
    /// (v1, seed) are protocol plumbing, not device configuration: they
    /// count as absent, so the same device model has the same descriptor
    /// whichever protocols its server offers.
    pub(crate) fn read_descriptor_with(&mut self, flags: u64) -> Result<DeviceDescriptor> {
        let mut cfg = [0u8; 0x30];
        self.region_read(
            vfio_migrate_abi::vfio_user::PCI_CONFIG_REGION_INDEX,
            0,
            &mut cfg,
        )?;
        let u16_at = |o: usize| u16::from_le_bytes([cfg[o], cfg[o + 1]]);
        let info = self.device_info()?;
        let mut sizes = Vec::with_capacity(info.num_regions.min(64) as usize);
        for i in 0..info.num_regions.min(64) {
            let r = self.region_info(i)?;
            let migration = matches!(
                r.region_type,
                Some(t) if t == (vfio_migrate_abi::v1::REGION_TYPE, vfio_migrate_abi::v1::REGION_SUBTYPE)
                    || t == (vfio_migrate_abi::seed::REGION_TYPE, vfio_migrate_abi::seed::REGION_SUBTYPE)
            );
            sizes.push(if migration { 0 } else { r.size });
        }
        while sizes.last() == Some(&0) {
            sizes.pop();
        }
        Ok(DeviceDescriptor::from_pci(
            u16_at(0),
            u16_at(2),
            u16_at(0x2c),
            u16_at(0x2e),
            cfg[8],
            flags,
            sizes,
        ))
    }

    fn mig_flags(&mut self) -> Result<u64> {
        if let Some(f) = self.mig_flags {
            return Ok(f);
        }
        let d = self.feature_get(vfio_migrate_abi::kernel::FEATURE_MIGRATION, &[], 8)?;
        let f = vfio_migrate_abi::kernel::FeatureMigration::decode(&d)
            .map_err(|e| BackendError::protocol("DEVICE_FEATURE MIGRATION", e.to_string()))?
            .flags;
        self.mig_flags = Some(f);
        Ok(f)
    }
}

/// Region type and sparse-mmap areas found in a capability chain.
type ParsedCaps = (Option<(u32, u32)>, Vec<(u64, u64)>);

/// Walks a region-info capability chain (offsets from the start of the
/// info); stops at `next == 0`, refuses loops and out-of-bounds entries.
fn parse_caps(p: &[u8], first: u32) -> std::result::Result<ParsedCaps, String> {
    let mut ty = None;
    let mut areas = Vec::new();
    let mut at = first as usize;
    let mut last = 0usize;
    while at != 0 {
        if at <= last || at < RegionInfo::SIZE {
            return Err(format!("capability chain goes backwards to offset {at}"));
        }
        let h = CapHeader::decode(p.get(at..).unwrap_or(&[])).map_err(|e| e.to_string())?;
        let body = &p[at + CapHeader::SIZE..];
        match h.id {
            REGION_INFO_CAP_TYPE => {
                let t = CapType::decode(body).map_err(|e| e.to_string())?;
                ty = Some((t.ty, t.subtype));
            }
            REGION_INFO_CAP_SPARSE_MMAP => {
                let s = CapSparseMmap::decode(body).map_err(|e| e.to_string())?;
                let mut off = CapSparseMmap::SIZE;
                for _ in 0..s.nr_areas.min(1024) {
                    let a = SparseMmapArea::decode(body.get(off..).unwrap_or(&[]))
                        .map_err(|e| e.to_string())?;
                    areas.push((a.offset, a.size));
                    off += SparseMmapArea::SIZE;
                }
            }
            _ => {}
        }
        last = at;
        at = h.next as usize;
    }
    Ok((ty, areas))
}

#[cfg(test)]
mod tests;
