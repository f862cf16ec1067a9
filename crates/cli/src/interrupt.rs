//! SIGINT and SIGTERM: the first one cancels the migration (every wait
//! wakes at once and the normal rollback runs), a second one ends the
//! process at once with 128 + the signal number.

use vfio_migrate_engine::Cancel;

/// Installs the handlers and returns the cancel they fire.
pub fn install() -> anyhow::Result<Cancel> {
    Cancel::on_signals().map_err(|e| anyhow::anyhow!("installing the signal handlers: {e}"))
}
