//! The built-in policy filter (`filters/policy`, written with weft-sdk), built to Wasm and run
//! in a real weft in front of an echo upstream: rules, JWTs and a rate limit as a client sees
//! them.

mod support;

use support::filters::builtin;
use support::upstream::echo;
use support::weft::metric;
use support::{raw_exchange, seen, RawResponse, Weft};

/// The HS256 secret of the config below.
const SECRET: &str = "an-end-to-end-secret-of-32-bytes+";

/// Header `{"alg":"HS256","typ":"JWT"}`, claims `{"iss":"https://auth.example.com","aud":"weft",
/// "sub":"alice","exp":4102444800}` (the year 2100), signed with [`SECRET`]. The test has no
/// HMAC of its own, so the token was made once and written down.
const ALICE: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
    eyJpc3MiOiJodHRwczovL2F1dGguZXhhbXBsZS5jb20iLCJhdWQiOiJ3ZWZ0Iiwic3ViIjoiYWxpY2UiLCJleHAiOjQxMDI0NDQ4MDB9.\
    PJlJCgvTj-7OzwYsawTdVKAVzzGX4rhgba0jzVTNwPI";

/// [`ALICE`]'s signature under claims that say `"sub":"admin"` instead.
const FORGED: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
    eyJpc3MiOiJodHRwczovL2F1dGguZXhhbXBsZS5jb20iLCJhdWQiOiJ3ZWZ0Iiwic3ViIjoiYWRtaW4iLCJleHAiOjQxMDI0NDQ4MDB9.\
    PJlJCgvTj-7OzwYsawTdVKAVzzGX4rhgba0jzVTNwPI";

async fn start() -> (Weft, support::upstream::Upstream) {
    let web = echo("web").await;
    let config = format!(
        r#"
listeners:
  - name: public
    address: 127.0.0.1:0
    cluster: web
    filters: [policy]
clusters:
  - {{ name: web, endpoints: ["{web}"] }}
filters:
  - name: policy
    module: {module}
    config:
      default: deny
      jwt:
        issuer: https://auth.example.com
        audiences: [weft]
        claim_headers: {{ sub: x-user }}
        keys: [{{ alg: HS256, secret: "{SECRET}" }}]
      rules:
        - name: block-admin
          action: deny
          match: {{ paths: [{{ prefix: /admin }}] }}
        - name: api
          action: allow
          require_jwt: true
          match: {{ paths: [{{ prefix: /api }}] }}
        - name: public
          action: allow
          match: {{ paths: [{{ prefix: /public }}] }}
          rate_limit: {{ key: "header:x-client", rate: 1/m, burst: 3 }}
"#,
        web = web.endpoint(),
        module = builtin("policy").display(),
    );
    (Weft::start(&config).await, web)
}

async fn get(weft: &Weft, path: &str, extra: &str) -> RawResponse {
    let request = format!("GET {path} HTTP/1.1\r\nhost: example.com\r\n{extra}connection: close\r\n\r\n");
    raw_exchange(weft.addr("public"), request.as_bytes()).await
}

async fn counted(weft: &Weft, name: &str) -> Option<f64> {
    metric(&weft.metrics().await, &format!(r#"weft_filter_counter_total{{filter="policy",name="{name}"}}"#))
}

#[tokio::test]
async fn a_denied_path_gets_403_with_the_reason_and_an_allowed_one_reaches_the_upstream() {
    let (weft, _web) = start().await;
    let answer = get(&weft, "/admin/users", "").await;
    assert_eq!(answer.status, 403, "{}", answer.head);
    assert_eq!(
        seen(&answer.body),
        serde_json::json!({ "error": "forbidden", "reason": "rule \"block-admin\" denies" })
    );
    assert_eq!(answer.header("x-weft-error").as_deref(), Some("forbidden"));
    assert_eq!(answer.header("content-type").as_deref(), Some("application/json"));

    let answer = get(&weft, "/public/../admin/users", "").await;
    assert_eq!(answer.status, 403, "a dot segment does not get around the rule: {}", answer.body);

    let answer = get(&weft, "/elsewhere", "").await;
    assert_eq!(seen(&answer.body)["reason"], "no rule matches and the default is deny");

    let answer = get(&weft, "/public/page", "").await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(seen(&answer.body)["upstream"], "web");
    assert_eq!((counted(&weft, "policy_denied").await, counted(&weft, "policy_allowed").await), (Some(3.0), Some(1.0)));
}

#[tokio::test]
async fn a_protected_path_needs_a_valid_token_whose_subject_reaches_the_upstream() {
    let (weft, _web) = start().await;
    let answer = get(&weft, "/api/orders", "").await;
    assert_eq!(answer.status, 401, "{}", answer.head);
    assert_eq!(answer.header("www-authenticate").as_deref(), Some(r#"Bearer realm="weft""#));
    assert_eq!(seen(&answer.body)["reason"], "missing bearer token in authorization");

    let answer = get(&weft, "/api/orders", &format!("authorization: Bearer {FORGED}\r\n")).await;
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.header("www-authenticate").as_deref(),
        Some(r#"Bearer realm="weft", error="invalid_token", error_description="bad signature""#)
    );

    let answer = get(&weft, "/api/orders", &format!("authorization: Bearer {ALICE}\r\nx-user: admin\r\n")).await;
    assert_eq!(answer.status, 200, "{}\n{}", answer.head, answer.body);
    let upstream = seen(&answer.body);
    assert_eq!(upstream["headers"]["x-user"], "alice", "the token's subject, not the client's header");
    assert_eq!(counted(&weft, "policy_jwt_rejected").await, Some(2.0));
}

#[tokio::test]
async fn a_rate_limit_answers_429_with_retry_after_once_the_burst_is_spent() {
    let (weft, web) = start().await;
    for n in 0..3 {
        let answer = get(&weft, "/public/feed", "x-client: team-a\r\n").await;
        assert_eq!(answer.status, 200, "request {n} of the burst of 3: {}", answer.head);
    }
    let answer = get(&weft, "/public/feed", "x-client: team-a\r\n").await;
    assert_eq!(answer.status, 429, "{}", answer.head);
    assert_eq!(answer.header("x-weft-error").as_deref(), Some("rate limited"));
    let retry_after: u64 = answer.header("retry-after").and_then(|v| v.parse().ok()).expect("retry-after in seconds");
    assert!((55..=60).contains(&retry_after), "one token a minute: retry after {retry_after}s");
    assert_eq!(seen(&answer.body)["error"], "rate limited");

    let answer = get(&weft, "/public/feed", "x-client: team-b\r\n").await;
    assert_eq!(answer.status, 200, "another client has its own bucket");
    assert_eq!(web.requests(), 4, "the limited request never reached the upstream");
    assert_eq!(counted(&weft, "policy_rate_limited").await, Some(1.0));
}
