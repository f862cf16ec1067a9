//! What `track` samples: the device memory a vfio-user server shares
//! (every mmap-able area of its regions, mapped read-only and compared
//! page by page between samples) and, with `--dma`, the device's own DMA
//! dirty log over a window of memory `track` maps for it.

use anyhow::{bail, Context};
use vfio_migrate_abi::vfio_user::{DMA_FLAG_READ, DMA_FLAG_WRITE};
use vfio_migrate_backend::{DmaDirtyLog, IovaRange};
use vfio_migrate_client::Client;
use vfio_migrate_engine::MemfdRam;
use vfio_migrate_sys::mmap::MmapRegion;

/// Bytes hashed per read of a mapping.
const CHUNK: usize = 1 << 20;

/// One mapped area of device memory.
pub struct Area {
    /// Region index.
    pub region: u32,
    /// Offset of the area in the region.
    pub offset: u64,
    map: MmapRegion,
    /// CRC-32C of every page at the last sample.
    crcs: Vec<u32>,
}

impl Area {
    /// Pages in the area.
    pub fn pages(&self, page: usize) -> usize {
        self.map.len().div_ceil(page)
    }
}

/// Device memory, compared page by page between samples.
pub struct DeviceMemory {
    /// The areas, in region order.
    pub areas: Vec<Area>,
    /// Page size compared.
    pub page: usize,
    buf: Vec<u8>,
}

impl DeviceMemory {
    /// Maps every mmap-able area of `c`'s regions (not config space, not
    /// migration regions) read-only and takes the first sample.
    pub fn map(c: &mut Client, page: usize) -> anyhow::Result<Self> {
        let n = c
            .device_info()
            .context("DEVICE_GET_INFO")?
            .num_regions
            .min(64);
        let mut areas = Vec::new();
        for i in 0..n {
            if i == vfio_migrate_abi::vfio_user::PCI_CONFIG_REGION_INDEX {
                continue;
            }
            let d = c
                .region_info(i)
                .with_context(|| format!("DEVICE_GET_REGION_INFO {i}"))?;
            // Typed regions (the v1 and seed migration regions) are not
            // device memory.
            let Some(fd) =
                d.fd.as_ref()
                    .filter(|_| d.region_type.is_none() && d.size > 0)
            else {
                continue;
            };
            let parts = if d.sparse_areas.is_empty() {
                vec![(0, d.size)]
            } else {
                d.sparse_areas.clone()
            };
            for (off, len) in parts {
                if len == 0 || off.checked_add(len).is_none_or(|e| e > d.size) {
                    continue;
                }
                let map = MmapRegion::shared(
                    std::os::fd::AsFd::as_fd(fd),
                    d.offset + off,
                    len as usize,
                    false,
                )
                .with_context(|| format!("mapping region {i} at {off:#x}"))?;
                areas.push(Area {
                    region: i,
                    offset: off,
                    map,
                    crcs: Vec::new(),
                });
            }
        }
        if areas.is_empty() {
            bail!("the device shares no memory to track (no mmap-able region); --dma tracks its DMA writes instead");
        }
        let mut m = Self {
            areas,
            page,
            buf: vec![0u8; CHUNK],
        };
        m.sample(&mut |_, _| {})?;
        Ok(m)
    }

    /// Bytes tracked.
    pub fn bytes(&self) -> u64 {
        self.areas.iter().map(|a| a.map.len() as u64).sum()
    }

    /// Pages tracked.
    pub fn pages(&self) -> usize {
        self.areas.iter().map(|a| a.pages(self.page)).sum()
    }

    /// Compares every page with the last sample; calls `dirty(area, page)`
    /// for each one whose content changed. Returns how many changed.
    pub fn sample(&mut self, dirty: &mut dyn FnMut(usize, usize)) -> anyhow::Result<usize> {
        let page = self.page;
        let mut changed = 0;
        for (ai, a) in self.areas.iter_mut().enumerate() {
            let first = a.crcs.is_empty();
            if first {
                a.crcs = vec![0; a.map.len().div_ceil(page)];
            }
            let mut off = 0;
            while off < a.map.len() {
                let n = CHUNK.min(a.map.len() - off);
                a.map
                    .read(off, &mut self.buf[..n])
                    .context("reading device memory")?;
                for (k, p) in self.buf[..n].chunks(page).enumerate() {
                    let idx = off / page + k;
                    let crc = crc32c::crc32c(p);
                    if !first && a.crcs[idx] != crc {
                        changed += 1;
                        dirty(ai, idx);
                    }
                    a.crcs[idx] = crc;
                }
                off += n;
            }
        }
        Ok(changed)
    }
}

/// The device's DMA dirty log over a window `track` maps for it.
pub struct DmaLog {
    /// Its memory.
    _ram: MemfdRam,
    /// Window size.
    pub size: u64,
    /// Page size logged.
    pub page: u64,
    bitmap: Vec<u8>,
}

impl DmaLog {
    /// Maps `size` bytes of fresh memory at IOVA 0 and starts the device's
    /// DMA dirty logging over it.
    pub fn start(c: &mut Client, size: u64, page: u64) -> anyhow::Result<Self> {
        let ram = MemfdRam::new("vfio-migrate-track", size).context("creating the DMA window")?;
        c.dma_map_fd(0, size, Some(ram.fd()), 0, DMA_FLAG_READ | DMA_FLAG_WRITE)
            .context("DMA_MAP of the window")?;
        c.dma_logging_start(
            page,
            &[IovaRange {
                iova: 0,
                length: size,
            }],
        )
        .context("starting DMA dirty logging (does the device offer it?)")?;
        Ok(Self {
            _ram: ram,
            size,
            page,
            bitmap: vec![0u8; (size / page).div_ceil(64) as usize * 8],
        })
    }

    /// Reads and clears the log; calls `dirty(page)` for each page the
    /// device wrote since the last sample. Returns how many.
    pub fn sample(
        &mut self,
        c: &mut Client,
        dirty: &mut dyn FnMut(usize),
    ) -> anyhow::Result<usize> {
        self.bitmap.fill(0);
        c.dma_logging_report(0, self.size, self.page, &mut self.bitmap)
            .context("DMA_LOGGING_REPORT")?;
        let mut n = 0;
        for (i, b) in self.bitmap.iter().enumerate() {
            for bit in 0..8 {
                if b & (1 << bit) != 0 {
                    n += 1;
                    dirty(i * 8 + bit);
                }
            }
        }
        Ok(n)
    }

    /// Stops logging and unmaps the window.
    pub fn stop(self, c: &mut Client) {
        let _ = c.dma_logging_stop();
        let _ = c.dma_unmap_window(0, self.size);
    }
}
