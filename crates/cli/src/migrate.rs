//! `vfio-migrate migrate` (placeholder until its issue lands).

/// Arguments of `vfio-migrate migrate`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs the command; returns the process exit code.
pub fn run(_args: Args) -> anyhow::Result<i32> {
    anyhow::bail!("'vfio-migrate migrate' is not built yet")
}
