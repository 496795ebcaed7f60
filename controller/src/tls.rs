//! TLS material of a deployment (rustls through tonic, certificates from rcgen).
//!
//! `gateway-controller init --tls-dir DIR --san ...` writes into DIR:
//!
//! * `ca.pem` / `ca.key`: the deployment's own CA (ECDSA P-256, 10 years). Agents and
//!   `gatewayctl` pin `ca.pem`; keep `ca.key` offline after init.
//! * `server.pem` / `server.key`: the controller's certificate for the given names and
//!   addresses (825 days), signed by the CA.
//!
//! Keys are written with mode 0600.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server.key";

/// Paths of the files [`generate`] writes.
pub fn files(dir: &Path) -> [PathBuf; 4] {
    [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY].map(|f| dir.join(f))
}

fn write(path: &Path, data: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut f, data.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// The CA and the server certificate for `sans` (DNS names or IP addresses) as PEM:
/// (ca cert, ca key, server cert, server key).
pub fn generate_pem(sans: &[String]) -> Result<(String, String, String, String)> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    if sans.is_empty() {
        bail!(
            "give at least one --san (the names and addresses agents use to reach the controller)"
        );
    }
    let now = std::time::SystemTime::now();
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "zt-gateway deployment CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = (now - std::time::Duration::from_secs(3600)).into();
    ca.not_after = (now + std::time::Duration::from_secs(10 * 365 * 86_400)).into();
    let ca_key = KeyPair::generate()?;
    let ca_issuer = rcgen::CertifiedIssuer::self_signed(ca, ca_key)?;

    let mut srv = CertificateParams::new(sans.to_vec())?;
    srv.distinguished_name = DistinguishedName::new();
    srv.distinguished_name
        .push(DnType::CommonName, "zt-gateway controller");
    srv.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    srv.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    srv.not_before = (now - std::time::Duration::from_secs(3600)).into();
    srv.not_after = (now + std::time::Duration::from_secs(825 * 86_400)).into();
    let srv_key = KeyPair::generate()?;
    let srv_cert = srv.signed_by(&srv_key, &ca_issuer)?;
    Ok((
        ca_issuer.pem(),
        ca_issuer.key().serialize_pem(),
        srv_cert.pem(),
        srv_key.serialize_pem(),
    ))
}

/// Writes a new CA and server certificate into `dir` (created if missing); refuses to
/// overwrite existing files.
pub fn generate(dir: &Path, sans: &[String]) -> Result<()> {
    let paths = files(dir);
    if let Some(p) = paths.iter().find(|p| p.exists()) {
        bail!(
            "{} exists: this TLS directory is already initialised (move it away to start over)",
            p.display()
        );
    }
    let (ca, ca_key, cert, key) = generate_pem(sans)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write(&paths[0], &ca, 0o644)?;
    write(&paths[1], &ca_key, 0o600)?;
    write(&paths[2], &cert, 0o644)?;
    write(&paths[3], &key, 0o600)?;
    Ok(())
}

/// The server side: `server.pem` and `server.key` of `dir`.
pub fn server_config(dir: &Path) -> Result<ServerTlsConfig> {
    let read = |f: &str| {
        let p = dir.join(f);
        std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
    };
    Ok(server_config_pem(&read(SERVER_CERT)?, &read(SERVER_KEY)?))
}

pub fn server_config_pem(cert: &[u8], key: &[u8]) -> ServerTlsConfig {
    // A connection that does not finish its handshake in time is dropped, so idle
    // connections cannot hold the server's connection places.
    ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .timeout(std::time::Duration::from_secs(10))
}

/// A channel to `url`: with `ca_pem`, TLS that trusts only that CA (the URL must be
/// `https://`); without, plaintext (`http://` to a loopback address only, tests).
pub async fn connect(url: &str, ca_pem: Option<&[u8]>) -> Result<Channel> {
    endpoint(url, ca_pem)?
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// The endpoint of [`connect`], not yet connected.
pub fn endpoint(url: &str, ca_pem: Option<&[u8]>) -> Result<Endpoint> {
    let mut ep = Endpoint::from_shared(url.to_string())
        .with_context(|| format!("invalid controller URL `{url}`"))?
        .connect_timeout(std::time::Duration::from_secs(10));
    match ca_pem {
        Some(ca) => {
            if !url.starts_with("https://") {
                bail!("`{url}`: with a CA the controller URL must be https://");
            }
            ep = ep.tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))?;
        }
        None => {
            if url.starts_with("https://") {
                bail!("`{url}`: an https:// URL needs the deployment's CA certificate");
            }
            if !gateway_proto::plaintext_allowed(url) {
                bail!(
                    "`{url}`: plaintext (http://) is for loopback addresses only; use https:// \
                     with the deployment's CA"
                );
            }
        }
    }
    Ok(ep)
}
