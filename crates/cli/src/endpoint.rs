//! Migration endpoints as URIs — `unix:PATH` (a vfio-user device server),
//! `tcp:HOST:PORT` (a remote `vfio-migrate receive`), `file:PATH` (a
//! snapshot), `kernel:DEV` (a kernel VFIO device) — and opening the device
//! an endpoint names. A new kind of endpoint is one variant, one arm in
//! [`Endpoint::parse`] and, for devices, one arm in [`Endpoint::open_device`].

use anyhow::{anyhow, bail, Context};
use std::fmt;
use std::path::PathBuf;
use vfio_migrate_backend::MigrationDevice;
use vfio_migrate_client::ClientConfig;

/// One end of a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A vfio-user device server's socket.
    Unix(PathBuf),
    /// A `vfio-migrate receive` listening at `host:port`.
    Tcp { host: String, port: u16 },
    /// A snapshot file.
    File(PathBuf),
    /// A kernel VFIO device (mdev UUID, PCI address or sysfs path).
    Kernel(String),
}

/// `--protocol`: which migration protocol drives a `unix:` device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ProtocolArg {
    /// v2 if the server offers it, else the v1 region, else the seed region.
    #[default]
    Auto,
    /// DEVICE_FEATURE + MIG_DATA_READ/WRITE (Linux 5.18+ / vfio-user).
    V2,
    /// The Linux 5.8 v1 migration region + DIRTY_PAGES.
    V1,
    /// The 2018 seed proposal's migration region.
    Seed,
}

impl From<ProtocolArg> for vfio_migrate_client::Protocol {
    fn from(p: ProtocolArg) -> Self {
        match p {
            ProtocolArg::Auto => Self::Auto,
            ProtocolArg::V2 => Self::V2,
            ProtocolArg::V1 => Self::V1,
            ProtocolArg::Seed => Self::Seed,
        }
    }
}

const FORMS: &str = "unix:PATH, tcp:HOST:PORT, file:PATH or kernel:DEVICE";

impl Endpoint {
    /// Parses `scheme:rest`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let (scheme, rest) = s
            .split_once(':')
            .ok_or_else(|| anyhow!("'{s}' is not an endpoint: use {FORMS}"))?;
        if rest.is_empty() {
            bail!("'{s}': nothing after '{scheme}:'; use {FORMS}");
        }
        Ok(match scheme {
            "unix" => Endpoint::Unix(rest.into()),
            "file" => Endpoint::File(rest.into()),
            "kernel" => Endpoint::Kernel(rest.into()),
            "tcp" => {
                let (host, port) = rest.rsplit_once(':').ok_or_else(|| {
                    anyhow!("'{s}': a tcp endpoint needs a port, e.g. tcp:127.0.0.1:4444")
                })?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                if host.is_empty() {
                    bail!("'{s}': a tcp endpoint needs a host, e.g. tcp:127.0.0.1:4444");
                }
                let port = port
                    .parse()
                    .map_err(|_| anyhow!("'{s}': '{port}' is not a TCP port (0-65535)"))?;
                Endpoint::Tcp {
                    host: host.to_string(),
                    port,
                }
            }
            other => bail!("'{s}': unknown endpoint kind '{other}'; use {FORMS}"),
        })
    }

    /// True for endpoints that are a device.
    pub fn is_device(&self) -> bool {
        matches!(self, Endpoint::Unix(_) | Endpoint::Kernel(_))
    }

    /// Connects to the device this endpoint names (migration protocol
    /// detected, default deadlines).
    pub fn open_device(&self) -> anyhow::Result<Box<dyn MigrationDevice>> {
        self.open_device_with(ProtocolArg::Auto, &ClientConfig::default())
    }

    /// Connects to the device this endpoint names; `unix:` devices are
    /// driven through `protocol` (`kernel:` devices always speak v2) with
    /// the deadlines and cancel fd of `config`.
    pub fn open_device_with(
        &self,
        protocol: ProtocolArg,
        config: &ClientConfig,
    ) -> anyhow::Result<Box<dyn MigrationDevice>> {
        Ok(match self {
            Endpoint::Unix(p) => {
                if !p.exists() {
                    bail!("cannot reach the device server at {self}: no such socket (is `vfio-migrate serve` running there?)");
                }
                match vfio_migrate_client::open_with(p, protocol.into(), config.clone()) {
                    Ok(d) => d,
                    Err(e) if e.errno() == Some(libc::EBUSY) => {
                        return Err(anyhow!(e).context(format!(
                            "the device server at {self} is busy: another client holds the device (a migration in progress?); wait for it to finish, or stop it"
                        )))
                    }
                    Err(e) if e.errno() == Some(libc::ECONNREFUSED) => {
                        return Err(anyhow!(e).context(format!(
                            "nothing listens at {self} (a stale socket file? is `vfio-migrate serve` running there?)"
                        )))
                    }
                    Err(e) => {
                        return Err(anyhow!(e).context(format!("cannot use the device server at {self}")))
                    }
                }
            }
            Endpoint::Kernel(_) if !matches!(protocol, ProtocolArg::Auto | ProtocolArg::V2) => {
                bail!("{self}: kernel devices migrate with the v2 protocol only; drop --protocol or use --protocol v2")
            }
            Endpoint::Kernel(spec) => Box::new(
                vfio_migrate_kernel::KernelDevice::open(spec)
                    .with_context(|| format!("cannot open {self}"))?,
            ),
            Endpoint::Tcp { .. } | Endpoint::File(_) => bail!("{self} is not a device"),
        })
    }

    /// `host:port` of a tcp endpoint.
    pub fn socket_addr(&self) -> Option<String> {
        match self {
            Endpoint::Tcp { host, port } if host.contains(':') => Some(format!("[{host}]:{port}")),
            Endpoint::Tcp { host, port } => Some(format!("{host}:{port}")),
            _ => None,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::File(p) => write!(f, "file:{}", p.display()),
            Endpoint::Kernel(s) => write!(f, "kernel:{s}"),
            Endpoint::Tcp { .. } => write!(f, "tcp:{}", self.socket_addr().expect("tcp")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind() {
        assert_eq!(
            Endpoint::parse("unix:/run/a.sock").unwrap(),
            Endpoint::Unix("/run/a.sock".into())
        );
        assert_eq!(
            Endpoint::parse("file:snap.bin").unwrap(),
            Endpoint::File("snap.bin".into())
        );
        assert_eq!(
            Endpoint::parse("tcp:127.0.0.1:4444").unwrap(),
            Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 4444
            }
        );
        assert_eq!(
            Endpoint::parse("tcp:[::1]:5").unwrap().to_string(),
            "tcp:[::1]:5"
        );
        assert_eq!(
            Endpoint::parse("kernel:0000:00:01.0").unwrap(),
            Endpoint::Kernel("0000:00:01.0".into())
        );
    }

    #[test]
    fn bad_input_says_what_to_write() {
        for (s, want) in [
            ("/run/a.sock", "is not an endpoint"),
            ("ftp:x", "unknown endpoint kind 'ftp'"),
            ("tcp:127.0.0.1", "needs a port"),
            ("tcp:127.0.0.1:x", "'x' is not a TCP port"),
            ("tcp:host", "needs a port"),
            ("tcp::80", "needs a host"),
            ("tcp:h:99999", "not a TCP port"),
            ("unix:", "nothing after"),
        ] {
            let e = Endpoint::parse(s).unwrap_err().to_string();
            assert!(e.contains(want), "{s}: {e}");
        }
    }
}
