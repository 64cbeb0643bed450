//! Proxy-Wasm filters built with the public `proxy-wasm` crate, unmodified, in a real weft:
//! header edits both ways, local responses (HTTP and gRPC), routing by `weft.upstream_cluster`,
//! properties, a config the filter refuses, modules that are not Proxy-Wasm, and containment of
//! filters that trap, spin or eat memory.

mod support;

use support::filters::test_filters;
use support::upstream::echo;
use support::weft::{metric, run_with_config};
use support::{curl, curl_ok, get, raw_exchange, seen, TempDir, Weft};

fn filter_config(mode: &str, extra: &str, clusters: &[(&str, String)]) -> String {
    let clusters: String =
        clusters.iter().map(|(name, ep)| format!("  - name: {name}\n    endpoints: [\"{ep}\"]\n")).collect();
    format!(
        r#"
listeners:
  - name: public
    address: 127.0.0.1:0
    cluster: {default}
    filters: [test]
  - name: plain
    address: 127.0.0.1:0
    cluster: {default}
clusters:
{clusters}
filters:
  - name: test
    module: {module}
    config: {{ mode: {mode} }}
{extra}
"#,
        default = clusters.lines().next().unwrap().trim_start_matches("  - name: "),
        module = test_filters().display(),
    )
}

/// The config with every cluster spoken to over HTTP/2 (h2c), as gRPC and trailers need.
fn over_http2(config: String) -> String {
    config.replace("    endpoints: [", "    protocol: http2\n    endpoints: [")
}

#[tokio::test]
async fn a_filter_edits_request_and_response_headers() {
    let web = echo("web").await;
    let weft = Weft::start(&filter_config("headers", "", &[("web", web.endpoint())])).await;
    let out = curl_ok(&["-i", "-H", "x-remove-me: please", &weft.url("public", "/some/path")]).await;
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let upstream = seen(body);
    let headers = &upstream["headers"];
    assert_eq!(headers["x-filtered-by"], "test", "plugin_name property");
    assert_eq!(headers["x-path-seen"], "/some/path", ":path pseudo-header");
    assert!(headers.get("x-remove-me").is_none(), "removed by the filter");
    assert!(headers["x-header-count"].as_str().unwrap().parse::<u32>().unwrap() >= 6);
    assert!(head.to_ascii_lowercase().contains("x-response-filtered: saw 200"), "{head}");
    assert!(weft.stderr().contains("configured in mode headers"), "the filter's log reaches weft's log");

    // A listener without the filter is untouched.
    let plain = seen(&get(weft.addr("plain"), "/").await.body);
    assert!(plain["headers"].get("x-filtered-by").is_none());
}

#[tokio::test]
async fn a_filter_answers_requests_itself() {
    let web = echo("web").await;
    let weft = Weft::start(&filter_config("deny", "", &[("web", web.endpoint())])).await;
    let denied =
        raw_exchange(weft.addr("public"), b"GET / HTTP/1.1\r\nHost: x\r\nx-deny: 1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.header("x-denied-by").as_deref(), Some("test-filter"));
    assert_eq!(denied.body, "denied by a filter\n");
    assert_eq!(web.requests(), 0, "a denied request never reaches the upstream");
    assert_eq!(get(weft.addr("public"), "/").await.status, 200);
}

#[tokio::test]
async fn a_filter_answers_grpc_requests_with_a_grpc_status() {
    let grpc = support::grpc::server().await;
    let config = over_http2(filter_config("grpc_deny", "", &[("grpc", grpc.addr.to_string())]));
    let weft = Weft::start(&config).await;
    let status = support::grpc::say(weft.addr("public"), "hi").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(status.message(), "not for you");
    assert_eq!(support::grpc::say(weft.addr("plain"), "hi").await.unwrap().message, "echo: hi");
}

#[tokio::test]
async fn grpc_calls_stream_through_a_filter_chain() {
    // The request's message and the response's trailers pass the filters' body and trailers phases.
    let grpc = support::grpc::server().await;
    let config = over_http2(filter_config("headers", "", &[("grpc", grpc.addr.to_string())]));
    let weft = Weft::start(&config).await;
    assert_eq!(support::grpc::say(weft.addr("public"), "through").await.unwrap().message, "echo: through");
    let status = support::grpc::say(weft.addr("public"), "fail").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "grpc-status in the trailers crossed the filters");
    assert_eq!(status.message(), "no such thing");
}

#[tokio::test]
async fn a_filter_routes_by_setting_the_upstream_cluster() {
    let (a, b) = (echo("a").await, echo("b").await);
    let weft = Weft::start(&filter_config("route", "", &[("a", a.endpoint()), ("b", b.endpoint())])).await;
    let upstream = |out: String| seen(&out)["upstream"].as_str().unwrap().to_string();
    assert_eq!(upstream(curl_ok(&[&weft.url("public", "/")]).await), "a", "the listener's cluster by default");
    assert_eq!(upstream(curl_ok(&["-H", "x-route-to: b", &weft.url("public", "/")]).await), "b");
    let nowhere = raw_exchange(
        weft.addr("public"),
        b"GET / HTTP/1.1\r\nHost: x\r\nx-route-to: nope\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(nowhere.status, 404);
    assert_eq!(nowhere.header("x-weft-error").as_deref(), Some("no route"));
}

#[tokio::test]
async fn a_filter_reads_properties_of_the_request_and_connection() {
    let web = echo("web").await;
    let weft = Weft::start(&filter_config("props", "", &[("web", web.endpoint())])).await;
    let body = curl_ok(&["-H", "x-request-id: req-7", &weft.url("public", "/")]).await;
    let headers = &seen(&body)["headers"];
    assert!(headers["x-prop-source"].as_str().unwrap().starts_with("127.0.0.1:"), "{headers}");
    assert_eq!(headers["x-prop-request-id"], "req-7");
    assert_eq!(headers["x-prop-method"], "GET");
    assert_eq!(headers["x-prop-listener"], "public");
    assert!(headers["x-prop-connection-id"].as_str().unwrap().parse::<u64>().is_ok());
    assert_eq!(headers["x-prop-destination-port"], weft.addr("public").port().to_string());
}

#[tokio::test]
async fn bad_modules_and_refused_configs_are_refused_at_load() {
    let web = echo("web").await;
    let dir = TempDir::new("bad-filters");
    let not_wasm = dir.join("not.wasm");
    std::fs::write(&not_wasm, b"definitely not wasm").unwrap();
    // The smallest valid WebAssembly module: no Proxy-Wasm exports at all.
    let bare = dir.join("bare.wasm");
    std::fs::write(&bare, b"\0asm\x01\0\0\0").unwrap();
    let cases = [
        (
            filter_config("headers", "", &[("web", web.endpoint())])
                .replace("mode: headers", "mode: headers, refuse: true"),
            "filters[0].config: refused by the filter",
        ),
        (
            filter_config("headers", "", &[("web", web.endpoint())])
                .replace(&test_filters().display().to_string(), &not_wasm.display().to_string()),
            "not a WebAssembly module",
        ),
        (
            filter_config("headers", "", &[("web", web.endpoint())])
                .replace(&test_filters().display().to_string(), &bare.display().to_string()),
            "not a Proxy-Wasm module",
        ),
    ];
    for (config, expected) in cases {
        let path = dir.join("config.yaml");
        std::fs::write(&path, &config).unwrap();
        let output = run_with_config(&["proxy", "--admin", "127.0.0.1:0", "--config"], &path).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "expected {expected:?} in:\n{stderr}");
    }

    // On reload, a bad module is refused and the running filter keeps working.
    let mut weft = Weft::start(&filter_config("deny", "", &[("web", web.endpoint())])).await;
    std::fs::write(
        &weft.config_path,
        filter_config("deny", "", &[("web", web.endpoint())])
            .replace(&test_filters().display().to_string(), &not_wasm.display().to_string()),
    )
    .unwrap();
    weft.signal("HUP");
    let admin = weft.admin;
    support::eventually("the bad module to be refused", || async move {
        metric(&get(admin, "/metrics").await.body, "weft_config_reloads_total{result=\"rejected\"}").unwrap_or(0.0)
            >= 1.0
    })
    .await;
    assert_eq!(
        raw_exchange(weft.addr("public"), b"GET / HTTP/1.1\r\nHost: x\r\nx-deny: 1\r\nConnection: close\r\n\r\n")
            .await
            .status,
        403
    );
    let _ = &mut weft;
}

/// Each misbehaviour with each failure policy, while well-behaved requests through the same
/// filter and the same proxy keep succeeding.
#[tokio::test]
async fn misbehaving_filters_are_contained() {
    let web = echo("web").await;
    for (policy, expected) in [("fail_closed", 503), ("fail_open", 200)] {
        let extra = format!("    failure_policy: {policy}\n    limits: {{ memory: 16MiB, time_per_call: 50ms }}");
        let weft = Weft::start(&filter_config("misbehave", &extra, &[("web", web.endpoint())])).await;
        for trigger in ["x-trap", "x-spin", "x-hog"] {
            let bad = raw_exchange(
                weft.addr("public"),
                format!("GET / HTTP/1.1\r\nHost: x\r\n{trigger}: 1\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await;
            assert_eq!(bad.status, expected, "{policy} {trigger}: {bad:?}");
            if expected == 503 {
                assert_eq!(bad.header("x-weft-error").as_deref(), Some("filter failed"));
            } else {
                assert!(seen(&bad.body)["headers"].get("x-survived").is_none(), "the failed filter was skipped");
            }
            for _ in 0..4 {
                let good = get(weft.addr("public"), "/").await;
                assert_eq!(good.status, 200, "{policy}, after {trigger}: a well-behaved request succeeds");
                assert_eq!(seen(&good.body)["headers"]["x-survived"], "yes", "and the filter ran on it");
            }
        }
        let metrics = weft.metrics().await;
        assert_eq!(
            metric(&metrics, "weft_filter_failures_total{filter=\"test\",reason=\"deadline\"}"),
            Some(1.0),
            "{metrics}"
        );
        assert!(
            metric(&metrics, "weft_filter_failures_total{filter=\"test\",reason=\"trap\"}").unwrap_or(0.0) >= 2.0,
            "{metrics}"
        );
        let filters = weft.admin_json("/filters").await;
        let test = &filters["filters"][0];
        assert_eq!(test["name"], "test");
        assert!(test["module"].as_str().unwrap().starts_with("sha256:"));
        assert_eq!(test["instances"], test["instances_wanted"], "every failed instance was replaced: {test}");
        assert!(test["failures"].as_u64().unwrap() >= 3, "{test}");
        assert!(test["calls"].as_u64().unwrap() >= 15, "{test}");
        let stderr = weft.stderr();
        assert!(stderr.contains("trapping on purpose"), "the guest's panic message is in the log:\n{stderr}");
        assert!(stderr.contains("ran past its 50 ms time limit"), "{stderr}");
    }
}

#[tokio::test]
async fn filters_share_data_across_instances_and_export_their_metrics() {
    let web = echo("web").await;
    let weft = Weft::start(&filter_config("count", "", &[("web", web.endpoint())])).await;
    for expected in 1..=6u64 {
        let body = curl_ok(&[&weft.url("public", "/count")]).await;
        let headers = &seen(&body)["headers"];
        // Requests alternate between the filter's instances: the count is shared all the same.
        assert_eq!(headers["x-shared-count"], expected.to_string());
        assert_eq!(headers["x-metric-total"], expected.to_string());
    }
    let metrics = weft.metrics().await;
    assert_eq!(
        metric(&metrics, "weft_filter_counter_total{filter=\"test\",name=\"requests_seen\"}"),
        Some(6.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "weft_filter_histogram_count{filter=\"test\",name=\"path_length\"}"),
        Some(6.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn filter_timers_tick() {
    let web = echo("web").await;
    let weft = Weft::start(&filter_config("tick", "", &[("web", web.endpoint())])).await;
    let addr = weft.addr("public");
    support::eventually("proxy_on_tick to have run a few times", || async move {
        let response = get(addr, "/").await;
        seen(&response.body)["headers"]["x-ticks"].as_str().and_then(|t| t.parse::<u64>().ok()).unwrap_or(0) >= 3
    })
    .await;
}

#[tokio::test]
async fn compiled_modules_are_cached_on_disk_for_the_next_start() {
    let web = echo("web").await;
    let config = filter_config("headers", "", &[("web", web.endpoint())]);
    let first = Weft::start(&config).await;
    assert!(first.stderr().contains("filter module compiled"), "{}", first.stderr());
    let cache = first.dir.join("module-cache");
    let entries: Vec<_> = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(entries.len(), 1, "one compiled module: {entries:?}");

    // A second proxy with the same cache folder loads the compiled code instead of compiling.
    let dir = TempDir::new("cache-again");
    std::fs::create_dir_all(dir.join("module-cache")).unwrap();
    std::fs::copy(&entries[0], dir.join("module-cache").join(entries[0].file_name().unwrap())).unwrap();
    let second = Weft::start_in(dir, &config).await;
    let stderr = second.stderr();
    assert!(stderr.contains("filter module loaded from the compiled cache"), "{stderr}");
    assert!(!stderr.contains("filter module compiled"), "{stderr}");
    let upstream = seen(&get(second.addr("public"), "/").await.body);
    assert_eq!(upstream["headers"]["x-filtered-by"], "test", "the cached module runs");
}

#[tokio::test]
async fn a_filter_reads_and_rewrites_bodies_and_trailers() {
    let web = echo("web").await;
    let config = over_http2(
        filter_config("body", "", &[("web", web.endpoint())])
            .replace("    filters: [test]", "    filters: [test]\n    limits: { max_buffered_body: 64KiB }"),
    );
    let weft = Weft::start(&config).await;

    // The request body arrives upstream uppercased; the response comes back wrapped.
    let out =
        curl_ok(&["-H", "content-type: text/plain", "--data-binary", "hello body", &weft.url("public", "/")]).await;
    let inner = out.strip_prefix('[').and_then(|o| o.strip_suffix(']')).unwrap_or_else(|| panic!("not wrapped: {out}"));
    assert_eq!(seen(inner)["body"], "HELLO BODY");

    // A body arriving in many pieces is buffered whole before the filter decides.
    let big = weft.dir.join("big.txt");
    std::fs::write(&big, "x".repeat(40_000) + " forbidden").unwrap();
    let refused = curl(&["-i", "--data-binary", &format!("@{}", big.display()), &weft.url("public", "/")]).await;
    let refused = String::from_utf8_lossy(&refused.stdout).to_string();
    assert!(refused.starts_with("HTTP/1.1 403"), "{}", &refused[..refused.len().min(300)]);
    assert!(refused.contains("x-refused-by: body filter") && refused.ends_with("body refused\n"), "{refused}");

    // Beyond the listener's max_buffered_body: 413.
    let huge = weft.dir.join("huge.txt");
    std::fs::write(&huge, "y".repeat(200_000)).unwrap();
    let too_large = curl(&["-i", "--data-binary", &format!("@{}", huge.display()), &weft.url("public", "/")]).await;
    let too_large = String::from_utf8_lossy(&too_large.stdout).to_string();
    assert!(too_large.starts_with("HTTP/1.1 413"), "{too_large}");
    assert!(too_large.contains("x-weft-error: body too large"), "{too_large}");
    let metrics = weft.metrics().await;
    assert_eq!(metric(&metrics, "weft_local_replies_total{listener=\"public\"}"), Some(1.0), "{metrics}");

    // Response trailers pass through the trailers phase.
    let out = curl_ok(&["--http2-prior-knowledge", "-i", &weft.url("public", "/trailers")]).await;
    assert!(out.contains("[with trailers]"), "{out}");
    assert!(out.contains("x-trailer-seen: abc123"), "{out}");

    // A request without a body passes untouched; its response is still wrapped.
    let plain = curl_ok(&[&weft.url("public", "/get")]).await;
    assert_eq!(seen(plain.trim_start_matches('[').trim_end_matches(']'))["body"], "");
}

#[tokio::test]
async fn an_http_callout_decides_the_request() {
    let (web, auth) = (echo("web").await, echo("auth").await);
    let dead = support::upstream::closed_port().to_string();
    let weft = Weft::start(&filter_config("callout", "", &[("web", web.endpoint()), ("auth", auth.endpoint())])).await;

    let allowed = curl_ok(&["-H", "x-user: alice", &weft.url("public", "/")]).await;
    let headers = &seen(&allowed)["headers"];
    assert_eq!(headers["x-auth-upstream"], "auth", "the filter read the callout's response headers");
    assert!(headers["x-auth-body-bytes"].as_str().unwrap().parse::<u32>().unwrap() > 0, "and its body");

    let denied =
        raw_exchange(weft.addr("public"), b"GET / HTTP/1.1\r\nHost: x\r\nx-user: bob\r\nConnection: close\r\n\r\n")
            .await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.header("x-auth-status").as_deref(), Some("403"));
    assert_eq!(denied.body, "denied by auth");
    assert_eq!(auth.requests(), 2, "one callout per request");
    assert_eq!(web.requests(), 1, "the denied request never reached the upstream");

    // The filter traps while handling the callout's answer: the paused request gets the failure
    // policy (fail_closed by default), and the next request finds a fresh instance.
    let crashed =
        raw_exchange(weft.addr("public"), b"GET / HTTP/1.1\r\nHost: x\r\nx-user: crash\r\nConnection: close\r\n\r\n")
            .await;
    assert_eq!(crashed.status, 503);
    assert_eq!(crashed.header("x-weft-error").as_deref(), Some("filter failed"));
    assert_eq!(get(weft.addr("public"), "/").await.status, 403, "bob-like users are still denied");
    let allowed = curl_ok(&["-H", "x-user: alice", &weft.url("public", "/")]).await;
    assert_eq!(seen(&allowed)["headers"]["x-auth-upstream"], "auth");
    let metrics = weft.metrics().await;
    assert_eq!(
        metric(&metrics, "weft_filter_callouts_total{filter=\"test\",cluster=\"auth\",result=\"answered\"}"),
        Some(5.0),
        "{metrics}"
    );

    // The auth service unreachable: the filter hears the callout failed.
    let weft = Weft::start(&filter_config("callout", "", &[("web", web.endpoint()), ("auth", dead)])).await;
    let unavailable =
        raw_exchange(weft.addr("public"), b"GET / HTTP/1.1\r\nHost: x\r\nx-user: alice\r\nConnection: close\r\n\r\n")
            .await;
    assert_eq!(unavailable.status, 503);
    assert_eq!(unavailable.body, "auth unavailable");
    let metrics = weft.metrics().await;
    assert_eq!(
        metric(&metrics, "weft_filter_callouts_total{filter=\"test\",cluster=\"auth\",result=\"failed\"}"),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_grpc_callout_decides_the_request() {
    let (web, grpc) = (echo("web").await, support::grpc::server().await);
    let config = filter_config("grpc_callout", "", &[("web", web.endpoint()), ("grpc", grpc.addr.to_string())])
        .replace("  - name: grpc\n", "  - name: grpc\n    protocol: http2\n");
    let weft = Weft::start(&config).await;
    let body = curl_ok(&["-H", "x-say: hello", &weft.url("public", "/")]).await;
    assert_eq!(seen(&body)["headers"]["x-grpc-said"], "echo: hello");

    let failed =
        raw_exchange(weft.addr("public"), b"GET / HTTP/1.1\r\nHost: x\r\nx-say: fail\r\nConnection: close\r\n\r\n")
            .await;
    assert_eq!(failed.status, 502);
    assert_eq!(failed.header("x-grpc-status").as_deref(), Some("5"), "NOT_FOUND from the service");
    assert_eq!(failed.body, "no such thing", "the status message, via proxy_get_status");
}

#[tokio::test]
async fn a_queue_wakes_the_root_which_resumes_paused_requests() {
    let web = echo("web").await;
    let weft = Weft::start(&filter_config("queue_resume", "", &[("web", web.endpoint())])).await;
    let requests = (0..6).map(|i| {
        let url = weft.url("public", &format!("/queued/{i}"));
        async move { curl_ok(&[&url]).await }
    });
    for body in futures_util::future::join_all(requests).await {
        assert_eq!(seen(&body)["headers"]["x-resumed-by"], "queue", "{body}");
    }
    let test = &weft.admin_json("/filters").await["filters"][0];
    assert_eq!(test["paused_requests"], 0, "every paused request was handed back: {test}");
    assert_eq!(test["callouts_in_flight"], 0, "{test}");
}

#[tokio::test]
async fn a_network_filter_edits_and_closes_tcp_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = support::upstream::tcp_echo().await;
    let config = filter_config("tcp", "", &[("echo", upstream.endpoint())])
        .replace("    cluster: echo\n    filters: [test]", "    protocol: tcp\n    cluster: echo\n    filters: [test]");
    let weft = Weft::start(&config).await;

    let mut client = tokio::net::TcpStream::connect(weft.addr("public")).await.unwrap();
    client.write_all(b"hello over tcp\n").await.unwrap();
    let mut echoed = [0u8; 15];
    client.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"HELLO OVER TCP\n", "the filter rewrote what the client sent");
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    let metrics = weft.metrics().await;
    assert_eq!(
        metric(&metrics, "weft_filter_counter_total{filter=\"test\",name=\"upstream_bytes\"}"),
        Some(15.0),
        "{metrics}"
    );

    // The filter closes a connection whose data it refuses; nothing reaches the upstream.
    let mut blocked = tokio::net::TcpStream::connect(weft.addr("public")).await.unwrap();
    blocked.write_all(b"blocked\n").await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(support::PATIENCE, blocked.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was closed");
    assert!(answer.is_empty(), "nothing echoed: {answer:?}");
    let metrics = weft.metrics().await;
    assert_eq!(
        metric(&metrics, "weft_filter_counter_total{filter=\"test\",name=\"upstream_bytes\"}"),
        Some(15.0),
        "the refused data never reached the upstream"
    );
    let weft_stderr = weft.stderr();
    assert!(weft_stderr.contains("the client closed its side"), "close callbacks run:\n{weft_stderr}");
}

/// A module whose allocator is broken: it answers addresses outside its memory (or null). Any
/// hostcall that hands the guest data (here, reading `x-bad`) meets it. Requests without
/// `x-bad` get a header added and pass.
fn bad_allocator_module(address: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
          (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
          (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 16) "x-bad")
          (data (i32.const 32) "x-ran")
          (data (i32.const 48) "yes")
          (func (export "proxy_abi_version_0_2_1"))
          (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const {address}))
          (func (export "proxy_on_context_create") (param i32 i32))
          (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
            (drop (call $get (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 64) (i32.const 68)))
            (drop (call $add (i32.const 0) (i32.const 32) (i32.const 5) (i32.const 48) (i32.const 3)))
            (i32.const 0)))"#
    ))
    .unwrap()
}

#[tokio::test]
async fn a_filter_with_a_broken_allocator_is_contained() {
    let web = echo("web").await;
    let dir = TempDir::new("bad-allocator");
    for (address, why) in [("0x7ffffff0", "outside its memory"), ("0", "returned null")] {
        let module = dir.join(&format!("bad-{address}.wasm"));
        std::fs::write(&module, bad_allocator_module(address)).unwrap();
        for (policy, expected) in [("fail_closed", 503), ("fail_open", 200)] {
            let config = filter_config("unused", &format!("    failure_policy: {policy}"), &[("web", web.endpoint())])
                .replace(&test_filters().display().to_string(), &module.display().to_string());
            let weft = Weft::start(&config).await;
            let bad = raw_exchange(
                weft.addr("public"),
                b"GET / HTTP/1.1\r\nHost: x\r\nx-bad: 1\r\nConnection: close\r\n\r\n",
            )
            .await;
            assert_eq!(bad.status, expected, "{address} {policy}: {bad:?}");
            for _ in 0..3 {
                let good = get(weft.addr("public"), "/").await;
                assert_eq!(good.status, 200, "{address} {policy}: other requests succeed");
                assert_eq!(seen(&good.body)["headers"]["x-ran"], "yes", "and the filter ran on them");
            }
            let stderr = weft.stderr();
            assert!(stderr.contains(why), "the log says why ({why}):\n{stderr}");
        }
    }
}
