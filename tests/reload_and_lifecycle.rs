//! A proxy's life: start from a file, reload on SIGHUP or on change (the bad file refused, the
//! good config kept), no failed request across reloads, drain on SIGTERM, and the command line's
//! exit codes and messages.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::upstream::echo;
use support::weft::{binary, metric, run_with_config};
use support::{eventually, get, TempDir, Weft};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(cluster_endpoint: &str, extra_listener: bool) -> String {
    let extra = if extra_listener { "  - name: extra\n    address: 127.0.0.1:0\n    cluster: web\n" } else { "" };
    format!(
        r#"
listeners:
  - name: public
    address: 127.0.0.1:0
    cluster: web
{extra}clusters:
  - name: web
    endpoints: ["{cluster_endpoint}"]
"#
    )
}

async fn upstream_name(weft: &Weft) -> String {
    let response = get(weft.addr("public"), "/").await;
    assert_eq!(response.status, 200, "{response:?}");
    let body: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    body["upstream"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn sighup_reloads_and_an_invalid_file_is_refused_while_the_old_config_serves() {
    let (a, b) = (echo("a").await, echo("b").await);
    let mut weft = Weft::start(&config(&a.endpoint(), false)).await;
    assert_eq!(upstream_name(&weft).await, "a");

    weft.reload(&config(&b.endpoint(), true)).await;
    assert_eq!(upstream_name(&weft).await, "b");
    assert_eq!(get(weft.addr("extra"), "/").await.status, 200, "a listener added by a reload serves");
    let version = weft.config_version().await;

    std::fs::write(&weft.config_path, config("127.0.0.1:99999", false)).unwrap();
    weft.signal("HUP");
    let admin = weft.admin;
    eventually("the refusal to be counted", || async move {
        metric(&get(admin, "/metrics").await.body, "weft_config_reloads_total{result=\"rejected\"}").unwrap_or(0.0)
            >= 1.0
    })
    .await;
    let stderr = weft.stderr();
    assert!(
        stderr.contains(r#"clusters[0].endpoints[0]: invalid address \"127.0.0.1:99999\""#)
            || stderr.contains(r#"clusters[0].endpoints[0]: invalid address "127.0.0.1:99999""#),
        "the log names the field:\n{stderr}"
    );
    assert_eq!(weft.config_version().await, version, "the running config stays");
    assert_eq!(upstream_name(&weft).await, "b");
    assert_eq!(get(weft.addr("extra"), "/").await.status, 200);
}

#[tokio::test]
async fn a_changed_file_is_picked_up_without_a_signal() {
    let (a, b) = (echo("a").await, echo("b").await);
    let weft = Weft::start(&config(&a.endpoint(), false)).await;
    let before = weft.config_version().await;
    std::fs::write(&weft.config_path, config(&b.endpoint(), false)).unwrap();
    let admin = weft.admin;
    eventually("the changed file to load", || async move {
        let config: serde_json::Value = serde_json::from_str(&get(admin, "/config").await.body).unwrap_or_default();
        config["version"].as_u64().unwrap_or(0) > before
    })
    .await;
    assert_eq!(upstream_name(&weft).await, "b");
}

#[tokio::test]
async fn no_request_fails_across_reloads_under_load() {
    let (a, b) = (echo("a").await, echo("b").await);
    let mut weft = Weft::start(&config(&a.endpoint(), false)).await;
    let addr = weft.addr("public");
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut clients = Vec::new();
    for client in 0..4 {
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            // Client 0 also sends slow requests, so reloads happen while they are in flight.
            let path = if client == 0 { "/slow/150" } else { "/" };
            let stopped = stop.notified();
            tokio::pin!(stopped);
            loop {
                let request = http::Request::get(path).header("host", "x").body(support::upstream::full("")).unwrap();
                tokio::select! {
                    _ = &mut stopped => break,
                    result = sender.send_request(request) => match result {
                        Ok(response) if response.status() == 200 => { ok.fetch_add(1, Ordering::SeqCst); }
                        _ => { failed.fetch_add(1, Ordering::SeqCst); break; }
                    },
                }
            }
        }));
    }
    for round in 0..6 {
        let target = if round % 2 == 0 { &b } else { &a };
        weft.reload(&config(&target.endpoint(), round % 3 == 0)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.notify_waiters();
    for client in clients {
        client.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::SeqCst), 0, "no request failed across 6 reloads");
    assert!(ok.load(Ordering::SeqCst) > 20, "traffic flowed: {}", ok.load(Ordering::SeqCst));
    assert!(a.requests() > 0 && b.requests() > 0, "both configs served");
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let web = echo("web").await;
    let mut weft = Weft::start(&config(&web.endpoint(), false)).await;
    let addr = weft.addr("public");
    // An idle keep-alive connection, parked by the time the proxy is told to stop.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert_eq!(support::read_response(&mut idle).await.status, 200);
    let parked = "weft_downstream_connections_parked{listener=\"public\"}";
    eventually("the idle connection parks", || async { metric(&weft.metrics().await, parked) == Some(1.0) }).await;
    let in_flight = tokio::spawn(async move { get(addr, "/slow/800").await });
    eventually("the slow request to reach the upstream", || async { web.requests() == 2 }).await;
    weft.signal("TERM");
    let mut buffer = [0u8; 16];
    let read =
        tokio::time::timeout(support::PATIENCE, idle.read(&mut buffer)).await.expect("the idle connection closes");
    assert!(matches!(read, Ok(0) | Err(_)), "closed, not answered: {read:?}");
    assert!(!in_flight.is_finished(), "the idle connection closed at once, not after the request in flight");
    let response = in_flight.await.unwrap();
    assert_eq!(response.status, 200, "the in-flight request finished");
    let status = weft.wait_exit().await;
    assert_eq!(status.code(), Some(0));
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer accepting");
}

#[tokio::test]
async fn a_bad_config_file_exits_2_naming_the_field() {
    let dir = TempDir::new("cli");
    let path = dir.join("bad.yaml");
    std::fs::write(&path, config("127.0.0.1:99999", false)).unwrap();
    let output = run_with_config(&["proxy", "--config"], &path).await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(r#"{}: clusters[0].endpoints[0]: invalid address "127.0.0.1:99999""#, path.display())),
        "{stderr}"
    );

    std::fs::write(&path, "listeners:\n  - name: x\n    adress: 127.0.0.1:1\n").unwrap();
    let output = run_with_config(&["proxy", "--check", "--config"], &path).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("listeners[0].adress: unknown field `adress`"));

    let output = run_with_config(&["proxy", "--config"], &dir.join("missing.yaml")).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing.yaml: cannot read"));

    std::fs::write(&path, config("127.0.0.1:8000", false)).unwrap();
    let output = run_with_config(&["proxy", "--check", "--config"], &path).await;
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
}

#[tokio::test]
async fn the_admin_api_shows_config_and_clusters() {
    let web = echo("web").await;
    let weft = Weft::start(&config(&web.endpoint(), false)).await;
    assert_eq!(get(weft.admin, "/ready").await.status, 200);
    let dump = weft.admin_json("/config").await;
    assert_eq!(dump["version"], 1);
    assert!(dump["digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(dump["config"]["clusters"][0]["endpoints"][0], web.endpoint());
    assert_eq!(get(weft.addr("public"), "/").await.status, 200);
    let clusters = weft.admin_json("/clusters").await;
    let endpoint = &clusters["clusters"][0]["endpoints"][0];
    assert_eq!(endpoint["address"], web.endpoint());
    assert_eq!(endpoint["health"], "healthy");
    assert_eq!(endpoint["requests"], 1);
    assert_eq!(get(weft.admin, "/nope").await.status, 404);
}

#[tokio::test]
async fn every_example_config_is_valid() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let dir = entry.unwrap().path();
        for file in std::fs::read_dir(&dir).into_iter().flatten() {
            let path = file.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") && dir.ends_with("chaos") {
                // Chaos experiments, not proxy configs: they parse as experiments.
                let text = std::fs::read_to_string(&path).unwrap();
                let parsed = weft_control::chaos::spec::Spec::parse(&text, weft_config::Format::Yaml);
                assert!(parsed.is_ok(), "{}: {:?}", path.display(), parsed.err());
                checked += 1;
            } else if path.extension().is_some_and(|e| e == "yaml") {
                let output = run_with_config(&["proxy", "--check", "--config"], &path).await;
                assert!(output.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&output.stderr));
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "found the examples");
}

#[tokio::test]
async fn logs_can_be_json_lines() {
    let web = echo("web").await;
    let dir = TempDir::new("json-logs");
    let (config_path, log) = (dir.join("config.yaml"), dir.join("stderr.log"));
    std::fs::write(&config_path, config(&web.endpoint(), false)).unwrap();
    let admin = format!("127.0.0.1:{}", support::free_port());
    let mut child = std::process::Command::new(binary())
        .args(["--log-format", "json", "proxy", "--admin", &admin, "--config"])
        .arg(&config_path)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let log_path = log.clone();
    eventually("a JSON log line saying the config loaded", || {
        let log_path = log_path.clone();
        async move { std::fs::read_to_string(&log_path).unwrap_or_default().contains("config loaded") }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let loaded = text
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
        })
        .find(|line| line["message"] == "config loaded")
        .expect("the config-loaded event");
    assert_eq!(loaded["level"], "INFO");
    assert_eq!(loaded["version"], 1);
}
