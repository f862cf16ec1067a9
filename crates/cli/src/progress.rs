//! Progress on stderr while a migration runs: a one-line bar redrawn in
//! place on a terminal, plain lines (at most twice a second, and at every
//! phase change) otherwise, nothing with `--json` unless `-v`.

use crate::report::{bytes, rate};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};
use vfio_migrate_engine::{Phase, Progress, ProgressFn};

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

/// Prints progress in one style.
pub struct Printer {
    style: Style,
    last: Option<Instant>,
    last_phase: Option<Phase>,
    drawn: bool,
}

impl Printer {
    /// A printer in `style`.
    pub fn new(style: Style) -> Self {
        Self {
            style,
            last: None,
            last_phase: None,
            drawn: false,
        }
    }

    /// The engine's progress callback.
    pub fn callback(mut self) -> ProgressFn {
        Box::new(move |p| self.show(p))
    }

    fn show(&mut self, p: &Progress) {
        let phase_changed = self.last_phase != Some(p.phase);
        let due = match self.last {
            None => true,
            Some(t) => t.elapsed() >= Duration::from_millis(500),
        };
        let line = describe(p);
        let mut err = std::io::stderr().lock();
        match self.style {
            Style::Off => return,
            Style::Bar => {
                let _ = write!(err, "\r\x1b[2K{line}");
                if p.phase == Phase::Done {
                    let _ = writeln!(err);
                }
                self.drawn = p.phase != Phase::Done;
            }
            Style::Lines if phase_changed || due => {
                let _ = writeln!(err, "{line}");
            }
            Style::Lines => return,
        }
        let _ = err.flush();
        self.last = Some(Instant::now());
        self.last_phase = Some(p.phase);
    }
}

impl Drop for Printer {
    fn drop(&mut self) {
        if self.drawn {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// One progress line.
pub fn describe(p: &Progress) -> String {
    let t = p.elapsed.as_secs_f64();
    match p.phase {
        Phase::PreCopy => {
            let expected = if p.expected_downtime_ms.is_finite() {
                format!("{:.1} ms", p.expected_downtime_ms)
            } else {
                "unknown".into()
            };
            format!(
                "[{t:7.2}s] pre-copy round {}: remaining {}, dirty {}, bandwidth {}, expected downtime {expected}",
                p.iteration,
                bytes(p.remaining_bytes),
                rate(p.dirty_rate),
                rate(p.bandwidth),
            )
        }
        phase => format!("[{t:7.2}s] {phase}: {} sent", bytes(p.transferred_bytes)),
    }
}
