//! The error a device reports: an errno for the wire plus a message for
//! people.

use thiserror::Error;

/// A device-side failure, carried to the client as an errno.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{message} ({})", vfio_migrate_backend::errno_name(*errno))]
pub struct DeviceError {
    /// The errno reported on the wire.
    pub errno: i32,
    /// What went wrong, for logs and users.
    pub message: String,
}

impl DeviceError {
    /// An error with `errno`.
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        Self {
            errno,
            message: message.into(),
        }
    }
    /// EINVAL.
    pub fn inval(message: impl Into<String>) -> Self {
        Self::new(libc::EINVAL, message)
    }
    /// EFAULT (address outside a mapping).
    pub fn fault(message: impl Into<String>) -> Self {
        Self::new(libc::EFAULT, message)
    }
    /// ENOTSUP.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(libc::ENOTSUP, message)
    }
}

impl From<crate::fsm::FsmError> for DeviceError {
    fn from(e: crate::fsm::FsmError) -> Self {
        Self::new(e.errno(), e.to_string())
    }
}

/// Result type of the SDK.
pub type DeviceResult<T> = Result<T, DeviceError>;
