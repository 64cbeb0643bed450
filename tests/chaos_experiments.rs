//! Chaos experiments end to end: a real `weft control`, real managed proxies running the built-in
//! chaos filter, and real requests. An experiment slows the traffic it targets and not the rest,
//! on the proxies its blast radius allows, and ends on time; a guard ends one early; the kill
//! switch clears them all; a proxy cut off from the control plane still clears its faults at
//! their end time; a schedule starts runs and never overlaps them.

#[allow(unused_imports)] // the shared support re-exports what other targets use
mod support;

use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::control::Control;
use support::filters::builtin;
use support::managed::Managed;
use support::upstream::{echo, tcp_echo};
use support::{eventually, raw_exchange};

/// Pushes the chaos filter and applies listeners `public` and `internal` (port 0, both through
/// the chaos filter) to `web`.
async fn deploy(control: &Control, web: &str) {
    deploy_with(control, web, "", "").await
}

/// As [`deploy`], with more listeners and clusters (YAML list items, one per line).
async fn deploy_with(control: &Control, web: &str, listeners: &str, clusters: &str) {
    let pushed = control.call("POST", "/v1/modules", &std::fs::read(builtin("chaos")).unwrap()).await;
    assert!(matches!(pushed.status, 200 | 201), "{}", pushed.text());
    let digest = pushed.json()["digest"].as_str().unwrap().to_owned();
    let config = format!(
        r#"
listeners:
  - {{ name: public, address: "127.0.0.1:0", filters: [chaos], cluster: web }}
  - {{ name: internal, address: "127.0.0.1:0", filters: [chaos], cluster: web }}
{listeners}
clusters:
  - {{ name: web, endpoints: ["{web}"] }}
{clusters}
filters:
  - {{ name: chaos, module: "{digest}" }}
"#
    );
    let applied = control.call("POST", "/v1/config", config.as_bytes()).await;
    assert_eq!(applied.status, 201, "{}", applied.text());
}

async fn run(control: &Control, yaml: &str) -> Value {
    let reply = control.call("POST", "/v1/experiments", yaml.as_bytes()).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    reply.json()
}

async fn experiment(control: &Control, id: &str) -> Value {
    control.get_json(&format!("/v1/experiments/{id}")).await
}

/// Waits until the experiment's timeline has `event` (for `proxy`, when given); the experiment then.
async fn until_event(control: &Control, id: &str, event: &str, proxy: Option<&str>) -> Value {
    let deadline = Instant::now() + support::PATIENCE;
    loop {
        let current = experiment(control, id).await;
        let timeline = current["timeline"].as_array().cloned().unwrap_or_default();
        if timeline.iter().any(|e| e["event"] == event && proxy.is_none_or(|p| e["proxy"] == p)) {
            return current;
        }
        assert!(Instant::now() < deadline, "{id}: no {event} in time: {current:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn until_ended(control: &Control, id: &str) -> Value {
    until_event(control, id, "ended", None).await
}

/// `GET path` through `addr`: the status and how long it took.
async fn timed(addr: SocketAddr, path: &str) -> (u16, Duration) {
    let started = Instant::now();
    let answer =
        raw_exchange(addr, format!("GET {path} HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n").as_bytes()).await;
    (answer.status, started.elapsed())
}

#[tokio::test]
async fn a_latency_experiment_slows_its_target_only_and_ends_on_time() {
    let web = echo("web").await;
    let control = Control::start().await;
    deploy(&control, &web.endpoint()).await;
    let proxies =
        [Managed::start(&control, "edge-1", &["tier=edge"]), Managed::start(&control, "edge-2", &["tier=edge"])];
    let _other = Managed::start(&control, "core-1", &["tier=core"]);
    for proxy in &proxies {
        proxy.addr("public").await;
    }

    let started = run(
        &control,
        "name: slow-checkout\n\
         target: { selector: { tier: edge }, listener: public, path_prefix: /checkout }\n\
         faults: [ { delay: { fixed: 500ms } } ]\n\
         duration: 3s\nobserve: 3s\n\
         blast_radius: { max_proxies_percent: 50 }",
    )
    .await;
    let id = started["id"].as_str().unwrap().to_owned();
    let chosen = started["proxies"].as_array().unwrap();
    assert_eq!(chosen.len(), 1, "half of the two edge proxies: {started}");
    assert_eq!(started["matched_proxies"], 2, "the core proxy is not in the target");
    let (targeted, spared) =
        if chosen[0] == "edge-1" { (&proxies[0], &proxies[1]) } else { (&proxies[1], &proxies[0]) };
    let (targeted_addr, spared_addr) = (targeted.addr("public").await, spared.addr("public").await);
    let internal = targeted.addr("internal").await;
    until_event(&control, &id, "watching", Some(&targeted.node)).await;
    for _ in 0..3 {
        assert_eq!(timed(targeted_addr, "/checkout/before").await.0, 200);
    }

    let injecting = until_event(&control, &id, "faults_applied", Some(&targeted.node)).await;
    assert_eq!(injecting["status"], "injecting");
    let (status, took) = timed(targeted_addr, "/checkout/pay").await;
    assert_eq!(status, 200, "a delay, not an abort");
    assert!(took >= Duration::from_millis(500), "the targeted request was held: {took:?}");
    for (addr, path, what) in [
        (targeted_addr, "/home", "another path"),
        (internal, "/checkout/pay", "another listener"),
        (spared_addr, "/checkout/pay", "the proxy the blast radius spared"),
    ] {
        let (status, took) = timed(addr, path).await;
        assert_eq!(status, 200);
        assert!(took < Duration::from_millis(500), "{what} was not delayed: {took:?}");
    }

    let ended = until_ended(&control, &id).await;
    assert_eq!(ended["ended"]["reason"], "completed", "{ended:#}");
    let faults_at = ended["faults_at"].as_str().unwrap().to_owned();
    let removed_at = ended["faults_removed_at"].as_str().unwrap().to_owned();
    assert!(removed_at > faults_at, "{faults_at} .. {removed_at}");
    assert!(ended["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["event"] == "faults_removed" && e["proxy"] == targeted.node.as_str()));
    let (_, took) = timed(targeted_addr, "/checkout/after").await;
    assert!(took < Duration::from_millis(500), "the faults are out once it ended: {took:?}");

    let results = &ended["results"];
    assert!(results["before"]["requests"].as_u64().unwrap() >= 3, "{results:#}");
    assert!(results["during"]["p50_ms"].as_f64().unwrap() >= 500.0, "{results:#}");
    assert!(results["before"]["p99_ms"].as_f64().unwrap() < 500.0, "{results:#}");
    assert_eq!(results["proxies"][0]["proxy"], targeted.node.as_str());
    assert_eq!(results["proxies"][0]["delays"], 1, "one request was delayed: {results:#}");
    assert_eq!(results["during"]["requests"], 1, "only the targeted request counts: {results:#}");

    let shown = control.cli(&["chaos", "show", &id]).await;
    let report = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success(), "{report}");
    assert!(
        report.contains("ended (completed)") && report.contains("during") && report.contains(&targeted.node),
        "{report}"
    );
    let listed = control.cli(&["chaos", "list"]).await;
    assert!(String::from_utf8_lossy(&listed.stdout).contains("slow-checkout"));
}

#[tokio::test]
async fn a_guard_ends_an_experiment_that_hurts_too_much() {
    let web = echo("web").await;
    let control = Control::start().await;
    deploy(&control, &web.endpoint()).await;
    let proxy = Managed::start(&control, "edge-1", &[]);
    let addr = proxy.addr("public").await;

    let started = run(
        &control,
        "target: { listener: public }\n\
         faults: [ { abort: { status: 503, percentage: 50 } } ]\n\
         duration: 5m\nobserve: 0s\n\
         guard: { max_error_percent: 10, min_requests: 10, window: 2s }",
    )
    .await;
    let id = started["id"].as_str().unwrap().to_owned();
    until_event(&control, &id, "faults_applied", Some("edge-1")).await;
    let mut failures = 0;
    let ended = loop {
        if timed(addr, "/api").await.0 == 503 {
            failures += 1;
        }
        let current = experiment(&control, &id).await;
        if current["status"] == "ended" {
            break current;
        }
    };
    assert!(failures > 0, "the aborts were injected");
    assert_eq!(ended["ended"]["reason"], "guard", "{ended:#}");
    assert!(ended["ended"]["detail"].as_str().unwrap().contains("error rate"), "{ended:#}");
    assert!(ended["readings"].as_array().is_some_and(|r| !r.is_empty()));
    eventually("the faults are out", || async { timed(addr, "/api").await.0 == 200 }).await;
    for _ in 0..20 {
        assert_eq!(timed(addr, "/api").await.0, 200, "no fault after the guard ended it");
    }
}

#[tokio::test]
async fn the_kill_switch_clears_every_experiment_and_overlaps_are_refused() {
    let web = echo("web").await;
    let control = Control::start().await;
    deploy(&control, &web.endpoint()).await;
    let proxy = Managed::start(&control, "edge-1", &[]);
    let (public, internal) = (proxy.addr("public").await, proxy.addr("internal").await);

    let abort_all = |listener: &str| {
        format!("target: {{ listener: {listener} }}\nfaults: [ {{ abort: {{ status: 500 }} }} ]\nduration: 10m\nobserve: 0s")
    };
    let first = run(&control, &abort_all("public")).await["id"].as_str().unwrap().to_owned();
    let second = run(&control, &abort_all("internal")).await["id"].as_str().unwrap().to_owned();
    let overlapping = control.call("POST", "/v1/experiments", abort_all("public").as_bytes()).await;
    assert_eq!(overlapping.status, 409, "{}", overlapping.text());
    assert!(overlapping.text().contains(&first), "names the experiment in the way: {}", overlapping.text());
    for id in [&first, &second] {
        until_event(&control, id, "faults_applied", Some("edge-1")).await;
    }
    assert_eq!(timed(public, "/").await.0, 500);
    assert_eq!(timed(internal, "/").await.0, 500);

    let output = control.cli(&["chaos", "abort", "--all"]).await;
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && said.contains(&first) && said.contains(&second), "{said}");
    for id in [&first, &second] {
        let ended = experiment(&control, id).await;
        assert_eq!((ended["status"].as_str(), ended["ended"]["reason"].as_str()), (Some("ended"), Some("kill_switch")));
    }
    eventually("both listeners are clear", || async {
        timed(public, "/").await.0 == 200 && timed(internal, "/").await.0 == 200
    })
    .await;
}

#[tokio::test]
async fn a_proxy_cut_off_from_the_control_plane_clears_its_faults_at_their_end_time() {
    let web = echo("web").await;
    let mut control = Control::start().await;
    deploy(&control, &web.endpoint()).await;
    let proxy = Managed::start(&control, "edge-1", &[]);
    let addr = proxy.addr("public").await;

    let started = run(
        &control,
        "target: { listener: public }\nfaults: [ { abort: { status: 503 } } ]\nduration: 4s\nobserve: 0s",
    )
    .await;
    let id = started["id"].as_str().unwrap().to_owned();
    until_event(&control, &id, "faults_applied", Some("edge-1")).await;
    // The faults went in at most this long ago: the end is 4s after they went in.
    let applied = Instant::now();
    control.kill();
    assert_eq!(timed(addr, "/").await.0, 503, "the faults stay in until their end time");
    eventually("the proxy ends the faults by itself", || async { timed(addr, "/").await.0 == 200 }).await;
    assert!(applied.elapsed() >= Duration::from_secs(3), "not before the end time: {:?}", applied.elapsed());
    // The line is written just after the faults are out: the request above may see them gone first.
    eventually("the proxy's log says why the faults went", || async {
        proxy.log().contains("its end time passed; faults removed")
    })
    .await;
}

#[tokio::test]
async fn a_schedule_starts_runs_and_never_overlaps_them() {
    let web = echo("web").await;
    let control = Control::start().await;
    deploy(&control, &web.endpoint()).await;
    let proxy = Managed::start(&control, "edge-1", &[]);
    proxy.addr("public").await;

    let schedule = run(
        &control,
        "name: every-3s\nschedule: \"*/3 * * * * *\"\n\
         target: { listener: public }\nfaults: [ { delay: { fixed: 10ms } } ]\nduration: 4s\nobserve: 0s",
    )
    .await;
    assert_eq!(schedule["status"], "scheduled");
    let id = schedule["id"].as_str().unwrap().to_owned();
    let skipped = until_event(&control, &id, "run_skipped", None).await;
    let skip = skipped["timeline"].as_array().unwrap().iter().find(|e| e["event"] == "run_skipped").unwrap().clone();
    assert!(skip["detail"].as_str().unwrap().contains("is still running"), "{skip}");
    let first_run = skipped["runs"][0].as_str().unwrap().to_owned();
    assert_eq!(experiment(&control, &first_run).await["schedule_of"], id.as_str());
    let second = until_event(&control, &id, "run_started", None).await;
    eventually("a second run once the first is over", || async {
        experiment(&control, &id).await["runs"].as_array().is_some_and(|r| r.len() >= 2)
    })
    .await;
    drop(second);

    let aborted = control.call("POST", &format!("/v1/experiments/{id}/abort"), b"").await;
    assert_eq!(aborted.status, 200, "{}", aborted.text());
    assert_eq!(aborted.json()["ended"]["reason"], "cancelled");
    let runs = experiment(&control, &id).await["runs"].clone();
    for run in runs.as_array().unwrap() {
        let run = experiment(&control, run.as_str().unwrap()).await;
        assert_eq!(run["status"], "ended", "no run of a cancelled schedule goes on: {run:#}");
    }
}

#[tokio::test]
async fn an_invalid_experiment_is_refused_whole_with_its_fields_named() {
    let web = echo("web").await;
    let control = Control::start().await;
    deploy(&control, &web.endpoint()).await;
    let refused = control
        .call(
            "POST",
            "/v1/experiments",
            b"target: { listener: nowhere }\nfaults: [ { abort: { status: 99 } } ]\nduration: 1s",
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    let fields: Vec<String> =
        refused.json()["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap().to_owned()).collect();
    assert!(
        fields.contains(&"faults[0].abort.status".to_owned()) && fields.contains(&"target.listener".to_owned()),
        "{fields:?}"
    );
    assert!(control.get_json("/v1/experiments").await["experiments"].as_array().unwrap().is_empty(), "nothing started");

    let file = control.dir.join("bad.yaml");
    std::fs::write(&file, "target: {}\nfaults: [ { delay: { fixed: soon } } ]\nduration: 1s").unwrap();
    let output = control.cli(&["chaos", "run", file.to_str().unwrap()]).await;
    assert_eq!(output.status.code(), Some(2));
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("bad.yaml") && said.contains("faults[0].delay.fixed"), "{said}");
}

/// One echo round trip on a new connection to `addr`: how long it took.
async fn echo_round_trip(addr: SocketAddr) -> Duration {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    let mut answer = [0u8; 4];
    tokio::time::timeout(support::PATIENCE, stream.read_exact(&mut answer)).await.unwrap().unwrap();
    assert_eq!(&answer, b"ping");
    started.elapsed()
}

#[tokio::test]
async fn a_toxic_experiment_slows_a_tcp_listener_until_its_end() {
    let (web, database) = (echo("web").await, tcp_echo().await);
    let control = Control::start().await;
    let listener = "  - { name: db, address: \"127.0.0.1:0\", protocol: tcp, cluster: database }";
    let cluster = format!("  - {{ name: database, endpoints: [\"{}\"] }}", database.endpoint());
    deploy_with(&control, &web.endpoint(), listener, &cluster).await;
    let proxy = Managed::start(&control, "edge-1", &[]);
    let addr = proxy.addr("db").await;
    assert!(echo_round_trip(addr).await < Duration::from_millis(300));

    let started = run(
        &control,
        "target: { listener: db }\n\
         faults: [ { toxic: { type: latency, stream: downstream, attributes: { latency: 300 } } } ]\n\
         duration: 3s\nobserve: 0s",
    )
    .await;
    let id = started["id"].as_str().unwrap().to_owned();
    until_event(&control, &id, "faults_applied", Some("edge-1")).await;
    assert!(echo_round_trip(addr).await >= Duration::from_millis(300), "the toxic holds the answer");
    let ended = until_ended(&control, &id).await;
    assert_eq!(ended["ended"]["reason"], "completed");
    assert!(ended["results"]["proxies"][0]["toxics"].as_u64().unwrap() >= 1, "{:#}", ended["results"]);
    assert!(echo_round_trip(addr).await < Duration::from_millis(300), "the toxic is gone with the experiment");
}
