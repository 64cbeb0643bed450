//! The keys tokens are verified with: read from the config (an HS256 secret, an RS256 or ES256
//! public key in PEM) or from a JSON Web Key Set, and each fixed to one algorithm, so that a
//! token can never choose how its own signature is checked (no `alg: none`, no RSA public key
//! used as an HMAC secret).

use crate::config::KeyConfig;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Pkcs1v15Sign, RsaPublicKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The signature algorithms the policy accepts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Alg {
    Hs256,
    Rs256,
    Es256,
}

impl Alg {
    /// The algorithm of a JOSE `alg` name; `None` for every other (`none` among them).
    pub fn from_name(name: &str) -> Option<Alg> {
        match name {
            "HS256" => Some(Alg::Hs256),
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }
}

/// One verification key.
pub struct Key {
    /// Matched against a token's `kid`.
    pub kid: Option<String>,
    material: Material,
}

enum Material {
    Hmac(Vec<u8>),
    Rsa(Box<RsaPublicKey>),
    Ec(Box<VerifyingKey>),
}

/// RFC 7518 wants HS256 secrets at least as long as the hash.
const MIN_SECRET_BYTES: usize = 32;
/// RSA keys shorter than this are breakable; RFC 7518 asks for 2048 bits.
const MIN_RSA_BYTES: usize = 256;

impl Key {
    pub fn alg(&self) -> Alg {
        match self.material {
            Material::Hmac(_) => Alg::Hs256,
            Material::Rsa(_) => Alg::Rs256,
            Material::Ec(_) => Alg::Es256,
        }
    }

    /// Whether `signature` is this key's over `signed` (the token's `header.payload`).
    pub fn verify(&self, signed: &[u8], signature: &[u8]) -> bool {
        match &self.material {
            Material::Hmac(secret) => Hmac::<Sha256>::new_from_slice(secret)
                .map(|mut mac| {
                    mac.update(signed);
                    // Constant-time comparison.
                    mac.verify_slice(signature).is_ok()
                })
                .unwrap_or(false),
            Material::Rsa(key) => key.verify(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(signed), signature).is_ok(),
            // JWS carries ECDSA signatures as r‖s, 64 bytes, not DER.
            Material::Ec(key) => Signature::from_slice(signature).is_ok_and(|sig| key.verify(signed, &sig).is_ok()),
        }
    }
}

/// A failure as (field path after the caller's, reason).
type Failure = (String, String);

fn fail(field: &str, reason: impl Into<String>) -> Failure {
    (field.to_owned(), reason.into())
}

/// A key of the config's `keys` list.
pub fn from_config(config: &KeyConfig) -> Result<Key, Failure> {
    let alg = Alg::from_name(&config.alg)
        .ok_or_else(|| fail(".alg", format!("unknown algorithm {:?}: expected HS256, RS256 or ES256", config.alg)))?;
    let material = match (alg, &config.secret, &config.pem) {
        (Alg::Hs256, Some(secret), None) => hmac_secret(secret.as_bytes().to_vec()).map_err(|r| fail(".secret", r))?,
        (Alg::Hs256, _, _) => return Err(fail("", "an HS256 key needs a secret (and no pem)")),
        (Alg::Rs256, None, Some(pem)) => rsa_pem(pem).map_err(|r| fail(".pem", r))?,
        (Alg::Es256, None, Some(pem)) => ec_pem(pem).map_err(|r| fail(".pem", r))?,
        (_, _, _) => return Err(fail("", format!("an {} key needs a pem (and no secret)", config.alg))),
    };
    Ok(Key { kid: config.kid.clone(), material })
}

fn hmac_secret(secret: Vec<u8>) -> Result<Material, String> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!("an HS256 secret needs at least {MIN_SECRET_BYTES} bytes, this one has {}", secret.len()));
    }
    Ok(Material::Hmac(secret))
}

fn rsa_pem(pem: &str) -> Result<Material, String> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::pkcs8::DecodePublicKey;
    let key = RsaPublicKey::from_public_key_pem(pem.trim())
        .or_else(|_| RsaPublicKey::from_pkcs1_pem(pem.trim()))
        .map_err(|e| format!("not an RSA public key in PEM (BEGIN PUBLIC KEY or BEGIN RSA PUBLIC KEY): {e}"))?;
    rsa_key(key)
}

fn rsa_key(key: RsaPublicKey) -> Result<Material, String> {
    if key.size() < MIN_RSA_BYTES {
        return Err(format!("an RSA key of {} bits is too short: at least 2048 are needed", key.size() * 8));
    }
    Ok(Material::Rsa(Box::new(key)))
}

fn ec_pem(pem: &str) -> Result<Material, String> {
    use p256::pkcs8::DecodePublicKey;
    VerifyingKey::from_public_key_pem(pem.trim())
        .map(|key| Material::Ec(Box::new(key)))
        .map_err(|e| format!("not a P-256 public key in PEM (BEGIN PUBLIC KEY): {e}"))
}

/// The signing keys of a JSON Web Key Set (an object, or JSON text). Keys of other types,
/// curves or algorithms, and encryption keys, are passed over, as a set published by an
/// identity provider often holds some; a set with no usable key is refused.
pub fn from_jwks(jwks: &Value) -> Result<Vec<Key>, Failure> {
    let parsed;
    let document = match jwks {
        Value::String(text) => {
            parsed = serde_json::from_str::<Value>(text).map_err(|e| fail("", format!("not valid JSON: {e}")))?;
            &parsed
        }
        other => other,
    };
    let entries = document
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| fail("", "expected a JSON Web Key Set: an object with a \"keys\" array"))?;
    let mut keys = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let field = format!(".keys[{i}]");
        let jwk = entry.as_object().ok_or_else(|| fail(&field, "a key must be an object"))?;
        let text = |name: &str| jwk.get(name).and_then(Value::as_str);
        if text("use").is_some_and(|u| u != "sig") {
            continue;
        }
        let wanted = |alg: &str| text("alg").is_none_or(|given| given == alg);
        let material = match text("kty") {
            Some("RSA") if wanted("RS256") => {
                let n = BigUint::from_bytes_be(&member(jwk, "n").map_err(|r| fail(&field, r))?);
                let e = BigUint::from_bytes_be(&member(jwk, "e").map_err(|r| fail(&field, r))?);
                let key = RsaPublicKey::new(n, e).map_err(|e| fail(&field, format!("not a usable RSA key: {e}")))?;
                rsa_key(key).map_err(|r| fail(&field, r))?
            }
            Some("EC") if text("crv") == Some("P-256") && wanted("ES256") => ec_point(
                &member(jwk, "x").map_err(|r| fail(&field, r))?,
                &member(jwk, "y").map_err(|r| fail(&field, r))?,
            )
            .map_err(|r| fail(&field, r))?,
            Some("oct") if wanted("HS256") => {
                hmac_secret(member(jwk, "k").map_err(|r| fail(&field, r))?).map_err(|r| fail(&field, r))?
            }
            _ => continue,
        };
        keys.push(Key { kid: text("kid").map(str::to_owned), material });
    }
    if keys.is_empty() {
        return Err(fail("", "no usable key: RS256, ES256 and HS256 signing keys are supported"));
    }
    Ok(keys)
}

/// A base64url member of a JWK, decoded.
fn member(jwk: &serde_json::Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let text = jwk.get(name).and_then(Value::as_str).ok_or_else(|| format!("the key has no {name:?}"))?;
    // Some publishers pad their base64url; the values are public, so leniency costs nothing.
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    LENIENT.decode(text).map_err(|e| format!("{name:?} is not base64url: {e}"))
}

fn ec_point(x: &[u8], y: &[u8]) -> Result<Material, String> {
    if x.len() != 32 || y.len() != 32 {
        return Err("a P-256 key needs 32-byte x and y".into());
    }
    let point = p256::EncodedPoint::from_affine_coordinates(
        p256::FieldBytes::from_slice(x),
        p256::FieldBytes::from_slice(y),
        false,
    );
    VerifyingKey::from_encoded_point(&point)
        .map(|key| Material::Ec(Box::new(key)))
        .map_err(|_| "x and y are not a point of P-256".into())
}

/// Decodes a token part: base64url without padding, as JWS writes it, and nothing looser.
pub fn decode_part(part: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(part).ok()
}
