//! Transports. A live migration runs over a bidirectional byte stream (TCP
//! or a UNIX socket): records forward, replies back. A snapshot is a file:
//! no back channel, checked when restored.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// How long a write may block on a peer that stopped reading.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

type Closer = Box<dyn Fn() + Send>;

/// The source's end: where records go, and where replies come from.
pub struct Link {
    pub(crate) tx: Box<dyn Write + Send>,
    pub(crate) rx: Option<Box<dyn Read + Send>>,
    pub(crate) close: Option<Closer>,
    pub(crate) peer: String,
}

/// The destination's end: where records come from, and where replies go.
pub struct DestLink {
    pub(crate) rx: Box<dyn Read + Send>,
    pub(crate) tx: Option<Box<dyn Write + Send>>,
    pub(crate) close: Option<Closer>,
    pub(crate) peer: String,
}

fn tcp_parts(s: TcpStream) -> std::io::Result<(TcpStream, TcpStream, Closer)> {
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let a = s.try_clone()?;
    let c = s.try_clone()?;
    Ok((
        s,
        a,
        Box::new(move || {
            let _ = c.shutdown(Shutdown::Both);
        }),
    ))
}

fn unix_parts(s: UnixStream) -> std::io::Result<(UnixStream, UnixStream, Closer)> {
    s.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let a = s.try_clone()?;
    let c = s.try_clone()?;
    Ok((
        s,
        a,
        Box::new(move || {
            let _ = c.shutdown(Shutdown::Both);
        }),
    ))
}

impl Link {
    /// A live link over TCP to `peer`.
    pub fn tcp(s: TcpStream, peer: impl Into<String>) -> std::io::Result<Self> {
        let (tx, rx, close) = tcp_parts(s)?;
        Ok(Self {
            tx: Box::new(tx),
            rx: Some(Box::new(rx)),
            close: Some(close),
            peer: peer.into(),
        })
    }

    /// A live link over a UNIX stream socket.
    pub fn unix(s: UnixStream, peer: impl Into<String>) -> std::io::Result<Self> {
        let (tx, rx, close) = unix_parts(s)?;
        Ok(Self {
            tx: Box::new(tx),
            rx: Some(Box::new(rx)),
            close: Some(close),
            peer: peer.into(),
        })
    }

    /// A snapshot file (no back channel).
    pub fn file(f: File, peer: impl Into<String>) -> Self {
        Self::writer(f, peer)
    }

    /// Any writer, without a back channel (e.g. for tests and benches).
    pub fn writer(w: impl Write + Send + 'static, peer: impl Into<String>) -> Self {
        Self {
            tx: Box::new(w),
            rx: None,
            close: None,
            peer: peer.into(),
        }
    }

    /// True for live links (there is a back channel).
    pub fn is_live(&self) -> bool {
        self.rx.is_some()
    }

    /// Where the stream goes.
    pub fn peer(&self) -> &str {
        &self.peer
    }
}

impl DestLink {
    /// A live link over TCP from `peer`.
    pub fn tcp(s: TcpStream, peer: impl Into<String>) -> std::io::Result<Self> {
        let (rx, tx, close) = tcp_parts(s)?;
        Ok(Self {
            rx: Box::new(rx),
            tx: Some(Box::new(tx)),
            close: Some(close),
            peer: peer.into(),
        })
    }

    /// A live link over a UNIX stream socket.
    pub fn unix(s: UnixStream, peer: impl Into<String>) -> std::io::Result<Self> {
        let (rx, tx, close) = unix_parts(s)?;
        Ok(Self {
            rx: Box::new(rx),
            tx: Some(Box::new(tx)),
            close: Some(close),
            peer: peer.into(),
        })
    }

    /// A snapshot file being restored.
    pub fn file(f: File, peer: impl Into<String>) -> Self {
        Self::reader(f, peer)
    }

    /// Any reader, without a back channel.
    pub fn reader(r: impl Read + Send + 'static, peer: impl Into<String>) -> Self {
        Self {
            rx: Box::new(r),
            tx: None,
            close: None,
            peer: peer.into(),
        }
    }

    /// True for live links.
    pub fn is_live(&self) -> bool {
        self.tx.is_some()
    }

    /// Where the stream comes from.
    pub fn peer(&self) -> &str {
        &self.peer
    }
}
