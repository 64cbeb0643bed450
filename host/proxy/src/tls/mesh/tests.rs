use super::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A mesh CA of the tests.
struct Ca(CertifiedIssuer<'static, KeyPair>);

/// A certificate chain and its key, PEM.
struct Leaf {
    chain: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ca(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    fn pem(&self) -> String {
        self.0.pem()
    }

    /// A workload certificate for the SPIFFE ID `uri`, good for both ends of a connection.
    fn leaf(&self, uri: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names.push(SanType::URI(uri.try_into().unwrap()));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        Leaf { chain: cert.pem(), key: key.serialize_pem() }
    }
}

const FRONTEND: &str = "spiffe://weft.local/ns/default/sa/frontend";
const BACKEND: &str = "spiffe://weft.local/ns/default/sa/backend";

/// A proxy's identity: `uri`'s certificate from `ca`, trusting `bundle`.
fn identity(ca: &Ca, uri: &str, bundle: &str) -> Arc<MeshIdentity> {
    let mesh = MeshIdentity::new("weft.local", Metrics::new());
    let leaf = ca.leaf(uri);
    mesh.set_certificate(&leaf.chain, &leaf.key).unwrap();
    mesh.set_bundle(bundle).unwrap();
    mesh
}

/// A TLS handshake in memory; the server's view of the client's identity, or the first error.
async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Result<Option<String>, String> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let accept = async {
        let mut tls = TlsAcceptor::from(server).accept(a).await.map_err(|e| format!("server: {e}"))?;
        let peer = super::super::TlsInfo::of(tls.get_ref().1).peer_uri_san;
        use tokio::io::AsyncWriteExt;
        tls.write_all(b"!").await.map_err(|e| format!("server: {e}"))?;
        tls.shutdown().await.map_err(|e| format!("server: {e}"))?;
        Ok::<_, String>(peer)
    };
    let connect = async {
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = TlsConnector::from(client).connect(name, b).await.map_err(|e| format!("client: {e}"))?;
        // TLS 1.3 clients learn of a refused certificate only when they read.
        use tokio::io::AsyncReadExt;
        let mut byte = [0u8; 1];
        match tls.read(&mut byte).await {
            Ok(1) => Ok(()),
            Ok(_) => Err("client: closed before the first byte".to_string()),
            Err(e) => Err(format!("client: {e}")),
        }
    };
    let (accepted, connected) = tokio::join!(accept, connect);
    // Both sides' errors, as the side that refused and the side refused say different things.
    match (accepted, connected) {
        (Ok(peer), Ok(())) => Ok(peer),
        (Ok(_), Err(client)) => Err(client),
        (Err(server), Ok(())) => Err(server),
        (Err(server), Err(client)) => Err(format!("{server}; {client}")),
    }
}

#[tokio::test]
async fn two_proxies_of_the_mesh_handshake_and_the_server_sees_the_clients_spiffe_id() {
    let ca = Ca::new("mesh");
    let backend = identity(&ca, BACKEND, &ca.pem());
    let frontend = identity(&ca, FRONTEND, &ca.pem());
    let server = backend.server_config("mesh-in", &[]).unwrap();
    let client = frontend.client_config("backend", &[BACKEND.into()], &[]).unwrap();
    assert_eq!(handshake(server, client).await.unwrap().as_deref(), Some(FRONTEND));
}

#[tokio::test]
async fn a_cluster_refuses_an_endpoint_whose_identity_it_does_not_expect() {
    let ca = Ca::new("mesh");
    let backend = identity(&ca, BACKEND, &ca.pem());
    let frontend = identity(&ca, FRONTEND, &ca.pem());
    let payments = "spiffe://weft.local/ns/default/sa/payments".to_string();
    let client = frontend.client_config("payments", &[payments], &[]).unwrap();
    let error = handshake(backend.server_config("mesh-in", &[]).unwrap(), client).await.unwrap_err();
    assert!(
        error.contains("payments") && error.contains("refused mesh peer spiffe://weft.local/ns/default/sa/backend"),
        "{error}"
    );
    assert!(error.contains("not one of the identities expected"), "{error}");
}

#[tokio::test]
async fn a_listener_refuses_clients_without_a_mesh_certificate() {
    let ca = Ca::new("mesh");
    let backend = identity(&ca, BACKEND, &ca.pem());
    let frontend = identity(&ca, FRONTEND, &ca.pem());
    // A client that trusts the mesh but has no certificate of its own.
    let anonymous = ClientConfig::builder_with_provider(super::super::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerVerifier::new(frontend, "test".into(), Vec::new())))
        .with_no_client_auth();
    let error = handshake(backend.server_config("mesh-in", &[]).unwrap(), Arc::new(anonymous)).await.unwrap_err();
    assert!(error.contains("server: peer sent no certificates"), "the listener refuses: {error}");

    let outsider = Ca::new("elsewhere");
    let stranger = identity(&outsider, FRONTEND, &ca.pem());
    let client = stranger.client_config("backend", &[], &[]).unwrap();
    let error = handshake(backend.server_config("mesh-in", &[]).unwrap(), client).await.unwrap_err();
    assert!(error.contains("server:"), "a certificate of another CA is refused even with a mesh name: {error}");
}

#[tokio::test]
async fn a_bundle_with_two_roots_accepts_certificates_of_either_during_a_rotation() {
    let (old, new) = (Ca::new("old"), Ca::new("new"));
    let both = format!("{}{}", old.pem(), new.pem());
    let backend = identity(&old, BACKEND, &both);
    let frontend = identity(&new, FRONTEND, &both);
    let client = frontend.client_config("backend", &[], &[]).unwrap();
    assert_eq!(
        handshake(backend.server_config("mesh-in", &[]).unwrap(), client).await.unwrap().as_deref(),
        Some(FRONTEND)
    );

    // Once the old root leaves the bundle, its certificates are refused.
    frontend.set_bundle(&new.pem()).unwrap();
    let client = frontend.client_config("backend", &[], &[]).unwrap();
    assert!(handshake(backend.server_config("mesh-in", &[]).unwrap(), client).await.is_err());
}

#[tokio::test]
async fn a_renewed_certificate_serves_the_next_handshake_of_the_same_config() {
    let ca = Ca::new("mesh");
    let backend = identity(&ca, BACKEND, &ca.pem());
    let frontend = identity(&ca, FRONTEND, &ca.pem());
    let server = backend.server_config("mesh-in", &[]).unwrap();
    let client = frontend.client_config("backend", &[], &[]).unwrap();
    let before = frontend.certificate().unwrap();
    let renewed = ca.leaf(FRONTEND);
    frontend.set_certificate(&renewed.chain, &renewed.key).unwrap();
    assert_ne!(frontend.certificate().unwrap().leaf, before.leaf);
    assert_eq!(handshake(server, client).await.unwrap().as_deref(), Some(FRONTEND));
}

#[test]
fn certificates_that_do_not_fit_the_mesh_are_refused_and_the_current_one_stays() {
    let ca = Ca::new("mesh");
    let mesh = identity(&ca, FRONTEND, &ca.pem());
    let current = mesh.certificate().unwrap();
    assert_eq!(current.spiffe_id, FRONTEND);
    assert!(current.not_after > current.not_before);

    let foreign = ca.leaf("spiffe://example.org/ns/default/sa/frontend");
    let error = mesh.set_certificate(&foreign.chain, &foreign.key).unwrap_err().to_string();
    assert!(error.contains("outside the trust domain weft.local"), "{error}");
    let (one, other) = (ca.leaf(FRONTEND), ca.leaf(FRONTEND));
    assert!(
        matches!(mesh.set_certificate(&one.chain, &other.key), Err(MeshError::Key(_))),
        "a key of another certificate"
    );
    assert!(mesh.set_bundle("not pem").is_err());
    assert_eq!(mesh.certificate().unwrap(), current);
}

#[test]
fn bundle_digests_follow_the_roots() {
    let (a, b) = (Ca::new("a"), Ca::new("b"));
    let mesh = MeshIdentity::new("weft.local", Metrics::new());
    let one = mesh.set_bundle(&a.pem()).unwrap();
    assert_eq!(mesh.set_bundle(&a.pem()).unwrap(), one);
    assert_ne!(mesh.set_bundle(&format!("{}{}", a.pem(), b.pem())).unwrap(), one);
    assert!(one.starts_with("sha256:") && one.len() == 71);
    assert_eq!(mesh.bundle_digest().as_deref().map(|d| d != one), Some(true));
}

#[test]
fn mesh_listeners_and_clusters_need_a_proxy_with_a_mesh_identity() {
    let config = weft_config::Config::parse(
        "clusters: [{ name: backend, endpoints: [\"127.0.0.1:8443\"], mtls: mesh }]",
        weft_config::Format::Yaml,
    )
    .unwrap();
    let refused =
        super::super::cluster_client_config(&config.clusters[0], "clusters[0]", "127.0.0.1", None).unwrap_err();
    assert_eq!(refused.field, "clusters[0].mtls");
    assert!(refused.reason.contains("no mesh identity"), "{refused}");
    let refused = super::super::mesh_server_config(None, "mesh-in", "listeners[0]", &[]).unwrap_err();
    assert_eq!(refused.field, "listeners[0].mtls");

    let ca = Ca::new("mesh");
    let mesh = identity(&ca, FRONTEND, &ca.pem());
    let built = super::super::cluster_client_config(&config.clusters[0], "clusters[0]", "127.0.0.1", Some(&mesh));
    assert!(built.unwrap().is_some());
}
