//! `track --plot FILE.png`: a heatmap of device memory (address × time;
//! the darker, the more of a range's pages changed in that interval) above
//! the dirty rate over time. Drawn with `plotters` into a bitmap; text uses
//! an embedded DejaVu font (no system fonts needed).

use super::{Sample, BINS};
use crate::plot::{font, FONT};
use anyhow::anyhow;
use plotters::prelude::*;
use std::path::Path;

const MIB: f64 = 1024.0 * 1024.0;

fn e(x: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{x}")
}

/// Draws the samples of a `track` run.
pub fn draw(
    path: &Path,
    what: &str,
    samples: &[Sample],
    page: usize,
    mem_bytes: u64,
) -> anyhow::Result<()> {
    font()?;
    let t_end = samples.last().map_or(1.0, |s| s.t_ms / 1000.0).max(0.001);
    let root = BitMapBackend::new(path, (1000, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let (top, bottom) = root.split_vertically(460);

    let mem_mib = mem_bytes as f64 / MIB;
    // Colours scale to the busiest cell, so a sparse pattern still shows.
    let peak = samples
        .iter()
        .flat_map(|s| s.bins.iter().copied())
        .fold(0f32, f32::max)
        .max(f32::MIN_POSITIVE);
    let mut heat = ChartBuilder::on(&top)
        .caption(
            format!(
                "{what}: pages changed per interval (darkest: {:.1} % of a {} range)",
                100.0 * peak,
                crate::report::bytes(mem_bytes / BINS as u64)
            ),
            (FONT, 17),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_end, 0f64..mem_mib)
        .map_err(e)?;
    heat.configure_mesh()
        .x_desc("time (s)")
        .y_desc("device memory offset (MiB)")
        .label_style((FONT, 12))
        .disable_mesh()
        .draw()
        .map_err(e)?;
    let bin_mib = mem_mib / BINS as f64;
    let mut t_prev = 0.0;
    for s in samples {
        let t = s.t_ms / 1000.0;
        for (b, f) in s.bins.iter().enumerate() {
            if *f <= 0.0 {
                continue;
            }
            // White → dark red with the fraction of the bin's pages that
            // changed, relative to the busiest cell.
            let k = (f / peak).clamp(0.0, 1.0) as f64;
            let c = RGBColor(
                255 - (k * 75.0) as u8,
                (230.0 * (1.0 - k)) as u8,
                (230.0 * (1.0 - k)) as u8,
            );
            heat.draw_series(std::iter::once(Rectangle::new(
                [(t_prev, b as f64 * bin_mib), (t, (b + 1) as f64 * bin_mib)],
                c.filled(),
            )))
            .map_err(e)?;
        }
        t_prev = t;
    }

    let max_rate = samples
        .iter()
        .map(|s| (s.memory_bytes_per_sec + s.dma_bytes_per_sec) / MIB)
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.15;
    let mut rate = ChartBuilder::on(&bottom)
        .caption(
            format!("dirty rate ({} KiB pages)", page / 1024),
            (FONT, 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_end, 0f64..max_rate)
        .map_err(e)?;
    rate.configure_mesh()
        .x_desc("time (s)")
        .y_desc("MiB/s")
        .label_style((FONT, 12))
        .draw()
        .map_err(e)?;
    rate.draw_series(LineSeries::new(
        samples
            .iter()
            .map(|s| (s.t_ms / 1000.0, s.memory_bytes_per_sec / MIB)),
        RED.stroke_width(2),
    ))
    .map_err(e)?
    .label("device memory")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED));
    if samples.iter().any(|s| s.dma_pages > 0) {
        rate.draw_series(LineSeries::new(
            samples
                .iter()
                .map(|s| (s.t_ms / 1000.0, s.dma_bytes_per_sec / MIB)),
            BLUE.stroke_width(2),
        ))
        .map_err(e)?
        .label("DMA into guest memory")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE));
    }
    rate.configure_series_labels()
        .label_font((FONT, 12))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}
