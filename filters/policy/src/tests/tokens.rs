//! Test keys and tokens. The private keys were made once with `openssl genpkey` (RSA 2048,
//! P-256) and serve these tests only; tokens are signed here, per test, so each test says
//! exactly what its token carries.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// An HS256 secret of the 32 bytes RFC 7518 asks for.
pub const SECRET: &str = "a-test-secret-of-32-bytes-or-more";

const RSA_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQDODVNu5kRbbFsv
y8p6zH0cgSkcALoJGl1yMmbmfDnGfFUbX4N7wMgquN4V1K/jFSDDxbBcLOOwcsOD
uIlVwXX29WMTFgu8u9R9KuOfmHsL+PuGUGaTpEB/YsizDsH8z9O2SiJjV2exzVft
WZ64PVthDHMRHIrlFNTWyOXZfRs7p6fA7SC19BFJDLA6mZgcqSkbw439q/LNm7dv
6bMWO+GDkmkh8wixgCTId0NY7AsoOjxV0guuhkhys87hu/8rTP5679vCYlDGlPzc
YlkiaMq0mo4CFqE5pCAI//SJLHu0n9nPSe1xlU/IR4rSrhVGTZX9oC6gYzuzVDR9
hDCpM+VnAgMBAAECggEAMDP+3jVBLZAKPwKyQgr/g8EVgGcNHl8MGFCBMQ9DptLk
SAyOok9FpHTuA3ZnlTyWlyXyrYWU2GzonzJ28lhZQ+ZBALCKG2NngMadTHMr6e+b
y96YOJbWvdY6tGTR7dYipYTvSYUjjX1Hwg9SqbA05d23N3wRZCj856hE2R3C1q/k
rJ/F0xlj3wcV5MbsG26oRvJHsR4smTETLGkVsmSrcxx/FUnNrElX1cq5dEm1ymsW
Y3OF8CCIJWu0kT+MjoJ9xM7JKohwT36gDZDITQHywZPm/+REEPQ79hY6hiICbxq+
Zb+31GNkmXreZUGhqVIH+LUntwiH/IEFfEHWiUk2FQKBgQD4cztg+Ppkql8EUc1w
c9QZbYKgB+Q7kXzUg35gDzRis8qQjoT3I9W+Z7gaPwfTB/ktB4zeVr7cBTQZA8Ao
T1Vp9a1dkcxjK2OH5TlVpSGjqZ1VC51ddoTHiTv0savE1FDT6gVnaunNjVLPNYaR
+rZoSOxAJUSfPVVq5wEr5cN8gwKBgQDUUERDawDBLQ9apOqQMpM6Lsytng2M0RPV
t0ZP7AxQtGoCpBANmDOaOu8UJTfU1vH1OS68wajHX0zMqyVT7pewc2JNaR9E2B2a
Q8v8IzcLEMn3wOlbUaPkntHwqFkbPm4sJmc8lGVYa+faSzGIZ9KzZmOGfB4I5zjN
uWvSF6QmTQKBgCZs7Aobd96J2xg37qYtw+gK3+EQV2Q/JCdaDvmcYGXDmNiysi3n
BO/l6rtkdDlXSlqEiGz6zZoJ0/zqb5XMb1FsBdwq6ImN9F7YPP3aBFHjscmtejEy
W2bg+rzlncNbcwTTdPKBvpdj/CLADIgXVo7aeG+TVAGs4sEd6Th42LsxAoGAOQr3
zEVLhptcrLXyb5unAtLgGyWD7nmeIqWDNqXtCSHv+ZWq2nwyIRYEdh0pyv2VNJWQ
gRZnCmoIcFTrSomoJ7hYiQPdatnF2lSs0amEeGyiVvZ1vBtLNXmWXlpc1n0HjMUk
p5oXQJJ9UKEzRbrfWWQBCXj/eNTm5h8TYPcJG2ECgYAZWHV7M/qgeZhJNBc2gTko
Q8Y4QfKWiRBImkjayC1is89LUJ8Z9wr1hufuy4GCOvdqaLLKrAXTLfrXFx973gXu
2GUullxmFZM7lqgCR68RqfAxXf31EaWK+ikYZ7bSlyA1e7GHJjSORL5GMBXQ7TqT
2bBeAo8bwDu8tJ8CHi/hhQ==
-----END PRIVATE KEY-----
";

const EC_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgpYckHxeMBN7AoiYZ
9Lr5nKKHJXvddZ6dR+AIEE8GhMWhRANCAATViRxSR82zk44pQAIwnttccReAo4sj
dBc7VS9RZjIXTVg8xmurJBfE/lSCXKpy5BrIijqfJerlJyRGPqpHMy5I
-----END PRIVATE KEY-----
";

const EC2_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgUXxahPIus5DAchYa
rWH/s6/fKhS4S9IvR8t3lLax1ZGhRANCAARGBYZXFdoTlr8yUFn7xv7vCLHYcsgG
23QrNwOfWAbHOzpXEquXuFYAl27REk5hSHm6ZmdIX/EkgwRfjynyDu9o
-----END PRIVATE KEY-----
";

/// Who signs a token.
#[derive(Clone, Copy)]
pub enum Signer<'a> {
    /// HMAC-SHA256 with these bytes as the secret.
    Hmac(&'a [u8]),
    Rsa,
    Ec,
    /// A second P-256 key, to tell keys apart by `kid`.
    Ec2,
}

fn rsa_private() -> RsaPrivateKey {
    RsaPrivateKey::from_pkcs8_pem(RSA_PRIVATE).expect("test RSA key")
}

fn ec_private(second: bool) -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_pkcs8_pem(if second { EC2_PRIVATE } else { EC_PRIVATE }).expect("test EC key")
}

/// The RSA test key's public half, PEM (`BEGIN PUBLIC KEY`).
pub fn rsa_public_pem() -> String {
    rsa_private().to_public_key().to_public_key_pem(LineEnding::LF).expect("PEM")
}

/// A P-256 test key's public half, PEM.
pub fn ec_public_pem(second: bool) -> String {
    ec_private(second).verifying_key().to_public_key_pem(LineEnding::LF).expect("PEM")
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The RSA test key as a JWK.
pub fn rsa_jwk(kid: &str) -> Value {
    let public = rsa_private().to_public_key();
    json!({ "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": b64(&public.n().to_bytes_be()), "e": b64(&public.e().to_bytes_be()) })
}

/// A P-256 test key as a JWK.
pub fn ec_jwk(kid: &str, second: bool) -> Value {
    let point = ec_private(second).verifying_key().to_encoded_point(false);
    json!({ "kty": "EC", "crv": "P-256", "kid": kid,
            "x": b64(point.x().expect("x")), "y": b64(point.y().expect("y")) })
}

/// A compact JWS: `header` (to which `alg` is added unless it has one) and `claims`, signed.
pub fn sign(signer: Signer, header: Value, claims: Value) -> String {
    let alg = match signer {
        Signer::Hmac(_) => "HS256",
        Signer::Rsa => "RS256",
        Signer::Ec | Signer::Ec2 => "ES256",
    };
    let mut header = header;
    if header.get("alg").is_none() {
        header["alg"] = alg.into();
    }
    let signed = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let signature = match signer {
        Signer::Hmac(secret) => {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key size");
            mac.update(signed.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        Signer::Rsa => rsa_private()
            .sign(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(signed.as_bytes()))
            .expect("RSA signature"),
        Signer::Ec | Signer::Ec2 => {
            let signature: p256::ecdsa::Signature = ec_private(matches!(signer, Signer::Ec2)).sign(signed.as_bytes());
            signature.to_bytes().to_vec()
        }
    };
    format!("{signed}.{}", b64(&signature))
}

/// A token as it would be sent without a signature at all.
pub fn unsigned(claims: Value) -> String {
    format!("{}.{}.", b64(json!({ "alg": "none" }).to_string().as_bytes()), b64(claims.to_string().as_bytes()))
}
