use super::*;
use rcgen::CertificateParams;

/// A CSR for `sans` (URIs) made with a new key, DER.
fn csr(uris: &[&str]) -> Vec<u8> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = uris.iter().map(|u| SanType::URI((*u).try_into().unwrap())).collect();
    let key = KeyPair::generate().unwrap();
    params.serialize_request(&key).unwrap().der().to_vec()
}

/// The leaf of an issued chain, DER.
fn leaf(issued: &IssuedCertificate) -> Vec<u8> {
    CertificateDer::from_pem_slice(issued.chain_pem.as_bytes()).unwrap().to_vec()
}

fn frontend() -> SpiffeId {
    SpiffeId::parse("spiffe://weft.local/ns/default/sa/frontend").unwrap()
}

#[test]
fn a_csr_for_the_allowed_identity_gets_a_certificate_for_it_alone() {
    let authority = Authority::generate("weft.local", 1).unwrap();
    let issued = authority.issue(&csr(&[&frontend().uri()]), &frontend(), Duration::from_secs(3600)).unwrap();
    let der = leaf(&issued);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names.len(), 1);
    assert_eq!(san.value.general_names[0].to_string(), format!("URI({})", frontend()));
    assert!(!cert.is_ca());
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert_eq!(lifetime, 3600 + 60, "an hour, backdated by a minute");
    assert_eq!(issued.not_after, cert.validity().not_after.timestamp() as u64);
    assert!(authority.signed(&der));
    assert!(!Authority::generate("weft.local", 2).unwrap().signed(&der));
    assert_eq!(issued.chain_pem.matches("BEGIN CERTIFICATE").count(), 2, "leaf and the root");
}

#[test]
fn csrs_outside_the_trust_domain_or_for_another_identity_are_refused() {
    let authority = Authority::generate("weft.local", 1).unwrap();
    let hour = Duration::from_secs(3600);
    let outside = authority.issue(&csr(&["spiffe://example.org/ns/default/sa/frontend"]), &frontend(), hour);
    assert!(
        matches!(&outside, Err(IdentityError::NotAllowed(reason)) if reason.contains("outside the trust domain weft.local")),
        "{:?}",
        outside.err()
    );
    let other = authority.issue(&csr(&["spiffe://weft.local/ns/default/sa/admin"]), &frontend(), hour);
    assert!(
        matches!(&other, Err(IdentityError::NotAllowed(reason)) if reason.contains("only spiffe://weft.local/ns/default/sa/frontend is allowed")),
        "{:?}",
        other.err()
    );
    let two = authority.issue(&csr(&[&frontend().uri(), "spiffe://weft.local/ns/default/sa/admin"]), &frontend(), hour);
    assert!(matches!(two, Err(IdentityError::BadCsr(reason)) if reason.contains("exactly one SAN")));
    let none = authority.issue(&csr(&[]), &frontend(), hour);
    assert!(matches!(none, Err(IdentityError::BadCsr(reason)) if reason.contains("names no SPIFFE ID")));
    let garbage = authority.issue(b"not a csr", &frontend(), hour);
    assert!(matches!(garbage, Err(IdentityError::BadCsr(reason)) if reason.contains("PKCS#10")));
}

#[test]
fn a_csr_asking_for_a_ca_is_refused() {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::URI(frontend().uri().try_into().unwrap())];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let request = params.serialize_request(&KeyPair::generate().unwrap()).unwrap();
    let refused = check_csr(request.der(), "weft.local");
    assert!(matches!(refused, Err(IdentityError::BadCsr(reason)) if reason.contains("CA certificate")));
}

#[test]
fn an_operator_intermediate_signs_and_its_root_is_the_anchor() {
    // The operator's root, and an intermediate under it for the mesh.
    let root_key = KeyPair::generate().unwrap();
    let mut root_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    root_params.distinguished_name.push(DnType::CommonName, "operator root");
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let root = rcgen::CertifiedIssuer::self_signed(root_params, root_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "mesh intermediate");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let intermediate = params.signed_by(&key, &root).unwrap();
    let file = format!("{}{}", intermediate.pem(), root.pem());

    let authority = Authority::import(&file, &key.serialize_pem(), 1).unwrap();
    assert!(authority.record.operator);
    assert_eq!(authority.record.anchor_pem.trim(), root.pem().trim(), "peers trust the operator's root");
    assert_eq!(authority.record.chain_pem.trim(), intermediate.pem().trim(), "the intermediate goes with each leaf");
    let issued = authority.issue(&csr(&[&frontend().uri()]), &frontend(), Duration::from_secs(60)).unwrap();
    assert_eq!(issued.chain_pem.matches("BEGIN CERTIFICATE").count(), 2, "leaf and intermediate");

    let wrong_key = Authority::import(&file, &KeyPair::generate().unwrap().serialize_pem(), 1);
    assert!(matches!(wrong_key, Err(IdentityError::BadCa(reason)) if reason.contains("not the CA certificate's key")));
    let leaf = issued.chain_pem.split_inclusive("-----END CERTIFICATE-----").next().unwrap().to_owned();
    let not_ca = Authority::import(&leaf, &key.serialize_pem(), 1);
    assert!(matches!(not_ca, Err(IdentityError::BadCa(reason)) if reason.contains("not a CA certificate")));
}
