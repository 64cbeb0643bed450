//! TLS with rustls: server configs for listeners (ALPN, optional client certificates), client
//! configs for clusters, and the peer identity read from a verified client certificate.
//! [`mesh`] is the same for `mtls: mesh`, with the proxy's mesh identity.

pub mod mesh;

use mesh::MeshIdentity;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;
use weft_config::{ClusterTls, FieldError, ListenerTls, UpstreamProtocol};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path, field: &str) -> Result<Vec<CertificateDer<'static>>, FieldError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| FieldError::new(field, format!("cannot read certificates from {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(FieldError::new(field, format!("{} holds no PEM certificate", path.display())));
    }
    Ok(certs)
}

fn read_key(path: &Path, field: &str) -> Result<PrivateKeyDer<'static>, FieldError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| FieldError::new(field, format!("cannot read a private key from {}: {e}", path.display())))
}

fn read_roots(path: &Path, field: &str) -> Result<RootCertStore, FieldError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path, field)? {
        roots
            .add(cert)
            .map_err(|e| FieldError::new(field, format!("{}: not a usable CA certificate: {e}", path.display())))?;
    }
    Ok(roots)
}

/// The server side of a listener's TLS. `alpn` is offered in order (`h2`, `http/1.1` for https).
pub fn server_config(tls: &ListenerTls, at: &str, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, FieldError> {
    let certs = read_certs(&tls.cert, &format!("{at}.cert"))?;
    let key = read_key(&tls.key, &format!("{at}.key"))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| FieldError::new(at, e.to_string()))?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let field = format!("{at}.client_ca");
            let roots = read_roots(ca, &field)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| FieldError::new(&field, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| FieldError::new(format!("{at}.key"), format!("does not fit the certificate: {e}")))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The client side of a cluster's TLS, and the name its endpoints must prove.
pub fn client_config(
    tls: &ClusterTls,
    at: &str,
    default_host: &str,
    alpn: &[&[u8]],
) -> Result<(Arc<ClientConfig>, ServerName<'static>), FieldError> {
    let roots = match &tls.ca {
        Some(ca) => read_roots(ca, &format!("{at}.ca"))?,
        None => RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() },
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| FieldError::new(at, e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let certs = read_certs(cert, &format!("{at}.cert"))?;
            let key = read_key(key, &format!("{at}.key"))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| FieldError::new(format!("{at}.key"), format!("does not fit the certificate: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = tls.server_name.as_deref().unwrap_or(default_host);
    let server_name = ServerName::try_from(name.to_owned())
        .map_err(|_| FieldError::new(format!("{at}.server_name"), format!("{name:?} is not a valid server name")))?;
    Ok((Arc::new(config), server_name))
}

/// Why `mtls: mesh` cannot be served by this proxy.
const NO_MESH: &str = "this proxy has no mesh identity: run it with --control and --service (a proxy from a \
                       static config file has none)";

/// The TLS of a cluster's connections to its endpoint `host`, from its `tls` or its
/// `mtls: mesh`; `None` for plain connections.
pub fn cluster_client_config(
    cluster: &weft_config::Cluster,
    at: &str,
    host: &str,
    mesh: Option<&Arc<MeshIdentity>>,
) -> Result<Option<(Arc<ClientConfig>, ServerName<'static>)>, FieldError> {
    let alpn: &[&[u8]] = match cluster.protocol {
        UpstreamProtocol::Http1 => &[b"http/1.1"],
        UpstreamProtocol::Http2 => &[b"h2", b"http/1.1"],
    };
    if let Some(tls) = &cluster.tls {
        return client_config(tls, &format!("{at}.tls"), host, alpn).map(Some);
    }
    if cluster.mtls.is_none() {
        return Ok(None);
    }
    let field = format!("{at}.mtls");
    let mesh = mesh.ok_or_else(|| FieldError::new(&field, NO_MESH))?;
    let config =
        mesh.client_config(&cluster.name, &cluster.identities, alpn).map_err(|e| FieldError::new(&field, e))?;
    // Mesh peers are verified by SPIFFE ID, not by name; the name is only the SNI sent.
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| FieldError::new(&field, format!("{host:?} is not a valid server name")))?;
    Ok(Some((config, name)))
}

/// The server side of an `mtls: mesh` listener named `listener`.
pub fn mesh_server_config(
    mesh: Option<&Arc<MeshIdentity>>,
    listener: &str,
    at: &str,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, FieldError> {
    let field = format!("{at}.mtls");
    let mesh = mesh.ok_or_else(|| FieldError::new(&field, NO_MESH))?;
    mesh.server_config(listener, alpn).map_err(|e| FieldError::new(&field, e))
}

/// What a finished TLS handshake tells about the client.
#[derive(Clone, Debug, Default)]
pub struct TlsInfo {
    pub version: &'static str,
    pub alpn_h2: bool,
    /// The client certificate's first URI SAN (a SPIFFE ID in a mesh), when it showed one.
    pub peer_uri_san: Option<String>,
    /// The client certificate's subject, RFC 4514 style.
    pub peer_subject: Option<String>,
}

impl TlsInfo {
    pub fn of(conn: &rustls::ServerConnection) -> TlsInfo {
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "unknown",
        };
        let mut info = TlsInfo { version, alpn_h2: conn.alpn_protocol() == Some(b"h2"), ..TlsInfo::default() };
        if let Some(leaf) = conn.peer_certificates().and_then(|certs| certs.first()) {
            if let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) {
                info.peer_subject = Some(cert.subject().to_string());
                if let Ok(Some(san)) = cert.subject_alternative_name() {
                    info.peer_uri_san = san.value.general_names.iter().find_map(|name| match name {
                        x509_parser::extensions::GeneralName::URI(uri) => Some(uri.to_string()),
                        _ => None,
                    });
                }
            }
        }
        info
    }
}
