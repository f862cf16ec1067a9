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
        // Checksummed replies (`enable_mig_data_crc`) carry a checksum
        // block after the head: room for it, then it is skipped (the data
        // is read here, so its checksum is not needed).
        let skip = if self.mig_crc {
            vfio_migrate_vfio_user::ext::MIG_DATA_CRC_SIZE
        } else {
            0
        };
        let head = MigData {
            argsz: (MigData::SIZE + skip + size) as u32,
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
        if plen < hb.len() + skip {
            self.conn
                .discard(plen - hb.len(), &mut rf)
                .map_err(|e| io_err(step, e))?;
            return Err(BackendError::protocol(
                step,
                "checksummed reply without a checksum",
            ));
        }
        self.conn
            .discard(skip, &mut rf)
            .map_err(|e| io_err(step, e))?;
        let plen = plen - skip;
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
