//! Cluster credentials: a cluster CA (made by `tandem init`) signs one certificate per node;
//! links use mutual TLS 1.3 (rustls, ring provider) and accept only certificates of that CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// The name every node certificate carries and every dialer checks. Node identity within the
/// cluster is established by the handshake that follows; membership by the CA.
pub const SERVER_NAME: &str = "tandem-peer";

/// File names `tandem init` writes in a node directory.
pub const CA_FILE: &str = "cluster-ca.pem";
pub const CA_KEY_FILE: &str = "cluster-ca.key";
pub const CERT_FILE: &str = "node.pem";
pub const KEY_FILE: &str = "node.key";

/// TLS configurations for both ends of a link.
#[derive(Clone)]
pub struct Credentials {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials")
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads a node's credentials: the cluster CA certificate, the node's certificate and key.
pub fn load(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<Credentials> {
    let ca_certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("reading the cluster CA {}", ca.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing the cluster CA {}", ca.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading the node certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing the node certificate {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading the node key {}", key.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in ca_certs {
        roots.add(c).context("adding the cluster CA")?;
    }
    let roots = Arc::new(roots);
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .context("building the peer certificate verifier")?;
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .context("the node certificate and key do not match")?;
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("the node certificate and key do not match")?;
    Ok(Credentials { server: Arc::new(server), client: Arc::new(client) })
}

/// The server name dialers check.
pub fn server_name() -> ServerName<'static> {
    ServerName::DnsName(rustls::pki_types::DnsName::try_from(SERVER_NAME).expect("a valid DNS name").to_owned())
}

fn ca_params() -> anyhow::Result<rcgen::CertificateParams> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(rcgen::DnType::CommonName, "Tandem cluster CA");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign, rcgen::KeyUsagePurpose::DigitalSignature];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(p)
}

/// A new cluster CA: (certificate PEM, key PEM).
pub fn new_ca() -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate().context("generating the CA key")?;
    let cert = ca_params()?.self_signed(&key).context("signing the CA certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A node certificate signed by the CA key: (certificate PEM, key PEM).
pub fn issue(ca_key_pem: &str, node: &str) -> anyhow::Result<(String, String)> {
    let ca_key = rcgen::KeyPair::from_pem(ca_key_pem).context("parsing the CA key")?;
    let issuer = rcgen::Issuer::new(ca_params()?, ca_key);
    let mut p = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()]).context("certificate parameters")?;
    p.distinguished_name.push(rcgen::DnType::CommonName, node);
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let key = rcgen::KeyPair::generate().context("generating the node key")?;
    let cert = p.signed_by(&key, &issuer).context("signing the node certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes a node's credential files into `dir`, making a new cluster CA there unless `ca_from`
/// names a directory holding one (`cluster-ca.pem` and `cluster-ca.key`). Returns the paths
/// (ca, cert, key). The CA key is only written where the CA was made.
pub fn write_node_credentials(dir: &Path, node: &str, ca_from: Option<&Path>) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (ca_pem, ca_key) = match ca_from {
        Some(from) => {
            let ca = std::fs::read_to_string(from.join(CA_FILE)).with_context(|| format!("reading {}", from.join(CA_FILE).display()))?;
            let key =
                std::fs::read_to_string(from.join(CA_KEY_FILE)).with_context(|| format!("reading {}", from.join(CA_KEY_FILE).display()))?;
            (ca, key)
        }
        None => {
            let (ca, key) = new_ca()?;
            write_private(&dir.join(CA_KEY_FILE), &key)?;
            (ca, key)
        }
    };
    let (cert, key) = issue(&ca_key, node)?;
    let paths = (dir.join(CA_FILE), dir.join(CERT_FILE), dir.join(KEY_FILE));
    std::fs::write(&paths.0, ca_pem).with_context(|| format!("writing {}", paths.0.display()))?;
    std::fs::write(&paths.1, cert).with_context(|| format!("writing {}", paths.1.display()))?;
    write_private(&paths.2, &key)?;
    Ok(paths)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_of_one_ca_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a_ca, a_cert, a_key) = write_node_credentials(&dir.path().join("a"), "a", None).expect("a");
        load(&a_ca, &a_cert, &a_key).expect("load a");
        let (b_ca, b_cert, b_key) = write_node_credentials(&dir.path().join("b"), "b", Some(&dir.path().join("a"))).expect("b");
        load(&b_ca, &b_cert, &b_key).expect("load b");
        assert_eq!(std::fs::read(&a_ca).expect("ca"), std::fs::read(&b_ca).expect("ca"));
    }
}
