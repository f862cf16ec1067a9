//! TLS 1.3 with mutual X.509 authentication for the link between
//! `migrate` and `receive` (rustls, with the *ring* crypto provider).
//!
//! Credentials live in one directory with QEMU's x509 layout:
//! `ca-cert.pem` (the CA both sides trust), `server-cert.pem` +
//! `server-key.pem` (the receiver), `client-cert.pem` + `client-key.pem`
//! (the sender). The sender verifies the receiver's certificate against the
//! CA and the host name it dialled (or `--tls-hostname`); the receiver
//! requires a client certificate signed by the CA and, with `--tls-authz`,
//! one whose subject CN or a SAN is listed. Only TLS 1.3 is offered.
//!
//! [`handshake`] runs the handshake on a connected socket within a
//! deadline (a cancel ends it), and turns every failure into a
//! [`TlsError`] that says which check failed and what to do.

use crate::cancel::{Cancel, Cancelled};
use crate::link::wait_fd;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
pub use rustls::{ClientConfig, ServerConfig};
use rustls::{ClientConnection, Connection, RootCertStore, ServerConnection};
use std::io;
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// CA certificate file in a credentials directory.
pub const CA_CERT: &str = "ca-cert.pem";
/// The receiver's certificate.
pub const SERVER_CERT: &str = "server-cert.pem";
/// The receiver's private key.
pub const SERVER_KEY: &str = "server-key.pem";
/// The sender's certificate.
pub const CLIENT_CERT: &str = "client-cert.pem";
/// The sender's private key.
pub const CLIENT_KEY: &str = "client-key.pem";

/// Why TLS could not be set up or a peer was not admitted.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A credentials file could not be read or parsed.
    #[error("TLS credentials: {path}: {what}")]
    Creds {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// The handshake failed; `detail` says which check and what to do.
    #[error("TLS handshake with {peer} failed: {detail}")]
    Handshake {
        /// The other end.
        peer: String,
        /// Which check failed, and what to do.
        detail: String,
    },
    /// The handshake did not finish in time.
    #[error("TLS handshake with {peer}: no answer within {secs} s")]
    Timeout {
        /// The other end.
        peer: String,
        /// The deadline.
        secs: u64,
    },
    /// A cancel ended the handshake.
    #[error("TLS handshake with {peer}: cancelled")]
    Cancelled {
        /// The other end.
        peer: String,
    },
    /// The client's certificate is valid but not admitted by `--tls-authz`.
    #[error("the sender {peer} presents a certificate for {names:?}, which is not in --tls-authz {allowed:?}")]
    NotAuthorized {
        /// The other end.
        peer: String,
        /// Its certificate's subject CN and SANs.
        names: Vec<String>,
        /// The names admitted.
        allowed: Vec<String>,
    },
    /// The socket failed.
    #[error("TLS handshake with {peer}: {source}")]
    Io {
        /// The other end.
        peer: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// ring, with TLS 1.3's AES-128-GCM first: both ends are ours, it is the
/// suite every TLS 1.3 peer must have, and with AES-NI it moves bulk data
/// faster than AES-256-GCM (10 rounds instead of 14); ChaCha20-Poly1305
/// stays for machines without AES instructions.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as cs;
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(p)
}

fn certs(dir: &Path, name: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let path = dir.join(name);
    let v: Result<Vec<_>, _> = CertificateDer::pem_file_iter(&path)
        .map_err(|e| creds(&path, e))?
        .collect();
    let v = v.map_err(|e| creds(&path, e))?;
    if v.is_empty() {
        return Err(TlsError::Creds {
            path,
            what: "no certificate in the file".into(),
        });
    }
    Ok(v)
}

fn key(dir: &Path, name: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let path = dir.join(name);
    PrivateKeyDer::from_pem_file(&path).map_err(|e| creds(&path, e))
}

fn creds(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Creds {
        path: path.to_path_buf(),
        what: format!("{e} (make the directory with `vfio-migrate certs DIR --host NAME`)"),
    }
}

fn roots(dir: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut r = RootCertStore::empty();
    for c in certs(dir, CA_CERT)? {
        r.add(c).map_err(|e| creds(&dir.join(CA_CERT), e))?;
    }
    Ok(Arc::new(r))
}

/// The sender's TLS configuration from credentials directory `dir`.
pub fn client_config(dir: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots(dir)?)
        .with_client_auth_cert(certs(dir, CLIENT_CERT)?, key(dir, CLIENT_KEY)?)
        .map_err(|e| TlsError::Config(format!("{CLIENT_CERT} / {CLIENT_KEY}: {e}")))?;
    Ok(Arc::new(cfg))
}

/// The receiver's client-certificate check: the CA's (webpki), then, when
/// `authz` is not empty, the certificate's subject CN or a SAN must be
/// listed — refused during the handshake with an `access_denied` alert, so
/// the sender learns why.
#[derive(Debug)]
struct Authz {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    authz: Vec<String>,
}

impl rustls::server::danger::ClientCertVerifier for Authz {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let names = cert_names(end_entity.as_ref());
        if !self.authz.is_empty() && !names.iter().any(|n| self.authz.contains(n)) {
            tracing::warn!(?names, allowed = ?self.authz, "client not in --tls-authz");
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The receiver's TLS configuration from credentials directory `dir`:
/// a client certificate signed by the CA is required, and with `authz` one
/// whose subject CN or a SAN is listed.
pub fn server_config(dir: &Path, authz: &[String]) -> Result<Arc<ServerConfig>, TlsError> {
    let inner = WebPkiClientVerifier::builder_with_provider(roots(dir)?, provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let verifier = Arc::new(Authz {
        inner,
        authz: authz.to_vec(),
    });
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(dir, SERVER_CERT)?, key(dir, SERVER_KEY)?)
        .map_err(|e| TlsError::Config(format!("{SERVER_CERT} / {SERVER_KEY}: {e}")))?;
    Ok(Arc::new(cfg))
}

/// A connection after a successful handshake, ready for the link.
pub struct Established {
    /// The rustls state.
    pub conn: Connection,
    /// The peer certificate's subject CN and SAN names.
    pub peer_names: Vec<String>,
}

/// Which side of the handshake.
pub enum Side {
    /// The sender (`migrate`), dialling `server_name`.
    Client {
        /// Its configuration.
        config: Arc<ClientConfig>,
        /// The name the receiver's certificate must carry.
        server_name: String,
    },
    /// The receiver (`receive`), admitting `authz` (empty: any client
    /// certificate the CA signed).
    Server {
        /// Its configuration.
        config: Arc<ServerConfig>,
        /// Names admitted.
        authz: Vec<String>,
    },
}

/// Runs the TLS handshake on `s` (blocking or not; it is made
/// non-blocking) within `deadline`; `cancel` ends it at once.
pub fn handshake(
    s: &TcpStream,
    side: Side,
    peer: &str,
    deadline: Duration,
    cancel: &Cancel,
) -> Result<Established, TlsError> {
    let io_err = |source: io::Error| {
        // A peer that resets or closes the socket mid-handshake refused it.
        if matches!(
            source.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        ) {
            return TlsError::Handshake {
                peer: peer.to_string(),
                detail: closed_early(false),
            };
        }
        TlsError::Io {
            peer: peer.to_string(),
            source,
        }
    };
    s.set_nonblocking(true).map_err(io_err)?;
    let (mut conn, authz): (Connection, Vec<String>) = match side {
        Side::Client {
            config,
            server_name,
        } => {
            let name = ServerName::try_from(server_name.clone()).map_err(|e| {
                TlsError::Config(format!(
                    "{server_name:?} is not a host name or address: {e}"
                ))
            })?;
            let c =
                ClientConnection::new(config, name).map_err(|e| TlsError::Config(e.to_string()))?;
            (c.into(), Vec::new())
        }
        Side::Server { config, authz } => {
            let c = ServerConnection::new(config).map_err(|e| TlsError::Config(e.to_string()))?;
            (c.into(), authz)
        }
    };
    let until = Instant::now() + deadline;
    let server = matches!(conn, Connection::Server(_));
    while conn.is_handshaking() {
        let mut progressed = false;
        if conn.wants_write() {
            match conn.write_tls(&mut &*s) {
                Ok(_) => progressed = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        if conn.wants_read() {
            match conn.read_tls(&mut &*s) {
                Ok(0) => {
                    return Err(TlsError::Handshake {
                        peer: peer.to_string(),
                        detail: closed_early(server),
                    })
                }
                Ok(_) => {
                    progressed = true;
                    if let Err(e) = conn.process_new_packets() {
                        // Tell the peer why (an alert), best effort.
                        let _ = conn.write_tls(&mut &*s);
                        return Err(TlsError::Handshake {
                            peer: peer.to_string(),
                            detail: explain(&e, server),
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        if progressed {
            continue;
        }
        let events = if conn.wants_write() {
            libc::POLLOUT
        } else {
            libc::POLLIN
        };
        let left = until.saturating_duration_since(Instant::now());
        if let Err(e) = wait_fd(s.as_fd(), events, cancel, left, &String::new) {
            return Err(if e.kind() == io::ErrorKind::TimedOut {
                TlsError::Timeout {
                    peer: peer.to_string(),
                    secs: deadline.as_secs(),
                }
            } else if Cancelled::is(&e) {
                TlsError::Cancelled {
                    peer: peer.to_string(),
                }
            } else {
                io_err(e)
            });
        }
    }
    // Whatever the handshake left to send (the client's Finished).
    loop {
        if !conn.wants_write() {
            break;
        }
        match conn.write_tls(&mut &*s) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let left = until.saturating_duration_since(Instant::now());
                if wait_fd(s.as_fd(), libc::POLLOUT, cancel, left, &String::new).is_err() {
                    break;
                }
            }
            Err(e) => return Err(io_err(e)),
        }
    }
    let peer_names = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| cert_names(c.as_ref()))
        .unwrap_or_default();
    if server && !authz.is_empty() && !peer_names.iter().any(|n| authz.contains(n)) {
        return Err(TlsError::NotAuthorized {
            peer: peer.to_string(),
            names: peer_names,
            allowed: authz,
        });
    }
    Ok(Established { conn, peer_names })
}

fn closed_early(server: bool) -> String {
    if server {
        "the sender closed the connection during the handshake (it may have refused our certificate: is its --tls-creds directory made with the same CA?)".into()
    } else {
        "the receiver closed the connection during the handshake: it refused our certificate (not signed by its CA, or not in its --tls-authz), or it does not speak TLS (start `receive` with --tls-creds)".into()
    }
}

/// Which check failed, in words, with what to do (`server`: we are the
/// receiver).
pub fn explain(e: &rustls::Error, server: bool) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let whose = if server {
        "the sender's"
    } else {
        "the receiver's"
    };
    match e {
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer | C::BadSignature => format!(
                "{whose} certificate is not signed by our CA ({CA_CERT}): copy the same credentials directory to both hosts"
            ),
            C::Expired | C::ExpiredContext { .. } => format!(
                "{whose} certificate has expired: make new credentials (`vfio-migrate certs`)"
            ),
            C::NotValidYet | C::NotValidYetContext { .. } => format!(
                "{whose} certificate is not valid yet (check both clocks)"
            ),
            C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                "{whose} certificate is not valid for the host name dialled: make it with `vfio-migrate certs DIR --host NAME` for that name, or pass --tls-hostname NAME"
            ),
            C::ApplicationVerificationFailure => format!(
                "{whose} certificate is not admitted by --tls-authz (its subject names are not listed)"
            ),
            other => format!("{whose} certificate was refused: {other:?}"),
        },
        E::AlertReceived(a) => {
            let them = if server { "the sender" } else { "the receiver" };
            let why = match a {
                A::UnknownCA | A::BadCertificate | A::DecryptError => {
                    "our certificate is not signed by its CA (copy the same credentials directory to both hosts)"
                }
                A::CertificateExpired => "our certificate has expired",
                A::CertificateRequired => "it requires a client certificate",
                A::AccessDenied => "our certificate is not in its --tls-authz",
                _ => "see its log",
            };
            format!("{them} refused the handshake ({a:?}): {why}")
        }
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            if server {
                "the sender does not speak TLS (start `migrate` with --tls-creds)".into()
            } else {
                "the receiver does not speak TLS (start `receive` with --tls-creds)".into()
            }
        }
        E::NoCertificatesPresented => {
            "the sender presented no certificate (start `migrate` with --tls-creds)".into()
        }
        other => other.to_string(),
    }
}

/// The subject CN and the DNS/IP SANs of a DER certificate.
pub fn cert_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut v: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => v.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        v.push(std::net::Ipv4Addr::from(a).to_string());
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        v.push(std::net::Ipv6Addr::from(a).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    v
}
