//! Progress on stderr while a migration runs.
//!
//! - On a terminal: a bar (indicatif) with bytes sent of the total,
//!   the rate, what remains, the expected downtime and an ETA, redrawn in
//!   place; every round boundary and phase change is printed above it as a
//!   line, so no round goes unseen.
//! - Otherwise (a pipe, a log file): one line per round boundary and phase
//!   change, and in between a line at least every second while data moves.
//! - With `--json` (unless `-v`): nothing.

use crate::report::{bytes, rate};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};
use vfio_migrate_engine::{Phase, Progress, ProgressFn};

/// Plain lines are printed at least this often while data moves.
const LINE_EVERY: Duration = Duration::from_secs(1);

/// Where progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Bar,
    Lines,
    Off,
}

impl Style {
    /// The style for this stderr: off for `--json` (unless verbose), a bar
    /// on a terminal, lines otherwise.
    pub fn detect(json: bool) -> Self {
        if json && crate::verbosity() == 0 {
            Style::Off
        } else if std::io::stderr().is_terminal() {
            Style::Bar
        } else {
            Style::Lines
        }
    }
}

/// The send rate over the last few seconds, from successive reports.
struct RateMeter {
    samples: std::collections::VecDeque<(Duration, u64)>,
}

impl RateMeter {
    fn add(&mut self, t: Duration, sent: u64) -> f64 {
        self.samples.push_back((t, sent));
        while self.samples.len() > 2 && t.saturating_sub(self.samples[0].0) > Duration::from_secs(3)
        {
            self.samples.pop_front();
        }
        let (t0, b0) = self.samples[0];
        let dt = t.saturating_sub(t0).as_secs_f64();
        if dt < 0.05 {
            return 0.0;
        }
        sent.saturating_sub(b0) as f64 / dt
    }
}

/// Prints progress in one style.
pub struct Printer {
    style: Style,
    bar: Option<ProgressBar>,
    last_line: Option<Instant>,
    meter: RateMeter,
}

impl Printer {
    /// A printer in `style`.
    pub fn new(style: Style) -> Self {
        let bar = (style == Style::Bar).then(|| {
            let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(8));
            b.set_style(
                ProgressStyle::with_template("{prefix:>16} [{bar:20}] {wide_msg}")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            b
        });
        Self {
            style,
            bar,
            last_line: None,
            meter: RateMeter {
                samples: std::collections::VecDeque::new(),
            },
        }
    }

    /// The engine's progress callback.
    pub fn callback(mut self) -> ProgressFn {
        Box::new(move |p| self.show(p))
    }

    fn show(&mut self, p: &Progress) {
        let speed = self.meter.add(p.elapsed, p.transferred_bytes);
        match self.style {
            Style::Off => {}
            Style::Bar => {
                let Some(b) = &self.bar else { return };
                if !p.tick {
                    b.println(describe(p));
                }
                if p.phase == Phase::Done {
                    b.finish_and_clear();
                    return;
                }
                b.set_length(p.transferred_bytes + p.remaining_bytes);
                b.set_position(p.transferred_bytes);
                b.set_prefix(where_(p));
                b.set_message(short_figures(p, speed));
            }
            Style::Lines => {
                let due = self.last_line.is_none_or(|t| t.elapsed() >= LINE_EVERY);
                if !p.tick || due {
                    let line = if p.tick {
                        format!(
                            "[{:7.2}s] {}: {}",
                            p.elapsed.as_secs_f64(),
                            where_(p),
                            figures(p, speed)
                        )
                    } else {
                        describe(p)
                    };
                    let mut err = std::io::stderr().lock();
                    let _ = writeln!(err, "{line}");
                    let _ = err.flush();
                    self.last_line = Some(Instant::now());
                }
            }
        }
    }
}

impl Drop for Printer {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// `pre-copy round 3`, `stop-copy`.
fn where_(p: &Progress) -> String {
    match p.phase {
        Phase::PreCopy => format!("pre-copy round {}", p.iteration),
        phase => phase.to_string(),
    }
}

fn expected(p: &Progress) -> String {
    if p.expected_downtime_ms.is_finite() && p.bandwidth > 0.0 {
        format!("{:.1} ms", p.expected_downtime_ms)
    } else {
        "unknown".into()
    }
}

/// Bytes sent of the total, rate, remaining, expected downtime, ETA.
fn figures(p: &Progress, speed: f64) -> String {
    if p.remaining_bytes == 0 {
        // Nothing estimated (stop-copy without pre-copy): what moved.
        return format!("{} sent at {}", bytes(p.transferred_bytes), rate(speed));
    }
    let eta = if speed > 0.0 && p.remaining_bytes > 0 {
        format!(", ETA {:.1} s", p.remaining_bytes as f64 / speed)
    } else {
        String::new()
    };
    format!(
        "{} of {} at {}, remaining {}, expected downtime {}{eta}",
        bytes(p.transferred_bytes),
        bytes(p.transferred_bytes + p.remaining_bytes),
        rate(speed),
        bytes(p.remaining_bytes),
        expected(p)
    )
}

/// The bar's figures, short enough for a terminal line (the rest is cut
/// at its width).
fn short_figures(p: &Progress, speed: f64) -> String {
    if p.remaining_bytes == 0 {
        return format!("{} sent · {}", bytes(p.transferred_bytes), rate(speed));
    }
    let eta = if speed > 0.0 && p.remaining_bytes > 0 {
        format!(" · ETA {:.1} s", p.remaining_bytes as f64 / speed)
    } else {
        String::new()
    };
    format!(
        "{}/{} · {} · left {} · downtime ≈ {}{eta}",
        bytes(p.transferred_bytes),
        bytes(p.transferred_bytes + p.remaining_bytes),
        rate(speed),
        bytes(p.remaining_bytes),
        expected(p)
    )
}

/// One progress line at a round boundary or phase change.
pub fn describe(p: &Progress) -> String {
    let t = p.elapsed.as_secs_f64();
    match p.phase {
        Phase::PreCopy => format!(
            "[{t:7.2}s] pre-copy round {}: remaining {}, dirty {}, bandwidth {}, expected downtime {}",
            p.iteration,
            bytes(p.remaining_bytes),
            rate(p.dirty_rate),
            rate(p.bandwidth),
            expected(p)
        ),
        phase => format!("[{t:7.2}s] {phase}: {} sent", bytes(p.transferred_bytes)),
    }
}
