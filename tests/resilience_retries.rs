//! Retries and circuit breaking in a real weft, against upstreams that fail on cue: retries
//! recover what they should (on another endpoint, with the body sent again) and stop at the
//! budget; the breaker answers 503 `overloaded` past its limit.

mod support;

use http_body_util::BodyExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use support::upstream::{closed_port, echo, full, serve};
use support::weft::metric;
use support::{get, raw_exchange, seen, Weft};

fn one_cluster(endpoints: &[String], extra: &str) -> String {
    let endpoints = endpoints.iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", ");
    format!(
        r#"
listeners:
  - {{ name: public, address: "127.0.0.1:0", cluster: web }}
clusters:
  - name: web
    endpoints: [{endpoints}]
    lb: round_robin
{extra}
"#
    )
}

/// An upstream that answers 503 to everything, and counts what it got.
async fn unavailable() -> (support::upstream::Upstream, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let upstream = serve(move |request: hyper::Request<hyper::body::Incoming>| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let slow = request.uri().path().starts_with("/slow");
            let _ = request.into_body().collect().await;
            if slow {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
            let mut answer = hyper::Response::new(full("down\n"));
            *answer.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
            answer
        }
    })
    .await;
    (upstream, seen)
}

async fn statuses(weft: &Weft, path: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(weft.addr("public"), path).await.status);
    }
    out
}

#[tokio::test]
async fn retries_recover_connect_failures_and_503s_on_another_endpoint() {
    let web = echo("web").await;
    let (down, _) = unavailable().await;
    let dead = closed_port().to_string();

    let without = Weft::start(&one_cluster(&[dead.clone(), web.endpoint()], "")).await;
    assert!(statuses(&without, "/", 10).await.contains(&502), "without retries half the requests fail");
    drop(without);

    let retrying = "    retries: { attempts: 2, retry_on: [connect-failure, \"503\"], backoff: 10ms }";
    let weft = Weft::start(&one_cluster(&[dead, down.endpoint(), web.endpoint()], retrying)).await;
    assert_eq!(statuses(&weft, "/", 12).await, vec![200; 12], "every failure was retried to the good endpoint");
    let metrics = weft.metrics().await;
    assert!(metric(&metrics, "weft_upstream_retries_total{cluster=\"web\",reason=\"sent\"}").unwrap_or(0.0) >= 8.0);

    // The body is sent again with the retry.
    let post = b"POST /orders HTTP/1.1\r\nHost: shop\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world";
    for _ in 0..3 {
        let answer = raw_exchange(weft.addr("public"), post).await;
        assert_eq!(answer.status, 200);
        assert_eq!(seen(&answer.body)["body"], "hello world");
    }
}

#[tokio::test]
async fn retries_stop_at_the_budget() {
    let (down, tries) = unavailable().await;
    let retrying = "    retries: { attempts: 5, retry_on: [\"503\"], backoff: 1ms, budget_percent: 10 }";
    let weft = Weft::start(&one_cluster(&[down.endpoint()], retrying)).await;
    let addr = weft.addr("public");
    let requests: Vec<_> = (0..20).map(|_| tokio::spawn(async move { get(addr, "/slow").await.status })).collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), 503, "a retry cannot help an upstream that is down");
    }
    let metrics = weft.metrics().await;
    let refused = metric(&metrics, "weft_upstream_retries_total{cluster=\"web\",reason=\"budget_exhausted\"}");
    assert!(refused.unwrap_or(0.0) >= 1.0, "{metrics}");
    assert!(tries.load(Ordering::SeqCst) < 20 * 6, "retries were not held to the budget");
}

#[tokio::test]
async fn the_circuit_breaker_answers_overloaded_past_max_requests() {
    let web = echo("web").await;
    let weft = Weft::start(&one_cluster(&[web.endpoint()], "    circuit_breaker: { max_requests: 2 }")).await;
    let addr = weft.addr("public");
    let requests: Vec<_> = (0..6).map(|_| tokio::spawn(async move { get(addr, "/slow/400").await })).collect();
    let mut overloaded = 0;
    for request in requests {
        let answer = request.await.unwrap();
        if answer.status == 503 {
            assert_eq!(answer.header("x-weft-error").as_deref(), Some("overloaded"));
            overloaded += 1;
        } else {
            assert_eq!(answer.status, 200);
        }
    }
    assert!(overloaded >= 1, "6 slow requests at once, 2 allowed");
    let metrics = weft.metrics().await;
    assert!(metric(&metrics, "weft_upstream_overloaded_total{cluster=\"web\"}").unwrap_or(0.0) >= 1.0);
    assert_eq!(get(addr, "/").await.status, 200, "the breaker closes when the load is gone");
}

#[tokio::test]
async fn past_max_connections_requests_are_answered_overloaded_when_none_may_wait() {
    let web = echo("web").await;
    let breaker = "    circuit_breaker: { max_connections: 1, max_pending: 0 }";
    let weft = Weft::start(&one_cluster(&[web.endpoint()], breaker)).await;
    let addr = weft.addr("public");
    let requests: Vec<_> = (0..4).map(|_| tokio::spawn(async move { get(addr, "/slow/400").await })).collect();
    let mut statuses = Vec::new();
    for request in requests {
        let answer = request.await.unwrap();
        if answer.status == 503 {
            assert_eq!(answer.header("x-weft-error").as_deref(), Some("overloaded"));
        }
        statuses.push(answer.status);
    }
    assert!(statuses.contains(&200) && statuses.contains(&503), "one connection for four slow requests: {statuses:?}");
    assert_eq!(web.connections(), 1, "the limit held");
}

#[tokio::test]
async fn past_max_connections_an_idle_connection_to_another_endpoint_makes_room() {
    let (a, b) = (echo("a").await, echo("b").await);
    // The connect timeout is long, so that a request waiting for a place would be seen waiting.
    let breaker = "    connect_timeout: 10s\n    circuit_breaker: { max_connections: 1, max_pending: 0 }";
    let weft = Weft::start(&one_cluster(&[a.endpoint(), b.endpoint()], breaker)).await;
    let addr = weft.addr("public");
    let mut answered = Vec::new();
    for _ in 0..4 {
        let started = std::time::Instant::now();
        let answer = get(addr, "/").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "served without waiting for a place");
        answered.push(answer.header("x-upstream").unwrap_or_default());
    }
    assert!(answered.windows(2).all(|pair| pair[0] != pair[1]), "round robin over both endpoints: {answered:?}");
    assert_eq!((a.connections(), b.connections()), (2, 2), "each turn closed the other endpoint's idle connection");
    let metrics = weft.metrics().await;
    assert_eq!(metric(&metrics, "weft_upstream_connections_active{cluster=\"web\"}"), Some(1.0), "the limit held");
    let overloaded = metric(&metrics, "weft_upstream_overloaded_total{cluster=\"web\"}").unwrap_or(0.0);
    assert_eq!(overloaded, 0.0, "nothing was refused");
}

/// An upstream that holds every request until the test lets one through (`gate.add_permits`).
async fn gated() -> (support::upstream::Upstream, Arc<tokio::sync::Semaphore>) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let opener = gate.clone();
    let upstream = serve(move |_request: hyper::Request<hyper::body::Incoming>| {
        let gate = opener.clone();
        async move {
            gate.acquire().await.expect("the gate stays open").forget();
            hyper::Response::new(full("through\n"))
        }
    })
    .await;
    (upstream, gate)
}

async fn pending_now(weft: &Weft) -> f64 {
    metric(&weft.metrics().await, "weft_upstream_pending{cluster=\"web\"}").unwrap_or(0.0)
}

#[tokio::test]
async fn past_max_connections_requests_wait_their_turn_up_to_max_pending() {
    let (web, gate) = gated().await;
    let breaker = "    circuit_breaker: { max_connections: 1, max_pending: 2 }";
    let weft = Weft::start(&one_cluster(&[web.endpoint()], breaker)).await;
    let addr = weft.addr("public");

    let first = tokio::spawn(async move { get(addr, "/first").await });
    support::eventually("the first request reaches the upstream", || async { web.requests() == 1 }).await;
    let waiting: Vec<_> = ["/second", "/third"].map(|path| tokio::spawn(async move { get(addr, path).await })).into();
    support::eventually("two requests wait for the one connection", || async { pending_now(&weft).await == 2.0 }).await;

    let refused = get(addr, "/fourth").await;
    assert_eq!(refused.status, 503, "max_pending are waiting already");
    assert_eq!(refused.header("x-weft-error").as_deref(), Some("overloaded"));
    assert_eq!(web.requests(), 1, "the waiting requests have not been sent yet");

    gate.add_permits(3);
    assert_eq!(first.await.unwrap().status, 200);
    for request in waiting {
        let answer = request.await.unwrap();
        assert_eq!((answer.status, answer.body.as_str()), (200, "through\n"), "a waiting request is served in turn");
    }
    assert_eq!(web.connections(), 1, "the waiting requests took turns on the one connection");
    let metrics = weft.metrics().await;
    assert_eq!(metric(&metrics, "weft_upstream_pending_overflow_total{cluster=\"web\"}"), Some(1.0));
    assert_eq!(metric(&metrics, "weft_upstream_pending{cluster=\"web\"}"), Some(0.0));
}

#[tokio::test]
async fn a_request_whose_turn_does_not_come_within_its_timeout_gets_504() {
    // The upstream answers at once but holds the body: the turn is held until the body is over.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let opener = gate.clone();
    let web = serve(move |_request: hyper::Request<hyper::body::Incoming>| {
        let gate = opener.clone();
        async move {
            let rest = futures_util::stream::once(async move {
                gate.acquire().await.expect("the gate stays open").forget();
                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from("the end\n")))
            });
            hyper::Response::new(http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(rest)))
        }
    })
    .await;
    let breaker = "    request_timeout: 300ms\n    circuit_breaker: { max_connections: 1 }";
    let weft = Weft::start(&one_cluster(&[web.endpoint()], breaker)).await;
    let addr = weft.addr("public");
    let held = tokio::spawn(async move { get(addr, "/held").await });
    support::eventually("the first request reaches the upstream", || async { web.requests() == 1 }).await;
    let late = get(addr, "/late").await;
    assert_eq!(late.status, 504);
    assert_eq!(late.header("x-weft-error").as_deref(), Some("upstream timeout"));
    assert_eq!(web.requests(), 1, "the request that timed out waiting was never sent");
    gate.add_permits(1);
    let held = held.await.unwrap();
    assert_eq!(held.status, 200);
    assert!(held.body.contains("the end\n"), "the held body arrived whole: {:?}", held.body);
}
