//! DMA commands: DMA_MAP, DMA_UNMAP and DMA_LOGGING_REPORT.

use super::*;

impl Client {
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
}
