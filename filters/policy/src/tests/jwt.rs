//! JWT validation on the rules that require it.

use super::tokens::{ec_jwk, ec_public_pem, rsa_jwk, rsa_public_pem, sign, unsigned, Signer, SECRET};
use super::{outcome, policy, reason, refused};
use crate::Policy;
use serde_json::{json, Value};
use std::time::{Duration, UNIX_EPOCH};
use weft_sdk::testing::{TestFilter, TestRequest};
use weft_sdk::Action;

/// `/api` needs a token, everything else passes.
fn protected(jwt: Value) -> TestFilter<Policy> {
    policy(json!({ "default": "allow", "jwt": jwt, "rules": [
        { "name": "api", "action": "allow", "require_jwt": true, "match": { "paths": [{ "prefix": "/api" }] } },
    ]}))
}

fn hs256() -> Value {
    json!({
        "issuer": "https://auth.example.com",
        "audiences": ["weft"],
        "claim_headers": { "sub": "x-user" },
        "keys": [{ "alg": "HS256", "secret": SECRET }],
    })
}

const HMAC: Signer<'static> = Signer::Hmac(SECRET.as_bytes());

fn now(filter: &TestFilter<Policy>) -> u64 {
    filter.now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Claims that pass `hs256()`'s checks for ten minutes, with `extra` merged in (null removes).
fn claims(filter: &TestFilter<Policy>, extra: Value) -> Value {
    let mut claims =
        json!({ "iss": "https://auth.example.com", "aud": "weft", "sub": "alice", "exp": now(filter) + 600 });
    for (name, value) in extra.as_object().unwrap() {
        match value {
            Value::Null => claims.as_object_mut().unwrap().remove(name),
            other => claims.as_object_mut().unwrap().insert(name.clone(), other.clone()),
        };
    }
    claims
}

fn bearer(token: &str) -> TestRequest {
    TestRequest::get("/api/orders").header("authorization", &format!("Bearer {token}"))
}

/// The `error_description` of a 401's challenge, after checking the answer's shape.
fn refusal(filter: &TestFilter<Policy>, request: TestRequest) -> String {
    let mut req = filter.request(request);
    assert_eq!(req.send_request_headers(), Action::Pause, "the request passed");
    let answer = req.local_response().unwrap();
    assert_eq!(answer.status, 401);
    let header = |name: &str| answer.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    assert_eq!(header("x-weft-error").as_deref(), Some("unauthorized"));
    let body: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["error"], "unauthorized");
    let challenge = header("www-authenticate").expect("a challenge");
    let prefix = r#"Bearer realm="weft", error="invalid_token", error_description=""#;
    let description = challenge.strip_prefix(prefix).and_then(|rest| rest.strip_suffix('"'));
    let description = description.unwrap_or_else(|| panic!("not an invalid_token challenge: {challenge}"));
    assert_eq!(body["reason"], description, "the body and the challenge give one reason");
    description.to_owned()
}

#[test]
fn valid_tokens_of_each_algorithm_pass_with_their_claims_as_headers() {
    let filter = protected(json!({
        "claim_headers": { "sub": "x-user", "groups": "X-Groups", "level": "x-level" },
        "keys": [
            { "alg": "HS256", "secret": SECRET },
            { "alg": "RS256", "pem": rsa_public_pem() },
            { "alg": "ES256", "pem": ec_public_pem(false) },
        ],
    }));
    for signer in [HMAC, Signer::Rsa, Signer::Ec] {
        let token =
            sign(signer, json!({ "typ": "JWT" }), claims(&filter, json!({ "groups": ["ops", "dev"], "level": 3 })));
        let mut req = filter.request(bearer(&token));
        assert_eq!(req.send_request_headers(), Action::Continue, "{:?}", req.local_response());
        assert_eq!(req.request_header("x-user").as_deref(), Some("alice"));
        assert_eq!(req.request_header("x-groups").as_deref(), Some("ops,dev"));
        assert_eq!(req.request_header("x-level").as_deref(), Some("3"));
        assert!(req.request_header("authorization").is_some(), "the token goes on to the upstream");
    }
    assert_eq!(filter.metric("policy_allowed"), Some(3));
}

#[test]
fn a_request_without_a_token_gets_a_bare_bearer_challenge() {
    let filter = protected(hs256());
    for request in [TestRequest::get("/api/orders"), TestRequest::get("/api").header("authorization", "Basic YTpi")] {
        let mut req = filter.request(request);
        assert_eq!(req.send_request_headers(), Action::Pause);
        let answer = req.local_response().unwrap();
        assert_eq!(answer.status, 401);
        assert!(answer.headers.contains(&("www-authenticate".into(), r#"Bearer realm="weft""#.into())), "{answer:?}");
        let body: Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(body, json!({ "error": "unauthorized", "reason": "missing bearer token in authorization" }));
    }
    assert_eq!(outcome(&filter, TestRequest::get("/shop")), "passed", "only the rule with require_jwt asks");
    assert_eq!(filter.metric("policy_jwt_rejected"), Some(2));
}

#[test]
fn expiry_and_not_before_are_checked_on_the_host_clock_with_the_leeway() {
    let filter = protected(hs256()); // leeway: 30s by default
    let short = sign(HMAC, json!({}), claims(&filter, json!({ "exp": now(&filter) + 60 })));
    let later = sign(HMAC, json!({}), claims(&filter, json!({ "nbf": now(&filter) + 100 })));
    assert_eq!(outcome(&filter, bearer(&short)), "passed");
    assert_eq!(refusal(&filter, bearer(&later)), "token not yet valid (nbf)");
    filter.advance(Duration::from_secs(75));
    assert_eq!(outcome(&filter, bearer(&later)), "passed", "25s before nbf is within the leeway");
    filter.advance(Duration::from_secs(10));
    assert_eq!(outcome(&filter, bearer(&short)), "passed", "25s past exp is within the leeway");
    filter.advance(Duration::from_secs(10));
    assert_eq!(refusal(&filter, bearer(&short)), "token expired");

    let forever = sign(HMAC, json!({}), claims(&filter, json!({ "exp": null })));
    assert_eq!(refusal(&filter, bearer(&forever)), "token has no expiry (exp)");
}

#[test]
fn issuer_audience_and_required_claims_are_checked() {
    let mut config = hs256();
    config["required_claims"] = json!(["scope"]);
    let filter = protected(config);
    let token = |extra: Value| sign(HMAC, json!({}), claims(&filter, extra));
    assert_eq!(outcome(&filter, bearer(&token(json!({ "scope": "read" })))), "passed");
    assert_eq!(outcome(&filter, bearer(&token(json!({ "scope": "read", "aud": ["other", "weft"] })))), "passed");
    assert_eq!(
        refusal(&filter, bearer(&token(json!({ "scope": "read", "iss": "https://evil.example" })))),
        "issuer not accepted"
    );
    assert_eq!(refusal(&filter, bearer(&token(json!({ "scope": "read", "aud": "other" })))), "audience not accepted");
    assert_eq!(refusal(&filter, bearer(&token(json!({ "scope": "read", "aud": null })))), "audience not accepted");
    assert_eq!(refusal(&filter, bearer(&token(json!({})))), "missing required claim scope");
}

#[test]
fn forged_and_unsigned_tokens_are_refused() {
    let filter = protected(hs256());
    let good = claims(&filter, json!({}));
    let other_secret = sign(Signer::Hmac(b"another-secret-of-32-bytes-or-more"), json!({}), good.clone());
    assert_eq!(refusal(&filter, bearer(&other_secret)), "bad signature");

    let token = sign(HMAC, json!({}), good.clone());
    let mut parts: Vec<&str> = token.split('.').collect();
    let admin = sign(HMAC, json!({}), claims(&filter, json!({ "sub": "admin" })));
    parts[1] = admin.split('.').nth(1).unwrap();
    assert_eq!(refusal(&filter, bearer(&parts.join("."))), "bad signature", "claims swapped under a signature");

    assert_eq!(refusal(&filter, bearer(&unsigned(good.clone()))), "unsigned tokens (alg none) are not accepted");
    let none_with_signature = sign(HMAC, json!({ "alg": "None" }), good.clone());
    assert_eq!(refusal(&filter, bearer(&none_with_signature)), "unsigned tokens (alg none) are not accepted");
    let hs512 = sign(HMAC, json!({ "alg": "HS512" }), good);
    assert_eq!(refusal(&filter, bearer(&hs512)), "token algorithm not accepted");
    assert_eq!(refusal(&filter, bearer("not-a-token")), "malformed token: expected header.payload.signature");
}

#[test]
fn an_hs256_token_signed_with_the_rsa_public_key_is_refused() {
    // The classic confusion: a verifier that lets the token pick the algorithm would use the
    // RSA public key's bytes as an HMAC secret, and anyone can sign with a public key.
    let pem = rsa_public_pem();
    let filter = protected(json!({ "keys": [{ "alg": "RS256", "pem": pem }] }));
    let claims = claims(&filter, json!({}));
    assert_eq!(outcome(&filter, bearer(&sign(Signer::Rsa, json!({}), claims.clone()))), "passed");
    let confused = sign(Signer::Hmac(pem.as_bytes()), json!({}), claims.clone());
    assert_eq!(refusal(&filter, bearer(&confused)), "no key for algorithm HS256");
    let elliptic = sign(Signer::Ec, json!({}), claims);
    assert_eq!(refusal(&filter, bearer(&elliptic)), "no key for algorithm ES256");
}

#[test]
fn a_jwks_picks_the_key_by_kid() {
    let secret_k = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, SECRET);
    let jwks = json!({ "keys": [
        rsa_jwk("r1"),
        ec_jwk("e1", false),
        ec_jwk("e2", true),
        { "kty": "oct", "kid": "h1", "alg": "HS256", "k": secret_k },
        { "kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB" },
        { "kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" },
    ]});
    for jwks in [jwks.clone(), Value::String(jwks.to_string())] {
        let filter = protected(json!({ "jwks": jwks }));
        let token = |signer, kid: &str| sign(signer, json!({ "kid": kid }), claims(&filter, json!({})));
        assert_eq!(outcome(&filter, bearer(&token(Signer::Ec2, "e2"))), "passed");
        assert_eq!(outcome(&filter, bearer(&token(Signer::Ec, "e1"))), "passed");
        assert_eq!(refusal(&filter, bearer(&token(Signer::Ec2, "e1"))), "bad signature", "e1 is not the signer");
        assert_eq!(refusal(&filter, bearer(&token(Signer::Ec, "zz"))), "unknown key id");
        assert_eq!(outcome(&filter, bearer(&token(Signer::Rsa, "r1"))), "passed");
        assert_eq!(outcome(&filter, bearer(&token(HMAC, "h1"))), "passed");
        let no_kid = sign(Signer::Ec2, json!({}), claims(&filter, json!({})));
        assert_eq!(outcome(&filter, bearer(&no_kid)), "passed", "without a kid every key of the algorithm is tried");
    }
}

#[test]
fn claim_headers_sent_by_the_client_are_dropped() {
    let filter = protected(hs256());
    let mut req = filter.request(TestRequest::get("/shop").header("x-user", "admin"));
    assert_eq!(req.send_request_headers(), Action::Continue);
    assert_eq!(req.request_header("x-user"), None);
    drop(req);
    let token = sign(HMAC, json!({}), claims(&filter, json!({})));
    let mut req = filter.request(bearer(&token).header("X-User", "admin"));
    assert_eq!(req.send_request_headers(), Action::Continue);
    let users: Vec<_> = req.request_headers().into_iter().filter(|(k, _)| k == "x-user").map(|(_, v)| v).collect();
    assert_eq!(users, ["alice"]);
}

#[test]
fn the_token_can_come_in_another_header() {
    let mut config = hs256();
    config["header"] = json!("X-Token");
    let filter = protected(config);
    let token = sign(HMAC, json!({}), claims(&filter, json!({})));
    assert_eq!(outcome(&filter, TestRequest::get("/api").header("x-token", &token)), "passed");
    let prefixed = TestRequest::get("/api").header("x-token", &format!("Bearer {token}"));
    assert_eq!(outcome(&filter, prefixed), "passed");
    assert_eq!(reason(&filter, bearer(&token)), "missing bearer token in x-token");
}

#[test]
fn bad_jwt_configs_are_refused_with_where_and_why() {
    let rules = json!([{ "name": "api", "action": "allow", "require_jwt": true }]);
    let with_jwt = |jwt: Value| json!({ "default": "deny", "rules": rules, "jwt": jwt });
    let error = refused(with_jwt(json!({ "keys": [{ "alg": "HS512", "secret": SECRET }] })));
    assert!(error.contains("jwt.keys[0].alg: unknown algorithm \"HS512\": expected HS256, RS256 or ES256"), "{error}");
    let error = refused(with_jwt(
        json!({ "keys": [{ "alg": "RS256", "pem": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----" }] }),
    ));
    assert!(error.contains("jwt.keys[0].pem: not an RSA public key in PEM"), "{error}");
    let error = refused(with_jwt(json!({ "keys": [{ "alg": "ES256", "pem": rsa_public_pem() }] })));
    assert!(error.contains("jwt.keys[0].pem: not a P-256 public key in PEM"), "{error}");
    let error = refused(with_jwt(json!({ "keys": [{ "alg": "HS256", "secret": "short" }] })));
    assert!(error.contains("jwt.keys[0].secret: an HS256 secret needs at least 32 bytes"), "{error}");
    let error = refused(with_jwt(json!({ "keys": [{ "alg": "RS256", "secret": SECRET }] })));
    assert!(error.contains("jwt.keys[0]: an RS256 key needs a pem"), "{error}");
    let error = refused(with_jwt(json!({ "jwks": { "keys": [{ "kty": "OKP", "crv": "Ed25519", "x": "AA" }] } })));
    assert!(error.contains("jwt.jwks: no usable key"), "{error}");
    let error =
        refused(with_jwt(json!({ "jwks": { "keys": [{ "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA" }] } })));
    assert!(error.contains("jwt.jwks.keys[0]: a P-256 key needs 32-byte x and y"), "{error}");
    let error = refused(with_jwt(json!({ "jwks": "{not json" })));
    assert!(error.contains("jwt.jwks: not valid JSON"), "{error}");
    let error = refused(with_jwt(json!({ "keys": [] })));
    assert!(error.contains("jwt: no keys: give keys or jwks"), "{error}");
    let error = refused(with_jwt(json!({ "leeway": "a bit", "keys": [{ "alg": "HS256", "secret": SECRET }] })));
    assert!(error.contains("jwt.leeway: invalid duration \"a bit\""), "{error}");
}

#[test]
fn a_token_verified_once_is_still_refused_once_it_expires() {
    let filter = protected(hs256());
    let token = sign(HMAC, json!({ "alg": "HS256" }), claims(&filter, json!({ "exp": now(&filter) + 60 })));
    for _ in 0..3 {
        let mut req = filter.request(bearer(&token));
        assert_eq!(req.send_request_headers(), Action::Continue, "a valid token, verified or remembered");
        assert_eq!(req.request_header("x-user").as_deref(), Some("alice"), "claims copied from memory too");
    }
    filter.advance(Duration::from_secs(60 + 31)); // past exp and the 30 s leeway
    assert_eq!(refusal(&filter, bearer(&token)), "token expired");
}

#[test]
fn tokens_that_differ_in_one_byte_are_told_apart_by_the_cache() {
    let filter = protected(hs256());
    let token = sign(HMAC, json!({ "alg": "HS256" }), claims(&filter, json!({})));
    let mut req = filter.request(bearer(&token));
    assert_eq!(req.send_request_headers(), Action::Continue);
    drop(req);
    // The same token with its signature's last character changed: remembered? It must not be.
    let mut tampered = token.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(refusal(&filter, bearer(&tampered)), "bad signature");
}
