//! The chaos filter's behaviour, run natively through the SDK's test harness (whose clock only
//! moves when a test moves it).

use crate::Chaos;
use serde_json::json;
use std::time::Duration;
use weft_sdk::testing::{TestFilter, TestRequest, TestResponse};
use weft_sdk::{Action, Direction};

fn chaos(config: serde_json::Value) -> TestFilter<Chaos> {
    TestFilter::from_json(&config).expect("config accepted")
}

/// The harness clock starts at 2023-11-14T22:13:20Z.
const HARNESS_START: &str = "2023-11-14T22:13:20Z";

#[test]
fn a_delay_holds_the_request_until_its_time_then_lets_it_go() {
    let filter = chaos(json!({ "faults": [{ "delay": { "fixed": "200ms" } }] }));
    let mut req = filter.request(TestRequest::get("/"));
    assert_eq!(req.send_request_headers(), Action::Pause);
    filter.advance(Duration::from_millis(150));
    assert!(!req.resumed(Direction::Request), "resumed before its 200ms");
    filter.advance(Duration::from_millis(60));
    assert!(req.resumed(Direction::Request));
    assert_eq!(req.local_response(), None);
    assert_eq!(filter.metric("chaos_delays_injected"), Some(1));
}

#[test]
fn an_abort_answers_with_the_status_and_never_reaches_the_upstream() {
    let filter = chaos(json!({ "faults": [{ "abort": { "status": 503 } }] }));
    let mut req = filter.request(TestRequest::get("/"));
    assert_eq!(req.send_request_headers(), Action::Pause);
    let answer = req.local_response().unwrap();
    assert_eq!((answer.status, answer.body.as_slice()), (503, b"fault injected\n".as_slice()));
    assert!(answer.headers.contains(&("x-weft-fault".into(), "abort".into())));
    assert_eq!(filter.metric("chaos_aborts_injected"), Some(1));
}

#[test]
fn a_grpc_abort_answers_with_a_grpc_status() {
    let filter = chaos(json!({ "faults": [{ "abort": { "grpc_status": 14 } }] }));
    let mut req = filter.request(TestRequest::post("/pkg.Service/Method").header("content-type", "application/grpc"));
    req.send_request_headers();
    let answer = req.local_response().unwrap();
    assert_eq!((answer.status, answer.grpc_status), (200, Some(14)));
}

#[test]
fn a_delay_then_an_abort_answers_after_the_delay() {
    let filter = chaos(json!({ "faults": [{ "delay": { "fixed": "1s" }, "abort": { "status": 500 } }] }));
    let mut req = filter.request(TestRequest::get("/"));
    assert_eq!(req.send_request_headers(), Action::Pause);
    assert_eq!(req.local_response(), None, "answered before the delay");
    filter.advance(Duration::from_secs(1));
    assert_eq!(req.local_response().map(|a| a.status), Some(500));
    assert!(!req.resumed(Direction::Request), "an aborted request must not also go upstream");
}

#[test]
fn percentages_inject_into_that_share_of_requests() {
    let filter = chaos(json!({ "faults": [{ "abort": { "status": 503, "percentage": 30 } }] }));
    let aborted = (0..1000)
        .filter(|_| {
            let mut req = filter.request(TestRequest::get("/"));
            req.send_request_headers() == Action::Pause
        })
        .count();
    assert!((220..=380).contains(&aborted), "{aborted} of 1000 aborted at 30%");
}

#[test]
fn only_matching_requests_get_the_fault() {
    let filter = chaos(json!({ "faults": [{
        "match": { "path_prefix": "/api", "methods": ["post"], "headers": { "X-Canary": "true", "x-user": "*" },
                   "source_principal": "spiffe://weft.local/ns/default/sa/frontend" },
        "abort": { "status": 418 } }] }));
    let matching = || {
        TestRequest::post("/api/orders")
            .header("x-canary", "true")
            .header("x-user", "anyone")
            .source_principal("spiffe://weft.local/ns/default/sa/frontend")
    };
    let outcome = |request: TestRequest| {
        let mut req = filter.request(request);
        req.send_request_headers();
        req.local_response().map(|a| a.status)
    };
    assert_eq!(outcome(matching()), Some(418));
    assert_eq!(
        outcome(TestRequest::get("/api/orders").header("x-canary", "true").header("x-user", "a")),
        None,
        "method"
    );
    assert_eq!(
        outcome(
            TestRequest::post("/web")
                .header("x-canary", "true")
                .header("x-user", "a")
                .source_principal("spiffe://weft.local/ns/default/sa/frontend")
        ),
        None,
        "path"
    );
    assert_eq!(
        outcome(
            TestRequest::post("/api")
                .header("x-canary", "true")
                .source_principal("spiffe://weft.local/ns/default/sa/frontend")
        ),
        None,
        "header present"
    );
    assert_eq!(
        outcome(
            TestRequest::post("/api")
                .header("x-canary", "true")
                .header("x-user", "a")
                .source_principal("spiffe://other")
        ),
        None,
        "principal"
    );
    assert_eq!(filter.metric("chaos_aborts_injected"), Some(1));
}

#[test]
fn header_faults_work_only_when_turned_on_and_are_capped() {
    let off = chaos(json!({}));
    let mut req = off.request(TestRequest::get("/").header("x-weft-fault-abort", "500"));
    assert_eq!(req.send_request_headers(), Action::Continue);
    drop(req);

    let on = chaos(json!({ "header_faults": { "enabled": true, "max_delay": "100ms" } }));
    let mut req = on.request(TestRequest::get("/").header("x-weft-fault-delay", "60000"));
    assert_eq!(req.send_request_headers(), Action::Pause);
    assert_eq!(req.request_header("x-weft-fault-delay"), None, "the upstream must not see fault headers");
    on.advance(Duration::from_millis(100));
    assert!(req.resumed(Direction::Request), "a minute asked for, capped at 100ms");
    drop(req);

    let mut req = on.request(TestRequest::get("/").header("x-weft-fault-abort", "429"));
    req.send_request_headers();
    assert_eq!(req.local_response().map(|a| a.status), Some(429));
}

#[test]
fn past_max_active_faults_requests_are_left_alone() {
    let filter = chaos(json!({ "max_active_faults": 2, "faults": [{ "delay": { "fixed": "10s" } }] }));
    let mut first = filter.request(TestRequest::get("/"));
    let mut second = filter.request(TestRequest::get("/"));
    assert_eq!(first.send_request_headers(), Action::Pause);
    assert_eq!(second.send_request_headers(), Action::Pause);
    let mut third = filter.request(TestRequest::get("/"));
    assert_eq!(third.send_request_headers(), Action::Continue, "a third held request is over the cap");
    assert_eq!(filter.metric("chaos_faults_skipped"), Some(1));
    drop(third);
    first.finish();
    let mut fourth = filter.request(TestRequest::get("/"));
    assert_eq!(fourth.send_request_headers(), Action::Pause, "a finished fault frees its place");
}

#[test]
fn an_expired_fault_stops_by_itself() {
    let expires = "2023-11-14T22:13:21Z"; // one second after the harness clock starts
    let filter = chaos(json!({ "faults": [{ "abort": { "status": 503 }, "expires": expires }] }));
    let status = || {
        let mut req = filter.request(TestRequest::get("/"));
        req.send_request_headers();
        req.local_response().map(|a| a.status)
    };
    assert_eq!(status(), Some(503));
    filter.advance(Duration::from_secs(1));
    assert_eq!(status(), None, "still injected after {expires}");
    assert_eq!(crate::config::parse_rfc3339(HARNESS_START), Ok(1_700_000_000 * 1_000_000_000));
    assert_eq!(crate::config::parse_rfc3339("2023-11-14T23:13:20.5+01:00"), Ok(1_700_000_000_500_000_000));
}

#[test]
fn a_throttle_paces_the_response_by_its_size() {
    let filter = chaos(json!({ "faults": [{ "throttle": { "kib_per_second": 10 } }] }));
    let mut req = filter.request(TestRequest::get("/"));
    assert_eq!(req.send_request_headers(), Action::Continue);
    // 10 KiB at 10 KiB/s: a second.
    assert_eq!(req.send_response_headers(TestResponse::new(200).header("content-length", "10240")), Action::Pause);
    filter.advance(Duration::from_millis(900));
    assert!(!req.resumed(Direction::Response));
    filter.advance(Duration::from_millis(150));
    assert!(req.resumed(Direction::Response));
    drop(req);

    // Without a length, the body is held whole and released at the pace.
    let mut req = filter.request(TestRequest::get("/"));
    req.send_request_headers();
    assert_eq!(req.send_response_headers(TestResponse::new(200)), Action::Continue);
    assert_eq!(req.send_response_body(&[b'x'; 2048], false), Action::Pause);
    assert_eq!(req.send_response_body(&[b'x'; 3072], true), Action::Pause);
    filter.advance(Duration::from_millis(450));
    assert!(!req.resumed(Direction::Response));
    filter.advance(Duration::from_millis(100));
    assert!(req.resumed(Direction::Response), "5 KiB at 10 KiB/s is half a second");
}

#[test]
fn bad_configs_are_refused_with_where_and_why() {
    let refused =
        |config: serde_json::Value| TestFilter::<Chaos>::from_json(&config).err().expect("refused").to_string();
    assert!(refused(json!({ "faults": [{ "name": "nothing" }] }))
        .contains("faults[0].delay: a fault needs a delay, an abort or a throttle"));
    assert!(refused(json!({ "faults": [{ "abort": { "status": 503, "percentage": 150 } }] }))
        .contains("faults[0].abort.percentage: 150 is not a percentage"));
    assert!(refused(json!({ "faults": [{ "abort": { "status": 503, "grpc_status": 14 } }] }))
        .contains("faults[0].abort: give exactly one of status and grpc_status"));
    assert!(refused(json!({ "faults": [{ "delay": { "fixed": "soon" } }] }))
        .contains("faults[0].delay.fixed: invalid duration"));
    assert!(refused(json!({ "faults": [{ "abort": { "status": 503 }, "expires": "tomorrow" }] }))
        .contains("faults[0].expires: invalid time \"tomorrow\""));
    assert!(refused(json!({ "fautls": [] })).contains("unknown field `fautls`"));
}

#[test]
fn a_fault_for_one_listener_leaves_the_others_alone() {
    let filter = chaos(json!({ "faults": [{ "match": { "listener": "public" }, "abort": { "status": 503 } }] }));
    let mut elsewhere = filter.request(TestRequest::get("/").property("listener_name", b"internal"));
    assert_eq!(elsewhere.send_request_headers(), Action::Continue);
    let mut here = filter.request(TestRequest::get("/").property("listener_name", b"public"));
    assert_eq!(here.send_request_headers(), Action::Pause);
    assert_eq!(here.local_response().map(|a| a.status), Some(503));
}

#[test]
fn a_named_fault_counts_its_injections_under_its_name_too() {
    let filter = chaos(json!({ "faults": [
        { "name": "experiment:exp-7", "match": { "path_prefix": "/checkout" }, "delay": { "fixed": "10ms" }, "abort": { "status": 500 } },
        { "abort": { "status": 503 } }
    ] }));
    let mut named = filter.request(TestRequest::get("/checkout/pay"));
    assert_eq!(named.send_request_headers(), Action::Pause);
    filter.advance(Duration::from_millis(10));
    assert_eq!(named.local_response().map(|a| a.status), Some(500));
    let mut unnamed = filter.request(TestRequest::get("/other"));
    unnamed.send_request_headers();
    assert_eq!(filter.metric("chaos_delays_injected:experiment:exp-7"), Some(1));
    assert_eq!(filter.metric("chaos_aborts_injected:experiment:exp-7"), Some(1), "the abort after the delay");
    assert_eq!(filter.metric("chaos_aborts_injected"), Some(2), "both faults, in the filter-wide count");
}
