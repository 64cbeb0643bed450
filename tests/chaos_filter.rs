//! The built-in chaos filter (`filters/chaos`, written with weft-sdk), built to Wasm and run in
//! a real weft: delays, aborts (HTTP and gRPC), faults asked for by header, and throttling.

mod support;

use std::time::{Duration, Instant};
use support::filters::builtin;
use support::upstream::echo;
use support::weft::metric;
use support::{raw_exchange, seen, Weft};

fn chaos_config(web: &str) -> String {
    format!(
        r#"
listeners:
  - name: public
    address: 127.0.0.1:0
    cluster: web
    filters: [chaos]
clusters:
  - {{ name: web, endpoints: ["{web}"] }}
filters:
  - name: chaos
    module: {module}
    config:
      header_faults: {{ enabled: true, max_delay: 2s }}
      faults:
        - name: slow
          match: {{ path_prefix: /slow }}
          delay: {{ fixed: 300ms }}
        - name: broken
          match: {{ path_prefix: /broken }}
          abort: {{ status: 503 }}
        - name: grpc-down
          match: {{ path_prefix: /pkg.Greeter/ }}
          abort: {{ grpc_status: 14 }}
        - name: narrow
          match: {{ path_prefix: /narrow }}
          throttle: {{ kib_per_second: 1 }}
"#,
        module = builtin("chaos").display(),
    )
}

fn request(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: shop\r\n{extra}connection: close\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn a_delay_holds_matching_requests_and_an_abort_answers_them() {
    let web = echo("web").await;
    let weft = Weft::start(&chaos_config(&web.endpoint())).await;
    let addr = weft.addr("public");

    let started = Instant::now();
    let answer = raw_exchange(addr, &request("/slow/page", "")).await;
    assert_eq!(answer.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300), "not held: {:?}", started.elapsed());
    assert_eq!(seen(&answer.body)["upstream"], "web", "let through after the delay");

    let answer = raw_exchange(addr, &request("/broken/page", "")).await;
    assert_eq!((answer.status, answer.body.as_str()), (503, "fault injected\n"));
    assert_eq!(answer.header("x-weft-fault").as_deref(), Some("abort"));

    let answer = raw_exchange(addr, &request("/pkg.Greeter/SayHello", "content-type: application/grpc\r\n")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("grpc-status").as_deref(), Some("14"), "{}", answer.head);

    let answer = raw_exchange(addr, &request("/other", "")).await;
    assert_eq!(answer.status, 200, "no fault matches");

    let metrics = weft.metrics().await;
    assert_eq!(
        metric(&metrics, "weft_filter_counter_total{filter=\"chaos\",name=\"chaos_delays_injected\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "weft_filter_counter_total{filter=\"chaos\",name=\"chaos_aborts_injected\"}"),
        Some(2.0)
    );
}

#[tokio::test]
async fn clients_can_ask_for_faults_by_header_and_the_upstream_never_sees_them() {
    let web = echo("web").await;
    let weft = Weft::start(&chaos_config(&web.endpoint())).await;
    let addr = weft.addr("public");

    let answer = raw_exchange(addr, &request("/", "x-weft-fault-abort: 429\r\n")).await;
    assert_eq!(answer.status, 429);

    let started = Instant::now();
    let answer = raw_exchange(addr, &request("/", "x-weft-fault-delay: 200\r\n")).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    let upstream = seen(&answer.body);
    assert!(upstream["headers"].get("x-weft-fault-delay").is_none(), "fault header leaked upstream");
}

#[tokio::test]
async fn a_throttled_response_arrives_no_sooner_than_its_rate_allows() {
    let web = echo("web").await;
    let weft = Weft::start(&chaos_config(&web.endpoint())).await;
    let started = Instant::now();
    let answer = raw_exchange(weft.addr("public"), &request("/narrow", "")).await;
    assert_eq!(answer.status, 200);
    let size = answer.body.len() as f64;
    let pace = Duration::from_secs_f64(size / 1024.0);
    assert!(started.elapsed() >= pace, "{size} bytes at 1 KiB/s arrived in {:?}", started.elapsed());
}
