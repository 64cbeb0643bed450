//! Rate limits on allowed requests: a token bucket per rule and key.

use super::{outcome, policy};
use crate::Policy;
use serde_json::{json, Value};
use std::time::Duration;
use weft_sdk::testing::{TestFilter, TestRequest};
use weft_sdk::Action;

fn limited(key: &str, rate: &str, burst: u32) -> TestFilter<Policy> {
    policy(json!({ "default": "deny", "rules": [
        { "name": "health", "action": "allow", "match": { "paths": [{ "exact": "/health" }] } },
        { "name": "api", "action": "allow", "rate_limit": { "key": key, "rate": rate, "burst": burst } },
    ]}))
}

fn client(key: &str) -> TestRequest {
    TestRequest::get("/api").header("x-api-key", key)
}

#[test]
fn a_burst_passes_then_429_says_when_to_retry() {
    let filter = limited("header:x-api-key", "1/s", 3);
    for n in 0..3 {
        assert_eq!(outcome(&filter, client("k1")), "passed", "request {n} of the burst");
    }
    let mut req = filter.request(client("k1"));
    assert_eq!(req.send_request_headers(), Action::Pause);
    let answer = req.local_response().unwrap();
    assert_eq!(answer.status, 429);
    let header = |name: &str| answer.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    assert_eq!(header("retry-after"), Some("1"));
    assert_eq!(header("x-weft-error"), Some("rate limited"));
    let body: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body, json!({ "error": "rate limited", "reason": "rule \"api\" allows 1/s with a burst of 3" }));
    drop(req);
    assert_eq!(outcome(&filter, TestRequest::get("/health")), "passed", "a rule without a limit is not limited");
    assert_eq!((filter.metric("policy_rate_limited"), filter.metric("policy_allowed")), (Some(1), Some(4)));
}

#[test]
fn retry_after_is_the_wait_for_one_token_rounded_up() {
    let filter = limited("header:x-api-key", "6/m", 1);
    assert_eq!(outcome(&filter, client("k1")), "passed");
    let retry_after = |filter: &TestFilter<Policy>| {
        let mut req = filter.request(client("k1"));
        assert_eq!(req.send_request_headers(), Action::Pause);
        let answer = req.local_response().unwrap();
        answer.headers.into_iter().find(|(k, _)| k == "retry-after").map(|(_, v)| v)
    };
    assert_eq!(retry_after(&filter).as_deref(), Some("10"), "one token per 10s");
    filter.advance(Duration::from_millis(3500));
    assert_eq!(retry_after(&filter).as_deref(), Some("7"), "6.5s to go, rounded up");
}

#[test]
fn tokens_come_back_with_time_up_to_the_burst() {
    let filter = limited("header:x-api-key", "2/s", 2);
    assert_eq!(outcome(&filter, client("k1")), "passed");
    assert_eq!(outcome(&filter, client("k1")), "passed");
    assert_eq!(outcome(&filter, client("k1")), "answered 429");
    filter.advance(Duration::from_millis(500));
    assert_eq!(outcome(&filter, client("k1")), "passed", "half a second brings one token at 2/s");
    assert_eq!(outcome(&filter, client("k1")), "answered 429");
    filter.advance(Duration::from_secs(60));
    assert_eq!(outcome(&filter, client("k1")), "passed");
    assert_eq!(outcome(&filter, client("k1")), "passed");
    assert_eq!(outcome(&filter, client("k1")), "answered 429", "a quiet minute still fills only the burst");
}

#[test]
fn each_key_has_its_own_bucket_and_requests_without_one_share_one() {
    let filter = limited("header:x-api-key", "1/m", 1);
    assert_eq!(outcome(&filter, client("k1")), "passed");
    assert_eq!(outcome(&filter, client("k1")), "answered 429");
    assert_eq!(outcome(&filter, client("k2")), "passed", "another key, another bucket");
    assert_eq!(outcome(&filter, TestRequest::get("/api")), "passed");
    assert_eq!(outcome(&filter, TestRequest::get("/api")), "answered 429", "keyless requests share a bucket");
    assert_eq!(outcome(&filter, client("")), "passed", "an empty value is a key of its own");
}

#[test]
fn buckets_can_be_per_source_ip_or_per_principal() {
    let filter = limited("source_ip", "1/m", 1);
    let from = |address: &str| outcome(&filter, TestRequest::get("/").source_address(address));
    assert_eq!(from("192.0.2.1:1000"), "passed");
    assert_eq!(from("192.0.2.1:2000"), "answered 429", "the port is not part of the key");
    assert_eq!(from("[::ffff:192.0.2.1]:3000"), "answered 429", "nor is the IPv4-mapped form");
    assert_eq!(from("192.0.2.2:1000"), "passed");

    let filter = limited("source_principal", "1/m", 1);
    let by = |principal: &str| outcome(&filter, TestRequest::get("/").source_principal(principal));
    assert_eq!(by("spiffe://example.org/a"), "passed");
    assert_eq!(by("spiffe://example.org/a"), "answered 429");
    assert_eq!(by("spiffe://example.org/b"), "passed");
}

#[test]
fn a_limit_only_counts_requests_its_rule_allowed() {
    let filter = policy(
        json!({ "default": "allow", "jwt": { "keys": [{ "alg": "HS256", "secret": super::tokens::SECRET }] }, "rules": [
            { "name": "api", "action": "allow", "require_jwt": true,
              "rate_limit": { "key": "source_ip", "rate": "1/m", "burst": 1 } },
        ]}),
    );
    for _ in 0..3 {
        assert_eq!(outcome(&filter, TestRequest::get("/")), "answered 401", "no token, no token taken from the bucket");
    }
    assert_eq!(filter.metric("policy_rate_limited"), None);
}
