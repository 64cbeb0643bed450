use super::*;
use crate::test_support::TempDir;
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls_pki_types::pem::PemObject;
use serde_json::json;
use weft_proto::identity::IdentityReport;

const FRONTEND: &str = "spiffe://weft.local/ns/default/sa/frontend";

fn csr(uri: &str) -> Vec<u8> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    params.serialize_request(&KeyPair::generate().unwrap()).unwrap().der().to_vec()
}

fn open(dir: &TempDir, settings: &Settings) -> Result<Mesh, IdentityError> {
    Mesh::open(&Store::open(dir.path()).unwrap(), settings)
}

fn token(mesh: &Mesh, service: &str, uses: u32) -> String {
    mesh.create_token("default", service, Duration::from_secs(600), uses, "admin").unwrap().0
}

fn leaf(issued: &Issued) -> Vec<u8> {
    rustls_pki_types::CertificateDer::from_pem_slice(issued.chain_pem.as_bytes()).unwrap().to_vec()
}

fn report(node: &str, issued: &Issued, bundle: &str) -> IdentityReport {
    IdentityReport { node: node.into(), certificate: leaf(issued), bundle_digest: bundle.into(), ..Default::default() }
}

#[test]
fn the_first_start_makes_a_root_that_later_starts_keep_and_the_trust_domain_cannot_change() {
    let dir = TempDir::new("mesh-open");
    let settings = Settings { trust_domain: Some("example.org".into()), ..Settings::default() };
    let first = open(&dir, &settings).unwrap().to_json().unwrap();
    assert_eq!(first["trust_domain"], "example.org");
    let again = open(&dir, &Settings::default()).unwrap().to_json().unwrap();
    assert_eq!(again["signer"], first["signer"], "the stored root stays");
    let changed = open(&dir, &Settings { trust_domain: Some("weft.local".into()), ..Settings::default() });
    assert!(matches!(changed, Err(IdentityError::BadRequest(reason)) if reason.contains("cannot change")));
    let bad =
        open(&TempDir::new("mesh-bad"), &Settings { trust_domain: Some("Not Valid".into()), ..Settings::default() });
    assert!(matches!(bad, Err(IdentityError::BadRequest(_))));
}

#[test]
fn a_join_token_gives_one_proxy_its_identity_and_a_credential() {
    let dir = TempDir::new("mesh-join");
    let mesh = open(&dir, &Settings::default()).unwrap();
    let once = token(&mesh, "frontend", 1);
    let issued = mesh.join(&once, "edge-1", &csr(FRONTEND)).unwrap();
    assert_eq!(issued.spiffe_id, FRONTEND);
    assert!(issued.bundle_pem.contains("BEGIN CERTIFICATE"));
    let credential = issued.credential.clone().unwrap();
    let caller = mesh.authenticate(Some(&format!("Bearer {credential}"))).unwrap();
    assert_eq!((caller.node.as_str(), caller.spiffe_id.as_str()), ("edge-1", FRONTEND));

    // Single use: the token is spent.
    assert!(matches!(mesh.join(&once, "edge-2", &csr(FRONTEND)), Err(IdentityError::TokenRefused)));
    assert!(mesh.tokens().unwrap().is_empty());
    // A wrong or malformed token gets nothing.
    let wrong = format!("{}0", &once[..once.len() - 1]);
    let wrong = if wrong == once { format!("{}1", &once[..once.len() - 1]) } else { wrong };
    assert!(matches!(mesh.join(&wrong, "edge-2", &csr(FRONTEND)), Err(IdentityError::TokenRefused)));
    assert!(matches!(mesh.join("letmein", "edge-2", &csr(FRONTEND)), Err(IdentityError::TokenRefused)));
    assert!(mesh.authenticate(Some("Bearer wpc.0000000000000000.00")).is_none());

    // The credential survives a restart of the control plane.
    drop(mesh);
    let mesh = open(&dir, &Settings::default()).unwrap();
    assert!(mesh.authenticate(Some(&format!("Bearer {credential}"))).is_some());
}

#[test]
fn a_join_for_another_identity_than_the_tokens_is_refused_and_costs_no_use() {
    let mesh = open(&TempDir::new("mesh-other"), &Settings::default()).unwrap();
    let once = token(&mesh, "frontend", 1);
    let refused = mesh.join(&once, "edge-1", &csr("spiffe://weft.local/ns/default/sa/admin"));
    assert!(
        matches!(refused, Err(IdentityError::NotAllowed(reason)) if reason.contains("only spiffe://weft.local/ns/default/sa/frontend"))
    );
    let outside = mesh.join(&once, "edge-1", &csr("spiffe://example.org/ns/default/sa/frontend"));
    assert!(matches!(outside, Err(IdentityError::NotAllowed(reason)) if reason.contains("outside the trust domain")));
    assert_eq!(mesh.tokens().unwrap()[0].uses_left, 1, "nothing spent");
    assert!(mesh.join(&once, "edge-1", &csr(FRONTEND)).is_ok());
}

#[test]
fn a_token_may_allow_several_joins_and_tokens_can_be_revoked() {
    let mesh = open(&TempDir::new("mesh-uses"), &Settings::default()).unwrap();
    let twice = token(&mesh, "frontend", 2);
    mesh.join(&twice, "edge-1", &csr(FRONTEND)).unwrap();
    assert_eq!(mesh.tokens().unwrap()[0].uses_left, 1);
    mesh.join(&twice, "edge-2", &csr(FRONTEND)).unwrap();
    assert!(matches!(mesh.join(&twice, "edge-3", &csr(FRONTEND)), Err(IdentityError::TokenRefused)));

    let (revoked, record) = mesh.create_token("default", "frontend", Duration::from_secs(60), 1, "admin").unwrap();
    mesh.revoke_token(&record.id).unwrap();
    assert!(matches!(mesh.join(&revoked, "edge-4", &csr(FRONTEND)), Err(IdentityError::TokenRefused)));
    assert!(matches!(mesh.revoke_token(&record.id), Err(IdentityError::NotFound(_))));
    let bad = mesh.create_token("default", "front end", Duration::from_secs(60), 1, "admin");
    assert!(matches!(bad, Err(IdentityError::BadRequest(reason)) if reason.contains("service")));
    assert!(mesh.create_token("default", "frontend", Duration::ZERO, 1, "admin").is_err());
    assert!(mesh.create_token("default", "frontend", Duration::from_secs(60), 0, "admin").is_err());
}

#[test]
fn renewals_are_for_the_credentials_node_and_identity_only() {
    let mesh = open(&TempDir::new("mesh-renew"), &Settings::default()).unwrap();
    let issued = mesh.join(&token(&mesh, "frontend", 1), "edge-1", &csr(FRONTEND)).unwrap();
    let caller = mesh.authenticate(Some(&format!("Bearer {}", issued.credential.unwrap()))).unwrap();
    let renewed = mesh.renew(&caller, "edge-1", &csr(FRONTEND)).unwrap();
    assert!(renewed.credential.is_none(), "a renewal makes no new credential");
    assert_eq!(mesh.status("edge-1").unwrap().issued, 2);
    assert!(matches!(mesh.renew(&caller, "edge-2", &csr(FRONTEND)), Err(IdentityError::NotAllowed(_))));
    let other = mesh.renew(&caller, "edge-1", &csr("spiffe://weft.local/ns/default/sa/admin"));
    assert!(matches!(other, Err(IdentityError::NotAllowed(_))));
    assert!(mesh.status("edge-1").unwrap().last_error.is_some(), "a refused renewal is visible");

    // A new join of the node replaces its credential.
    let again = mesh.join(&token(&mesh, "frontend", 1), "edge-1", &csr(FRONTEND)).unwrap();
    assert!(mesh.authenticate(Some(&format!("Bearer wpc.{}.x", caller.id))).is_none());
    assert!(mesh.authenticate(Some(&format!("Bearer {}", again.credential.unwrap()))).is_some());
}

#[test]
fn a_rotation_waits_for_every_following_proxy_at_each_step() {
    let mesh = open(&TempDir::new("mesh-rotate"), &Settings::default()).unwrap();
    let issued = mesh.join(&token(&mesh, "frontend", 1), "edge-1", &csr(FRONTEND)).unwrap();
    let caller = mesh.authenticate(Some(&format!("Bearer {}", issued.credential.clone().unwrap()))).unwrap();
    let old = mesh.subscribe().borrow().clone();
    mesh.following("edge-1", true);
    mesh.record_report("edge-1", &report("edge-1", &issued, &old.digest));

    mesh.start_rotation(None).unwrap();
    let both = mesh.subscribe().borrow().clone();
    assert_ne!(both.digest, old.digest);
    assert_eq!(both.signer, old.signer, "the old root signs while edge-1 lacks the new bundle");
    assert_eq!(mesh.to_json().unwrap()["rotation"]["waiting_for_bundle"], json!(["edge-1"]));
    assert!(matches!(mesh.start_rotation(None), Err(IdentityError::Conflict(_))));
    assert!(matches!(mesh.finish_rotation(false), Err(IdentityError::Conflict(reason)) if reason.contains("edge-1")));

    mesh.record_report("edge-1", &report("edge-1", &issued, &both.digest));
    mesh.advance().unwrap();
    let switched = mesh.subscribe().borrow().clone();
    assert_ne!(switched.signer, old.signer, "every proxy trusts the new root: it signs");
    assert_eq!(switched.digest, both.digest, "and the old root stays trusted");
    let holders = mesh.finish_rotation(false);
    assert!(matches!(holders, Err(IdentityError::Conflict(reason)) if reason.contains("old root: edge-1")));

    let renewed = mesh.renew(&caller, "edge-1", &csr(FRONTEND)).unwrap();
    mesh.record_report("edge-1", &report("edge-1", &renewed, &both.digest));
    assert_eq!(mesh.status("edge-1").unwrap().issued_by.as_deref(), Some(switched.signer.as_str()));
    mesh.finish_rotation(false).unwrap();
    let finished = mesh.subscribe().borrow().clone();
    assert_eq!(finished.pem.matches("BEGIN CERTIFICATE").count(), 1);
    assert_eq!(finished.signer, switched.signer);
    assert!(mesh.to_json().unwrap()["rotation"].is_null());
    assert!(matches!(mesh.finish_rotation(false), Err(IdentityError::Conflict(_))));
}

#[test]
fn a_rotation_with_no_proxy_following_switches_at_once_and_can_be_forced_to_finish() {
    let mesh = open(&TempDir::new("mesh-alone"), &Settings::default()).unwrap();
    let before = mesh.subscribe().borrow().clone();
    mesh.start_rotation(None).unwrap();
    assert_ne!(mesh.subscribe().borrow().signer, before.signer);
    assert_eq!(mesh.to_json().unwrap()["rotation"]["phase"], "issuing");
    mesh.finish_rotation(true).unwrap();
    assert_eq!(mesh.to_json().unwrap()["authorities"].as_array().unwrap().len(), 1);
}
