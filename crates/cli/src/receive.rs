//! `vfio-migrate receive` (placeholder until its issue lands).

/// Arguments of `vfio-migrate receive`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs the command; returns the process exit code.
pub fn run(_args: Args) -> anyhow::Result<i32> {
    anyhow::bail!("'vfio-migrate receive' is not built yet")
}
