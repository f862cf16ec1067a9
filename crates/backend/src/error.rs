//! [`BackendError`]: how a backend reports that a device refused a request,
//! that the channel to it failed, that the peer broke the protocol, that
//! the device is not there, or that it does not offer an operation.

use thiserror::Error;

/// A failure reported by a device backend.
#[derive(Debug, Error)]
pub enum BackendError {
    /// The device (or its server/driver) refused the request with an errno.
    #[error("{step}: device refused: {} (errno {errno}){}", errno_name(*errno), detail_suffix(detail))]
    Refused {
        /// What was being done: the command or operation, prefixed by some
        /// backends with the device it was sent to.
        step: String,
        /// The errno the device, server or driver answered with.
        errno: i32,
        /// What the device or backend said about it, and a hint for the
        /// user; may be empty.
        detail: String,
    },
    /// The channel to the device failed (socket closed, ioctl/read error).
    #[error("{step}: {source}")]
    Io {
        /// What was being done when the channel failed.
        step: String,
        /// The OS error of the failed call.
        #[source]
        source: std::io::Error,
    },
    /// The peer answered something the protocol does not allow.
    #[error("{step}: protocol error: {detail}")]
    Protocol {
        /// The request whose answer broke the protocol.
        step: String,
        /// What was wrong with the answer.
        detail: String,
    },
    /// The device named is not there, or not usable by this backend (no
    /// such PCI device, mdev or socket; not bound to a VFIO driver). The
    /// message says what was looked for and what to do; it does not name
    /// the endpoint, which the caller does.
    #[error("{detail}")]
    NotFound {
        /// What is missing and the fix.
        detail: String,
    },
    /// The operation is not offered by this device or backend.
    #[error("{step}: not supported by this device: {detail}")]
    Unsupported {
        /// The operation asked for.
        step: String,
        /// Why it is not available (e.g. a feature the device did not
        /// announce).
        detail: String,
    },
}

fn detail_suffix(d: &str) -> String {
    if d.is_empty() {
        String::new()
    } else {
        format!(": {d}")
    }
}

/// Symbolic name of an errno value (`EINVAL`, …), or `errno N`.
pub fn errno_name(e: i32) -> String {
    let n = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ERANGE => "ERANGE",
        libc::ENOSYS => "ENOSYS",
        libc::ENOMSG => "ENOMSG",
        libc::EPROTO => "EPROTO",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::ENOTSUP => "ENOTSUP",
        libc::ENOTTY => "ENOTTY",
        libc::E2BIG => "E2BIG",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNRESET => "ECONNRESET",
        _ => return format!("errno {e}"),
    };
    n.to_string()
}

impl BackendError {
    /// A refusal with an errno.
    pub fn refused(step: impl Into<String>, errno: i32, detail: impl Into<String>) -> Self {
        BackendError::Refused {
            step: step.into(),
            errno,
            detail: detail.into(),
        }
    }
    /// A channel failure.
    pub fn io(step: impl Into<String>, source: std::io::Error) -> Self {
        BackendError::Io {
            step: step.into(),
            source,
        }
    }
    /// A protocol violation by the peer.
    pub fn protocol(step: impl Into<String>, detail: impl Into<String>) -> Self {
        BackendError::Protocol {
            step: step.into(),
            detail: detail.into(),
        }
    }
    /// Not offered.
    pub fn unsupported(step: impl Into<String>, detail: impl Into<String>) -> Self {
        BackendError::Unsupported {
            step: step.into(),
            detail: detail.into(),
        }
    }
    /// The errno when the device refused, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            BackendError::Refused { errno, .. } => Some(*errno),
            BackendError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Result type of every backend operation.
pub type Result<T, E = BackendError> = std::result::Result<T, E>;
