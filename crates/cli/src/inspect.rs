//! `vfio-migrate inspect` (placeholder until its issue lands).

/// Arguments of `vfio-migrate inspect`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs the command; returns the process exit code.
pub fn run(_args: Args) -> anyhow::Result<i32> {
    anyhow::bail!("'vfio-migrate inspect' is not built yet")
}
