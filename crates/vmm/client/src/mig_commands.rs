//! Migration commands: DEVICE_FEATURE (GET, SET, PROBE) and
//! MIG_DATA_READ/WRITE.

use super::*;

impl Client {
    pub(crate) fn feature(
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
        let mut r = self.mig_data_read_head(step, size)?;
        self.conn
            .recv_exact(&mut buf[..r.got], &mut r.rf, false)
            .map_err(|e| io_err(step, e))?;
        self.conn
            .discard(r.rest - r.got, &mut r.rf)
            .map_err(|e| io_err(step, e))?;
        Ok(r.got)
    }

    /// Sends a MIG_DATA_READ of up to `size` bytes and reads its reply up
    /// to the data: the head and, on a connection with checksummed
    /// replies (`enable_mig_data_crc`), the checksum block. `got` data
    /// bytes are next on the socket, then `rest - got` bytes of padding;
    /// a reply that claims more than was asked or than it holds is
    /// drained and refused.
    pub(crate) fn mig_data_read_head(&mut self, step: &str, size: usize) -> Result<ReadHead> {
        let req = self.send_mig_data_read(step, size, false)?;
        self.mig_data_read_reply(step, &req, size)
    }

    /// Sends a MIG_DATA_READ of `size` bytes; `now`: without answering the
    /// reads in flight first (one more sent ahead).
    pub(crate) fn send_mig_data_read(
        &mut self,
        step: &str,
        size: usize,
        now: bool,
    ) -> Result<Header> {
        let head = MigData {
            argsz: (MigData::SIZE + self.mig_crc_skip() + size) as u32,
            size: size as u32,
        };
        let parts: [&[u8]; 1] = [&head.to_bytes()];
        if now {
            self.send_now(step, Command::MigDataRead as u16, &parts, &[])
        } else {
            self.send(step, Command::MigDataRead as u16, &parts, &[])
        }
    }

    fn mig_crc_skip(&self) -> usize {
        if self.mig_crc {
            vfio_migrate_vfio_user::ext::MIG_DATA_CRC_SIZE
        } else {
            0
        }
    }

    /// Reads the reply to the MIG_DATA_READ `req` of `size` bytes up to
    /// its data (see [`Client::mig_data_read_head`]).
    pub(crate) fn mig_data_read_reply(
        &mut self,
        step: &str,
        req: &Header,
        size: usize,
    ) -> Result<ReadHead> {
        let skip = self.mig_crc_skip();
        let mut rf = RecvFds::default();
        let h = self.recv_header(step, req, &mut rf)?;
        if h.is_error() {
            return Err(self.refused(step, &h, &mut rf));
        }
        let plen = h.msg_size as usize - HEADER_SIZE;
        let hlen = MigData::SIZE + skip;
        if plen < hlen {
            self.conn
                .discard(plen, &mut rf)
                .map_err(|e| io_err(step, e))?;
            return Err(BackendError::protocol(
                step,
                if plen < MigData::SIZE {
                    format!("reply of {plen} bytes has no head")
                } else {
                    "checksummed reply without a checksum".to_string()
                },
            ));
        }
        let mut hb = [0u8; MigData::SIZE + vfio_migrate_vfio_user::ext::MIG_DATA_CRC_SIZE];
        self.conn
            .recv_exact(&mut hb[..hlen], &mut rf, false)
            .map_err(|e| io_err(step, e))?;
        let got = MigData::decode(&hb).expect("8 bytes").size as usize;
        let crc = (skip > 0).then(|| u32::from_le_bytes(hb[8..12].try_into().expect("4 bytes")));
        let rest = plen - hlen;
        if got > size || got > rest {
            self.conn
                .discard(rest, &mut rf)
                .map_err(|e| io_err(step, e))?;
            return Err(BackendError::protocol(
                step,
                format!("reply claims {got} bytes for a {size}-byte read in a {plen}-byte payload"),
            ));
        }
        Ok(ReadHead { got, crc, rest, rf })
    }

    /// MIG_DATA_WRITE of `data`, in chunks of [`Client::write_chunk`].
    ///
    /// `argsz` is [`mig_write_argsz`]: the head plus the data, the size of
    /// the request payload (see `docs/vfio-user-wire.md`).
    pub fn mig_data_write(&mut self, data: &[u8]) -> Result<()> {
        let step = "MIG_DATA_WRITE";
        let chunk = self.write_chunk();
        for piece in data.chunks(chunk) {
            let head = MigData {
                argsz: mig_write_argsz(piece.len()),
                size: piece.len() as u32,
            };
            if self.mig_crc {
                // Checksummed transfers are on: the data's checksum rides
                // along (see `enable_mig_data_crc`).
                let mut block = [0u8; vfio_migrate_vfio_user::ext::MIG_DATA_CRC_SIZE];
                block[..4].copy_from_slice(&crc32c::crc32c(piece).to_le_bytes());
                self.call(
                    step,
                    Command::MigDataWrite as u16,
                    &[&head.to_bytes(), &block, piece],
                    &[],
                )?;
                continue;
            }
            self.call(
                step,
                Command::MigDataWrite as u16,
                &[&head.to_bytes(), piece],
                &[],
            )?;
        }
        Ok(())
    }

    pub(crate) fn mig_flags(&mut self) -> Result<u64> {
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

/// The `argsz` of a MIG_DATA_WRITE carrying `len` data bytes: the 8-byte
/// head plus the data. The spec's text for this field ("the maximum size
/// of the reply payload") cannot be meant literally, since the reply has
/// no payload; libvfio-user, the reference server, refuses any `argsz`
/// below head + data, and our server accepts any value. Head + data is
/// what every known server takes.
pub fn mig_write_argsz(len: usize) -> u32 {
    (MigData::SIZE + len) as u32
}

/// A MIG_DATA_READ reply read up to its data ([`Client::mig_data_read_head`]).
pub(crate) struct ReadHead {
    /// Data bytes, next on the socket.
    pub got: usize,
    /// The data's CRC32C (checksummed replies).
    pub crc: Option<u32>,
    /// Bytes left in the reply: the data, then padding.
    pub rest: usize,
    /// File descriptors that came with the reply.
    pub rf: RecvFds,
}
