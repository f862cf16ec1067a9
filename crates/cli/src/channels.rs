//! `--channels N`: how `migrate`, `receive` and `demo` open the parallel
//! data channels — each one connected, deadlined and authenticated exactly
//! like the main link (over TCP: [`crate::secure::connect`] and
//! [`crate::secure::accept`], TLS and the stray-connection rules
//! included; between two local devices: a UNIX socket pair each).

use crate::secure::Admission;
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;
use vfio_migrate_engine::{Acceptor, Cancel, Connector, Deadlines, DestLink, Link};

/// Most channels `--channels` takes.
pub const MAX: u32 = 16;

/// Parses `--channels` (1 to [`MAX`]).
pub fn parse(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of channels (1 to {MAX})"))?;
    if !(1..=MAX).contains(&n) {
        return Err(format!("{n} channels: use 1 to {MAX}"));
    }
    Ok(n)
}

/// Channels to a `receive` at `addr`, each connected and (with `creds`)
/// TLS-authenticated like the main link.
pub fn tcp_connector(
    addr: String,
    peer: String,
    creds: Option<PathBuf>,
    server_name: String,
    d: Deadlines,
) -> Connector {
    Box::new(move |i| {
        crate::secure::connect(&addr, &peer, creds.as_deref(), &server_name, &d)
            .map_err(|e| std::io::Error::other(format!("data channel {i}: {e:#}")))
    })
}

/// `receive`'s channels: connections on `l`, admitted like the main one
/// (TLS, the stream header; others are logged and dropped).
pub fn tcp_acceptor(
    l: Arc<TcpListener>,
    adm: Arc<Admission>,
    d: Deadlines,
    cancel: Cancel,
) -> Acceptor {
    Box::new(
        move |wait| match crate::secure::accept(&l, &adm, &d, Some(wait), &cancel) {
            Ok((link, _)) => Ok(link),
            Err(e) => {
                let timed_out = e
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
                    || e.to_string().contains("no sender connected");
                let kind = if timed_out {
                    std::io::ErrorKind::TimedOut
                } else {
                    std::io::ErrorKind::Other
                };
                Err(std::io::Error::new(kind, format!("{e:#}")))
            }
        },
    )
}

/// Channels between the two halves of a local migration: each is a UNIX
/// socket pair whose far end is handed to the destination's acceptor.
pub fn local_pair(src: String, dst: String, d: Deadlines) -> (Connector, Acceptor) {
    let (tx, rx) = mpsc::channel::<UnixStream>();
    let dd = d.clone();
    let connect: Connector = Box::new(move |_| {
        let (a, b) = UnixStream::pair()?;
        tx.send(b)
            .map_err(|_| std::io::Error::other("the destination side is gone"))?;
        Link::unix(a, dst.clone(), &d)
    });
    let accept: Acceptor = Box::new(move |wait: Duration| match rx.recv_timeout(wait) {
        Ok(s) => DestLink::unix(s, src.clone(), &dd),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no data channel came",
        )),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(std::io::Error::other("the source side is gone"))
        }
    });
    (connect, accept)
}

#[cfg(test)]
mod tests {
    #[test]
    fn channel_counts() {
        assert_eq!(super::parse("4"), Ok(4));
        assert!(super::parse("0").is_err());
        assert!(super::parse("17").is_err());
        assert!(super::parse("x").is_err());
    }
}
