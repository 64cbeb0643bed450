//! The router's behaviour, run natively through the SDK's test harness.

use crate::Router;
use serde_json::json;
use weft_sdk::testing::{TestFilter, TestRequest, TestResponse};
use weft_sdk::Action;

fn router(routes: serde_json::Value) -> TestFilter<Router> {
    TestFilter::from_json(&json!({ "routes": routes })).expect("config accepted")
}

/// The cluster a request is routed to, or the status of the router's own answer.
fn outcome(filter: &TestFilter<Router>, request: TestRequest) -> String {
    let mut req = filter.request(request);
    match req.send_request_headers() {
        Action::Continue => req.upstream_cluster().unwrap_or_else(|| "(listener default)".into()),
        Action::Pause => format!("answered {}", req.local_response().expect("a pause here is an answer").status),
    }
}

fn backend(name: &str) -> serde_json::Value {
    json!([{ "name": name }])
}

#[test]
fn an_exact_path_beats_a_prefix_and_a_longer_prefix_beats_a_shorter() {
    let filter = router(json!([{ "rules": [
        { "matches": [{ "path": { "type": "PathPrefix", "value": "/" } }], "backendRefs": backend("root") },
        { "matches": [{ "path": { "type": "PathPrefix", "value": "/api" } }], "backendRefs": backend("api") },
        { "matches": [{ "path": { "type": "PathPrefix", "value": "/api/v2" } }], "backendRefs": backend("api-v2") },
        { "matches": [{ "path": { "type": "Exact", "value": "/api/v2/health" } }], "backendRefs": backend("health") },
    ]}]));
    assert_eq!(outcome(&filter, TestRequest::get("/index.html")), "root");
    assert_eq!(outcome(&filter, TestRequest::get("/api/users")), "api");
    assert_eq!(outcome(&filter, TestRequest::get("/api/v2/users?x=1")), "api-v2");
    assert_eq!(outcome(&filter, TestRequest::get("/api/v2/health")), "health");
    assert_eq!(outcome(&filter, TestRequest::get("/api/v2/health/deep")), "api-v2");
}

#[test]
fn a_prefix_matches_whole_path_segments_only() {
    let filter = router(json!([{ "rules": [
        { "matches": [{ "path": { "value": "/api/" } }], "backendRefs": backend("api") },
    ]}]));
    assert_eq!(outcome(&filter, TestRequest::get("/api")), "api");
    assert_eq!(outcome(&filter, TestRequest::get("/api/x")), "api");
    assert_eq!(outcome(&filter, TestRequest::get("/apix")), "answered 404");
}

#[test]
fn no_matching_rule_answers_404_no_route() {
    let filter = router(json!([{ "hostnames": ["shop.example.com"], "rules": [{ "backendRefs": backend("shop") }] }]));
    let mut req = filter.request(TestRequest::get("/").authority("other.example.com"));
    assert_eq!(req.send_request_headers(), Action::Pause);
    let answer = req.local_response().unwrap();
    assert_eq!((answer.status, answer.body.as_slice()), (404, b"no route\n".as_slice()));
    assert!(answer.headers.contains(&("x-weft-error".into(), "no route".into())));
    drop(req);
    assert_eq!(filter.metric("router_no_route"), Some(1));
}

#[test]
fn an_exact_hostname_beats_a_wildcard_which_beats_no_hostname() {
    let filter = router(json!([
        { "rules": [{ "backendRefs": backend("any") }] },
        { "hostnames": ["*.example.com"], "rules": [{ "backendRefs": backend("wildcard") }] },
        { "hostnames": ["api.example.com"], "rules": [{ "backendRefs": backend("exact") }] },
    ]));
    assert_eq!(outcome(&filter, TestRequest::get("/").authority("api.example.com:8080")), "exact");
    assert_eq!(outcome(&filter, TestRequest::get("/").authority("WWW.example.com")), "wildcard");
    assert_eq!(outcome(&filter, TestRequest::get("/").authority("a.b.example.com")), "wildcard");
    assert_eq!(outcome(&filter, TestRequest::get("/").authority("example.com")), "any");
}

#[test]
fn with_equal_paths_method_then_header_count_then_query_count_decide() {
    let filter = router(json!([{ "rules": [
        { "matches": [{ "path": { "value": "/x" } }], "backendRefs": backend("plain") },
        { "matches": [{ "path": { "value": "/x" }, "queryParams": [{ "name": "debug", "value": "1" }] }], "backendRefs": backend("query") },
        { "matches": [{ "path": { "value": "/x" }, "headers": [{ "name": "X-Tier", "value": "gold" }] }], "backendRefs": backend("header") },
        { "matches": [{ "path": { "value": "/x" }, "method": "post" }], "backendRefs": backend("method") },
    ]}]));
    assert_eq!(outcome(&filter, TestRequest::get("/x")), "plain");
    assert_eq!(outcome(&filter, TestRequest::get("/x?debug=1")), "query");
    assert_eq!(outcome(&filter, TestRequest::get("/x?debug=1").header("x-tier", "gold")), "header");
    assert_eq!(outcome(&filter, TestRequest::post("/x?debug=1").header("x-tier", "gold")), "method");
    assert_eq!(outcome(&filter, TestRequest::get("/x?debug=2").header("x-tier", "silver")), "plain");
}

#[test]
fn on_a_full_tie_the_earlier_rule_wins() {
    let filter = router(json!([
        { "rules": [{ "backendRefs": backend("first") }, { "backendRefs": backend("second") }] },
        { "rules": [{ "backendRefs": backend("third") }] },
    ]));
    assert_eq!(outcome(&filter, TestRequest::get("/")), "first");
}

#[test]
fn regular_expressions_match_the_whole_path_and_header_value() {
    let filter = router(json!([{ "rules": [
        { "matches": [{ "path": { "type": "RegularExpression", "value": "/users/[0-9]+" } }], "backendRefs": backend("user") },
        { "matches": [{ "path": { "value": "/" }, "headers": [{ "type": "RegularExpression", "name": "user-agent", "value": ".*Mobile.*" }] }], "backendRefs": backend("mobile") },
    ]}]));
    assert_eq!(outcome(&filter, TestRequest::get("/users/42")), "user");
    assert_eq!(outcome(&filter, TestRequest::get("/users/42/photos")), "answered 404");
    assert_eq!(outcome(&filter, TestRequest::get("/home").header("user-agent", "Foo Mobile Safari")), "mobile");
}

#[test]
fn header_modifiers_edit_the_request_and_the_response() {
    let filter = router(json!([{ "rules": [{
        "backendRefs": backend("web"),
        "filters": [
            { "type": "RequestHeaderModifier", "requestHeaderModifier": {
                "set": [{ "name": "x-env", "value": "prod" }],
                "add": [{ "name": "x-hop", "value": "router" }],
                "remove": ["x-debug"] } },
            { "type": "ResponseHeaderModifier", "responseHeaderModifier": {
                "set": [{ "name": "cache-control", "value": "no-store" }],
                "remove": ["server"] } },
        ],
    }]}]));
    let mut req =
        filter.request(TestRequest::get("/").header("x-env", "dev").header("x-hop", "lb").header("x-debug", "1"));
    assert_eq!(req.send_request_headers(), Action::Continue);
    assert_eq!(req.request_header("x-env").as_deref(), Some("prod"));
    let hops: Vec<_> = req.request_headers().into_iter().filter(|(k, _)| k == "x-hop").map(|(_, v)| v).collect();
    assert_eq!(hops, ["lb", "router"]);
    assert_eq!(req.request_header("x-debug"), None);
    assert_eq!(req.send_response_headers(TestResponse::new(200).header("server", "origin")), Action::Continue);
    assert_eq!(req.response_header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(req.response_header("server"), None);
}

#[test]
fn a_redirect_answers_with_a_location_built_from_the_request() {
    let filter = router(json!([{ "rules": [
        { "matches": [{ "path": { "value": "/old" } }], "filters": [{ "type": "RequestRedirect",
            "requestRedirect": { "path": { "type": "ReplacePrefixMatch", "replacePrefixMatch": "/new" }, "statusCode": 301 } }] },
        { "matches": [{ "path": { "value": "/secure" } }], "filters": [{ "type": "RequestRedirect",
            "requestRedirect": { "scheme": "https" } }] },
    ]}]));
    let mut req = filter.request(TestRequest::get("/old/page?q=1").authority("shop.example.com:8080"));
    assert_eq!(req.send_request_headers(), Action::Pause);
    let answer = req.local_response().unwrap();
    assert_eq!(answer.status, 301);
    assert!(
        answer.headers.contains(&("location".into(), "http://shop.example.com:8080/new/page?q=1".into())),
        "{:?}",
        answer.headers
    );
    drop(req);

    let mut req = filter.request(TestRequest::get("/secure/x").authority("shop.example.com:8080"));
    req.send_request_headers();
    let answer = req.local_response().unwrap();
    assert_eq!(answer.status, 302);
    assert!(
        answer.headers.contains(&("location".into(), "https://shop.example.com/secure/x".into())),
        "{:?}",
        answer.headers
    );
}

#[test]
fn url_rewrites_replace_the_prefix_or_the_whole_path_and_the_host() {
    let filter = router(json!([{ "rules": [
        { "matches": [{ "path": { "value": "/api/v1" } }], "backendRefs": backend("api"), "filters": [{ "type": "URLRewrite",
            "urlRewrite": { "hostname": "api.internal", "path": { "type": "ReplacePrefixMatch", "replacePrefixMatch": "/" } } }] },
        { "matches": [{ "path": { "type": "Exact", "value": "/status" } }], "backendRefs": backend("api"), "filters": [{ "type": "URLRewrite",
            "urlRewrite": { "path": { "type": "ReplaceFullPath", "replaceFullPath": "/healthz" } } }] },
    ]}]));
    let mut req = filter.request(TestRequest::get("/api/v1/users?page=2"));
    req.send_request_headers();
    assert_eq!(req.request_header(":path").as_deref(), Some("/users?page=2"));
    assert_eq!(req.request_header(":authority").as_deref(), Some("api.internal"));
    drop(req);
    let mut req = filter.request(TestRequest::get("/api/v1"));
    req.send_request_headers();
    assert_eq!(req.request_header(":path").as_deref(), Some("/"));
    drop(req);
    let mut req = filter.request(TestRequest::get("/status"));
    req.send_request_headers();
    assert_eq!(req.request_header(":path").as_deref(), Some("/healthz"));
}

#[test]
fn weighted_backends_split_traffic_by_weight() {
    let filter = router(json!([{ "rules": [{ "backendRefs": [
        { "name": "stable", "weight": 90 }, { "name": "canary", "weight": 10 }, { "name": "off", "weight": 0 }] }] }]));
    let mut canary = 0;
    for _ in 0..2000 {
        match outcome(&filter, TestRequest::get("/")).as_str() {
            "canary" => canary += 1,
            "stable" => {}
            other => panic!("routed to {other}"),
        }
    }
    assert!((120..=280).contains(&canary), "canary got {canary} of 2000 requests at weight 10%");
}

#[test]
fn a_sticky_split_keeps_a_user_on_one_backend() {
    let filter = router(json!([{ "rules": [{ "stickyBy": { "cookie": "session" },
        "backendRefs": [{ "name": "a", "weight": 50 }, { "name": "b", "weight": 50 }] }] }]));
    let mut seen = std::collections::HashSet::new();
    for user in 0..40 {
        let cookie = format!("theme=dark; session=user-{user}");
        let first = outcome(&filter, TestRequest::get("/").header("cookie", &cookie));
        for _ in 0..5 {
            assert_eq!(outcome(&filter, TestRequest::get("/").header("cookie", &cookie)), first);
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "40 users all landed on one backend");
}

#[test]
fn a_rule_timeout_is_handed_to_the_proxy_and_no_backends_keep_the_listener_cluster() {
    let filter = router(json!([{ "rules": [{ "timeouts": { "request": "250ms" } }] }]));
    let mut req = filter.request(TestRequest::get("/"));
    assert_eq!(req.send_request_headers(), Action::Continue);
    assert_eq!(req.upstream_cluster(), None);
    assert_eq!(req.property("weft.request_timeout").as_deref(), Some(b"250ms".as_slice()));
}

#[test]
fn bad_configs_are_refused_with_where_and_why() {
    let refused = |routes: serde_json::Value| match TestFilter::<Router>::from_json(&json!({ "routes": routes })) {
        Ok(_) => panic!("accepted"),
        Err(error) => error.to_string(),
    };
    let error =
        refused(json!([{ "rules": [{ "matches": [{ "path": { "type": "RegularExpression", "value": "(" } }] }] }]));
    assert!(error.contains("routes[0].rules[0].matches[0].path.value: invalid regular expression"), "{error}");
    let error = refused(json!([{ "rules": [{ "matches": [{ "path": { "type": "Exact", "value": "/a" } }],
        "filters": [{ "type": "URLRewrite", "urlRewrite": { "path": { "type": "ReplacePrefixMatch", "replacePrefixMatch": "/" } } }] }] }]));
    assert!(error.contains("ReplacePrefixMatch needs every match of the rule to be a PathPrefix"), "{error}");
    let error = refused(json!([{ "rules": [{ "backendRefs": [{ "name": "a" }], "colour": "red" }] }]));
    assert!(error.contains("routes[0].rules[0].colour: unknown field `colour`"), "{error}");
    let error = refused(json!([{ "rules": [{ "timeouts": { "request": "soon" } }] }]));
    assert!(error.contains("routes[0].rules[0].timeouts.request: invalid duration \"soon\""), "{error}");
    let error = refused(
        json!([{ "rules": [{ "filters": [{ "type": "RequestRedirect", "requestRedirect": { "statusCode": 200 } }] }] }]),
    );
    assert!(error.contains("200 is not a redirect status"), "{error}");
}
