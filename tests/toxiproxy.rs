//! The Toxiproxy-compatible API end to end: a real `weft proxy --toxiproxy-listen`, a real TCP
//! echo service, and Toxiproxy's own clients (Python `toxiproxy-python` and Node
//! `toxiproxy-node-client`, installed by scripts/test) making proxies and toxics; plus the API's
//! shapes and errors as raw HTTP, a config reload that keeps the proxies, and a toxic reaching a
//! connection already open.

#[allow(unused_imports)] // the shared support re-exports what other targets use
mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use support::upstream::{tcp_echo, Upstream};
use support::weft::metric;
use support::{raw_exchange, TempDir, Weft, PATIENCE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A config with one http listener and no tcp listener: the Toxiproxy proxies live beside it.
fn config(name: &str) -> String {
    format!(
        r#"
listeners:
  - name: {name}
    address: 127.0.0.1:0
    protocol: http
    cluster: none
clusters:
  - name: none
    endpoints: ["127.0.0.1:9"]
"#
    )
}

async fn start() -> (Weft, SocketAddr) {
    let weft =
        Weft::start_with(TempDir::new("toxiproxy"), &config("web"), &["--toxiproxy-listen", "127.0.0.1:0"]).await;
    let api = weft.toxiproxy_api().await;
    (weft, api)
}

/// An HTTP call to the API: status and JSON body (Null when empty).
async fn call(api: SocketAddr, method: &str, path: &str, body: Option<serde_json::Value>) -> (u16, serde_json::Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: toxiproxy\r\nuser-agent: test\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let response = raw_exchange(api, request.as_bytes()).await;
    let json = if response.body.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&response.body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {response:?}"))
    };
    (response.status, json)
}

/// Sends `payload` on `conn` and reads the echo back; how long that took.
async fn echo_on(conn: &mut TcpStream, payload: &[u8]) -> std::io::Result<Duration> {
    let start = std::time::Instant::now();
    conn.write_all(payload).await?;
    let mut got = vec![0; payload.len()];
    tokio::time::timeout(PATIENCE, conn.read_exact(&mut got)).await.expect("an answer in time")?;
    assert_eq!(got, payload);
    Ok(start.elapsed())
}

async fn echo_once(address: &str) -> std::io::Result<Duration> {
    let mut conn = TcpStream::connect(address).await?;
    echo_on(&mut conn, b"hello").await
}

/// Where the test set-up installed the real clients (scripts/test).
fn clients() -> PathBuf {
    std::env::var_os("WEFT_TEST_CLIENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-clients"))
}

/// Runs a client script to its end (killed when the time is up or the test fails).
async fn run_client(program: &str, script: &str, env: (&str, PathBuf), api: SocketAddr, echo: &Upstream) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/clients").join(script);
    let child = tokio::process::Command::new(program)
        .arg(&script)
        .arg(api.port().to_string())
        .arg(echo.endpoint())
        .env(env.0, &env.1)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .unwrap_or_else(|_| panic!("{program} {} did not finish in time", script.display()))
        .unwrap_or_else(|e| panic!("cannot run {program} (the test set-up installs it): {e}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{program} client failed ({}):\n{stdout}\n{stderr}", output.status);
    stdout.into_owned()
}

#[tokio::test]
async fn the_python_client_adds_latency_and_reset_peer_and_resets() {
    let python = clients().join("python");
    assert!(
        python.join("toxiproxy").is_dir(),
        "toxiproxy-python is not in {} (scripts/test installs it)",
        python.display()
    );
    let echo = tcp_echo().await;
    let (weft, api) = start().await;
    let out = run_client("python3", "toxiproxy_python.py", ("PYTHONPATH", python), api, &echo).await;
    assert!(out.contains("python client: ok"), "{out}");
    // The echo made under the latency toxic is counted. The plain echo before it may be counted
    // too: a toxic reaches open connections, and weft may not have seen that one close yet.
    let metrics = weft.metrics().await;
    let affected = metric(&metrics, r#"weft_toxic_connections_total{listener="python_echo",toxic="latency"}"#);
    assert!(matches!(affected, Some(n) if (1.0..=2.0).contains(&n)), "{metrics}");
}

#[tokio::test]
async fn the_node_client_adds_latency_and_reset_peer_and_resets() {
    let node = clients().join("node").join("node_modules");
    assert!(
        node.join("toxiproxy-node-client").is_dir(),
        "toxiproxy-node-client is not in {} (scripts/test installs it)",
        node.display()
    );
    let echo = tcp_echo().await;
    let (_weft, api) = start().await;
    let out = run_client("node", "toxiproxy_node.js", ("NODE_PATH", node), api, &echo).await;
    assert!(out.contains("node client: ok"), "{out}");
}

#[tokio::test]
async fn the_api_answers_with_toxiproxys_shapes_status_codes_and_errors() {
    let echo = tcp_echo().await;
    let (_weft, api) = start().await;
    let (status, version) = call(api, "GET", "/version", None).await;
    assert_eq!(status, 200);
    assert!(version["version"].is_string());

    let create = serde_json::json!({ "name": "db", "listen": "127.0.0.1:0", "upstream": echo.endpoint() });
    let (status, made) = call(api, "POST", "/proxies", Some(create.clone())).await;
    assert_eq!(status, 201, "{made}");
    let listen = made["listen"].as_str().unwrap().to_owned();
    assert!(!listen.ends_with(":0"), "the port actually bound: {listen}");
    assert_eq!(made["enabled"], true);
    assert_eq!(made["toxics"], serde_json::json!([]));
    assert_eq!(
        call(api, "POST", "/proxies", Some(create)).await,
        (409, serde_json::json!({ "error": "proxy already exists", "status": 409 }))
    );
    assert_eq!(
        call(api, "POST", "/proxies", Some(serde_json::json!({ "name": "x" }))).await,
        (400, serde_json::json!({ "error": "missing required field: upstream", "status": 400 }))
    );
    let (status, error) = call(api, "POST", "/proxies", Some(serde_json::json!("nope"))).await;
    assert_eq!((status, error["status"].as_u64()), (400, Some(400)), "{error}");
    assert_eq!(call(api, "GET", "/proxies/ghost", None).await.0, 404);
    assert_eq!(call(api, "GET", "/proxies/ghost/toxics", None).await.1["error"], "proxy not found");

    // Toxics: create (200), defaults, errors, update, list, delete.
    let (status, toxic) = call(
        api,
        "POST",
        "/proxies/db/toxics",
        Some(serde_json::json!({ "type": "latency", "attributes": { "latency": 50 } })),
    )
    .await;
    assert_eq!(status, 200, "{toxic}");
    assert_eq!(
        toxic,
        serde_json::json!({ "name": "latency_downstream", "type": "latency", "stream": "downstream", "toxicity": 1.0,
            "attributes": { "latency": 50, "jitter": 0 } })
    );
    let again = serde_json::json!({ "type": "latency" });
    assert_eq!(call(api, "POST", "/proxies/db/toxics", Some(again)).await.1["error"], "toxic already exists");
    let bad = serde_json::json!({ "type": "teleport" });
    assert_eq!(call(api, "POST", "/proxies/db/toxics", Some(bad)).await.0, 400);
    let bad = serde_json::json!({ "type": "latency", "stream": "sideways", "name": "s" });
    let (status, error) = call(api, "POST", "/proxies/db/toxics", Some(bad)).await;
    assert_eq!(
        (status, error["error"].as_str()),
        (400, Some("stream was invalid, can be either upstream or downstream"))
    );
    let (status, updated) = call(
        api,
        "POST",
        "/proxies/db/toxics/latency_downstream",
        Some(serde_json::json!({ "attributes": { "jitter": 5 } })),
    )
    .await;
    assert_eq!((status, &updated["attributes"]), (200, &serde_json::json!({ "latency": 50, "jitter": 5 })));
    let up = serde_json::json!({ "type": "limit_data", "stream": "upstream", "attributes": { "bytes": 1000 } });
    assert_eq!(call(api, "POST", "/proxies/db/toxics", Some(up)).await.0, 200);
    let (_, listed) = call(api, "GET", "/proxies/db/toxics", None).await;
    let names: Vec<_> = listed.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["limit_data_upstream", "latency_downstream"], "upstream toxics first, as Toxiproxy lists them");
    assert_eq!(call(api, "GET", "/proxies/db/toxics/latency_downstream", None).await.1["attributes"]["jitter"], 5);
    assert_eq!(call(api, "DELETE", "/proxies/db/toxics/latency_downstream", None).await.0, 204);
    assert_eq!(call(api, "DELETE", "/proxies/db/toxics/latency_downstream", None).await.1["error"], "toxic not found");
    assert_eq!(call(api, "GET", "/proxies", None).await.1["db"]["toxics"].as_array().unwrap().len(), 1);

    // Disabled: the listener is closed and open connections are cut; enabled again: it serves.
    let mut open = TcpStream::connect(&listen).await.unwrap();
    echo_on(&mut open, b"before").await.unwrap();
    let (status, down) = call(api, "PATCH", "/proxies/db", Some(serde_json::json!({ "enabled": false }))).await;
    assert_eq!((status, &down["enabled"]), (200, &serde_json::json!(false)));
    let mut rest = Vec::new();
    let cut = tokio::time::timeout(PATIENCE, open.read_to_end(&mut rest)).await.expect("the connection is cut");
    assert!(cut.is_err() || rest.is_empty(), "{cut:?} {rest:?}");
    assert!(TcpStream::connect(&listen).await.is_err(), "a disabled proxy refuses connections");
    let (status, up) = call(api, "POST", "/proxies/db", Some(serde_json::json!({ "enabled": true }))).await;
    assert_eq!((status, up["listen"].as_str()), (200, Some(listen.as_str())), "it listens where it did");
    echo_once(&listen).await.unwrap();

    // Populate: kept when unchanged (with its toxics), made when new, refused whole when wrong.
    let list = serde_json::json!([
        { "name": "db", "listen": listen, "upstream": echo.endpoint() },
        { "name": "cache", "listen": "127.0.0.1:0", "upstream": echo.endpoint() },
    ]);
    let (status, populated) = call(api, "POST", "/populate", Some(list)).await;
    assert_eq!(status, 201, "{populated}");
    let proxies = populated["proxies"].as_array().unwrap();
    assert_eq!(proxies.len(), 2);
    assert_eq!(proxies[0]["toxics"].as_array().unwrap().len(), 1, "db was kept with its toxic");
    echo_once(proxies[1]["listen"].as_str().unwrap()).await.unwrap();
    let wrong = serde_json::json!([{ "name": "more", "upstream": echo.endpoint() }, { "name": "", "upstream": "x:1" }]);
    let (status, error) = call(api, "POST", "/populate", Some(wrong)).await;
    assert_eq!((status, error["error"].as_str()), (400, Some("missing required field: name at proxy 2")));
    assert_eq!(call(api, "GET", "/proxies/more", None).await.0, 404, "nothing of a refused list was made");

    // Reset: every proxy enabled, every toxic gone.
    call(api, "POST", "/proxies/cache", Some(serde_json::json!({ "enabled": false }))).await;
    assert_eq!(call(api, "POST", "/reset", None).await, (204, serde_json::Value::Null));
    let (_, all) = call(api, "GET", "/proxies", None).await;
    assert_eq!((&all["cache"]["enabled"], &all["db"]["toxics"]), (&serde_json::json!(true), &serde_json::json!([])));

    assert_eq!(call(api, "DELETE", "/proxies/cache", None).await.0, 204);
    assert_eq!(call(api, "DELETE", "/proxies/cache", None).await.0, 404);
    let browser = "GET /proxies HTTP/1.1\r\nhost: x\r\nuser-agent: Mozilla/5.0\r\nconnection: close\r\n\r\n";
    assert_eq!(raw_exchange(api, browser.as_bytes()).await.status, 403, "browsers are refused, as by Toxiproxy");
}

#[tokio::test]
async fn a_config_reload_keeps_the_toxiproxy_proxies_and_their_toxics() {
    let echo = tcp_echo().await;
    let (mut weft, api) = start().await;
    let create = serde_json::json!({ "name": "kept", "listen": "127.0.0.1:0", "upstream": echo.endpoint() });
    let (_, made) = call(api, "POST", "/proxies", Some(create)).await;
    let listen = made["listen"].as_str().unwrap().to_owned();
    let toxic = serde_json::json!({ "type": "latency", "attributes": { "latency": 1 } });
    assert_eq!(call(api, "POST", "/proxies/kept/toxics", Some(toxic)).await.0, 200);
    let mut open = TcpStream::connect(&listen).await.unwrap();
    echo_on(&mut open, b"before").await.unwrap();

    weft.reload(&config("web2")).await;
    let (status, after) = call(api, "GET", "/proxies/kept", None).await;
    assert_eq!((status, after["toxics"].as_array().map(Vec::len)), (200, Some(1)), "{after}");
    echo_on(&mut open, b"after, same connection").await.unwrap();
    echo_once(&listen).await.unwrap();

    // A config listener may not take a Toxiproxy proxy's name; the running config stays.
    let version = weft.config_version().await;
    std::fs::write(&weft.config_path, config("kept")).unwrap();
    weft.signal("HUP");
    let running = &weft;
    support::eventually("the refusal in the log", || async move {
        running.stderr().contains("is the name of a proxy made through the Toxiproxy API")
    })
    .await;
    assert_eq!(weft.config_version().await, version);
}

#[tokio::test]
async fn a_toxic_reaches_a_connection_already_open() {
    let echo = tcp_echo().await;
    let (weft, api) = start().await;
    let create = serde_json::json!({ "name": "open", "listen": "127.0.0.1:0", "upstream": echo.endpoint() });
    let (_, made) = call(api, "POST", "/proxies", Some(create)).await;
    let mut conn = TcpStream::connect(made["listen"].as_str().unwrap()).await.unwrap();
    let plain = echo_on(&mut conn, b"first").await.unwrap();
    assert!(plain < Duration::from_millis(1000), "{plain:?}");

    let toxic = serde_json::json!({ "type": "latency", "stream": "upstream", "attributes": { "latency": 1500 } });
    assert_eq!(call(api, "POST", "/proxies/open/toxics", Some(toxic)).await.0, 200);
    let delayed = echo_on(&mut conn, b"second").await.unwrap();
    assert!(delayed >= Duration::from_millis(1500), "the open connection is delayed too: {delayed:?}");

    let reset = serde_json::json!({ "type": "reset_peer", "stream": "upstream" });
    assert_eq!(call(api, "POST", "/proxies/open/toxics", Some(reset)).await.0, 200);
    let error = echo_on(&mut conn, b"third").await.expect_err("reset");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
    let metrics = weft.metrics().await;
    assert_eq!(metric(&metrics, r#"weft_toxics_active{listener="open"}"#), Some(2.0), "{metrics}");
}
