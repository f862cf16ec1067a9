//! # vfio-migrate
//!
//! The `vfio-migrate` command: live migration of VFIO devices. It owns the
//! user's side of the project — command-line parsing, endpoints, progress
//! and reports — and leaves migration policy to `vfio-migrate-engine` and
//! the device protocols to the backend crates.
//!
//! Each subcommand lives in its own module; this file only parses the
//! command line, sets up logging and dispatches:
//!
//! - `demo`: a verified live migration of a running vgpu and its guest RAM
//!   between two server processes, with no arguments;
//! - `device`: look at or poke one device (descriptor, state, regions);
//! - `serve`: serve a sample device over vfio-user on a UNIX socket;
//! - `migrate`: move a device's state between `unix:`, `tcp:`, `file:` and
//!   `kernel:` endpoints; `receive`: the destination side across hosts;
//! - `inspect`: what a snapshot file holds, every checksum checked;
//! - `bench` (hidden): the engine's figures next to measured limits.
//!
//! Shared by them: `endpoint` (endpoint URIs and opening the device one
//! names), `digest` (the sample devices' digest registers for
//! verification), `interrupt` (Ctrl-C as a rollback request), `progress`
//! and `report` (what is printed while and after a migration runs).

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

mod bench;
mod certs;
mod channels;
mod control;
mod demo;
mod device;
mod digest;
mod endpoint;
mod exit;
mod inspect;
mod interrupt;
mod liveness;
mod migrate;
mod plot;
mod procstat;
mod progress;
mod receive;
mod report;
mod restore;
mod secure;
mod serve;
mod shell;
mod status;
mod track;

use std::sync::atomic::{AtomicU8, Ordering};

static VERBOSITY: AtomicU8 = AtomicU8::new(0);

/// How many `-v` were given.
pub fn verbosity() -> u8 {
    VERBOSITY.load(Ordering::Relaxed)
}

/// Live migration of VFIO devices: vfio-user servers, kernel VFIO devices
/// and snapshots, over the seed, v1 and v2 migration protocols.
#[derive(Parser)]
#[command(name = "vfio-migrate", version, about, long_about = None)]
pub(crate) struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace). RUST_LOG
    /// overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a full live migration of a running vgpu and its guest memory,
    /// verify it and print a report (no arguments needed).
    Demo(demo::Args),
    /// Look at or poke one device: descriptor, state, state changes,
    /// region reads and writes.
    Device(device::Args),
    /// Serve one emulated device over vfio-user on a UNIX socket.
    Serve(serve::Args),
    /// Migrate a device: unix:PATH, tcp:HOST:PORT, file:PATH or kernel:DEV.
    Migrate(migrate::Args),
    /// Receive a migration over TCP into a local device.
    Receive(receive::Args),
    /// Show what a snapshot file holds and check every checksum.
    Inspect(inspect::Args),
    /// Show a running migration's status (phase, bytes, rates, expected
    /// downtime), like QEMU's `info migrate`.
    Status(status::StatusArgs),
    /// Cancel a running migration: it rolls back as on Ctrl-C.
    Cancel(status::CancelArgs),
    /// Track a running device's dirty pages without migrating it: dirty
    /// rate over time, hot ranges, whether it would converge (--plot for a
    /// heatmap).
    Track(track::Args),
    /// Make TLS credentials (a CA, a receiver and a sender certificate) for
    /// `migrate`/`receive --tls-creds`.
    Certs(certs::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish,
    /// powershell).
    Completions(shell::CompletionsArgs),
    /// Print the manual page, or write one per subcommand with --dir.
    Man(shell::ManArgs),
    /// Measure downtime, throughput and memory against the limits.
    #[command(hide = true)]
    Bench(bench::Args),
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color())
        .init();
}

/// Colour (ANSI escapes) on stderr: only on a terminal, and never when
/// `NO_COLOR` is set to anything non-empty (<https://no-color.org>).
pub fn color() -> bool {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    VERBOSITY.store(cli.verbose, Ordering::Relaxed);
    let r = match cli.cmd {
        Cmd::Demo(a) => demo::run(a),
        Cmd::Serve(a) => serve::run(a),
        Cmd::Device(a) => device::run(a),
        Cmd::Migrate(a) => migrate::run(a),
        Cmd::Receive(a) => receive::run(a),
        Cmd::Inspect(a) => inspect::run(a),
        Cmd::Certs(a) => certs::run(a),
        Cmd::Status(a) => status::status(a),
        Cmd::Track(a) => track::run(a),
        Cmd::Cancel(a) => status::cancel(a),
        Cmd::Completions(a) => shell::completions(a),
        Cmd::Man(a) => shell::man(a),
        Cmd::Bench(a) => bench::run(a),
    };
    match r {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(exit::for_error(&e));
        }
    }
}
