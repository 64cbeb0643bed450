//! TLS and L4 through a real weft process: https listeners with ALPN, client certificates (mTLS)
//! and the identity they prove, TLS and mTLS to upstreams (with HTTP/2 by ALPN), and tcp
//! listeners, plain and TLS-terminating, with their per-connection access log.

mod support;

use support::certs::Ca;
use support::upstream::{echo, echo_with, raw_tcp, read_raw_request, tcp_echo};
use support::weft::metric;
use support::{curl, curl_ok, eventually, get, raw_exchange, TempDir, Weft, PATIENCE};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const FRONTEND: &str = "spiffe://weft.local/ns/default/sa/frontend";

/// curl arguments for `https://localhost:PORT{path}`, trusting `ca` and resolving to the listener.
fn https_args(ca: &Ca, addr: std::net::SocketAddr, path: &str) -> Vec<String> {
    let port = addr.port();
    vec![
        "--cacert".into(),
        ca.cert_path.to_str().unwrap().into(),
        "--resolve".into(),
        format!("localhost:{port}:127.0.0.1"),
        format!("https://localhost:{port}{path}"),
    ]
}

async fn curl_strs(args: &[String]) -> std::process::Output {
    curl(&args.iter().map(String::as_str).collect::<Vec<_>>()).await
}

fn rejected_tls(metrics: &str, listener: &str) -> f64 {
    metric(metrics, &format!("weft_downstream_connections_rejected_total{{listener=\"{listener}\",reason=\"tls\"}}"))
        .unwrap_or(0.0)
}

#[tokio::test]
async fn https_listener_speaks_h2_and_http1_by_alpn() {
    let dir = TempDir::new("https");
    let ca = Ca::new(dir.path(), "test");
    ca.server(dir.path(), "server", &[]);
    let web = echo("web").await;
    // Relative certificate paths: they resolve against the config file's folder.
    let config = format!(
        r#"
listeners:
  - name: secure
    address: 127.0.0.1:0
    protocol: https
    cluster: web
    access_log: true
    tls:
      cert: server.pem
      key: server.key
clusters:
  - name: web
    endpoints: ["{}"]
"#,
        web.endpoint()
    );
    let weft = Weft::start_in(dir, &config).await;
    let addr = weft.addr("secure");

    for (flag, expected) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let mut args = https_args(&ca, addr, "/hello");
        args.extend([flag.to_string(), "-w".into(), "\n%{http_version}".into()]);
        let out = curl_ok(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
        let (body, version) = out.rsplit_once('\n').unwrap();
        assert_eq!(version, expected, "curl {flag} gets HTTP/{expected} by ALPN");
        let seen: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(seen["path"], "/hello");
        assert_eq!(seen["headers"]["x-forwarded-proto"], "https", "the upstream learns the client used TLS");
    }

    let log = weft.access_log();
    assert_eq!(log.len(), 2, "{log:?}");
    let protocols: Vec<_> = log.iter().map(|l| l["protocol"].as_str().unwrap().to_string()).collect();
    assert_eq!(protocols, ["HTTP/2.0", "HTTP/1.1"]);
    for line in &log {
        assert_eq!(line["status"], 200);
        assert!(line["tls_version"].as_str().unwrap().starts_with("TLSv1."), "{line}");
        assert!(line["source_principal"].is_null(), "no client certificate, no principal: {line}");
    }
}

#[tokio::test]
async fn mtls_listener_requires_a_client_certificate_from_its_ca() {
    let dir = TempDir::new("mtls");
    let ca = Ca::new(dir.path(), "test");
    ca.server(dir.path(), "server", &[]);
    let frontend = ca.client(dir.path(), "frontend", FRONTEND);
    let rogue_ca = Ca::new(dir.path(), "rogue");
    let intruder = rogue_ca.client(dir.path(), "intruder", FRONTEND);
    let web = echo("web").await;
    let config = format!(
        r#"
listeners:
  - name: mesh
    address: 127.0.0.1:0
    protocol: https
    cluster: web
    access_log: true
    tls:
      cert: server.pem
      key: server.key
      client_ca: test-ca.pem
clusters:
  - name: web
    endpoints: ["{}"]
"#,
        web.endpoint()
    );
    let weft = Weft::start_in(dir, &config).await;
    let addr = weft.addr("mesh");

    // With a certificate the listener's CA signed: served, and the access log names the client.
    let mut args = https_args(&ca, addr, "/who");
    args.extend([
        "--cert".into(),
        frontend.cert.to_str().unwrap().into(),
        "--key".into(),
        frontend.key.to_str().unwrap().into(),
        "-H".into(),
        "x-request-id: with-cert".into(),
    ]);
    let out = curl_ok(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let seen: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(seen["path"], "/who");
    let log = weft.access_log();
    let line = log.iter().find(|l| l["request_id"] == "with-cert").expect("access log line");
    assert_eq!(line["status"], 200);
    assert_eq!(line["source_principal"], FRONTEND);
    assert!(line["tls_version"].as_str().unwrap().starts_with("TLSv1."), "{line}");
    assert_eq!(rejected_tls(&weft.metrics().await, "mesh"), 0.0);

    // Without a certificate: the handshake fails, no HTTP response at all.
    let output = curl_strs(&https_args(&ca, addr, "/who")).await;
    assert!(!output.status.success(), "curl without a client certificate must fail");
    assert!(output.stdout.is_empty(), "no response: {}", String::from_utf8_lossy(&output.stdout));
    let admin = weft.admin;
    eventually("the refused handshake to be counted", || async move {
        rejected_tls(&get(admin, "/metrics").await.body, "mesh") == 1.0
    })
    .await;

    // A certificate from another CA (even with the same identity) is refused too.
    let mut args = https_args(&ca, addr, "/who");
    args.extend([
        "--cert".into(),
        intruder.cert.to_str().unwrap().into(),
        "--key".into(),
        intruder.key.to_str().unwrap().into(),
    ]);
    let output = curl_strs(&args).await;
    assert!(!output.status.success(), "curl with a foreign client certificate must fail");
    assert!(output.stdout.is_empty(), "no response: {}", String::from_utf8_lossy(&output.stdout));
    eventually("the second refused handshake to be counted", || async move {
        rejected_tls(&get(admin, "/metrics").await.body, "mesh") == 2.0
    })
    .await;

    assert_eq!(web.requests(), 1, "only the authenticated request reached the upstream");
    assert_eq!(weft.access_log().len(), 1, "refused connections make no request log lines");
}

#[tokio::test]
async fn upstream_tls_is_verified_against_the_cluster_ca() {
    let dir = TempDir::new("upstream-tls");
    let ca = Ca::new(dir.path(), "test");
    let _other = Ca::new(dir.path(), "other");
    let upstream_cert = ca.server(dir.path(), "upstream", &[]);
    let secure = echo_with("secure", Some(upstream_cert.server_config(None, &[]))).await;
    let config = format!(
        r#"
listeners:
  - name: trusting
    address: 127.0.0.1:0
    cluster: secure
  - name: mistrusting
    address: 127.0.0.1:0
    cluster: mistrusted
clusters:
  - name: secure
    endpoints: ["{0}"]
    tls:
      ca: test-ca.pem
      server_name: localhost
  - name: mistrusted
    endpoints: ["{0}"]
    tls:
      ca: other-ca.pem
      server_name: localhost
"#,
        secure.endpoint()
    );
    let weft = Weft::start_in(dir, &config).await;

    let response = get(weft.addr("trusting"), "/over-tls").await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("x-upstream").as_deref(), Some("secure"));
    let seen: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(seen["path"], "/over-tls");

    let response = get(weft.addr("mistrusting"), "/over-tls").await;
    assert_eq!(response.status, 502, "{response:?}");
    assert_eq!(response.header("x-weft-error").as_deref(), Some("upstream connect failure"));
    assert_eq!(secure.requests(), 1, "the unverified upstream got no request");
}

/// weft with listener `public` in front of `upstream` over TLS, trusting the test CA.
fn over_tls_to(upstream: &support::upstream::Upstream, cluster_setting: &str) -> String {
    format!(
        r#"
listeners:
  - {{ name: public, address: "127.0.0.1:0", cluster: secure }}
clusters:
  - name: secure
    endpoints: ["{}"]
    {cluster_setting}
    tls:
      ca: test-ca.pem
      server_name: localhost
"#,
        upstream.endpoint()
    )
}

/// An upstream over TLS that ends each connection after one answer by TLS alone: its
/// close_notify goes out with the answer, in one write, and the TCP connection stays open.
/// weft reads both at once, so the socket shows nothing more; a POST sent on that connection
/// again would be lost (502).
#[tokio::test]
async fn a_tls_upstream_that_closes_with_its_answer_gets_the_next_request_on_a_new_connection() {
    let dir = TempDir::new("close-notify");
    let ca = Ca::new(dir.path(), "test");
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.server(dir.path(), "upstream", &[]).server_config(None, &[]));
    let upstream = raw_tcp(move |stream| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(mut tls) = acceptor.accept(stream).await else { return };
            if read_raw_request(&mut tls, &mut Vec::new()).await.is_none() {
                return;
            }
            let (tcp, session) = tls.get_mut();
            std::io::Write::write_all(&mut session.writer(), b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                .unwrap();
            session.send_close_notify();
            let mut wire = Vec::new();
            while session.wants_write() {
                session.write_tls(&mut wire).unwrap();
            }
            tcp.write_all(&wire).await.unwrap();
            // Held open until weft lets go of it: TLS alone said the connection is over.
            let _ = tcp.read(&mut [0u8; 1]).await;
        }
    })
    .await;
    let weft = Weft::start_in(dir, &over_tls_to(&upstream, "")).await;
    for n in 1..=2 {
        let post = b"POST /form HTTP/1.1\r\nHost: test.local\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi";
        let answer = raw_exchange(weft.addr("public"), post).await;
        assert_eq!((answer.status, answer.body.as_str()), (200, "ok\n"), "POST {n}: {answer:?}");
        assert_eq!(upstream.connections(), n, "each POST went on a connection of its own");
    }
}

#[tokio::test]
async fn a_tls_upstream_connection_weft_lets_go_of_ends_with_close_notify() {
    let dir = TempDir::new("tls-end");
    let ca = Ca::new(dir.path(), "test");
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.server(dir.path(), "upstream", &[]).server_config(None, &[]));
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
    let upstream = raw_tcp(move |stream| {
        let (acceptor, ended_tx) = (acceptor.clone(), ended_tx.clone());
        async move {
            let Ok(mut tls) = acceptor.accept(stream).await else { return };
            if read_raw_request(&mut tls, &mut Vec::new()).await.is_none() {
                return;
            }
            tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n").await.unwrap();
            tls.flush().await.unwrap();
            // A clean end reads as the end of the stream; a TCP close without close_notify is
            // an error (UnexpectedEof).
            let end = tls.read(&mut [0u8; 64]).await.map_err(|e| e.kind());
            let _ = ended_tx.send(end);
        }
    })
    .await;
    // No idle connections are kept: the connection goes as soon as its answer is read.
    let weft = Weft::start_in(dir, &over_tls_to(&upstream, "max_idle_connections: 0")).await;
    assert_eq!(get(weft.addr("public"), "/").await.status, 200);
    let end = tokio::time::timeout(PATIENCE, ended.recv()).await.expect("weft closed the connection in time");
    assert_eq!(end, Some(Ok(0)), "the upstream read close_notify, not a cut connection");
}

/// An upstream that requires client certificates from the test CA, and weft in front of it with
/// two clusters: `with_cert` presents one, `without_cert` does not.
async fn mtls_upstream_and_weft() -> (support::upstream::Upstream, Weft) {
    let dir = TempDir::new("upstream-mtls");
    let ca = Ca::new(dir.path(), "test");
    let upstream_cert = ca.server(dir.path(), "upstream", &[]);
    ca.client(dir.path(), "weft-client", "spiffe://weft.local/ns/default/sa/weft");
    let strict = echo_with("strict", Some(upstream_cert.server_config(Some(&ca), &[]))).await;
    let config = format!(
        r#"
listeners:
  - name: with_cert
    address: 127.0.0.1:0
    cluster: with_cert
  - name: without_cert
    address: 127.0.0.1:0
    cluster: without_cert
clusters:
  - name: with_cert
    endpoints: ["{0}"]
    tls:
      ca: test-ca.pem
      cert: weft-client.pem
      key: weft-client.key
      server_name: localhost
  - name: without_cert
    endpoints: ["{0}"]
    tls:
      ca: test-ca.pem
      server_name: localhost
"#,
        strict.endpoint()
    );
    let weft = Weft::start_in(dir, &config).await;
    (strict, weft)
}

#[tokio::test]
async fn upstream_mtls_presents_the_cluster_certificate() {
    let (strict, weft) = mtls_upstream_and_weft().await;

    let response = get(weft.addr("with_cert"), "/mutual").await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("x-upstream").as_deref(), Some("strict"));

    let response = get(weft.addr("without_cert"), "/mutual").await;
    assert_eq!(response.status, 502, "{response:?}");
    assert!(response.header("x-weft-error").is_some_and(|e| e.starts_with("upstream ")), "{response:?}");
    assert_eq!(strict.requests(), 1, "the upstream served only the authenticated proxy");
}

#[tokio::test]
async fn upstream_mtls_refusal_is_a_connect_failure() {
    let (_strict, weft) = mtls_upstream_and_weft().await;
    let response = get(weft.addr("without_cert"), "/mutual").await;
    assert_eq!(response.status, 502, "{response:?}");
    assert_eq!(
        response.header("x-weft-error").as_deref(),
        Some("upstream connect failure"),
        "a refused TLS handshake is a connect failure"
    );
    let metrics = weft.metrics().await;
    assert_eq!(
        metric(&metrics, "weft_upstream_errors_total{cluster=\"without_cert\",reason=\"connect\"}"),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn upstream_http2_is_negotiated_by_alpn() {
    let dir = TempDir::new("upstream-h2");
    let ca = Ca::new(dir.path(), "test");
    let upstream_cert = ca.server(dir.path(), "upstream", &[]);
    let both = echo_with("both", Some(upstream_cert.server_config(None, &[b"h2", b"http/1.1"]))).await;
    let config = format!(
        r#"
listeners:
  - name: h2
    address: 127.0.0.1:0
    cluster: h2
  - name: h1
    address: 127.0.0.1:0
    cluster: h1
clusters:
  - name: h2
    endpoints: ["{0}"]
    protocol: http2
    tls:
      ca: test-ca.pem
      server_name: localhost
  - name: h1
    endpoints: ["{0}"]
    protocol: http1
    tls:
      ca: test-ca.pem
      server_name: localhost
"#,
        both.endpoint()
    );
    let weft = Weft::start_in(dir, &config).await;

    // The client speaks HTTP/1.1 to weft either way; the upstream hop is what ALPN decides.
    for (listener, version) in [("h2", "HTTP/2.0"), ("h1", "HTTP/1.1")] {
        let response = get(weft.addr(listener), "/version").await;
        assert_eq!(response.status, 200, "{listener}: {response:?}");
        let seen: serde_json::Value = serde_json::from_str(&response.body).unwrap();
        assert_eq!(seen["version"], version, "cluster {listener}: {seen}");
        assert_eq!(seen["path"], "/version");
    }
    // And over h2 from the client, to the h2 cluster.
    let out = curl_ok(&["--http2-prior-knowledge", &weft.url("h2", "/both-ways")]).await;
    let seen: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(seen["version"], "HTTP/2.0", "{seen}");
}

/// Writes each message and reads it back on one connection, then closes the sending side and
/// expects a clean end. Returns the bytes sent (the same number came back).
async fn echo_round_trips<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, messages: &[Vec<u8>]) -> u64 {
    let mut total = 0;
    for message in messages {
        stream.write_all(message).await.unwrap();
        let mut back = vec![0; message.len()];
        tokio::time::timeout(PATIENCE, stream.read_exact(&mut back)).await.expect("the echo in time").unwrap();
        assert!(back == *message, "the echo differs from what was sent ({} bytes)", message.len());
        total += message.len() as u64;
    }
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest)).await.expect("the close in time").unwrap();
    assert!(rest.is_empty(), "nothing more after the close: {rest:?}");
    total
}

#[tokio::test]
async fn tcp_listeners_splice_bytes_plain_and_over_tls() {
    let dir = TempDir::new("tcp");
    let ca = Ca::new(dir.path(), "test");
    ca.server(dir.path(), "server", &[]);
    let upstream = tcp_echo().await;
    let config = format!(
        r#"
listeners:
  - name: raw
    address: 127.0.0.1:0
    protocol: tcp
    cluster: echo
    access_log: true
  - name: raw_tls
    address: 127.0.0.1:0
    protocol: tcp
    cluster: echo
    access_log: true
    tls:
      cert: server.pem
      key: server.key
clusters:
  - name: echo
    endpoints: ["{}"]
"#,
        upstream.endpoint()
    );
    let weft = Weft::start_in(dir, &config).await;

    // Plain: several messages on one connection, then a second connection.
    let first: Vec<Vec<u8>> = ["hello", "through", "weft\n"].iter().map(|m| m.as_bytes().to_vec()).collect();
    let stream = tokio::net::TcpStream::connect(weft.addr("raw")).await.unwrap();
    assert_eq!(echo_round_trips(stream, &first).await, 17);
    let second = vec![b"again".to_vec(), vec![7u8; 4096]];
    let stream = tokio::net::TcpStream::connect(weft.addr("raw")).await.unwrap();
    assert_eq!(echo_round_trips(stream, &second).await, 4101);

    // TLS terminated by weft, plain to the upstream.
    let connector = tokio_rustls::TlsConnector::from(ca.client_config(&[]));
    let tcp = tokio::net::TcpStream::connect(weft.addr("raw_tls")).await.unwrap();
    let tls = tokio::time::timeout(PATIENCE, connector.connect("localhost".try_into().unwrap(), tcp))
        .await
        .expect("handshake in time")
        .expect("TLS handshake with the tcp listener");
    let secret = vec![b"secret bytes".to_vec(), (0..=255u8).cycle().take(16 * 1024).collect()];
    assert_eq!(echo_round_trips(tls, &secret).await, 12 + 16 * 1024);
    assert_eq!(upstream.connections(), 3);

    // One access log line per connection, with the bytes each way.
    let lines_for = |listener: &str| -> Vec<serde_json::Value> {
        weft.access_log().into_iter().filter(|l| l["listener"] == listener).collect()
    };
    eventually("a log line for each tcp connection", || {
        let ready = lines_for("raw").len() == 2 && lines_for("raw_tls").len() == 1;
        async move { ready }
    })
    .await;
    let mut bytes: Vec<(u64, u64)> = lines_for("raw")
        .iter()
        .map(|l| (l["bytes_received"].as_u64().unwrap(), l["bytes_sent"].as_u64().unwrap()))
        .collect();
    bytes.sort();
    assert_eq!(bytes, [(17, 17), (4101, 4101)]);
    let line = &lines_for("raw_tls")[0];
    assert_eq!(line["bytes_received"], 12 + 16 * 1024, "plaintext bytes are counted: {line}");
    assert_eq!(line["bytes_sent"], 12 + 16 * 1024, "{line}");
    for line in weft.access_log() {
        assert_eq!(line["cluster"], "echo");
        assert_eq!(line["upstream"], upstream.endpoint());
        assert_eq!(line["outcome"], "closed", "{line}");
    }
    let metrics = weft.metrics().await;
    assert_eq!(metric(&metrics, "weft_tcp_received_bytes_total{listener=\"raw\"}"), Some(4118.0), "{metrics}");
}
