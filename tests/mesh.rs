//! The mesh end to end: a real `weft control` as the mesh's CA and real `weft proxy --service`
//! processes that join it with join tokens (no admin token), talk mTLS to each other, and renew
//! and rotate their certificates under load without a failed request.
//!
//! Both proxies get the same config (one control plane, one current version): a plain `public`
//! listener whose cluster `peer` is the backend's `mesh-in` listener over `mtls: mesh`, and
//! `mesh-in` runs the policy filter, which allows the frontend's identity only. Through the
//! frontend a request passes; through the backend (whose identity is not allowed) it is denied.

#[allow(unused_imports)] // the shared support re-exports what other targets use
mod support;

use serde_json::Value;
use std::net::SocketAddr;
use support::control::Control;
use support::filters::builtin;
use support::load::Load;
use support::mesh::MeshProxy;
use support::upstream::{echo, Upstream};
use support::{curl, eventually, seen, try_raw_exchange, TempDir};

const FRONTEND: &str = "spiffe://weft.local/ns/default/sa/frontend";
const BACKEND: &str = "spiffe://weft.local/ns/default/sa/backend";

/// A join token for `service`, made with the CLI (it prints the token alone on stdout).
async fn join_token(control: &Control, service: &str) -> String {
    let made = control.cli(&["token", "create", "--service", service]).await;
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    String::from_utf8_lossy(&made.stdout).trim().to_owned()
}

fn config(policy: &str, web: &str, peer: &str) -> String {
    format!(
        r#"
listeners:
  - {{ name: public, address: "127.0.0.1:0", cluster: peer }}
  - {{ name: wrong, address: "127.0.0.1:0", cluster: wrong-peer }}
  - name: mesh-in
    address: "127.0.0.1:0"
    protocol: https
    mtls: mesh
    filters: [policy]
    cluster: web
clusters:
  - {{ name: web, endpoints: ["{web}"] }}
  - name: peer
    endpoints: ["{peer}"]
    mtls: mesh
    identities: ["{BACKEND}"]
    max_idle_connections: 0   # a new mTLS handshake for every request
  - name: wrong-peer
    endpoints: ["{peer}"]
    mtls: mesh
    identities: ["spiffe://weft.local/ns/default/sa/payments"]
filters:
  - name: policy
    module: {policy}
    config:
      default: deny
      rules:
        - {{ name: frontend-only, action: allow, match: {{ principals: [{{ exact: "{FRONTEND}" }}] }} }}
"#
    )
}

async fn apply(control: &Control, yaml: &str) -> u64 {
    let reply = control
        .call_as(Some(&control.token), "POST", "/v1/config", &[("Content-Type", "application/yaml")], yaml.as_bytes())
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    reply.json()["version"].as_u64().unwrap()
}

async fn proxy_status(control: &Control, node: &str) -> Value {
    let proxies = control.get_json("/v1/proxies").await;
    proxies["proxies"].as_array().unwrap().iter().find(|p| p["node"] == node).cloned().unwrap_or_default()
}

/// A control plane, the echo upstream, and a frontend and a backend proxy in the mesh, both
/// running the config that sends the frontend's `public` to the backend's `mesh-in`.
struct Mesh {
    control: Control,
    web: Upstream,
    frontend: MeshProxy,
    backend: MeshProxy,
    mesh_in: SocketAddr,
}

impl Mesh {
    async fn start(control_args: &[&str]) -> Mesh {
        let control = Control::start_with(control_args).await;
        let web = echo("web").await;
        let module = std::fs::read(builtin("policy")).unwrap();
        let pushed = control.call("POST", "/v1/modules", &module).await;
        assert!(matches!(pushed.status, 200 | 201), "{}", pushed.text());
        let policy = pushed.json()["digest"].as_str().unwrap().to_owned();
        // Version 1 binds every listener; version 2 points `peer` at the backend's mesh-in.
        apply(&control, &config(&policy, &web.endpoint(), "127.0.0.1:9")).await;
        let backend =
            MeshProxy::spawn(&control, "backend", "backend", Some(&join_token(&control, "backend").await), "backend");
        let frontend = MeshProxy::spawn(
            &control,
            "frontend",
            "frontend",
            Some(&join_token(&control, "frontend").await),
            "frontend",
        );
        let mesh_in = backend.listener("mesh-in").await;
        let version = apply(&control, &config(&policy, &web.endpoint(), &mesh_in.to_string())).await;
        for node in ["frontend", "backend"] {
            eventually(&format!("{node} runs version {version}"), || async {
                proxy_status(&control, node).await["version"] == version
            })
            .await;
        }
        Mesh { control, web, frontend, backend, mesh_in }
    }
}

/// `GET path` on a fresh connection to `addr`: the status and body, or why there was none.
async fn call(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n");
    let answer = try_raw_exchange(addr, request.as_bytes()).await.map_err(|e| e.to_string())?;
    Ok((answer.status, answer.body))
}

/// Steady load through the frontend: a request fails unless it is answered 200.
fn load(public: SocketAddr) -> Load {
    Load::start(move || async move {
        match call(public, "/load").await {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
}

#[tokio::test]
async fn two_proxies_talk_mtls_and_the_policy_allows_the_frontend_only() {
    let mesh = Mesh::start(&[]).await;
    let public = mesh.frontend.listener("public").await;
    let (status, body) = call(public, "/orders").await.unwrap();
    assert_eq!(status, 200, "frontend -> mTLS -> backend -> web: {body}");
    assert_eq!(seen(&body)["upstream"], "web");

    // The backend's own identity reaches its policy filter as source.principal: denied.
    let (status, body) = call(mesh.backend.listener("public").await, "/orders").await.unwrap();
    assert_eq!(status, 403, "{body}");
    assert_eq!(seen(&body)["reason"], "no rule matches and the default is deny");
    assert_eq!(mesh.web.requests(), 1);

    // A cluster that expects another identity refuses the backend, and says so.
    let (status, _) = call(mesh.frontend.listener("wrong").await, "/orders").await.unwrap();
    assert_eq!(status, 502);
    assert!(
        mesh.frontend.log().contains(&format!("refused mesh peer {BACKEND}: it is not one of the identities expected")),
        "{}",
        mesh.frontend.log()
    );

    // Clients outside the mesh: none of them reaches the upstream.
    let url = format!("https://{}/orders", mesh.mesh_in);
    let anonymous = curl(&["-k", &url]).await;
    assert!(!anonymous.status.success(), "a client without a certificate got an answer");
    let dir = TempDir::new("rogue");
    let rogue = support::certs::Ca::new(dir.path(), "rogue").client(dir.path(), "rogue", FRONTEND);
    let forged =
        curl(&["-k", "--cert", rogue.cert.to_str().unwrap(), "--key", rogue.key.to_str().unwrap(), &url]).await;
    assert!(!forged.status.success(), "a certificate of another CA, naming the frontend, got an answer");
    assert_eq!(mesh.web.requests(), 1);
    // The frontend's own certificate and key (kept in its data dir; the key never left it) pass.
    let identity = mesh.frontend.data().join("identity");
    let (cert, key) = (identity.join("cert.pem"), identity.join("key.pem"));
    let direct = curl(&[
        "-k",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        &url,
    ])
    .await;
    assert_eq!(String::from_utf8_lossy(&direct.stdout), "200", "{}", String::from_utf8_lossy(&direct.stderr));

    // The identities, as operators see them.
    let status = proxy_status(&mesh.control, "frontend").await;
    assert_eq!(status["identity"]["spiffe_id"], FRONTEND, "{status}");
    assert_eq!(status["identity"]["trust_bundle_current"], true, "{status}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let expiry = status["identity"]["expires_at_unix"].as_u64().unwrap();
    assert!(expiry > now + 23 * 3600 && expiry <= now + 24 * 3600 + 5, "24 h by default: {status}");
    assert_eq!(mesh.frontend.metric("weft_identity_cert_expiry_seconds").await, expiry as f64);
    let listed = mesh.control.cli(&["get", "proxies"]).await;
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(table.contains(FRONTEND) && table.contains(BACKEND) && table.contains("CERT EXPIRES"), "{table}");
}

#[tokio::test]
async fn a_wrong_join_token_gets_no_certificate() {
    let control = Control::start().await;
    let made_up = format!("wjt.{}.{}", "0".repeat(16), "0".repeat(64));
    let mut proxy = MeshProxy::spawn(&control, "intruder", "frontend", Some(&made_up), "x");
    let status = proxy.wait_exit().await;
    assert_eq!(status.code(), Some(1), "{}", proxy.log());
    assert!(proxy.log().contains("the join token was refused"), "{}", proxy.log());
    assert!(!proxy.data().join("identity/cert.pem").exists(), "no certificate kept");

    // A real token for the frontend does not give another identity, and is not spent by trying.
    let token = join_token(&control, "frontend").await;
    let mut proxy = MeshProxy::spawn(&control, "intruder", "admin", Some(&token), "x");
    assert_eq!(proxy.wait_exit().await.code(), Some(1), "{}", proxy.log());
    assert!(proxy.log().contains(&format!("only {FRONTEND} is allowed")), "{}", proxy.log());
    let tokens = control.get_json("/v1/tokens").await;
    assert_eq!(tokens["tokens"][0]["uses_left"], 1, "{tokens}");

    // Without any token, a proxy that never joined says what it needs.
    let mut proxy = MeshProxy::spawn(&control, "intruder", "frontend", None, "x");
    assert_eq!(proxy.wait_exit().await.code(), Some(2), "{}", proxy.log());
    assert!(proxy.log().contains("--join-token"), "{}", proxy.log());
    let proxies = control.get_json("/v1/proxies").await;
    assert!(proxies["proxies"].as_array().unwrap().is_empty(), "no identity was issued: {proxies}");

    // The same token, used up by a proxy that joins, lets no second one in.
    let joined = MeshProxy::spawn(&control, "first", "frontend", Some(&token), "x");
    eventually("the first proxy joins", || async { joined.admin_json("/identity").await["spiffe_id"] == FRONTEND })
        .await;
    let mut second = MeshProxy::spawn(&control, "second", "frontend", Some(&token), "x");
    assert_eq!(second.wait_exit().await.code(), Some(1), "{}", second.log());
    assert!(second.log().contains("the join token was refused"), "{}", second.log());
}

#[tokio::test]
async fn short_lived_certificates_renew_without_a_failed_request() {
    let mesh = Mesh::start(&["--cert-ttl", "4s"]).await;
    let load = load(mesh.frontend.listener("public").await);
    let first_expiry = mesh.frontend.metric("weft_identity_cert_expiry_seconds").await;
    for proxy in [&mesh.frontend, &mesh.backend] {
        eventually(&format!("{} renews three times", proxy.node), || async {
            proxy.metric(r#"weft_identity_renewals_total{result="ok"}"#).await >= 3.0
        })
        .await;
    }
    let (sent, failed) = load.finish().await;
    assert!(sent > 20, "too little load to tell: {sent}");
    assert_eq!(failed, 0, "requests failed while certificates renewed");
    assert_eq!(mesh.frontend.metric(r#"weft_identity_renewals_total{result="failed"}"#).await, 0.0);
    assert!(mesh.frontend.metric("weft_identity_cert_expiry_seconds").await > first_expiry);
    let status = proxy_status(&mesh.control, "backend").await;
    assert!(status["identity"]["certificates_issued"].as_u64().unwrap() >= 4, "{status}");
}

#[tokio::test]
async fn renewal_failures_show_in_metrics_and_on_the_admin_api_and_are_retried() {
    let mut control = Control::start_with(&["--cert-ttl", "4s"]).await;
    let token = join_token(&control, "frontend").await;
    let proxy = MeshProxy::spawn(&control, "frontend", "frontend", Some(&token), "frontend");
    eventually("the proxy joins", || async { proxy.admin_json("/identity").await["spiffe_id"] == FRONTEND }).await;

    control.kill();
    eventually("renewals fail, counted", || async {
        proxy.metric(r#"weft_identity_renewals_total{result="failed"}"#).await >= 2.0
    })
    .await;
    let identity = proxy.admin_json("/identity").await;
    assert!(identity["renewal_failures"].as_u64().unwrap() >= 1, "{identity}");
    let reason = identity["last_renewal_error"]["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("unreachable"), "{identity}");

    control.restart().await;
    let renewed = proxy.metric(r#"weft_identity_renewals_total{result="ok"}"#).await;
    eventually("renewals succeed again", || async {
        proxy.metric(r#"weft_identity_renewals_total{result="ok"}"#).await > renewed
            && proxy.admin_json("/identity").await["last_renewal_error"].is_null()
    })
    .await;
    eventually("the control plane sees the proxy's identity again", || async {
        let status = proxy_status(&control, "frontend").await;
        status["identity"]["following"] == true && status["identity"]["spiffe_id"] == FRONTEND
    })
    .await;
}

#[tokio::test]
async fn the_root_rotates_without_a_failed_request() {
    let mesh = Mesh::start(&[]).await;
    let before = mesh.control.get_json("/v1/mesh").await;
    let load = load(mesh.frontend.listener("public").await);

    let started = mesh.control.cli(&["mesh", "rotate", "start"]).await;
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    let control = &mesh.control;
    eventually("the new root signs and both proxies renewed from it", || async move {
        let status = control.get_json("/v1/mesh").await;
        let on_new_root = |proxy: Value| proxy["identity"]["issued_by_signer"] == true;
        status["rotation"]["phase"] == "issuing"
            && on_new_root(proxy_status(control, "frontend").await)
            && on_new_root(proxy_status(control, "backend").await)
    })
    .await;
    let during = mesh.control.get_json("/v1/mesh").await;
    assert_ne!(during["signer"], before["signer"]);
    assert_eq!(during["trust_bundle"]["pem"].as_str().unwrap().matches("BEGIN CERTIFICATE").count(), 2);

    let finished = mesh.control.cli(&["mesh", "rotate", "finish"]).await;
    assert!(finished.status.success(), "{}", String::from_utf8_lossy(&finished.stderr));
    let after = mesh.control.get_json("/v1/mesh").await;
    assert_eq!(after["authorities"].as_array().unwrap().len(), 1, "{after}");
    for proxy in [&mesh.frontend, &mesh.backend] {
        eventually(&format!("{} trusts the new root alone", proxy.node), || async {
            proxy.admin_json("/identity").await["trust_bundle"] == after["trust_bundle"]["digest"]
        })
        .await;
    }
    let settled = load.sent();
    eventually("more requests after the rotation", || async { load.sent() > settled + 10 }).await;
    let (sent, failed) = load.finish().await;
    assert!(sent > 20, "too little load to tell: {sent}");
    assert_eq!(failed, 0, "requests failed during the root rotation");
}
