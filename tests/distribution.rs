//! Proxies managed by a control plane, end to end: a real `weft control` and real `weft proxy
//! --control` processes on loopback. A proxy gets each version applied, fetches its modules,
//! answers ACK or NACK (visible in `/v1/proxies`), reloads under load without a failed request,
//! keeps serving when the control plane is gone, starts from its cache, and catches up.

#[allow(unused_imports)] // the shared support re-exports what other targets use
mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::control::Control;
use support::filters::test_filters;
use support::load::Load;
use support::upstream::echo;
use support::{eventually, seen, try_raw_exchange, TempDir};

/// A config: listener `public` on `port` through the test module's `headers` filter to `web`.
fn config(port: u16, digest: &str, web: &str) -> String {
    format!(
        r#"
listeners:
  - name: public
    address: 127.0.0.1:{port}
    filters: [headers]
    cluster: web
clusters:
  - name: web
    endpoints: ["{web}"]
filters:
  - name: headers
    module: {digest}
    config: {{ mode: headers }}
selector: {{ env: test }}
"#
    )
}

async fn push_test_module(control: &Control) -> String {
    let reply = control.call("POST", "/v1/modules", &std::fs::read(test_filters()).unwrap()).await;
    assert!(matches!(reply.status, 200 | 201), "{}", reply.text());
    reply.json()["digest"].as_str().unwrap().to_string()
}

async fn apply(control: &Control, yaml: &str) -> u64 {
    let reply = control
        .call_as(Some(&control.token), "POST", "/v1/config", &[("Content-Type", "application/yaml")], yaml.as_bytes())
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    reply.json()["version"].as_u64().unwrap()
}

/// A `weft proxy --control` process; killed when dropped (its log printed if the test failed).
struct Managed {
    child: Option<Child>,
    dir: TempDir,
    admin: SocketAddr,
    starts: usize,
    control: String,
    token: String,
}

impl Managed {
    fn start(control: &Control, dir: TempDir) -> Managed {
        let admin = format!("127.0.0.1:{}", support::free_port()).parse().unwrap();
        let mut proxy =
            Managed { child: None, dir, admin, starts: 0, control: control.url(), token: control.token.clone() };
        proxy.spawn();
        proxy
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let child = Command::new(support::weft::binary())
            .args(["proxy", "--control", &self.control, "--node", "edge-1", "--label", "env=test"])
            .args(["--admin", &self.admin.to_string(), "--drain-timeout", "5s", "--log-level", "info"])
            .arg("--data")
            .arg(self.dir.join("data"))
            .arg("--cache-dir")
            .arg(self.dir.join("module-cache"))
            .env("WEFT_TOKEN", &self.token)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.log()).unwrap())
            .spawn()
            .expect("start weft proxy");
        self.child = Some(child);
    }

    fn log(&self) -> std::path::PathBuf {
        self.dir.join(&format!("proxy-{}.log", self.starts))
    }

    fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        self.spawn();
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- weft proxy stderr ----\n{}", std::fs::read_to_string(self.log()).unwrap_or_default());
        }
    }
}

/// The echo upstream's name behind `port`, or why not.
async fn served_by(port: u16) -> Result<String, String> {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let answer = try_raw_exchange(addr, b"GET /x HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    if answer.status != 200 {
        return Err(format!("status {}", answer.status));
    }
    Ok(seen(&answer.body)["upstream"].as_str().unwrap_or_default().to_owned())
}

async fn proxy_status(control: &Control) -> serde_json::Value {
    let proxies = control.get_json("/v1/proxies").await;
    proxies["proxies"].as_array().unwrap().iter().find(|p| p["node"] == "edge-1").cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_proxy_takes_each_version_refuses_what_it_cannot_load_and_reloads_under_load() {
    let control = Control::start().await;
    let digest = push_test_module(&control).await;
    let (web, web2) = (echo("web").await, echo("web2").await);
    let port = support::free_port();
    assert_eq!(apply(&control, &config(port, &digest, &web.endpoint())).await, 1);

    let _proxy = Managed::start(&control, TempDir::new("managed"));
    eventually("the proxy serves version 1", || async { served_by(port).await.is_ok_and(|u| u == "web") }).await;
    eventually("/v1/proxies shows version 1 acknowledged", || async {
        let status = proxy_status(&control).await;
        status["connected"] == true && status["version"] == 1 && status["labels"]["env"] == "test"
    })
    .await;

    // A version the proxy cannot load: its listener's port is taken. It answers NACK with why,
    // and version 1 keeps serving.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    assert_eq!(apply(&control, &config(taken_port, &digest, &web.endpoint())).await, 2);
    eventually("/v1/proxies shows version 2 refused", || async {
        let status = proxy_status(&control).await;
        status["last_rejection"]["version"] == 2 && status["version"] == 1
    })
    .await;
    let reason = proxy_status(&control).await["last_rejection"]["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains(&taken_port.to_string()), "{reason}");
    assert_eq!(served_by(port).await.as_deref(), Ok("web"), "version 1 kept serving");
    drop(taken);

    // A new version under steady load: no request fails while it is swapped in.
    let load = Load::start(move || async move { served_by(port).await.map(drop) });
    assert_eq!(apply(&control, &config(port, &digest, &web2.endpoint())).await, 3);
    eventually("the proxy serves version 3", || async { served_by(port).await.is_ok_and(|u| u == "web2") }).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // a little load after the swap too
    let (sent, failed) = load.finish().await;
    assert!(sent > 10, "too little load to tell");
    assert_eq!(failed, 0, "requests failed during the reload");
    eventually("/v1/proxies shows version 3", || async { proxy_status(&control).await["version"] == 3 }).await;

    let listed = control.cli(&["get", "proxies"]).await;
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    assert!(table.contains("edge-1") && table.contains("env=test") && table.contains("version 2:"), "{table}");
}

#[tokio::test]
async fn a_proxy_serves_without_its_control_plane_starts_from_its_cache_and_catches_up() {
    let mut control = Control::start().await;
    let digest = push_test_module(&control).await;
    let (web, web2) = (echo("web").await, echo("web2").await);
    let port = support::free_port();
    apply(&control, &config(port, &digest, &web.endpoint())).await;
    let mut proxy = Managed::start(&control, TempDir::new("managed"));
    eventually("the proxy serves version 1", || async { served_by(port).await.is_ok_and(|u| u == "web") }).await;

    control.kill();
    assert_eq!(served_by(port).await.as_deref(), Ok("web"), "serving on without the control plane");
    proxy.restart();
    eventually("a restarted proxy serves its cached config with no control plane", || async {
        served_by(port).await.is_ok_and(|u| u == "web")
    })
    .await;

    control.restart().await;
    apply(&control, &config(port, &digest, &web2.endpoint())).await;
    eventually("the proxy reconnects and catches up", || async { served_by(port).await.is_ok_and(|u| u == "web2") })
        .await;
}

#[tokio::test]
async fn a_proxy_without_the_token_is_refused() {
    let control = Control::start().await;
    let port = support::free_port();
    let digest = push_test_module(&control).await;
    apply(&control, &config(port, &digest, "127.0.0.1:9")).await;
    let dir = TempDir::new("managed");
    let child = Command::new(support::weft::binary())
        .args(["proxy", "--control", &control.url(), "--node", "intruder", "--admin", "127.0.0.1:0"])
        .arg("--data")
        .arg(dir.join("data"))
        .env_remove("WEFT_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("log")).unwrap())
        .spawn()
        .unwrap();
    let intruder = Managed {
        child: Some(child),
        dir,
        admin: "127.0.0.1:0".parse().unwrap(),
        starts: 0,
        control: String::new(),
        token: String::new(),
    };
    eventually("the proxy says it was refused", || async {
        std::fs::read_to_string(intruder.dir.join("log")).unwrap_or_default().contains("bearer token")
    })
    .await;
    drop(intruder);
    let proxies = control.get_json("/v1/proxies").await;
    assert!(proxies["proxies"].as_array().unwrap().is_empty(), "{proxies}");
}
