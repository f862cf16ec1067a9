//! `vfio-migrate status [PATH]` and `vfio-migrate cancel [PATH]`: ask a
//! running `migrate` or `receive` how far it is, or cancel it, through its
//! control socket (see [`crate::control`]).

use crate::control;
use crate::report::{bytes, rate};
use anyhow::{bail, Context};
use serde_json::Value;
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `vfio-migrate status`.
#[derive(clap::Args)]
#[command(
    after_help = "Without PATH: every migration running as this user (the control sockets in \
$XDG_RUNTIME_DIR/vfio-migrate, /run/vfio-migrate for root, or $TMPDIR/vfio-migrate-UID). \
`migrate` and `receive` print their control socket when they start."
)]
pub struct StatusArgs {
    /// The control socket of a running `migrate` or `receive` (default:
    /// all of them).
    #[arg(value_name = "PATH")]
    path: Option<PathBuf>,
    /// Print JSON: one object with PATH, an array without.
    #[arg(long)]
    json: bool,
}

/// Arguments of `vfio-migrate cancel`.
#[derive(clap::Args)]
#[command(
    after_help = "The migration rolls back as on Ctrl-C: the source device keeps running with \
its state, the destination is reset. `cancel` waits for the outcome and prints it; its exit status \
is 0 when the migration was cancelled and rolled back, 1 otherwise (it had ended, or the rollback \
did not restore every device)."
)]
pub struct CancelArgs {
    /// The control socket of the migration to cancel (default: the only
    /// one running).
    #[arg(value_name = "PATH")]
    path: Option<PathBuf>,
    /// Give up waiting for the outcome after this many seconds (the
    /// cancel itself stays asked for).
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    wait: u64,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

/// The one control socket meant: `path`, else the only one running.
fn target(path: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = path {
        return Ok(p);
    }
    let dir = control::default_dir();
    let all = control::running(&dir);
    match all.len() {
        0 => bail!(
            "no migration is running (no control socket answers in {})",
            dir.display()
        ),
        1 => Ok(all.into_iter().next().expect("one")),
        _ => bail!(
            "{} migrations are running; name one: {}",
            all.len(),
            all.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn ms_text(v: &Value) -> String {
    match v.as_f64() {
        Some(ms) if ms >= 10_000.0 => format!("{:.1} s", ms / 1000.0),
        Some(ms) => format!("{ms:.1} ms"),
        None => "not known yet".into(),
    }
}

/// The status as `info migrate` shows it.
pub fn describe(path: &std::path::Path, s: &Value) -> String {
    let u = |k: &str| s[k].as_u64().unwrap_or(0);
    let f = |k: &str| s[k].as_f64().unwrap_or(0.0);
    let phase = s["phase"].as_str().unwrap_or("?");
    let round = if phase == "pre-copy" {
        format!(", round {}", u("rounds"))
    } else {
        String::new()
    };
    let cancelling = if s["cancelling"] == true {
        " — cancelling"
    } else {
        ""
    };
    let limit = match s["downtime_limit_ms"].as_f64() {
        Some(l) => format!(" (limit {l:.0} ms)"),
        None => String::new(),
    };
    let mut out = format!(
        "{} (pid {}) at {}\n",
        s["role"].as_str().unwrap_or("?"),
        u("pid"),
        path.display()
    );
    let rows = [
        ("status", format!("active: {phase}{round}{cancelling}")),
        ("source", s["source"].as_str().unwrap_or("").to_string()),
        ("destination", s["dest"].as_str().unwrap_or("").to_string()),
        (
            "total time",
            format!(
                "{} (setup {})",
                ms_text(&s["elapsed_ms"]),
                ms_text(&s["setup_ms"])
            ),
        ),
        ("transferred", bytes(u("transferred_bytes"))),
        ("remaining", bytes(u("remaining_bytes"))),
        ("total", bytes(u("total_bytes"))),
        ("dirty rate", rate(f("dirty_rate_bytes_per_sec"))),
        ("bandwidth", rate(f("bandwidth_bytes_per_sec"))),
        (
            "expected downtime",
            format!("{}{limit}", ms_text(&s["expected_downtime_ms"])),
        ),
        ("rounds", u("rounds").to_string()),
    ];
    for (k, v) in rows {
        out.push_str(&format!("  {k:<18} {v}\n"));
    }
    out
}

/// Runs `status`.
pub fn status(a: StatusArgs) -> anyhow::Result<i32> {
    let paths = match a.path {
        Some(p) => vec![p],
        None => {
            let dir = control::default_dir();
            let all = control::running(&dir);
            if all.is_empty() {
                if a.json {
                    println!("[]");
                } else {
                    println!(
                        "no migration is running (no control socket answers in {})",
                        dir.display()
                    );
                }
                return Ok(0);
            }
            all
        }
    };
    let single = paths.len() == 1;
    let mut out = Vec::new();
    for p in &paths {
        let (v, _) = control::request(p, "status")?;
        out.push((p.clone(), v["status"].clone()));
    }
    if a.json {
        let mut objs: Vec<Value> = out
            .into_iter()
            .map(|(p, mut s)| {
                s["control"] = Value::String(p.display().to_string());
                s
            })
            .collect();
        let v = if single && objs.len() == 1 {
            objs.pop().expect("one")
        } else {
            Value::Array(objs)
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (p, s) in &out {
            print!("{}", describe(p, s));
        }
    }
    Ok(0)
}

/// Runs `cancel`.
pub fn cancel(a: CancelArgs) -> anyhow::Result<i32> {
    let path = target(a.path)?;
    let (_, c) = control::request(&path, "cancel")?;
    if !a.json {
        eprintln!(
            "cancel asked of {}; waiting for the rollback",
            path.display()
        );
    }
    c.set_read_timeout(Some(Duration::from_secs(a.wait.max(1))))?;
    let mut line = String::new();
    std::io::BufReader::new(&c)
        .read_line(&mut line)
        .with_context(|| {
            format!(
                "no outcome from {} within {} s (the cancel stays asked for; check with `vfio-migrate status`)",
                path.display(),
                a.wait
            )
        })?;
    if line.is_empty() {
        bail!(
            "{} closed without telling the outcome (the process ended: see its own output)",
            path.display()
        );
    }
    let v: Value = serde_json::from_str(line.trim()).context("the outcome is not JSON")?;
    let o = &v["finished"];
    if a.json {
        println!("{}", serde_json::to_string_pretty(o)?);
    } else {
        println!(
            "{}: {}",
            o["status"].as_str().unwrap_or("?"),
            o["message"].as_str().unwrap_or("")
        );
        if let Some(devs) = o["devices"].as_array() {
            for d in devs {
                println!(
                    "  {} is {}",
                    d["name"].as_str().unwrap_or("?"),
                    d["state"].as_str().unwrap_or("unknown (it did not answer)")
                );
            }
        }
    }
    Ok(if o["status"] == "cancelled" { 0 } else { 1 })
}
