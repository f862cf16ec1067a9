//! Connecting, VERSION negotiation and the request/reply machinery every
//! command goes through.

use super::*;

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
        let mut c = Self::without_version(s, name, config)?;
        c.negotiate()?;
        let t = c.config.timeout;
        c.conn.set_timeout(t);
        Ok(c)
    }

    /// Wraps a connected stream without sending VERSION (call
    /// [`Client::negotiate`], or speak raw requests).
    pub fn without_version(
        stream: UnixStream,
        name: impl Into<String>,
        config: ClientConfig,
    ) -> Result<Self> {
        let name = name.into();
        set_send_buffer(stream.as_fd(), config.socket_buffer);
        let cancel = match &config.cancel {
            Some(c) => Some(
                c.try_clone()
                    .map_err(|e| io_err(&format!("{name}: duplicating the cancel fd"), e))?,
            ),
            None => None,
        };
        let conn = Conn::client(stream, config.connect_timeout, cancel, config.cancel_grace)
            .map_err(|e| io_err(&format!("{name}: configuring the socket"), e))?;
        Ok(Self {
            conn,
            name,
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
            mig_crc: false,
            precopy_v2: None,
            ahead: Default::default(),
            writes: Default::default(),
            write_error: None,
        })
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

    pub(crate) fn next_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    /// Sends a command. MIG_DATA_READs still in flight are answered
    /// first and their data dropped: a command in between means the
    /// migration stream was abandoned (an abort or rollback); the engine
    /// collects every read it sent ahead on the way that continues.
    pub(crate) fn send(
        &mut self,
        step: &str,
        cmd: u16,
        parts: &[&[u8]],
        fds: &[RawFd],
    ) -> Result<Header> {
        if !self.ahead.is_empty() {
            self.drop_reads_ahead()?;
        }
        if !self.writes.is_empty() {
            // Answered now; a refusal is kept for `flush_writes`.
            if let Err(e) = self.flush_writes() {
                self.write_error.get_or_insert(e);
            }
        }
        self.send_now(step, cmd, parts, fds)
    }

    /// Sends a command without looking at reads in flight.
    pub(crate) fn send_now(
        &mut self,
        step: &str,
        cmd: u16,
        parts: &[&[u8]],
        fds: &[RawFd],
    ) -> Result<Header> {
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
    pub(crate) fn recv_header(
        &mut self,
        step: &str,
        req: &Header,
        fds: &mut RecvFds,
    ) -> Result<Header> {
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
    pub(crate) fn refused(&mut self, step: &str, h: &Header, fds: &mut RecvFds) -> BackendError {
        let plen = h.msg_size as usize - HEADER_SIZE;
        // A short payload may be a reason in text (our server says who
        // holds a busy device); anything else is drained unread.
        if plen > 0 && plen <= 512 {
            let mut b = vec![0u8; plen];
            if let Err(e) = self.conn.recv_exact(&mut b, fds, false) {
                return io_err(step, e);
            }
            let text = b.split(|c| *c == 0).next().unwrap_or_default();
            let detail = match std::str::from_utf8(text) {
                Ok(t) if !t.is_empty() && t.chars().all(|c| !c.is_control()) => t,
                _ => "",
            };
            return BackendError::refused(step, h.error_no as i32, detail);
        }
        if let Err(e) = self.conn.discard(plen, fds) {
            return io_err(step, e);
        }
        BackendError::refused(step, h.error_no as i32, "")
    }

    /// One request/reply; the reply payload lands in `self.scratch[..n]`.
    pub(crate) fn call(
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
}
