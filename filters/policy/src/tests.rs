//! The policy's behaviour, run natively through the SDK's test harness: authorization rules
//! here, JWT validation and rate limits in their own modules.

mod jwt;
mod rate_limit;
mod tokens;

use crate::Policy;
use serde_json::{json, Value};
use weft_sdk::testing::{TestFilter, TestRequest};
use weft_sdk::Action;

fn policy(config: Value) -> TestFilter<Policy> {
    match TestFilter::from_json(&config) {
        Ok(filter) => filter,
        Err(error) => panic!("config refused: {error}"),
    }
}

fn refused(config: Value) -> String {
    match TestFilter::<Policy>::from_json(&config) {
        Ok(_) => panic!("accepted: {config}"),
        Err(error) => error.to_string(),
    }
}

/// `passed`, or the status of the policy's own answer.
fn outcome(filter: &TestFilter<Policy>, request: TestRequest) -> String {
    let mut req = filter.request(request);
    match req.send_request_headers() {
        Action::Continue => "passed".into(),
        Action::Pause => format!("answered {}", req.local_response().expect("a pause here is an answer").status),
    }
}

/// The reason in a refusal's JSON body.
fn reason(filter: &TestFilter<Policy>, request: TestRequest) -> String {
    let mut req = filter.request(request);
    assert_eq!(req.send_request_headers(), Action::Pause, "the request passed");
    let body: Value = serde_json::from_slice(&req.local_response().expect("an answer").body).expect("a JSON body");
    body["reason"].as_str().expect("a reason").to_owned()
}

fn rule(name: &str, action: &str, conditions: Value) -> Value {
    json!({ "name": name, "action": action, "match": conditions })
}

#[test]
fn the_first_matching_rule_decides_whatever_comes_after_it() {
    let filter = policy(json!({ "default": "allow", "rules": [
        rule("health", "allow", json!({ "paths": [{ "exact": "/admin/health" }] })),
        rule("block-admin", "deny", json!({ "paths": [{ "prefix": "/admin" }] })),
        rule("admins", "allow", json!({ "headers": [{ "name": "x-role", "exact": "admin" }] })),
    ]}));
    assert_eq!(outcome(&filter, TestRequest::get("/admin/health")), "passed", "the earlier allow wins");
    let as_admin = TestRequest::get("/admin/users").header("x-role", "admin");
    assert_eq!(outcome(&filter, as_admin), "answered 403", "the deny comes before the allow");
    assert_eq!(outcome(&filter, TestRequest::get("/shop")), "passed");
}

#[test]
fn the_default_decides_when_no_rule_matches() {
    let rules = json!([rule("internal", "allow", json!({ "source_cidrs": ["10.0.0.0/8"] }))]);
    let closed = policy(json!({ "default": "deny", "rules": rules }));
    let from = |address: &str| TestRequest::get("/").source_address(address);
    assert_eq!(outcome(&closed, from("10.1.2.3:4000")), "passed");
    assert_eq!(reason(&closed, from("192.0.2.1:4000")), "no rule matches and the default is deny");

    let open =
        policy(json!({ "default": "allow", "rules": [rule("blocked", "deny", json!({ "methods": ["DELETE"] }))] }));
    assert_eq!(outcome(&open, TestRequest::get("/")), "passed");
    assert_eq!(outcome(&open, TestRequest::new("DELETE", "/")), "answered 403");
    assert_eq!(policy(json!({ "default": "allow" })).metric("policy_allowed"), None, "nothing counted yet");
}

#[test]
fn a_denied_request_gets_403_with_a_json_reason_and_is_counted() {
    let filter = policy(json!({ "default": "allow", "rules": [
        rule("block-admin", "deny", json!({ "paths": [{ "prefix": "/admin" }] })),
    ]}));
    let mut req = filter.request(TestRequest::get("/admin/users"));
    assert_eq!(req.send_request_headers(), Action::Pause);
    let answer = req.local_response().unwrap();
    assert_eq!(answer.status, 403);
    let body: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body, json!({ "error": "forbidden", "reason": "rule \"block-admin\" denies" }));
    assert!(answer.headers.contains(&("x-weft-error".into(), "forbidden".into())), "{:?}", answer.headers);
    assert!(answer.headers.contains(&("content-type".into(), "application/json".into())));
    drop(req);
    assert_eq!(outcome(&filter, TestRequest::get("/shop")), "passed");
    assert_eq!((filter.metric("policy_denied"), filter.metric("policy_allowed")), (Some(1), Some(1)));
}

#[test]
fn a_grpc_client_is_refused_with_a_grpc_status() {
    let filter = policy(json!({ "default": "deny" }));
    let mut req = filter.request(TestRequest::post("/pkg.Service/Call").header("content-type", "application/grpc"));
    assert_eq!(req.send_request_headers(), Action::Pause);
    let answer = req.local_response().unwrap();
    assert_eq!((answer.status, answer.grpc_status), (200, Some(7)), "PERMISSION_DENIED");
    assert_eq!(String::from_utf8_lossy(&answer.body), "forbidden: no rule matches and the default is deny");
}

#[test]
fn source_cidrs_match_ipv4_and_ipv6_blocks() {
    let filter = policy(json!({ "default": "deny", "rules": [
        rule("nets", "allow", json!({ "source_cidrs": ["10.0.0.0/8", "192.0.2.7", "2001:db8:1::/48"] })),
    ]}));
    let from = |address: &str| outcome(&filter, TestRequest::get("/").source_address(address));
    assert_eq!(from("10.200.3.4:5000"), "passed");
    assert_eq!(from("11.0.0.1:5000"), "answered 403");
    assert_eq!(from("192.0.2.7:5000"), "passed", "a bare address is a /32");
    assert_eq!(from("192.0.2.8:5000"), "answered 403");
    assert_eq!(from("[2001:db8:1:ffff::1]:5000"), "passed");
    assert_eq!(from("[2001:db8:2::1]:5000"), "answered 403");
    assert_eq!(from("[::ffff:10.9.9.9]:5000"), "passed", "an IPv4-mapped client counts as IPv4");
}

#[test]
fn principals_match_exactly_or_by_prefix_or_suffix_and_need_mtls() {
    let filter = policy(json!({ "default": "deny", "rules": [
        rule("frontend", "allow", json!({ "principals": [
            { "exact": "spiffe://example.org/ns/web/sa/frontend" },
            { "prefix": "spiffe://example.org/ns/batch/" },
            { "suffix": "/sa/monitor" },
        ] })),
    ]}));
    let by = |principal: &str| outcome(&filter, TestRequest::get("/").source_principal(principal));
    assert_eq!(by("spiffe://example.org/ns/web/sa/frontend"), "passed");
    assert_eq!(by("spiffe://example.org/ns/web/sa/frontend2"), "answered 403", "exact is exact");
    assert_eq!(by("spiffe://example.org/ns/batch/sa/nightly"), "passed");
    assert_eq!(by("spiffe://other.org/ns/ops/sa/monitor"), "passed");
    assert_eq!(outcome(&filter, TestRequest::get("/")), "answered 403", "no client certificate, no principal");
}

#[test]
fn paths_match_whole_segments_of_the_normalised_path() {
    let filter = policy(json!({ "default": "allow", "rules": [
        rule("block-admin", "deny", json!({ "paths": [{ "prefix": "/admin/" }] })),
        rule("block-metrics", "deny", json!({ "paths": [{ "exact": "/metrics" }] })),
    ]}));
    for blocked in [
        "/admin",
        "/admin/",
        "/admin/users?x=1",
        "//admin",
        "/./admin",
        "/shop/../admin/x",
        "/%61dmin/x",
        "/%2Fadmin",
        "/shop%2F..%2Fadmin",
    ] {
        assert_eq!(outcome(&filter, TestRequest::get(blocked)), "answered 403", "{blocked}");
    }
    for open in ["/administrator", "/shop/admin", "/metrics/x", "/metrics/", "/%2561dmin"] {
        assert_eq!(outcome(&filter, TestRequest::get(open)), "passed", "{open}");
    }
    assert_eq!(outcome(&filter, TestRequest::get("/metrics?format=json")), "answered 403", "the query is not the path");
}

#[test]
fn every_condition_of_a_rule_must_hold_and_any_entry_of_a_list() {
    let filter = policy(json!({ "default": "deny", "rules": [
        rule("writers", "allow", json!({
            "methods": ["post", "PUT"],
            "paths": [{ "prefix": "/api" }],
            "headers": [
                { "name": "X-Tenant", "present": true },
                { "name": "x-debug", "present": false },
                { "name": "x-env", "exact": "prod" },
                { "name": "user-agent", "prefix": "curl/" },
            ],
        })),
    ]}));
    let full = |method: &str| {
        TestRequest::new(method, "/api/items")
            .header("x-tenant", "acme")
            .header("x-env", "prod")
            .header("user-agent", "curl/8.5")
    };
    assert_eq!(outcome(&filter, full("POST")), "passed");
    assert_eq!(outcome(&filter, full("PUT")), "passed");
    assert_eq!(outcome(&filter, full("GET")), "answered 403", "method not listed");
    assert_eq!(outcome(&filter, full("POST").header("x-debug", "1")), "answered 403", "a header that must be absent");
    let no_tenant = TestRequest::post("/api/items").header("x-env", "prod").header("user-agent", "curl/8.5");
    assert_eq!(outcome(&filter, no_tenant), "answered 403", "a header that must be present");
    let staging =
        TestRequest::post("/api/x").header("x-tenant", "a").header("x-env", "staging").header("user-agent", "curl/1");
    assert_eq!(outcome(&filter, staging), "answered 403", "an exact value");
}

#[test]
fn bad_configs_are_refused_with_where_and_why() {
    let with_rule = |extra: Value| {
        let mut rule = json!({ "name": "r", "action": "allow" });
        rule.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({ "default": "deny", "rules": [{ "name": "first", "action": "deny" }, rule] })
    };
    let error = refused(with_rule(json!({ "match": { "source_cidrs": ["10.0.0.0/33"] } })));
    assert!(error.contains("rules[1].match.source_cidrs[0]: \"10.0.0.0/33\" is not an address block"), "{error}");
    let error = refused(with_rule(json!({ "match": { "source_cidrs": ["10.1.0.0/8"] } })));
    assert!(error.contains("rules[1].match.source_cidrs[0]: \"10.1.0.0/8\" has bits set past /8"), "{error}");
    let error = refused(with_rule(json!({ "match": { "paths": [{ "prefix": "api" }] } })));
    assert!(error.contains("rules[1].match.paths[0].prefix: \"api\" must start with /"), "{error}");
    let error =
        refused(with_rule(json!({ "match": { "headers": [{ "name": "x-a", "exact": "1", "present": true }] } })));
    assert!(error.contains("rules[1].match.headers[0]: give a name and exactly one of"), "{error}");
    let error = refused(with_rule(json!({ "require_jwt": true })));
    assert!(error.contains("rules[1].require_jwt: needs a top-level jwt block"), "{error}");
    let error = refused(with_rule(json!({ "rate_limit": { "key": "cookie:session", "rate": "1/s", "burst": 1 } })));
    assert!(error.contains("rules[1].rate_limit.key: \"cookie:session\" is not source_ip"), "{error}");
    let error =
        refused(with_rule(json!({ "rate_limit": { "key": "source_ip", "rate": "10 per second", "burst": 1 } })));
    assert!(error.contains("rules[1].rate_limit.rate: invalid rate \"10 per second\""), "{error}");
    let error = refused(with_rule(json!({ "name": "first" })));
    assert!(error.contains("rules[1].name: \"first\" is used by an earlier rule"), "{error}");
    let error = refused(with_rule(json!({ "name": "a:b" })));
    assert!(error.contains("rules[1].name: \"a:b\" must be letters, digits"), "{error}");
    let error = refused(with_rule(json!({ "colour": "red" })));
    assert!(error.contains("rules[1]") && error.contains("unknown field `colour`"), "{error}");
    let error = refused(json!({ "rules": [] }));
    assert!(error.contains("missing field `default`"), "{error}");
}
