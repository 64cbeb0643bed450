//! HTTP through a real weft process: HTTP/1.1 and h2c from curl, proxy headers, streaming bodies,
//! trailers and gRPC, WebSocket upgrades, 100-continue, load balancing and connection reuse (and
//! no reuse of a connection whose response was left unread), and
//! idle client connections that park (give their buffers back) and wake.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use std::sync::Arc;
use support::upstream::{self, echo, full};
use support::{curl_ok, raw_exchange, Weft};
use tokio::sync::Notify;

fn simple_config(cluster_yaml: &str) -> String {
    format!(
        r#"
listeners:
  - name: public
    address: 127.0.0.1:0
    cluster: web
    access_log: true
clusters:
{cluster_yaml}
"#
    )
}

fn one_cluster(endpoints: &[String]) -> String {
    simple_config(&format!("  - name: web\n    endpoints: {endpoints:?}\n"))
}

#[tokio::test]
async fn http1_and_h2c_requests_reach_the_upstream_with_proxy_headers() {
    let web = echo("web").await;
    let weft = Weft::start(&one_cluster(&[web.endpoint()])).await;
    let url = weft.url("public", "/hello?x=1");

    for protocol in ["--http1.1", "--http2-prior-knowledge"] {
        let out = curl_ok(&[
            protocol,
            "-H",
            "Connection: x-private",
            "-H",
            "x-private: secret",
            "-H",
            "x-forwarded-for: 203.0.113.9",
            "-H",
            "Host: shop.example",
            "-w",
            "\n%{http_version}",
            &url,
        ])
        .await;
        let (body, version) = out.rsplit_once('\n').unwrap();
        assert_eq!(version, if protocol == "--http1.1" { "1.1" } else { "2" });
        let seen: serde_json::Value = serde_json::from_str(body).unwrap();
        let headers = &seen["headers"];
        assert_eq!(seen["path"], "/hello?x=1");
        assert_eq!(headers["host"], "shop.example", "Host is kept");
        assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-request-id"].as_str().unwrap().len(), 36, "a request id is made");
        if protocol == "--http1.1" {
            // (HTTP/2 has no Connection header: curl does not send it there.)
            assert!(headers.get("x-private").is_none(), "headers named by Connection stay on their hop");
        }
        assert!(headers.get("connection").is_none());
    }

    // A client's own request id is kept, and responses lose their hop-by-hop headers too.
    let out = curl_ok(&["-i", "-H", "x-request-id: my-id-42", &url]).await;
    assert!(out.contains("\"x-request-id\":\"my-id-42\""), "{out}");
    assert!(!out.to_ascii_lowercase().contains("x-hop"), "response hop header removed: {out}");

    let log = weft.access_log();
    let line = log.iter().find(|l| l["request_id"] == "my-id-42").expect("access log line for the request");
    assert_eq!(line["status"], 200);
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/hello?x=1");
    assert_eq!(line["cluster"], "web");
    assert_eq!(line["upstream"], web.endpoint());
    assert!(line["bytes_sent"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn bodies_stream_both_ways_without_being_buffered() {
    // The upstream sends a first chunk, then holds the response open until the test has seen that
    // chunk arrive through the proxy: a buffering proxy would never deliver it.
    let first_seen = Arc::new(Notify::new());
    let release = first_seen.clone();
    let upstream = upstream::serve(move |_request| {
        let release = release.clone();
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(2);
            tokio::spawn(async move {
                tx.send(Ok(Frame::data(Bytes::from("first;")))).await.unwrap();
                release.notified().await;
                tx.send(Ok(Frame::data(Bytes::from("second")))).await.unwrap();
            });
            hyper::Response::new(StreamBody::new(tokio_stream_from(rx)).boxed())
        }
    })
    .await;
    let weft = Weft::start(&one_cluster(&[upstream.endpoint()])).await;

    let stream = tokio::net::TcpStream::connect(weft.addr("public")).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let request = http::Request::get("/stream").header("host", "x").body(full("")).unwrap();
    let response = sender.send_request(request).await.unwrap();
    let mut body = response.into_body();
    let first =
        tokio::time::timeout(support::PATIENCE, body.frame()).await.expect("first chunk while the upstream holds on");
    assert_eq!(first.unwrap().unwrap().into_data().unwrap(), "first;");
    first_seen.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second");

    // Request direction: the upstream reports the first chunk before the client sends the second.
    let got_first = Arc::new(Notify::new());
    let signal = got_first.clone();
    let upstream = upstream::serve(move |request: hyper::Request<hyper::body::Incoming>| {
        let signal = signal.clone();
        async move {
            let mut body = request.into_body();
            let mut seen = Vec::new();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    seen.extend_from_slice(&data);
                    signal.notify_one();
                }
            }
            hyper::Response::new(full(seen))
        }
    })
    .await;
    let mut weft = weft;
    weft.reload(&one_cluster(&[upstream.endpoint()])).await;
    let stream = tokio::net::TcpStream::connect(weft.addr("public")).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(2);
    let request =
        http::Request::post("/upload").header("host", "x").body(StreamBody::new(tokio_stream_from(rx))).unwrap();
    let responding = tokio::spawn(async move { sender.send_request(request).await });
    tx.send(Ok(Frame::data(Bytes::from("part one;")))).await.unwrap();
    tokio::time::timeout(support::PATIENCE, got_first.notified())
        .await
        .expect("upstream got the first part while the client holds on");
    tx.send(Ok(Frame::data(Bytes::from("part two")))).await.unwrap();
    drop(tx);
    let response = responding.await.unwrap().unwrap();
    assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "part one;part two");
}

fn tokio_stream_from<T: Send + 'static>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn trailers_pass_through_and_grpc_works_end_to_end() {
    let grpc = support::grpc::server().await;
    let web = echo("web").await;
    let config = format!(
        r#"
listeners:
  - name: grpc
    address: 127.0.0.1:0
    cluster: grpc
  - name: public
    address: 127.0.0.1:0
    cluster: web
clusters:
  - name: grpc
    endpoints: ["{}"]
    protocol: http2
  - name: web
    endpoints: ["{}"]
    protocol: http2
"#,
        grpc.addr,
        web.endpoint()
    );
    let weft = Weft::start(&config).await;

    let reply = support::grpc::say(weft.addr("grpc"), "hi").await.expect("gRPC call through weft");
    assert_eq!(reply.message, "echo: hi");
    assert_eq!(reply.authority, weft.addr("grpc").to_string(), ":authority is kept");
    let status = support::grpc::say(weft.addr("grpc"), "fail").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "grpc-status crosses the proxy");
    assert_eq!(status.message(), "no such thing");

    // HTTP trailers over h2c, upstream HTTP/2 too.
    let out = curl_ok(&["--http2-prior-knowledge", "-i", &weft.url("public", "/trailers")]).await;
    assert!(out.contains("with trailers"), "{out}");
    assert!(out.contains("x-checksum: abc123"), "trailer is delivered: {out}");
}

#[tokio::test]
async fn websocket_upgrades_are_tunnelled() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let ws = upstream::raw_tcp(|stream| async move {
        if let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await {
            while let Some(Ok(message)) = socket.next().await {
                if message.is_text() {
                    let reply = format!("echo {}", message.to_text().unwrap());
                    if socket.send(Message::text(reply)).await.is_err() {
                        break;
                    }
                }
            }
        }
    })
    .await;
    let weft = Weft::start(&one_cluster(&[ws.endpoint()])).await;
    let (mut socket, response) = tokio_tungstenite::connect_async(format!("ws://{}/chat", weft.addr("public")))
        .await
        .expect("WebSocket through weft");
    assert_eq!(response.status(), 101);
    for text in ["one", "two"] {
        socket.send(Message::text(text)).await.unwrap();
        let reply = tokio::time::timeout(support::PATIENCE, socket.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(reply.to_text().unwrap(), format!("echo {text}"));
    }
    socket.close(None).await.unwrap();
}

/// Parked client connections of the `public` listener, from `/metrics`.
async fn parked(weft: &Weft) -> f64 {
    support::weft::metric(&weft.metrics().await, "weft_downstream_connections_parked{listener=\"public\"}")
        .unwrap_or(0.0)
}

#[tokio::test]
async fn idle_keep_alive_connections_park_and_still_serve_their_next_requests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let web = echo("web").await;
    let weft = Weft::start(&one_cluster(&[web.endpoint()])).await;
    let mut stream = tokio::net::TcpStream::connect(weft.addr("public")).await.unwrap();
    let request = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n");

    stream.write_all(request("/one").as_bytes()).await.unwrap();
    assert_eq!(support::read_response(&mut stream).await.status, 200);
    support::eventually("the idle connection parks", || async { parked(&weft).await == 1.0 }).await;

    stream.write_all(request("/two").as_bytes()).await.unwrap();
    let response = support::read_response(&mut stream).await;
    assert_eq!(response.status, 200);
    assert_eq!(support::seen(&response.body)["path"], "/two", "the parked connection serves the next request");
    support::eventually("it parks again", || async { parked(&weft).await == 1.0 }).await;

    // Two requests in one write wake it: both are answered, in order, on the same connection.
    let both = format!("{}GET /four HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n", request("/three"));
    stream.write_all(both.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(support::PATIENCE, stream.read_to_end(&mut bytes)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    let (three, four) = (text.find("\"path\":\"/three\"").unwrap(), text.find("\"path\":\"/four\"").unwrap());
    assert!(three < four, "answered in order: {text}");
    support::eventually("a closed connection is no longer parked", || async { parked(&weft).await == 0.0 }).await;
}

#[tokio::test]
async fn a_parked_connection_can_still_be_upgraded_to_a_websocket() {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;
    // Plain requests get "ok"; an upgrade request (seen by peeking at its head) becomes a WebSocket.
    let ws = upstream::raw_tcp(|mut stream| async move {
        let mut head = [0u8; 2048];
        loop {
            let Ok(n) = stream.peek(&mut head).await else { return };
            let seen = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
            let Some(end) = seen.find("\r\n\r\n") else {
                if n == 0 {
                    return;
                }
                tokio::task::yield_now().await;
                continue;
            };
            if seen.contains("upgrade: websocket") {
                break;
            }
            stream.read_exact(&mut head[..end + 4]).await.unwrap();
            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
        }
        if let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await {
            while let Some(Ok(message)) = socket.next().await {
                if message.is_text()
                    && socket.send(Message::text(format!("echo {}", message.to_text().unwrap()))).await.is_err()
                {
                    break;
                }
            }
        }
    })
    .await;
    let weft = Weft::start(&one_cluster(&[ws.endpoint()])).await;
    let mut stream = tokio::net::TcpStream::connect(weft.addr("public")).await.unwrap();
    stream.write_all(b"GET /first HTTP/1.1\r\nHost: test.local\r\n\r\n").await.unwrap();
    assert_eq!(support::read_response(&mut stream).await.body, "ok");
    support::eventually("the idle connection parks", || async { parked(&weft).await == 1.0 }).await;

    let (mut socket, response) = tokio_tungstenite::client_async(format!("ws://{}/chat", weft.addr("public")), stream)
        .await
        .expect("a WebSocket on the parked connection");
    assert_eq!(response.status(), 101);
    socket.send(Message::text("hi")).await.unwrap();
    let reply = tokio::time::timeout(support::PATIENCE, socket.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(reply.to_text().unwrap(), "echo hi");
    socket.close(None).await.unwrap();
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let web = echo("web").await;
    let weft = Weft::start(&one_cluster(&[web.endpoint()])).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(weft.addr("public")).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(support::PATIENCE, stream.read_exact(&mut interim))
        .await
        .expect("a 100 Continue while the body waits")
        .unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    let response = support::parse_raw(&rest);
    assert_eq!(response.status, 200);
    assert!(response.body.contains("\"body\":\"hello\""), "{}", response.body);
}

#[tokio::test]
async fn round_robin_spreads_and_ring_hash_sticks() {
    let (a, b) = (echo("a").await, echo("b").await);
    let weft = Weft::start(&simple_config(&format!(
        "  - name: web\n    endpoints: [\"{}\", \"{}\"]\n  - name: sticky\n    endpoints: [\"{}\", \"{}\"]\n    lb: ring_hash\n    hash_on: header:x-user\n",
        a.endpoint(),
        b.endpoint(),
        a.endpoint(),
        b.endpoint()
    )))
    .await;
    for _ in 0..10 {
        curl_ok(&[&weft.url("public", "/")]).await;
    }
    assert_eq!((a.requests(), b.requests()), (5, 5), "round robin alternates");

    // A second listener for the sticky cluster.
    let mut weft = weft;
    let config = format!(
        r#"
listeners:
  - name: public
    address: 127.0.0.1:0
    cluster: sticky
clusters:
  - name: sticky
    endpoints: ["{}", "{}"]
    lb: ring_hash
    hash_on: header:x-user
"#,
        a.endpoint(),
        b.endpoint()
    );
    weft.reload(&config).await;
    for user in ["ann", "bob", "cyd", "dee"] {
        let first: serde_json::Value =
            serde_json::from_str(&curl_ok(&["-H", &format!("x-user: {user}"), &weft.url("public", "/")]).await)
                .unwrap();
        for _ in 0..5 {
            let again: serde_json::Value =
                serde_json::from_str(&curl_ok(&["-H", &format!("x-user: {user}"), &weft.url("public", "/")]).await)
                    .unwrap();
            assert_eq!(again["upstream"], first["upstream"], "user {user} stays on one endpoint");
        }
    }
}

/// Waits (bounded) until the proxy has `open` connections to cluster `web`.
async fn until_upstream_connections_open(weft: &Weft, open: u32, what: &str) {
    let admin = weft.admin;
    support::eventually(what, || async move {
        let metrics = support::get(admin, "/metrics").await.body;
        support::weft::metric(&metrics, "weft_upstream_connections_active{cluster=\"web\"}") == Some(f64::from(open))
    })
    .await;
}

#[tokio::test]
async fn upstream_connections_are_pooled_and_reused() {
    let web = echo("web").await;
    let weft = Weft::start(&one_cluster(&[web.endpoint()])).await;
    for _ in 0..20 {
        let response = support::get(weft.addr("public"), "/").await;
        assert_eq!(response.status, 200);
    }
    assert_eq!(web.requests(), 20);
    assert_eq!(web.connections(), 1, "one keep-alive upstream connection serves every request");
    let metrics = weft.metrics().await;
    assert_eq!(support::weft::metric(&metrics, "weft_upstream_connections_created_total{cluster=\"web\"}"), Some(1.0));
    assert_eq!(
        support::weft::metric(&metrics, "weft_requests_total{listener=\"public\",cluster=\"web\",code=\"200\"}"),
        Some(20.0)
    );
    assert!(metrics.contains("weft_request_duration_seconds_bucket{"), "{metrics}");
}

#[tokio::test]
async fn a_response_left_unread_does_not_leave_its_connection_for_the_next_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // `/endless` sends one chunk and never ends; anything else answers "fresh".
    let web = upstream::serve(|request: hyper::Request<hyper::body::Incoming>| async move {
        if request.uri().path() == "/endless" {
            let first =
                futures_util::stream::iter([Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from("part")))]);
            let body = StreamBody::new(futures_util::StreamExt::chain(first, futures_util::stream::pending()));
            return hyper::Response::new(body.boxed());
        }
        hyper::Response::new(full("fresh"))
    })
    .await;
    let weft = Weft::start(&one_cluster(&[web.endpoint()])).await;
    let mut client = tokio::net::TcpStream::connect(weft.addr("public")).await.unwrap();
    client.write_all(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"part") {
        let mut buffer = [0u8; 1024];
        let n =
            tokio::time::timeout(std::time::Duration::from_secs(10), client.read(&mut buffer)).await.unwrap().unwrap();
        assert!(n > 0, "the proxy closed before the first chunk: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buffer[..n]);
    }
    drop(client);

    for _ in 0..3 {
        let response = support::get(weft.addr("public"), "/").await;
        assert_eq!((response.status, response.body.as_str()), (200, "fresh"));
    }
    assert_eq!(web.connections(), 2, "the unfinished response's connection was not reused; the next one was");
    until_upstream_connections_open(&weft, 1, "the abandoned upstream connection to close").await;
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_not_used_again() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Answers one request as if keeping the connection, then closes it.
    let web = upstream::raw_tcp(|mut stream| async move {
        let mut buffer = [0u8; 4096];
        let _ = stream.read(&mut buffer).await;
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    })
    .await;
    let weft = Weft::start(&one_cluster(&[web.endpoint()])).await;
    let first = support::get(weft.addr("public"), "/").await;
    assert_eq!((first.status, first.body.as_str()), (200, "ok"));
    until_upstream_connections_open(&weft, 0, "weft to see the upstream close its idle connection").await;
    let second = support::get(weft.addr("public"), "/").await;
    assert_eq!((second.status, second.body.as_str()), (200, "ok"), "the next request went on a new connection");
    assert_eq!(web.connections(), 2);
}

#[tokio::test]
async fn endpoints_may_be_dns_names() {
    let web = echo("web").await;
    let weft = Weft::start(&one_cluster(&[format!("localhost:{}", web.addr.port())])).await;
    assert_eq!(
        raw_exchange(weft.addr("public"), b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.status,
        200
    );
}

#[tokio::test]
async fn idle_upstream_connections_are_closed_after_the_idle_timeout() {
    let web = echo("web").await;
    let weft = Weft::start(&simple_config(&format!(
        "  - name: web\n    endpoints: [\"{}\"]\n    idle_timeout: 200ms\n",
        web.endpoint()
    )))
    .await;
    assert_eq!(support::get(weft.addr("public"), "/").await.status, 200);
    until_upstream_connections_open(&weft, 0, "the idle upstream connection to close").await;
    assert_eq!(support::get(weft.addr("public"), "/").await.status, 200, "a new connection is made when needed");
    assert_eq!(web.connections(), 2);
}

#[tokio::test]
async fn idle_connections_past_the_pool_cap_are_closed() {
    let web = echo("web").await;
    let weft = Weft::start(&simple_config(&format!(
        "  - name: web\n    endpoints: [\"{}\"]\n    max_idle_connections: 1\n",
        web.endpoint()
    )))
    .await;
    let addr = weft.addr("public");
    let burst: Vec<_> =
        (0..4).map(|_| tokio::spawn(async move { support::get(addr, "/slow/300").await.status })).collect();
    for request in burst {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(web.connections(), 4, "the burst needed four upstream connections");
    until_upstream_connections_open(&weft, 1, "all but one idle upstream connection to close").await;
}

#[tokio::test]
async fn an_http1_upstream_gets_bodies_framed_as_sent_and_its_answers_are_read_as_framed() {
    use tokio::io::AsyncWriteExt;
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    // `/chunked` answers with a 100 first, then a chunked body in two writes with a trailer;
    // `/close` with a body that ends when the connection does; the rest with a length.
    let web = upstream::raw_tcp(move |mut stream| {
        let log = log.clone();
        async move {
            let mut pending = Vec::new();
            while let Some(request) = upstream::read_raw_request(&mut stream, &mut pending).await {
                let path = request.split_whitespace().nth(1).unwrap_or_default().to_owned();
                log.lock().unwrap().push(request);
                match path.as_str() {
                    "/chunked" => {
                        let head = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                        stream.write_all(format!("{head}6\r\nhello,\r\n").as_bytes()).await.unwrap();
                        stream.write_all(b"6\r\n world\r\n0\r\nx-checksum: 42\r\n\r\n").await.unwrap();
                    }
                    "/close" => {
                        stream.write_all(b"HTTP/1.1 200 OK\r\n\r\nall of it, to the close").await.unwrap();
                        return;
                    }
                    _ => stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsized!").await.unwrap(),
                }
            }
        }
    })
    .await;
    let weft = Weft::start(&one_cluster(&[web.endpoint()])).await;
    let url = |path| weft.url("public", path);

    let chunked =
        curl_ok(&["-H", "Transfer-Encoding: chunked", "--data-binary", "streamed up", &url("/chunked")]).await;
    assert_eq!(chunked, "hello, world", "the 100 is skipped, the chunks joined");
    let sized = curl_ok(&["--data-binary", "abc", &url("/sized")]).await;
    assert_eq!(sized, "sized!");
    let to_close = curl_ok(&[&url("/close")]).await;
    assert_eq!(to_close, "all of it, to the close");
    let after = curl_ok(&[&url("/after")]).await;
    assert_eq!(after, "sized!", "a new connection after the one the body closed");

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "{seen:?}");
    let lower = seen[0].to_ascii_lowercase();
    assert!(lower.starts_with("post /chunked http/1.1\r\n"), "{}", seen[0]);
    assert!(lower.contains("\r\ntransfer-encoding: chunked\r\n"), "a chunked upload goes on chunked: {}", seen[0]);
    assert!(seen[0].ends_with("\r\n\r\nb\r\nstreamed up\r\n0\r\n\r\n"), "{}", seen[0]);
    assert!(seen[1].to_ascii_lowercase().contains("\r\ncontent-length: 3\r\n"), "{}", seen[1]);
    assert!(seen[1].ends_with("\r\n\r\nabc"), "{}", seen[1]);
    assert!(seen[2].starts_with("GET /close HTTP/1.1\r\n"), "{}", seen[2]);
    assert_eq!(web.connections(), 2, "the chunked and sized exchanges shared a connection; /close ended its own");
}

#[tokio::test]
async fn a_get_that_a_reused_connection_closed_under_goes_again_and_a_post_does_not() {
    use tokio::io::AsyncWriteExt;
    let posts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = posts.clone();
    // Each connection answers its first request, then reads the next and closes without an
    // answer: the endpoint closing a keep-alive connection just as it is used again.
    let web = upstream::raw_tcp(move |mut stream| {
        let counted = counted.clone();
        async move {
            let mut pending = Vec::new();
            let Some(_) = upstream::read_raw_request(&mut stream, &mut pending).await else { return };
            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
            if let Some(second) = upstream::read_raw_request(&mut stream, &mut pending).await {
                if second.starts_with("POST") {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
    })
    .await;
    let weft = Weft::start(&one_cluster(&[web.endpoint()])).await;
    assert_eq!(support::get(weft.addr("public"), "/").await.status, 200);
    let again = support::get(weft.addr("public"), "/").await;
    assert_eq!((again.status, again.body.as_str()), (200, "ok"), "the GET went again on a new connection");
    assert_eq!(web.connections(), 2);
    // A POST may have been acted on: it is not sent twice.
    let post = raw_exchange(
        weft.addr("public"),
        b"POST /order HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .await;
    assert_eq!(post.status, 502, "{post:?}");
    assert_eq!(posts.load(std::sync::atomic::Ordering::SeqCst), 1, "the endpoint saw the POST once");
    assert_eq!(web.connections(), 2, "no new connection was opened for it");
}

/// An upstream that answers "early" as soon as a request's head is in, then reads its body,
/// and serves the next; the bodies it read are in the log.
async fn answering_early() -> (upstream::Upstream, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let uploads = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = uploads.clone();
    let web = upstream::raw_tcp(move |mut stream| {
        let log = log.clone();
        async move {
            let mut pending = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                while !pending.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&chunk[..n]),
                    }
                }
                stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly").await.unwrap();
                let Some(request) = upstream::read_raw_request(&mut stream, &mut pending).await else { return };
                log.lock().unwrap().push(request.split_once("\r\n\r\n").unwrap().1.to_owned());
            }
        }
    })
    .await;
    (web, uploads)
}

#[tokio::test]
async fn an_upstream_that_answers_before_the_upload_ends_still_gets_all_of_it() {
    use tokio::io::AsyncWriteExt;
    let (web, uploads) = answering_early().await;
    let weft = Weft::start(&one_cluster(&[web.endpoint()])).await;
    let mut client = tokio::net::TcpStream::connect(weft.addr("public")).await.unwrap();
    client.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234").await.unwrap();
    let early = support::read_response(&mut client).await;
    assert_eq!((early.status, early.body.as_str()), (200, "early"), "the answer came before the upload ended");
    client.write_all(b"56789").await.unwrap();
    support::eventually("the upstream to get the whole upload", || {
        let uploads = uploads.clone();
        async move { uploads.lock().unwrap().first().map(String::as_str) == Some("0123456789") }
    })
    .await;
    client.write_all(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let next = support::read_response(&mut client).await;
    assert_eq!((next.status, next.body.as_str()), (200, "early"), "the client's next request is served");
}

#[tokio::test]
async fn at_max_connections_a_connection_back_from_its_upload_makes_room_for_a_waiting_request() {
    use tokio::io::AsyncWriteExt;
    let (web, uploads) = answering_early().await;
    // One connection in all, and a connect timeout long enough that a request left waiting
    // for a place would be seen waiting.
    let cluster = format!(
        "  - name: web\n    endpoints: [\"{}\"]\n    connect_timeout: 10s\n    circuit_breaker: {{ max_connections: 1 }}\n",
        web.endpoint()
    );
    let weft = Weft::start(&simple_config(&cluster)).await;
    let mut uploading = tokio::net::TcpStream::connect(weft.addr("public")).await.unwrap();
    uploading.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234").await.unwrap();
    let early = support::read_response(&mut uploading).await;
    assert_eq!(early.status, 200, "the answer came before the upload ended");
    // The one connection is still taking the upload: the next request waits for a place.
    let started = std::time::Instant::now();
    let addr = weft.addr("public");
    let next = tokio::spawn(async move { support::get(addr, "/next").await });
    support::eventually("the next request to be on its way to the endpoint", || async {
        weft.admin_json("/clusters").await["clusters"][0]["endpoints"][0]["in_flight"] == 1
    })
    .await;
    uploading.write_all(b"56789").await.unwrap();
    let next = next.await.unwrap();
    assert_eq!((next.status, next.body.as_str()), (200, "early"), "served once the upload was done");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "not left waiting out the connect timeout");
    assert_eq!(uploads.lock().unwrap().first().map(String::as_str), Some("0123456789"));
}
