//! Local rate limits: a token bucket per rule and key, kept in the filter's shared data so that
//! every instance of the filter in the proxy (one per worker) draws from the same bucket. A
//! bucket is its tokens and the time they were last counted; each request refills it for the
//! time passed, then takes one token, in one compare-and-swap update.

use crate::config::RateLimit;
use weft_sdk::{shared, Error, Result};

/// What a request got from its bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    Allowed,
    /// No token: come back in this many seconds (rounded up), when one will be there.
    Limited {
        retry_after: u64,
    },
}

/// How often an update retries when other instances keep changing the bucket under it.
const ATTEMPTS: u32 = 16;

/// The shared-data key of a bucket. Rule names hold no `:`, so no two buckets share a key;
/// requests without a key value share one bucket of their own.
pub fn bucket(rule: &str, key: Option<&str>) -> String {
    match key {
        Some(value) => format!("policy.rate:{rule}:={value}"),
        None => format!("policy.rate:{rule}:-"),
    }
}

/// Takes a token from `bucket` at `now_nanos` (the host's clock).
pub fn take(bucket: &str, limit: &RateLimit, now_nanos: u64) -> Result<Outcome> {
    let burst = f64::from(limit.burst);
    match shared::update(bucket, ATTEMPTS, |current| step(current, limit.per_second, burst, now_nanos)) {
        Ok(outcome) => Ok(outcome),
        // Losing every race means heavy traffic on one key from many workers: let this one
        // request through rather than fail it for a counter.
        Err(Error::CasMismatch) => {
            weft_sdk::debug!("rate limit bucket {bucket:?} stayed contended; the request passes");
            Ok(Outcome::Allowed)
        }
        Err(other) => Err(other),
    }
}

/// One refill-and-take on a bucket's bytes: the new bytes and the outcome.
fn step(current: Option<&[u8]>, per_second: f64, burst: f64, now: u64) -> (Vec<u8>, Outcome) {
    let (tokens, last) = current.and_then(decode).unwrap_or((burst, now));
    // A clock that went back refills nothing, and the later time is kept.
    let elapsed = now.saturating_sub(last) as f64 / 1e9;
    let tokens = (tokens + elapsed * per_second).min(burst);
    let stamp = now.max(last);
    if tokens >= 1.0 {
        return (encode(tokens - 1.0, stamp), Outcome::Allowed);
    }
    let wait = ((1.0 - tokens) / per_second).ceil().max(1.0);
    (encode(tokens, stamp), Outcome::Limited { retry_after: wait as u64 })
}

/// 16 bytes: tokens (f64) and the time they were counted (nanoseconds), little-endian.
fn encode(tokens: f64, nanos: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(16);
    bytes.extend_from_slice(&tokens.to_le_bytes());
    bytes.extend_from_slice(&nanos.to_le_bytes());
    bytes
}

/// `None` for bytes of another shape, which start a full bucket.
fn decode(bytes: &[u8]) -> Option<(f64, u64)> {
    let tokens = f64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let nanos = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    (bytes.len() == 16 && tokens.is_finite()).then_some((tokens, nanos))
}
