//! The link between `migrate` and `receive`: connecting and accepting,
//! with TLS when `--tls-creds` is given, and the rule that a connection is
//! a migration only once it is authenticated (TLS) and speaks the stream
//! format: anything else is logged and dropped, and `receive` keeps
//! waiting for the real sender.

use anyhow::Context;
use std::net::{TcpListener, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vfio_migrate_engine::tls::{self, Side, TlsError};
use vfio_migrate_engine::{accept_tcp, connect_tcp, Cancel, Deadlines, DestLink, Link};

/// True when `host` is a loopback name or address (every address it
/// resolves to is loopback).
pub fn is_loopback(host: &str) -> bool {
    match (host, 0).to_socket_addrs() {
        Ok(mut a) => a.all(|x| x.ip().is_loopback()),
        Err(_) => false,
    }
}

/// `migrate`'s end: connects to `addr` (`host:port`) within the connect
/// deadline, and with `creds` runs the TLS handshake, checking the
/// receiver's certificate against the CA and `server_name`.
pub fn connect(
    addr: &str,
    peer: &str,
    creds: Option<&Path>,
    server_name: &str,
    d: &Deadlines,
) -> anyhow::Result<Link> {
    let stream = connect_tcp(addr, d).with_context(|| {
        format!("cannot connect to {peer} (is `vfio-migrate receive` listening there?)")
    })?;
    match creds {
        None => Ok(Link::tcp(stream, peer, d).context("setting up the TCP connection")?),
        Some(dir) => {
            let config = tls::client_config(dir)?;
            let est = tls::handshake(
                &stream,
                Side::Client {
                    config,
                    server_name: server_name.to_string(),
                },
                peer,
                d.connect,
                &d.cancel,
            )?;
            Ok(Link::tcp_tls(stream, est, peer, d).context("setting up the TLS connection")?)
        }
    }
}

/// What `receive` admits.
pub struct Admission {
    /// TLS: the configuration and the names `--tls-authz` admits.
    pub tls: Option<(Arc<tls::ServerConfig>, Vec<String>)>,
}

/// `receive`'s end: accepts connections until one is an authenticated
/// vfio-migrate sender (within `wait`, if given); every other one is
/// logged with why and dropped.
pub fn accept(
    l: &TcpListener,
    adm: &Admission,
    d: &Deadlines,
    wait: Option<Duration>,
    cancel: &Cancel,
) -> anyhow::Result<(DestLink, String)> {
    let until = wait.map(|w| Instant::now() + w);
    loop {
        let left = until.map(|u| u.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            anyhow::bail!("no sender connected within {} s", wait.unwrap().as_secs());
        }
        let (stream, addr) = accept_tcp(l, left, cancel)?;
        let peer = format!("tcp:{addr}");
        match admit(stream, &peer, adm, d) {
            Ok(link) => return Ok((link, peer)),
            Err(why) => {
                if cancel.is_cancelled() {
                    return Err(why);
                }
                eprintln!(
                    "refused a connection from {peer}: {why:#}; still waiting for the sender"
                );
                tracing::warn!(peer = %peer, "refused a connection: {why:#}");
            }
        }
    }
}

/// Authenticates one connection (TLS) and checks that it starts a
/// vfio-migrate stream; returns the link with those first bytes put back.
fn admit(
    stream: std::net::TcpStream,
    peer: &str,
    adm: &Admission,
    d: &Deadlines,
) -> anyhow::Result<DestLink> {
    let mut link = match &adm.tls {
        Some((config, authz)) => {
            let est = tls::handshake(
                &stream,
                Side::Server {
                    config: config.clone(),
                    authz: authz.clone(),
                },
                peer,
                d.connect,
                &d.cancel,
            )
            .map_err(|e| match e {
                TlsError::Handshake { detail, .. } => anyhow::anyhow!("{detail}"),
                e => anyhow::anyhow!(e),
            })?;
            tracing::info!(peer, names = ?est.peer_names, "TLS sender authenticated");
            DestLink::tcp_tls(stream, est, peer, d)?
        }
        None => DestLink::tcp(stream, peer, d)?,
    };
    // The first bytes must be a vfio-migrate stream header (read within
    // the connect deadline: the link's first read has it).
    let mut head = [0u8; 8];
    let mut got = 0;
    while got < head.len() {
        match link.rx().read(&mut head[got..]) {
            Ok(0) => anyhow::bail!("it closed the connection before saying anything"),
            Ok(n) => got += n,
            Err(e) => return Err(anyhow::anyhow!(e).context("reading its first bytes")),
        }
    }
    if &head != b"VFIOMIGR" {
        if head[0] == 0x16 && head[1] == 0x03 {
            anyhow::bail!(
                "it speaks TLS but this receiver does not: start `receive` with --tls-creds DIR"
            );
        }
        anyhow::bail!(
            "not a vfio-migrate stream (it began with {:02x?})",
            &head[..got]
        );
    }
    Ok(link.with_prefix(head.to_vec()))
}
