//! Endpoints that go bad and come back: active health checks take a failing endpoint out and
//! put it back when it passes again, outlier detection ejects an endpoint that fails real
//! requests for a while, and a cluster with nothing available answers 503 `no healthy upstream`.
//! All of it visible on the admin `/clusters` and in the metrics.

mod support;

use hyper::{Request, Response, StatusCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::upstream::{closed_port, full, serve, TestBody, Upstream};
use support::weft::metric;
use support::{eventually, get, Weft};

/// An upstream answering its `name`, and on `/healthz` 200; while `sick` is set it answers
/// `/healthz` with 503, and while `failing` is set it answers everything with 500.
async fn switchable(name: &'static str, sick: Arc<AtomicBool>, failing: Arc<AtomicBool>) -> Upstream {
    serve(move |request: Request<hyper::body::Incoming>| {
        let (sick, failing) = (sick.clone(), failing.clone());
        async move {
            let status = if failing.load(Ordering::SeqCst) {
                StatusCode::INTERNAL_SERVER_ERROR
            } else if request.uri().path() == "/healthz" && sick.load(Ordering::SeqCst) {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            let mut response: Response<TestBody> = Response::new(full(name));
            *response.status_mut() = status;
            response
        }
    })
    .await
}

fn flag() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

/// The `/clusters` entry of `endpoint` in cluster `cluster`.
async fn endpoint_status(weft: &Weft, cluster: &str, endpoint: &str) -> serde_json::Value {
    let clusters = weft.admin_json("/clusters").await;
    let cluster = clusters["clusters"].as_array().unwrap().iter().find(|c| c["name"] == cluster).unwrap().clone();
    cluster["endpoints"].as_array().unwrap().iter().find(|e| e["endpoint"] == endpoint).unwrap().clone()
}

#[tokio::test]
async fn a_failing_health_check_takes_an_endpoint_out_until_it_passes_again() {
    let (a_sick, b_sick) = (flag(), flag());
    let a = switchable("a", a_sick.clone(), flag()).await;
    let b = switchable("b", b_sick, flag()).await;
    let config = format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:0
    cluster: web
clusters:
  - name: web
    endpoints: ["{a}", "{b}"]
    health_check: {{ path: /healthz, interval: 50ms, timeout: 500ms, unhealthy_threshold: 2, healthy_threshold: 2 }}
"#,
        a = a.endpoint(),
        b = b.endpoint()
    );
    let weft = Weft::start(&config).await;
    let addr = weft.addr("web");
    eventually("both endpoints to serve", || async {
        let bodies: Vec<String> = bodies_of(addr, 4).await;
        bodies.iter().any(|b| b == "a") && bodies.iter().any(|b| b == "b")
    })
    .await;

    a_sick.store(true, Ordering::SeqCst);
    eventually("a to be unhealthy", || async {
        endpoint_status(&weft, "web", &a.endpoint()).await["healthy"] == false
    })
    .await;
    let status = endpoint_status(&weft, "web", &a.endpoint()).await;
    assert_eq!(status["health"], "unhealthy");
    assert_eq!(status["available"], false);
    for body in bodies_of(addr, 10).await {
        assert_eq!(body, "b", "an unhealthy endpoint gets no requests");
    }
    let metrics = weft.metrics().await;
    let series = |name: &str, extra: &str| format!("{name}{{cluster=\"web\",endpoint=\"{}\"{extra}}}", a.endpoint());
    assert_eq!(metric(&metrics, &series("weft_endpoint_healthy", "")), Some(0.0));
    assert!(metric(&metrics, &series("weft_health_checks_total", ",result=\"fail\"")).unwrap() >= 2.0);
    assert!(metric(&metrics, &series("weft_health_checks_total", ",result=\"pass\"")).unwrap() >= 1.0);

    a_sick.store(false, Ordering::SeqCst);
    eventually("a to be healthy again", || async {
        endpoint_status(&weft, "web", &a.endpoint()).await["healthy"] == true
    })
    .await;
    eventually("a to get requests again", || async { bodies_of(addr, 4).await.iter().any(|b| b == "a") }).await;
    assert_eq!(metric(&weft.metrics().await, &series("weft_endpoint_healthy", "")), Some(1.0));
    let log = weft.stderr();
    assert!(log.contains("endpoint unhealthy") && log.contains("endpoint healthy again"), "{log}");
}

#[tokio::test]
async fn outlier_detection_ejects_an_endpoint_answering_5xx_for_a_while() {
    let a_failing = flag();
    let a = switchable("a", flag(), a_failing.clone()).await;
    let b = switchable("b", flag(), flag()).await;
    let config = format!(
        r#"
listeners:
  - name: web
    address: 127.0.0.1:0
    cluster: web
clusters:
  - name: web
    endpoints: ["{a}", "{b}"]
    outlier_detection: {{ consecutive_5xx: 3, base_ejection: 1s, max_ejection_percent: 50 }}
"#,
        a = a.endpoint(),
        b = b.endpoint()
    );
    let weft = Weft::start(&config).await;
    let addr = weft.addr("web");
    a_failing.store(true, Ordering::SeqCst);
    eventually("a to be ejected", || async {
        get(addr, "/").await;
        endpoint_status(&weft, "web", &a.endpoint()).await["ejected"] == true
    })
    .await;
    let seen = a.requests();
    assert!(seen >= 3, "ejected at the third 5xx in a row, not before: {seen}");

    // While it is out (as long as /clusters said it would be), every request goes to b.
    let started = Instant::now();
    let status = endpoint_status(&weft, "web", &a.endpoint()).await;
    assert_eq!(status["ejections"], 1);
    assert_eq!(status["available"], false);
    let remaining = Duration::from_millis(status["ejected_for_ms"].as_u64().unwrap());
    let mut bodies = Vec::new();
    for _ in 0..5 {
        bodies.push(get(addr, "/").await.body);
    }
    if started.elapsed() < remaining {
        assert!(bodies.iter().all(|b| b == "b"), "an ejected endpoint gets no requests: {bodies:?}");
        assert_eq!(a.requests(), seen);
    }
    let metrics = weft.metrics().await;
    let ejections = format!("weft_endpoint_ejections_total{{cluster=\"web\",endpoint=\"{}\"}}", a.endpoint());
    assert_eq!(metric(&metrics, &ejections), Some(1.0));

    // Its time up, it takes requests again (and, healthy now, keeps them).
    a_failing.store(false, Ordering::SeqCst);
    eventually("a to be back", || async {
        get(addr, "/").await.body == "a" && endpoint_status(&weft, "web", &a.endpoint()).await["ejected"] == false
    })
    .await;
    assert!(weft.stderr().contains("endpoint ejected"));
}

#[tokio::test]
async fn a_cluster_with_no_available_endpoint_answers_no_healthy_upstream() {
    let sick = flag();
    sick.store(true, Ordering::SeqCst);
    let web = switchable("web", sick.clone(), flag()).await;
    let config = format!(
        r#"
listeners:
  - name: checked
    address: 127.0.0.1:0
    cluster: checked
  - name: closed
    address: 127.0.0.1:0
    cluster: closed
clusters:
  - name: checked
    endpoints: ["{web}"]
    health_check: {{ path: /healthz, interval: 50ms, timeout: 500ms, unhealthy_threshold: 1, healthy_threshold: 1 }}
  - name: closed
    endpoints: ["{closed}"]
    health_check: {{ interval: 50ms, timeout: 500ms, unhealthy_threshold: 1 }}
"#,
        web = web.endpoint(),
        closed = closed_port()
    );
    let weft = Weft::start(&config).await;
    for listener in ["checked", "closed"] {
        let addr = weft.addr(listener);
        eventually(&format!("{listener}: 503 no healthy upstream"), || async {
            let response = get(addr, "/").await;
            response.status == 503 && response.header("x-weft-error").as_deref() == Some("no healthy upstream")
        })
        .await;
    }
    let seen = web.requests();
    sick.store(false, Ordering::SeqCst);
    eventually("the checked cluster to serve again", || async { get(weft.addr("checked"), "/").await.status == 200 })
        .await;
    assert!(web.requests() > seen);
}

/// The bodies of `n` requests in a row, each on its own connection.
async fn bodies_of(addr: std::net::SocketAddr, n: usize) -> Vec<String> {
    let mut bodies = Vec::with_capacity(n);
    for _ in 0..n {
        bodies.push(get(addr, "/").await.body);
    }
    bodies
}
