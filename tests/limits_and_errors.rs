//! What weft does with bad clients, bad upstreams and bad requests: the local replies of the
//! contract, the header limits, slow clients, connection limits, and malformed requests that
//! must never reach the upstream.

mod support;

use std::time::Duration;
use support::upstream::{closed_port, echo, resetting};
use support::{get, raw_exchange, Weft};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn failures_get_the_local_replies_of_the_contract() {
    let web = echo("web").await;
    let reset = resetting().await;
    let config = format!(
        r#"
listeners:
  - name: nowhere
    address: 127.0.0.1:0
  - name: refused
    address: 127.0.0.1:0
    cluster: refused
  - name: reset
    address: 127.0.0.1:0
    cluster: reset
  - name: slow
    address: 127.0.0.1:0
    cluster: slow
clusters:
  - name: refused
    endpoints: ["{closed}"]
  - name: reset
    endpoints: ["{reset}"]
  - name: slow
    endpoints: ["{web}"]
    request_timeout: 300ms
"#,
        closed = closed_port(),
        reset = reset.endpoint(),
        web = web.endpoint()
    );
    let weft = Weft::start(&config).await;
    let cases = [
        ("nowhere", "/", 404, "no route"),
        ("refused", "/", 502, "upstream connect failure"),
        ("reset", "/", 502, "upstream reset"),
        ("slow", "/slow/3000", 504, "upstream timeout"),
    ];
    for (listener, path, status, reason) in cases {
        let response = get(weft.addr(listener), path).await;
        assert_eq!(response.status, status, "{listener}: {response:?}");
        assert_eq!(response.header("x-weft-error").as_deref(), Some(reason), "{listener}");
        assert_eq!(response.body.trim(), reason);
    }
    // A fast request on the same cluster is unaffected by the timeout.
    assert_eq!(get(weft.addr("slow"), "/slow/10").await.status, 200);
    // The pooled connection that answered it carries the next request, and that request's own
    // deadline: it times out as the first did, and the one after is answered again.
    let late = get(weft.addr("slow"), "/slow/3000").await;
    assert_eq!(late.status, 504, "{late:?}");
    assert_eq!(get(weft.addr("slow"), "/slow/10").await.status, 200);
    let metrics = weft.metrics().await;
    assert_eq!(
        support::weft::metric(&metrics, "weft_upstream_errors_total{cluster=\"slow\",reason=\"timeout\"}"),
        Some(2.0)
    );
    assert_eq!(
        support::weft::metric(&metrics, "weft_requests_total{listener=\"nowhere\",cluster=\"none\",code=\"404\"}"),
        Some(1.0)
    );
}

fn limited(web: &str, limits: &str) -> String {
    format!(
        r#"
listeners:
  - name: public
    address: 127.0.0.1:0
    cluster: web
    limits: {{ {limits} }}
clusters:
  - name: web
    endpoints: ["{web}"]
"#
    )
}

#[tokio::test]
async fn too_many_or_too_large_headers_get_431_and_never_reach_the_upstream() {
    let web = echo("web").await;
    let weft = Weft::start(&limited(&web.endpoint(), "max_request_headers: 10, max_request_header_size: 2KiB")).await;

    let many: String = (0..12).map(|i| format!("x-h{i}: v\r\n")).collect();
    let response = raw_exchange(
        weft.addr("public"),
        format!("GET / HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(response.status, 431);
    assert_eq!(response.header("x-weft-error").as_deref(), Some("headers too large"));

    let big = "a".repeat(3000);
    let response = raw_exchange(
        weft.addr("public"),
        format!("GET / HTTP/1.1\r\nHost: x\r\nx-big: {big}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(response.status, 431);

    // Far past the limit, the HTTP parser itself refuses it; still a 431, still nothing upstream.
    let huge = "a".repeat(64 * 1024);
    let response =
        raw_exchange(weft.addr("public"), format!("GET / HTTP/1.1\r\nHost: x\r\nx-huge: {huge}\r\n\r\n").as_bytes())
            .await;
    assert_eq!(response.status, 431);

    assert_eq!(web.requests(), 0, "nothing reached the upstream");
    assert_eq!(get(weft.addr("public"), "/").await.status, 200, "a normal request still passes");
}

#[tokio::test]
async fn malformed_requests_get_400_and_never_reach_the_upstream() {
    let web = echo("web").await;
    let weft = Weft::start(&limited(&web.endpoint(), "")).await;
    let malformed: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Name: v\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01 not http at all\r\n\r\n",
    ];
    for request in malformed {
        let response = raw_exchange(weft.addr("public"), request).await;
        assert_eq!(response.status, 400, "{:?} -> {response:?}", String::from_utf8_lossy(request));
    }
    assert_eq!(web.requests(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn a_client_that_sends_its_head_too_slowly_is_cut_off() {
    let web = echo("web").await;
    let weft = Weft::start(&limited(&web.endpoint(), "header_read_timeout: 300ms")).await;
    let mut slow = tokio::net::TcpStream::connect(weft.addr("public")).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // Dribble a header line now and then, never finishing the head.
    let cut_off = async {
        let mut buffer = [0u8; 1024];
        for _ in 0..100 {
            if slow.write_all(b"x-drip: 1\r\n").await.is_err() {
                return true;
            }
            match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut buffer)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                _ => {}
            }
        }
        false
    };
    assert!(cut_off.await, "the slow client's connection was closed");
    assert_eq!(web.requests(), 0);
    assert_eq!(get(weft.addr("public"), "/").await.status, 200, "others are served");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_read_timeout() {
    let web = echo("web").await;
    let weft = Weft::start(&limited(&web.endpoint(), "header_read_timeout: 300ms")).await;
    let mut idle = tokio::net::TcpStream::connect(weft.addr("public")).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(support::read_response(&mut idle).await.status, 200);
    let answered = std::time::Instant::now();
    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(support::PATIENCE, idle.read(&mut buffer)).await.expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "closed, not answered: {read:?}");
    assert!(
        answered.elapsed() >= Duration::from_millis(250),
        "closed only after the timeout: {:?}",
        answered.elapsed()
    );
}

#[tokio::test]
async fn connections_past_the_listener_limit_are_closed_at_accept() {
    let web = echo("web").await;
    let weft = Weft::start(&limited(&web.endpoint(), "max_connections: 2")).await;
    let addr = weft.addr("public");
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buffer = [0u8; 512];
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(buffer[..n].starts_with(b"HTTP/1.1 200"), "kept-alive connection served");
        held.push(stream);
    }
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut buffer = [0u8; 512];
    let read = tokio::time::timeout(support::PATIENCE, third.read(&mut buffer)).await.expect("closed promptly");
    assert!(matches!(read, Ok(0) | Err(_)), "the third connection is closed without an answer");
    let metrics = weft.metrics().await;
    assert_eq!(
        support::weft::metric(
            &metrics,
            "weft_downstream_connections_rejected_total{listener=\"public\",reason=\"limit\"}"
        ),
        Some(1.0)
    );
    drop(held);
    support::eventually("a slot frees up", || async {
        support::try_raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
}
