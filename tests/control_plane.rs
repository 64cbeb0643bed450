//! The control plane end to end: a real `weft control` process on loopback, its REST API and the
//! CLI against it. Modules are checked and kept while used; config is validated whole, numbered
//! and rolled back; the admin token guards everything but /healthz; nothing acknowledged is lost
//! to SIGKILL.

#[allow(unused_imports)] // the shared support re-exports what other targets use
mod support;

use serde_json::json;
use support::control::{cli, Control};
use support::filters::test_filters;
use support::TempDir;

/// A config whose one filter loads the module `digest`.
fn config_using(digest: &str, endpoint: &str) -> String {
    format!(
        r#"
listeners:
  - name: public
    address: 127.0.0.1:8080
    filters: [headers]
    cluster: web
clusters:
  - name: web
    endpoints: ["{endpoint}"]
filters:
  - name: headers
    module: {digest}
selector: {{ app: web }}
"#
    )
}

/// Pushes the test filters' module; its digest.
async fn push_test_module(control: &Control) -> String {
    let reply = control.call("POST", "/v1/modules", &std::fs::read(test_filters()).unwrap()).await;
    assert!(matches!(reply.status, 200 | 201), "{}", reply.text());
    reply.json()["digest"].as_str().unwrap().to_string()
}

async fn apply(control: &Control, yaml: &str) -> support::control::Reply {
    control
        .call_as(Some(&control.token), "POST", "/v1/config", &[("Content-Type", "application/yaml")], yaml.as_bytes())
        .await
}

async fn current_version(control: &Control) -> u64 {
    control.get_json("/v1/config").await["version"].as_u64().unwrap()
}

#[tokio::test]
async fn modules_are_checked_stored_listed_and_kept_while_used() {
    let control = Control::start().await;
    let bytes = std::fs::read(test_filters()).unwrap();

    let first = control.call("POST", "/v1/modules", &bytes).await;
    assert_eq!(first.status, 201, "{}", first.text());
    let digest = first.json()["digest"].as_str().unwrap().to_string();
    assert!(digest.starts_with("sha256:") && digest.len() == 71, "{digest}");
    assert_eq!(first.json()["size"], bytes.len());
    let again = control.call("POST", "/v1/modules", &bytes).await;
    assert_eq!(again.status, 200, "the same bytes again: already stored");
    assert_eq!(again.json()["digest"], digest.as_str());

    // A file that is not a Proxy-Wasm module is refused with the reason, and not stored.
    let refused = control.call("POST", "/v1/modules", b"MZ\x90\0 not wasm at all").await;
    assert_eq!(refused.status, 400);
    assert!(refused.json()["error"].as_str().unwrap().contains("not a WebAssembly module"), "{}", refused.text());
    let plain_wasm = control.call("POST", "/v1/modules", b"\0asm\x01\0\0\0").await;
    assert_eq!(plain_wasm.status, 400);
    assert!(plain_wasm.json()["error"].as_str().unwrap().starts_with("not a Proxy-Wasm module"));

    let listed = control.get_json("/v1/modules").await;
    let modules = listed["modules"].as_array().unwrap();
    assert_eq!(modules.len(), 1, "{listed}");
    assert_eq!(modules[0]["digest"], digest.as_str());
    assert_eq!(modules[0]["size"], bytes.len());
    assert_eq!(modules[0]["used_by"], json!([]));

    let download = control.call("GET", &format!("/v1/modules/{digest}"), b"").await;
    assert_eq!(download.status, 200);
    assert_eq!(download.body, bytes, "the bytes come back as pushed");
    assert_eq!(download.header("content-type").as_deref(), Some("application/wasm"));
    let meta = control.get_json(&format!("/v1/modules/{digest}?meta")).await;
    assert_eq!(meta["size"], bytes.len());

    // Used by the current config: not deletable.
    assert_eq!(apply(&control, &config_using(&digest, "127.0.0.1:3000")).await.status, 201);
    assert_eq!(control.get_json("/v1/modules").await["modules"][0]["used_by"], json!(["headers"]));
    let conflict = control.call("DELETE", &format!("/v1/modules/{digest}"), b"").await;
    assert_eq!(conflict.status, 409, "{}", conflict.text());
    assert!(conflict.json()["error"].as_str().unwrap().contains("\"headers\""), "{}", conflict.text());
    assert_eq!(control.call("GET", &format!("/v1/modules/{digest}?meta"), b"").await.status, 200);

    // Once no longer used, it can go.
    let without = "listeners: []\nclusters: []\n";
    assert_eq!(apply(&control, without).await.status, 201);
    assert_eq!(control.call("DELETE", &format!("/v1/modules/{digest}"), b"").await.status, 204);
    assert_eq!(control.call("GET", &format!("/v1/modules/{digest}"), b"").await.status, 404);
    assert_eq!(control.get_json("/v1/modules").await["modules"], json!([]));
}

#[tokio::test]
async fn a_module_over_the_size_limit_is_refused() {
    let control = Control::start_with(&["--max-module-size", "1KiB"]).await;
    let reply = control.call("POST", "/v1/modules", &std::fs::read(test_filters()).unwrap()).await;
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert!(reply.json()["error"].as_str().unwrap().contains("1024 bytes"), "{}", reply.text());
    assert_eq!(control.get_json("/v1/modules").await["modules"], json!([]));
}

#[tokio::test]
async fn config_is_validated_whole_versioned_and_rolled_back() {
    let control = Control::start().await;
    let digest = push_test_module(&control).await;
    assert_eq!(control.get_json("/v1/config").await, json!({ "version": 0, "resources": null }));

    let good = config_using(&digest, "127.0.0.1:3000");
    let applied = apply(&control, &good).await;
    assert_eq!(applied.status, 201, "{}", applied.text());
    assert_eq!(applied.json()["version"], 1);
    let current = control.get_json("/v1/config").await;
    assert_eq!(current["version"], 1);
    assert_eq!(current["selector"], json!({ "app": "web" }));
    assert_eq!(current["resources"]["filters"][0]["module"], digest.as_str());
    assert_eq!(current["resources"]["clusters"][0]["endpoints"], json!(["127.0.0.1:3000"]));

    // Each invalid config is refused with the field at fault, and nothing changes.
    let unknown_digest = format!("sha256:{}", "0".repeat(64));
    let cases = [
        (
            good.replace("    cluster: web", "    cluster: nowhere"),
            "listeners[0].cluster",
            "unknown cluster \"nowhere\"",
        ),
        (good.replace("127.0.0.1:3000", "127.0.0.1:99999"), "clusters[0].endpoints[0]", "invalid address"),
        (good.replace(&digest, &unknown_digest), "filters[0].module", "unknown module"),
        (good.replace(&digest, "filters/headers.wasm"), "filters[0].module", "not a module digest"),
    ];
    for (yaml, field, reason) in &cases {
        let refused = apply(&control, yaml).await;
        assert_eq!(refused.status, 400, "{field}: {}", refused.text());
        let errors = refused.json()["errors"].as_array().unwrap().clone();
        assert!(
            errors.iter().any(|e| e["field"] == *field && e["reason"].as_str().unwrap().contains(reason)),
            "{field} / {reason} not in {errors:?}"
        );
    }
    // Several problems at once are reported at once.
    let everything_wrong = good.replace("127.0.0.1:3000", "127.0.0.1:99999").replace(&digest, &unknown_digest);
    assert_eq!(apply(&control, &everything_wrong).await.json()["errors"].as_array().unwrap().len(), 2);
    assert_eq!(current_version(&control).await, 1, "refused configs change nothing");

    // JSON works as well as YAML; the same resources again add no version.
    let second = json!({
        "listeners": [{ "name": "public", "address": "127.0.0.1:8081", "cluster": "web" }],
        "clusters": [{ "name": "web", "endpoints": ["127.0.0.1:3001"] }],
    });
    let reply = control
        .call_as(
            Some(&control.token),
            "POST",
            "/v1/config",
            &[("Content-Type", "application/json")],
            second.to_string().as_bytes(),
        )
        .await;
    assert_eq!((reply.status, reply.json()["version"].as_u64()), (201, Some(2)), "{}", reply.text());
    let unchanged = apply(&control, &serde_json::to_string(&second).unwrap()).await;
    assert_eq!((unchanged.status, unchanged.json()["unchanged"].as_bool()), (200, Some(true)));
    assert_eq!(current_version(&control).await, 2);

    // Rollback makes a copy of version 1 the new version 3: history only grows.
    let rolled = control.call("POST", "/v1/config/rollback", br#"{"version": 1}"#).await;
    assert_eq!(rolled.status, 201, "{}", rolled.text());
    assert_eq!(rolled.json()["version"], 3);
    let current = control.get_json("/v1/config").await;
    assert_eq!(current["resources"]["clusters"][0]["endpoints"], json!(["127.0.0.1:3000"]));
    assert_eq!(current["origin"], json!({ "kind": "rollback", "of": 1 }));
    let history = control.get_json("/v1/config/versions").await;
    assert_eq!(history["current"], 3);
    let numbers: Vec<u64> =
        history["versions"].as_array().unwrap().iter().map(|v| v["version"].as_u64().unwrap()).collect();
    assert_eq!(numbers, vec![1, 2, 3]);
    assert_eq!(history["versions"][0]["digest"], history["versions"][2]["digest"]);
    assert!(history["versions"][0]["summary"].as_str().unwrap().starts_with("1 listener, 1 cluster, 1 filter"));

    assert_eq!(control.call("POST", "/v1/config/rollback", br#"{"version": 9}"#).await.status, 404);
    assert_eq!(control.call("POST", "/v1/config/rollback", b"nine").await.status, 400);
    assert_eq!(current_version(&control).await, 3);
}

#[tokio::test]
async fn the_api_needs_the_admin_token_but_healthz_does_not() {
    let control = Control::start().await;
    // The first start prints the token once and keeps it private.
    assert!(control.stdout().contains(&format!("admin-token: {}", control.token)), "{}", control.stdout());
    assert_eq!(control.token.len(), 64);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(control.data_dir().join("admin-token")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!control.stderr().contains(&control.token), "the token is never logged");

    let wrong = "f".repeat(64);
    for (method, path) in [
        ("GET", "/v1/modules"),
        ("POST", "/v1/modules"),
        ("GET", "/v1/config"),
        ("POST", "/v1/config"),
        ("GET", "/v1/config/versions"),
        ("POST", "/v1/config/rollback"),
        ("GET", "/v1/openapi.json"),
    ] {
        for token in [None, Some(wrong.as_str()), Some("")] {
            let reply = control.call_as(token, method, path, &[], b"").await;
            assert_eq!(reply.status, 401, "{method} {path} with {token:?}");
            assert!(reply.json()["error"].as_str().unwrap().contains("admin token"), "{}", reply.text());
            assert_eq!(reply.header("www-authenticate").as_deref(), Some("Bearer"));
        }
    }
    let health = control.call_as(None, "GET", "/healthz", &[], b"").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    assert_eq!(control.call("GET", "/v1/nothing", b"").await.status, 404);
    assert_eq!(control.call("PUT", "/v1/config", b"").await.status, 405);
}

#[tokio::test]
async fn everything_acknowledged_survives_sigkill() {
    let mut control = Control::start().await;
    let token = control.token.clone();
    let digest = push_test_module(&control).await;
    assert_eq!(apply(&control, &config_using(&digest, "127.0.0.1:3000")).await.status, 201);
    assert_eq!(apply(&control, &config_using(&digest, "127.0.0.1:3001")).await.status, 201);
    assert_eq!(control.call("POST", "/v1/config/rollback", br#"{"version": 1}"#).await.status, 201);
    let before = (control.get_json("/v1/config").await, control.get_json("/v1/config/versions").await);

    control.kill_and_restart().await;

    assert_eq!(control.token, token, "the same admin token");
    assert!(!control.stdout().contains(&token), "the token is printed at the first start only");
    let modules = control.get_json("/v1/modules").await;
    assert_eq!(modules["modules"][0]["digest"], digest.as_str());
    assert_eq!(modules["modules"][0]["used_by"], json!(["headers"]));
    let after = (control.get_json("/v1/config").await, control.get_json("/v1/config/versions").await);
    assert_eq!(after, before, "the current config and the history are as they were");
    assert_eq!(after.0["version"], 3);
    // And it goes on numbering from there.
    assert_eq!(apply(&control, "listeners: []\n").await.json()["version"], 4);
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let control = Control::start().await;
    let document = control.get_json("/v1/openapi.json").await;
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let routes = [
        ("get", "/healthz"),
        ("get", "/v1/openapi.json"),
        ("get", "/v1/modules"),
        ("post", "/v1/modules"),
        ("get", "/v1/modules/{digest}"),
        ("delete", "/v1/modules/{digest}"),
        ("get", "/v1/config"),
        ("post", "/v1/config"),
        ("get", "/v1/config/versions"),
        ("post", "/v1/config/rollback"),
        ("get", "/v1/proxies"),
        ("get", "/v1/experiments"),
        ("post", "/v1/experiments"),
        ("post", "/v1/experiments/abort"),
        ("get", "/v1/experiments/{id}"),
        ("post", "/v1/experiments/{id}/abort"),
        ("post", "/v1/tokens"),
        ("get", "/v1/tokens"),
        ("delete", "/v1/tokens/{id}"),
        ("get", "/v1/mesh"),
        ("post", "/v1/mesh/rotation"),
        ("post", "/v1/mesh/rotation/finish"),
    ];
    for (method, path) in routes {
        assert!(document["paths"][path][method]["responses"].is_object(), "{method} {path} is not described");
    }
    let described: usize = document["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().keys().filter(|k| *k != "parameters").count())
        .sum();
    assert_eq!(described, routes.len(), "the document describes only what is served");
}

#[tokio::test]
async fn the_cli_pushes_applies_lists_and_rolls_back() {
    let control = Control::start().await;
    let module = test_filters();

    let pushed = control.cli(&["module", "push", module.to_str().unwrap()]).await;
    assert!(pushed.status.success(), "{}", String::from_utf8_lossy(&pushed.stderr));
    let digest = String::from_utf8(pushed.stdout).unwrap().trim().to_string();
    assert!(digest.starts_with("sha256:") && digest.len() == 71, "stdout is the digest alone: {digest:?}");

    let not_wasm = control.dir.join("not.wasm");
    std::fs::write(&not_wasm, "hello").unwrap();
    let refused = control.cli(&["module", "push", not_wasm.to_str().unwrap()]).await;
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a WebAssembly module"));

    let config = control.dir.join("config.yaml");
    std::fs::write(&config, config_using(&digest, "127.0.0.1:3000")).unwrap();
    let applied = control.cli(&["apply", "-f", config.to_str().unwrap()]).await;
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    assert!(String::from_utf8_lossy(&applied.stdout).contains("version 1"));

    // An invalid file: exit 2, every error named by file and field; nothing changes.
    let bad = control.dir.join("bad.yaml");
    std::fs::write(&bad, config_using(&digest, "127.0.0.1:99999").replace("cluster: web", "cluster: nowhere")).unwrap();
    let refused = control.cli(&["apply", "-f", bad.to_str().unwrap()]).await;
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains(&format!("{}: clusters[0].endpoints[0]: invalid address", bad.display())), "{stderr}");
    assert!(stderr.contains(&format!("{}: listeners[0].cluster: unknown cluster", bad.display())), "{stderr}");

    std::fs::write(&config, config_using(&digest, "127.0.0.1:3001")).unwrap();
    assert!(control.cli(&["apply", "-f", config.to_str().unwrap()]).await.status.success());

    let rolled = control.cli(&["rollback", "1"]).await;
    assert!(rolled.status.success(), "{}", String::from_utf8_lossy(&rolled.stderr));
    assert!(String::from_utf8_lossy(&rolled.stdout).contains("now current as version 3"));
    let missing = control.cli(&["rollback", "42"]).await;
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no config version 42"));

    let versions = control.cli(&["get", "versions", "-o", "json"]).await;
    assert!(versions.status.success());
    let versions: serde_json::Value = serde_json::from_slice(&versions.stdout).unwrap();
    assert_eq!(versions["current"], 3);
    assert_eq!(versions["versions"].as_array().unwrap().len(), 3);
    assert_eq!(versions["versions"][2]["origin"], json!({ "kind": "rollback", "of": 1 }));

    let table = control.cli(&["get", "modules"]).await;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("DIGEST"), "{table}");
    assert!(table.contains(&digest) && table.contains("headers"), "{table}");
    let table = control.cli(&["get", "versions"]).await;
    assert!(String::from_utf8_lossy(&table.stdout).contains("rollback to 1"));
    let table = control.cli(&["get", "config"]).await;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("version 3") && table.contains("127.0.0.1:3000"), "{table}");

    // A wrong token is a runtime failure with a hint, not a crash.
    let denied =
        cli(&["get", "modules"], &[("WEFT_CONTROL", &control.url()), ("WEFT_TOKEN", "nope")], control.dir.path()).await;
    assert_eq!(denied.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("refused the token"));
}

#[tokio::test]
async fn the_cli_says_so_when_no_control_plane_runs() {
    let dir = TempDir::new("no-control");
    let url = format!("http://127.0.0.1:{}", support::free_port());
    let output = cli(&["get", "modules", "--control", &url, "--token", "x"], &[], dir.path()).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("cannot reach the control plane at {url}")), "{stderr}");
    assert!(output.stdout.is_empty());
}
