//! The built-in router filter (`filters/router`, written with weft-sdk), built to Wasm and run
//! in a real weft in front of real upstreams.

mod support;

use support::filters::builtin;
use support::upstream::echo;
use support::{raw_exchange, seen, Weft};

fn router_config(web: &str, api: &str, canary: &str) -> String {
    format!(
        r#"
listeners:
  - name: public
    address: 127.0.0.1:0
    cluster: web
    filters: [router]
clusters:
  - {{ name: web, endpoints: ["{web}"] }}
  - {{ name: api, endpoints: ["{api}"] }}
  - {{ name: canary, endpoints: ["{canary}"] }}
filters:
  - name: router
    module: {module}
    config:
      routes:
        - name: site
          hostnames: ["shop.example.com"]
          rules:
            - matches: [{{ path: {{ type: PathPrefix, value: /api }} }}]
              backendRefs: [{{ name: api }}]
              filters:
                - type: RequestHeaderModifier
                  requestHeaderModifier: {{ set: [{{ name: x-routed, value: api }}], remove: [x-internal] }}
                - type: ResponseHeaderModifier
                  responseHeaderModifier: {{ add: [{{ name: x-served-by, value: router }}] }}
                - type: URLRewrite
                  urlRewrite: {{ path: {{ type: ReplacePrefixMatch, replacePrefixMatch: /v2 }} }}
            - matches: [{{ path: {{ type: Exact, value: /old }} }}]
              filters:
                - type: RequestRedirect
                  requestRedirect: {{ path: {{ type: ReplaceFullPath, replaceFullPath: /new }}, statusCode: 301 }}
            - matches: [{{ path: {{ value: /slow }} }}]
              backendRefs: [{{ name: web }}]
              timeouts: {{ request: 300ms }}
            - matches: [{{ path: {{ value: /split }} }}]
              stickyBy: {{ header: x-user }}
              backendRefs: [{{ name: web, weight: 50 }}, {{ name: canary, weight: 50 }}]
"#,
        module = builtin("router").display(),
    )
}

fn request(path: &str, host: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n{extra}connection: close\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn the_router_routes_rewrites_modifies_headers_and_redirects() {
    let (web, api, canary) = (echo("web").await, echo("api").await, echo("canary").await);
    let weft = Weft::start(&router_config(&web.endpoint(), &api.endpoint(), &canary.endpoint())).await;
    let addr = weft.addr("public");

    let answer = raw_exchange(addr, &request("/api/users?page=2", "shop.example.com", "x-internal: secret\r\n")).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    let upstream = seen(&answer.body);
    assert_eq!(upstream["upstream"], "api");
    assert_eq!(upstream["path"], "/v2/users?page=2", "prefix rewritten, query kept");
    assert_eq!(upstream["headers"]["x-routed"], "api");
    assert!(upstream["headers"].get("x-internal").is_none(), "removed by the router");
    assert_eq!(answer.header("x-served-by").as_deref(), Some("router"));

    let answer = raw_exchange(addr, &request("/old", "shop.example.com:8080", "")).await;
    assert_eq!(answer.status, 301);
    assert_eq!(answer.header("location").as_deref(), Some("http://shop.example.com:8080/new"));

    let answer = raw_exchange(addr, &request("/api/users", "elsewhere.example.com", "")).await;
    assert_eq!((answer.status, answer.body.as_str()), (404, "no route\n"), "no rule for that host");
    assert_eq!(answer.header("x-weft-error").as_deref(), Some("no route"));
}

#[tokio::test]
async fn a_rule_timeout_limits_the_upstream_request() {
    let (web, api, canary) = (echo("web").await, echo("api").await, echo("canary").await);
    let weft = Weft::start(&router_config(&web.endpoint(), &api.endpoint(), &canary.endpoint())).await;
    let answer = raw_exchange(weft.addr("public"), &request("/slow/5000", "shop.example.com", "")).await;
    assert_eq!(answer.status, 504, "the rule's 300ms, not the cluster's 15s: {}", answer.head);
    assert_eq!(answer.header("x-weft-error").as_deref(), Some("upstream timeout"));
    let answer = raw_exchange(weft.addr("public"), &request("/slow/10", "shop.example.com", "")).await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn a_sticky_split_sends_each_user_to_one_backend_and_uses_both() {
    let (web, api, canary) = (echo("web").await, echo("api").await, echo("canary").await);
    let weft = Weft::start(&router_config(&web.endpoint(), &api.endpoint(), &canary.endpoint())).await;
    let mut backends = std::collections::HashSet::new();
    for user in 0..20 {
        let header = format!("x-user: user-{user}\r\n");
        let first =
            seen(&raw_exchange(weft.addr("public"), &request("/split", "shop.example.com", &header)).await.body);
        for _ in 0..3 {
            let again =
                seen(&raw_exchange(weft.addr("public"), &request("/split", "shop.example.com", &header)).await.body);
            assert_eq!(again["upstream"], first["upstream"], "user-{user} moved");
        }
        backends.insert(first["upstream"].as_str().unwrap().to_owned());
    }
    assert_eq!(backends.len(), 2, "20 users, one backend: {backends:?}");
}
