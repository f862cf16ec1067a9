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
                        return Err(anyhow!(Busy::new(self, &e.to_string())))
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

    /// What the endpoint reaches, whatever its spelling: the socket file's
    /// device and inode (through symlinks and relative paths), a kernel
    /// device's sysfs directory, a file's device and inode. `None` when it
    /// cannot be told (nothing there yet, a network address).
    pub fn identity(&self) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        match self {
            Endpoint::Unix(p) | Endpoint::File(p) => {
                let m = std::fs::metadata(p).ok()?;
                Some(format!("inode {}:{}", m.dev(), m.ino()))
            }
            Endpoint::Kernel(spec) => {
                let l = vfio_migrate_kernel::Locator::default().locate(spec).ok()?;
                let p = l.sysfs.canonicalize().unwrap_or(l.sysfs);
                Some(format!("sysfs {}", p.display()))
            }
            Endpoint::Tcp { .. } => None,
        }
    }

    /// True when both endpoints reach the same device or file (see
    /// [`Endpoint::identity`]), or are spelled the same.
    pub fn same_as(&self, other: &Endpoint) -> bool {
        self == other || matches!((self.identity(), other.identity()), (Some(a), Some(b)) if a == b)
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

/// A device server that serves another client: who holds it and, when
/// that is a running migration with a control socket, how far it is.
#[derive(Debug)]
pub struct Busy {
    /// The endpoint asked for.
    pub endpoint: String,
    /// The holder as the server described it (`pid N (command)`).
    pub holder: Option<String>,
    /// The holder's control socket, when it is a running migrate/receive.
    pub control: Option<PathBuf>,
    /// Its status (see `vfio-migrate status`), when it answered.
    pub status: Option<serde_json::Value>,
}

impl Busy {
    /// From the server's EBUSY refusal text.
    pub fn new(ep: &Endpoint, refusal: &str) -> Self {
        let holder = refusal
            .split_once("in use by ")
            .map(|(_, h)| h.trim().to_string());
        let pid = holder.as_deref().and_then(|h| {
            h.strip_prefix("pid ")?
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        });
        let control = pid.and_then(|p| crate::control::find_pid(&crate::control::default_dir(), p));
        let status = control
            .as_deref()
            .and_then(|c| crate::control::request(c, "status").ok())
            .map(|(v, _)| v["status"].clone());
        Self {
            endpoint: ep.to_string(),
            holder,
            control,
            status,
        }
    }

    /// What the holder is doing, in words (`a migration in pre-copy, …`).
    pub fn doing(&self) -> Option<String> {
        let s = self.status.as_ref()?;
        let phase = s["phase"].as_str().unwrap_or("?");
        let round = if phase == "pre-copy" {
            format!(" round {}", s["rounds"].as_u64().unwrap_or(0))
        } else {
            String::new()
        };
        Some(format!(
            "a `{}` in {phase}{round}, {} sent",
            s["role"].as_str().unwrap_or("migration"),
            crate::report::bytes(s["transferred_bytes"].as_u64().unwrap_or(0))
        ))
    }
}

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = self
            .holder
            .clone()
            .unwrap_or_else(|| "another client".into());
        write!(f, "{} is busy: the device is held by {who}", self.endpoint)?;
        if let Some(d) = self.doing() {
            write!(f, " — {d}")?;
        }
        match &self.control {
            Some(c) => write!(
                f,
                ". Follow it with `vfio-migrate status {0}`, stop it with `vfio-migrate cancel {0}`, or wait for it to finish",
                c.display()
            ),
            None => write!(
                f,
                ". Wait for it to finish, or stop that process (the server then takes the next client)"
            ),
        }
    }
}

impl std::error::Error for Busy {}

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
