//! `vfio-migrate certs DIR --host NAME...`: a CA, a receiver (server)
//! certificate for the host names and addresses given, and a sender
//! (client) certificate, in QEMU's x509 layout — the directory that
//! `migrate --tls-creds` and `receive --tls-creds` take. Keys are written
//! with mode 0600. Copy the same directory to both hosts.

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};
use vfio_migrate_engine::tls::{CA_CERT, CLIENT_CERT, CLIENT_KEY, SERVER_CERT, SERVER_KEY};

/// Arguments of `vfio-migrate certs`.
#[derive(clap::Args)]
#[command(after_help = "Example (two hosts, a and b, migrating from a to b):
  vfio-migrate certs ./mig-tls --host b.example.net --host 10.0.0.2
  scp -r ./mig-tls b.example.net:          # the same directory on both hosts
  b$ vfio-migrate receive --listen tcp:0.0.0.0:4444 --dest unix:/run/b.sock --tls-creds ./mig-tls
  a$ vfio-migrate migrate --source unix:/run/a.sock --dest tcp:b.example.net:4444 --tls-creds ./mig-tls")]
pub struct Args {
    /// The directory to create the credentials in (made if missing).
    dir: PathBuf,
    /// A name or address the receiver is dialled by (repeat for several):
    /// the receiver's certificate is valid for exactly these.
    #[arg(long = "host", value_name = "NAME", required = true)]
    hosts: Vec<String>,
    /// The sender certificate's subject name (what `receive --tls-authz`
    /// admits).
    #[arg(long, value_name = "NAME", default_value = "vfio-migrate-client")]
    client_name: String,
    /// Days the certificates are valid.
    #[arg(long, value_name = "DAYS", default_value_t = 365)]
    days: u32,
    /// Replace credentials already in DIR.
    #[arg(long)]
    force: bool,
}

/// Runs the command; returns the process exit code.
pub fn run(args: Args) -> anyhow::Result<i32> {
    make(
        &args.dir,
        &args.hosts,
        &args.client_name,
        args.days,
        args.force,
    )?;
    println!(
        "made {} ({CA_CERT}, {SERVER_CERT} for {}, {CLIENT_CERT} for {}); copy the directory to the other host",
        args.dir.display(),
        args.hosts.join(", "),
        args.client_name
    );
    Ok(0)
}

/// Writes a CA, a server certificate for `hosts` and a client certificate
/// named `client` into `dir`.
pub fn make(
    dir: &Path,
    hosts: &[String],
    client: &str,
    days: u32,
    force: bool,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = [CA_CERT, SERVER_CERT, SERVER_KEY, CLIENT_CERT, CLIENT_KEY];
    if !force {
        if let Some(f) = files.iter().find(|f| dir.join(f).exists()) {
            bail!(
                "{} already exists: credentials are never overwritten without --force",
                dir.join(f).display()
            );
        }
    }
    let now = OffsetDateTime::now_utc();
    let validity = |p: &mut CertificateParams| {
        p.not_before = now - Duration::hours(1);
        p.not_after = now + Duration::days(i64::from(days.max(1)));
    };

    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "vfio-migrate CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca);
    let ca_cert = ca.self_signed(&ca_key).context("signing the CA")?;

    let server_key = KeyPair::generate().context("generating the server key")?;
    let mut server = CertificateParams::new(hosts.to_vec())
        .with_context(|| format!("--host {hosts:?}: not host names or addresses"))?;
    server
        .distinguished_name
        .push(DnType::CommonName, hosts[0].as_str());
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut server);
    let server_cert = server
        .signed_by(&server_key, &ca_cert, &ca_key)
        .context("signing the server certificate")?;

    let client_key = KeyPair::generate().context("generating the client key")?;
    let mut cl = CertificateParams::new(vec![client.to_string()])
        .with_context(|| format!("--client-name {client:?}"))?;
    cl.distinguished_name.push(DnType::CommonName, client);
    cl.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    cl.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut cl);
    let client_cert = cl
        .signed_by(&client_key, &ca_cert, &ca_key)
        .context("signing the client certificate")?;

    write(dir, CA_CERT, &ca_cert.pem(), 0o644)?;
    write(dir, SERVER_CERT, &server_cert.pem(), 0o644)?;
    write(dir, SERVER_KEY, &server_key.serialize_pem(), 0o600)?;
    write(dir, CLIENT_CERT, &client_cert.pem(), 0o644)?;
    write(dir, CLIENT_KEY, &client_key.serialize_pem(), 0o600)?;
    Ok(())
}

fn write(dir: &Path, name: &str, text: &str, mode: u32) -> anyhow::Result<()> {
    let path = dir.join(name);
    // Created with its mode (a key is never readable by others, not even
    // for a moment); an existing file is replaced.
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
