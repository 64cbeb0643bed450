//! The example filters of `examples/` (written with weft-sdk), built to Wasm and run in a real
//! weft: an HTTP callout that decides the request, a header from config, an A/B split by cookie.

mod support;

use http_body_util::BodyExt;
use support::filters::example;
use support::upstream::{closed_port, echo, full, serve};
use support::{raw_exchange, seen, Weft};

fn request(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: shop\r\n{extra}connection: close\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn an_auth_callout_decides_each_request() {
    let web = echo("web").await;
    // The auth service: "Bearer good" is alice, anything else is refused.
    let auth = serve(|request: hyper::Request<hyper::body::Incoming>| async move {
        let allowed = request.headers().get("authorization").is_some_and(|v| v == "Bearer good");
        let _ = request.into_body().collect().await;
        let mut answer = hyper::Response::new(full(""));
        if allowed {
            answer.headers_mut().insert("x-user", "alice".parse().unwrap());
        } else {
            *answer.status_mut() = hyper::StatusCode::FORBIDDEN;
        }
        answer
    })
    .await;
    let config = |auth: &str| {
        format!(
            r#"
listeners:
  - {{ name: public, address: "127.0.0.1:0", cluster: web, filters: [auth] }}
clusters:
  - {{ name: web, endpoints: ["{web}"] }}
  - {{ name: auth, endpoints: ["{auth}"] }}
filters:
  - name: auth
    module: {module}
    config: {{ cluster: auth, timeout: 2s }}
"#,
            web = web.endpoint(),
            module = example("auth-callout").display(),
        )
    };
    let weft = Weft::start(&config(&auth.endpoint())).await;
    let addr = weft.addr("public");

    let answer = raw_exchange(addr, &request("/orders", "authorization: Bearer good\r\n")).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    let upstream = seen(&answer.body);
    assert_eq!(upstream["headers"]["x-user"], "alice");
    assert!(upstream["headers"].get("authorization").is_none(), "credentials stay at the edge");

    assert_eq!(raw_exchange(addr, &request("/orders", "authorization: Bearer bad\r\n")).await.status, 401);
    assert_eq!(raw_exchange(addr, &request("/orders", "")).await.status, 401);
    assert_eq!(auth.requests(), 2, "no credentials, no callout");

    drop(weft);
    let weft = Weft::start(&config(&closed_port().to_string())).await;
    let answer = raw_exchange(weft.addr("public"), &request("/orders", "authorization: Bearer good\r\n")).await;
    assert_eq!((answer.status, answer.body.as_str()), (503, "auth service unavailable\n"));
}

#[tokio::test]
async fn a_header_from_config_and_an_ab_split_by_cookie() {
    let (a, b) = (echo("a").await, echo("b").await);
    let yaml = format!(
        r#"
listeners:
  - {{ name: public, address: "127.0.0.1:0", cluster: web-a, filters: [team, ab] }}
clusters:
  - {{ name: web-a, endpoints: ["{a}"] }}
  - {{ name: web-b, endpoints: ["{b}"] }}
filters:
  - name: team
    module: {add_header}
    config: {{ name: x-team, value: payments }}
  - name: ab
    module: {ab}
    config: {{ a: web-a, b: web-b, share_b: 50 }}
"#,
        a = a.endpoint(),
        b = b.endpoint(),
        add_header = example("add-header").display(),
        ab = example("ab-cookie").display(),
    );
    let weft = Weft::start(&yaml).await;
    let addr = weft.addr("public");

    let answer = raw_exchange(addr, &request("/", "cookie: ab=b\r\n")).await;
    let upstream = seen(&answer.body);
    assert_eq!((upstream["upstream"].as_str(), upstream["headers"]["x-team"].as_str()), (Some("b"), Some("payments")));
    assert_eq!(answer.header("set-cookie"), None);

    let answer = raw_exchange(addr, &request("/", "")).await;
    let side = seen(&answer.body)["upstream"].as_str().unwrap().to_owned();
    assert_eq!(answer.header("set-cookie").unwrap(), format!("ab={side}; Path=/; Max-Age=2592000"));
}
