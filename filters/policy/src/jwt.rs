//! JWT validation (RFC 7519, JWS compact form): find the token in its header, check its
//! signature with a configured key of the token's algorithm, then its times, issuer, audience
//! and required claims. The signature is checked before any claim is looked at, and a reason
//! never repeats what the token said, so a forged token learns nothing.

use crate::config::Jwt;
use crate::keys::{decode_part, Alg, Key};
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The claims of a valid token.
pub type Claims = Map<String, Value>;

/// Larger tokens are refused unread: verifying them would cost more than any real one needs.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a request's token was not taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// No token at all (RFC 6750: the challenge then carries no error code).
    Missing,
    /// A token that is not valid, and why.
    Invalid(String),
}

fn invalid(reason: impl Into<String>) -> Rejection {
    Rejection::Invalid(reason.into())
}

/// The token in `value`, the configured header's value. In `authorization` it must follow the
/// `Bearer` scheme (any other scheme counts as no token); in another header a `Bearer ` prefix
/// is optional.
pub fn token_in<'a>(jwt: &Jwt, value: Option<&'a str>) -> Result<&'a str, Rejection> {
    let value = value.map(str::trim).filter(|v| !v.is_empty()).ok_or(Rejection::Missing)?;
    let bearer = value.get(..7).filter(|scheme| scheme.eq_ignore_ascii_case("bearer ")).map(|_| value[7..].trim());
    match bearer {
        Some("") => Err(invalid("empty bearer token")),
        Some(token) => Ok(token),
        None if jwt.header == "authorization" => Err(Rejection::Missing),
        None => Ok(value),
    }
}

/// The claims of `token` if it is valid at `now` (seconds since the epoch).
pub fn validate(jwt: &Jwt, token: &str, now: f64) -> Result<Claims, Rejection> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(invalid("token too large"));
    }
    let mut parts = token.split('.');
    let (Some(header_part), Some(payload_part), Some(signature_part), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("malformed token: expected header.payload.signature"));
    };
    let header = json_object(header_part).ok_or_else(|| invalid("malformed token header"))?;
    let alg = header.get("alg").and_then(Value::as_str).ok_or_else(|| invalid("malformed token header: no alg"))?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(invalid("unsigned tokens (alg none) are not accepted"));
    }
    let alg = Alg::from_name(alg).ok_or_else(|| invalid("token algorithm not accepted"))?;
    if header.contains_key("crit") {
        return Err(invalid("token has critical header parameters this proxy does not understand"));
    }
    let kid = header.get("kid").and_then(Value::as_str);
    let candidates = candidate_keys(&jwt.verifiers, alg, kid);
    if candidates.is_empty() {
        let reason = match kid {
            Some(_) if jwt.verifiers.iter().any(|k| k.alg() == alg) => "unknown key id".to_owned(),
            _ => format!("no key for algorithm {}", alg.name()),
        };
        return Err(invalid(reason));
    }
    let signature = decode_part(signature_part).ok_or_else(|| invalid("malformed token signature"))?;
    let signed = &token.as_bytes()[..header_part.len() + 1 + payload_part.len()];
    if !candidates.iter().any(|key| key.verify(signed, &signature)) {
        return Err(invalid("bad signature"));
    }
    let claims = json_object(payload_part).ok_or_else(|| invalid("malformed token payload"))?;
    check_claims(jwt, &claims, now)?;
    Ok(claims)
}

/// Tokens already verified, with what a request needs of them. Checking a signature and parsing
/// the claims is nearly all of the filter's cost, and a client sends the same token with every
/// request until it expires; the times are checked again on every use. Only valid tokens are
/// kept, at most [`VERIFIED_TOKENS`], and the cache lives and dies with the config.
#[derive(Default)]
pub struct VerifiedTokens {
    /// By [`token_hash`]; the entry holds the token itself, compared before it is trusted.
    tokens: RefCell<HashMap<u64, Verified, BuildHasherDefault<AlreadyHashed>>>,
}

/// How many verified tokens an instance keeps; when full it starts again empty (cheaper than
/// tracking use, and the cost is one verification per token).
const VERIFIED_TOKENS: usize = 512;

/// What a verified token still says for later requests.
#[derive(Clone)]
pub struct Verified {
    token: Box<str>,
    expiry: f64,
    not_before: Option<f64>,
    /// The claim headers to set, in config order.
    pub headers: Vec<(String, String)>,
}

impl VerifiedTokens {
    /// The claim headers of `token`, verified now or earlier, if it is valid at `now`.
    pub fn check(&self, jwt: &Jwt, token: &str, now: f64) -> Result<Vec<(String, String)>, Rejection> {
        let leeway = jwt.leeway.get().as_secs_f64();
        let key = token_hash(token.as_bytes());
        let known = self.tokens.borrow().get(&key).filter(|v| same(v.token.as_bytes(), token.as_bytes())).cloned();
        if let Some(verified) = known {
            if now >= verified.expiry + leeway {
                self.tokens.borrow_mut().remove(&key);
                return Err(invalid("token expired"));
            }
            if verified.not_before.is_some_and(|not_before| now + leeway < not_before) {
                return Err(invalid("token not yet valid (nbf)"));
            }
            return Ok(verified.headers);
        }
        let claims = validate(jwt, token, now)?;
        let mut headers = Vec::with_capacity(jwt.claim_headers.len());
        for (claim, header) in &jwt.claim_headers {
            let Some(value) = claims.get(claim).filter(|v| !v.is_null()) else { continue };
            match header_value(value) {
                Some(text) => headers.push((header.clone(), text)),
                None => return Err(invalid(format!("claim {claim} cannot be a header value"))),
            }
        }
        let verified = Verified {
            token: token.into(),
            // validate() made sure there is a numeric exp; nbf is optional.
            expiry: claims.get("exp").and_then(Value::as_f64).unwrap_or(0.0),
            not_before: claims.get("nbf").and_then(Value::as_f64),
            headers: headers.clone(),
        };
        let mut tokens = self.tokens.borrow_mut();
        if tokens.len() >= VERIFIED_TOKENS {
            tokens.clear();
        }
        tokens.insert(key, verified);
        Ok(headers)
    }
}

/// A hash of a token taken eight bytes at a time. Tokens are a few hundred bytes; the standard
/// SipHash and the module's byte-by-byte `memcmp` cost more than the rest of a remembered
/// token's check. Not for hostile inputs' sake: a collision only means one more verification.
fn token_hash(token: &[u8]) -> u64 {
    let words = token.chunks_exact(8);
    let tail = words.remainder().iter().fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte));
    words
        .map(|word| u64::from_le_bytes([word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7]]))
        .chain([tail, token.len() as u64])
        .fold(0u64, |hash, word| (hash.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95))
}

/// Byte equality eight bytes at a time.
fn same(a: &[u8], b: &[u8]) -> bool {
    let word = |w: &[u8]| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
    a.len() == b.len()
        && a.chunks_exact(8).zip(b.chunks_exact(8)).all(|(x, y)| word(x) == word(y))
        && a.chunks_exact(8).remainder().iter().zip(b.chunks_exact(8).remainder()).all(|(x, y)| x == y)
}

/// The map's keys are hashes already.
#[derive(Default)]
struct AlreadyHashed(u64);

impl Hasher for AlreadyHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = token_hash(bytes);
    }
    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
}

/// Keys of the token's algorithm: those with the token's `kid` if any has it, else those with
/// no `kid` (a key given without one serves every token of its algorithm).
fn candidate_keys<'a>(keys: &'a [Key], alg: Alg, kid: Option<&str>) -> Vec<&'a Key> {
    let of_alg = || keys.iter().filter(move |k| k.alg() == alg);
    let Some(kid) = kid else { return of_alg().collect() };
    let named: Vec<&Key> = of_alg().filter(|k| k.kid.as_deref() == Some(kid)).collect();
    if !named.is_empty() {
        return named;
    }
    of_alg().filter(|k| k.kid.is_none()).collect()
}

fn json_object(part: &str) -> Option<Claims> {
    serde_json::from_slice::<Value>(&decode_part(part)?).ok().and_then(|value| match value {
        Value::Object(map) => Some(map),
        _ => None,
    })
}

fn check_claims(jwt: &Jwt, claims: &Claims, now: f64) -> Result<(), Rejection> {
    let leeway = jwt.leeway.get().as_secs_f64();
    let time = |name: &str| match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value.as_f64().map(Some).ok_or_else(|| invalid(format!("malformed {name} claim"))),
    };
    // A token that never expires is a standing credential; every token must say when it ends.
    let expiry = time("exp")?.ok_or_else(|| invalid("token has no expiry (exp)"))?;
    if now >= expiry + leeway {
        return Err(invalid("token expired"));
    }
    if time("nbf")?.is_some_and(|not_before| now + leeway < not_before) {
        return Err(invalid("token not yet valid (nbf)"));
    }
    if let Some(issuer) = &jwt.issuer {
        if claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str()) {
            return Err(invalid("issuer not accepted"));
        }
    }
    if !jwt.audiences.is_empty() {
        let accepted = |aud: &Value| aud.as_str().is_some_and(|aud| jwt.audiences.iter().any(|a| a == aud));
        let ok = match claims.get("aud") {
            Some(Value::Array(list)) => list.iter().any(accepted),
            Some(one) => accepted(one),
            None => false,
        };
        if !ok {
            return Err(invalid("audience not accepted"));
        }
    }
    for name in &jwt.required_claims {
        if claims.get(name).is_none_or(Value::is_null) {
            return Err(invalid(format!("missing required claim {name}")));
        }
    }
    Ok(())
}

/// A claim as a header value: text as it is, numbers and booleans as written, a list of those
/// joined with commas, anything else as JSON. `None` for null, or for a value no header could
/// carry (control characters).
pub fn header_value(claim: &Value) -> Option<String> {
    let scalar = |value: &Value| match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(_) | Value::Bool(_) => Some(value.to_string()),
        _ => None,
    };
    let text = match claim {
        Value::Null => return None,
        Value::Array(items) => match items.iter().map(scalar).collect::<Option<Vec<_>>>() {
            Some(items) => items.join(","),
            None => claim.to_string(),
        },
        other => scalar(other).unwrap_or_else(|| other.to_string()),
    };
    (!text.chars().any(char::is_control)).then_some(text)
}
