//! `--plot FILE.png`: the pre-copy rounds of a migration drawn per round —
//! bytes sent, dirty bytes remaining, the expected downtime against the
//! limit, the device throttle — so an operator sees why it converged or
//! not. Drawn with `plotters` into a bitmap; text uses an embedded DejaVu
//! font (no system fonts needed).

use anyhow::{anyhow, Context};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use std::path::Path;
use std::sync::Once;
use vfio_migrate_engine::MigrationReport;

/// The font family the plots' text uses (registered by [`font`]).
pub(crate) const FONT: &str = "sans-serif";
const MIB: f64 = 1024.0 * 1024.0;

/// Registers the embedded font once.
pub(crate) fn font() -> anyhow::Result<()> {
    static ONCE: Once = Once::new();
    let mut ok = true;
    ONCE.call_once(|| {
        ok = register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok();
    });
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded font could not be loaded"))
    }
}

/// One panel: a series over the rounds.
struct Panel<'a> {
    title: &'a str,
    unit: &'a str,
    values: Vec<f64>,
    color: RGBColor,
    /// A horizontal line (the downtime limit).
    limit: Option<f64>,
}

/// Draws `rep`'s rounds into `path` (PNG).
pub fn draw(path: &Path, title: &str, rep: &MigrationReport) -> anyhow::Result<()> {
    font()?;
    let rounds = &rep.rounds;
    if rounds.is_empty() {
        return Err(anyhow!(
            "nothing to draw: the migration ran no pre-copy round"
        ));
    }
    // Bytes a round sent are counted at the next round's start.
    let mut sent: Vec<f64> = rounds
        .iter()
        .skip(1)
        .map(|r| r.sent_bytes as f64 / MIB)
        .collect();
    sent.push(f64::NAN);
    let expected: Vec<f64> = rounds
        .iter()
        .map(|r| {
            if r.expected_downtime_ms.is_finite() {
                r.expected_downtime_ms
            } else {
                f64::NAN
            }
        })
        .collect();
    let panels = [
        Panel {
            title: "sent in the round",
            unit: "MiB",
            values: sent,
            color: RGBColor(31, 119, 180),
            limit: None,
        },
        Panel {
            title: "dirty bytes remaining at the round's start",
            unit: "MiB",
            values: rounds
                .iter()
                .map(|r| r.remaining_bytes as f64 / MIB)
                .collect(),
            color: RGBColor(214, 39, 40),
            limit: None,
        },
        Panel {
            title: "expected downtime (limit dashed)",
            unit: "ms",
            values: expected,
            color: RGBColor(44, 160, 44),
            limit: Some(rep.downtime_limit_ms),
        },
        Panel {
            title: "device throttle",
            unit: "%",
            values: rounds
                .iter()
                .map(|r| f64::from(r.throttle_percent))
                .collect(),
            color: RGBColor(148, 103, 189),
            limit: None,
        },
    ];
    let root = BitMapBackend::new(path, (900, 1000)).into_drawing_area();
    root.fill(&WHITE)?;
    let outcome = if rep.status == "ok" {
        format!(
            "{} round(s); downtime {:.1} ms (expected {:.1} ms, limit {:.0} ms){}",
            rounds.len(),
            rep.downtime_ms,
            rep.expected_downtime_ms,
            rep.downtime_limit_ms,
            if rep.downtime_limit_exceeded {
                ": LIMIT EXCEEDED"
            } else {
                ""
            }
        )
    } else {
        format!("{} round(s); FAILED", rounds.len())
    };
    let (head, body) = root.split_vertically(60);
    head.draw(&Text::new(
        title.chars().take(110).collect::<String>(),
        (10, 8),
        (FONT, 16).into_font(),
    ))?;
    head.draw(&Text::new(outcome, (10, 32), (FONT, 16).into_font()))?;
    let n = rounds.len() as f64;
    for (area, p) in body.split_evenly((panels.len(), 1)).iter().zip(&panels) {
        let top = p
            .values
            .iter()
            .copied()
            .chain(p.limit)
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        let top = if top > 0.0 { top * 1.1 } else { 1.0 };
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{} ({})", p.title, p.unit), (FONT, 15))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(64)
            .build_cartesian_2d(-0.5f64..(n - 0.5).max(0.5), 0.0f64..top)?;
        chart
            .configure_mesh()
            .x_desc("pre-copy round")
            .x_labels(rounds.len().min(30) + 1)
            .x_label_formatter(&|x| {
                if (x - x.round()).abs() < 1e-6 && *x >= 0.0 {
                    format!("{x:.0}")
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format!("{y:.1}"))
            .label_style((FONT, 12))
            .draw()?;
        let pts: Vec<(f64, f64)> = p
            .values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, v)| (i as f64, *v))
            .collect();
        chart.draw_series(LineSeries::new(pts.clone(), p.color.stroke_width(2)))?;
        chart.draw_series(
            pts.iter()
                .map(|&(x, y)| Circle::new((x, y), 4, p.color.filled())),
        )?;
        if let Some(l) = p.limit {
            chart.draw_series(DashedLineSeries::new(
                [(-0.5, l), (n - 0.5, l)],
                8,
                6,
                BLACK.stroke_width(1),
            ))?;
        }
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
