//! Deadlines and cancellation shared by `migrate`, `receive` and `demo`:
//! the `--stall-timeout` / `--connect-timeout` options, the engine's
//! [`Deadlines`] and the device clients' configuration built from them, so
//! that every wait of a command — connecting, a device's reply, a link's
//! bytes — has a deadline and wakes on Ctrl-C.

use std::sync::Arc;
use std::time::Duration;
use vfio_migrate_client::ClientConfig;
use vfio_migrate_engine::{Cancel, Deadlines};

/// The deadline options.
#[derive(clap::Args, Debug, Clone)]
pub struct Liveness {
    /// Give up when nothing moves on a link and no answer comes for this
    /// many seconds: a peer process that was stopped or hangs, a cut
    /// network, a device server that stopped answering. Slow but live
    /// peers send heartbeats and are never taken for dead.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub stall_timeout: u64,
    /// Deadline for connecting to a device server or a receiver and getting
    /// its first answer.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_timeout: u64,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            stall_timeout: 30,
            connect_timeout: 10,
        }
    }
}

impl Liveness {
    /// The engine's deadlines, woken by `cancel`.
    pub fn deadlines(&self, cancel: &Cancel) -> Deadlines {
        Deadlines {
            connect: Duration::from_secs(self.connect_timeout),
            stall: Duration::from_secs(self.stall_timeout),
            cancel: cancel.clone(),
        }
    }

    /// A device client's configuration: the same deadlines, and `cancel`
    /// shortening every wait to a grace period once it fires.
    pub fn client_config(&self, cancel: &Cancel) -> anyhow::Result<ClientConfig> {
        let fd = cancel
            .watch_fd_owned()
            .map_err(|e| anyhow::anyhow!("duplicating the cancel fd: {e}"))?;
        Ok(ClientConfig {
            connect_timeout: Duration::from_secs(self.connect_timeout),
            timeout: Duration::from_secs(self.stall_timeout),
            cancel: Some(Arc::new(fd)),
            ..ClientConfig::default()
        })
    }
}
