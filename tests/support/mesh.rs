//! A real `weft proxy --control URL --service NAME` process for the mesh tests: it joins with a
//! join token and has no admin token; killed when dropped (its log printed if the test failed).

use super::control::Control;
use super::{get, TempDir, PATIENCE};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};

pub struct MeshProxy {
    child: Option<Child>,
    pub dir: TempDir,
    pub admin: SocketAddr,
    pub node: String,
}

impl MeshProxy {
    /// Starts a proxy for `node` with the identity of `service` in namespace `default`, joining
    /// with `token` (none: no --join-token), labelled `role=ROLE`.
    pub fn spawn(control: &Control, node: &str, service: &str, token: Option<&str>, role: &str) -> MeshProxy {
        let dir = TempDir::new(&format!("mesh-{node}"));
        let admin: SocketAddr = format!("127.0.0.1:{}", super::free_port()).parse().unwrap();
        let mut command = Command::new(super::weft::binary());
        command
            .args(["proxy", "--control", &control.url(), "--node", node, "--label", &format!("role={role}")])
            .args(["--service", service, "--admin", &admin.to_string(), "--drain-timeout", "5s"])
            .args(["--log-level", "info,weft_proxy=debug"])
            .arg("--data")
            .arg(dir.join("data"))
            .arg("--cache-dir")
            .arg(dir.join("module-cache"))
            // A mesh proxy needs no admin token: it joins with a join token.
            .env_remove("WEFT_TOKEN")
            .env_remove("WEFT_JOIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap());
        if let Some(token) = token {
            command.args(["--join-token", token]);
        }
        let child = command.spawn().expect("start weft proxy");
        MeshProxy { child: Some(child), dir, admin, node: node.to_owned() }
    }

    /// The proxy's data dir (its mesh identity is in identity/).
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// A JSON document of the admin API, or `Null` while it does not answer 200.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        match super::try_raw_exchange(
            self.admin,
            format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        {
            Ok(response) if response.status == 200 => serde_json::from_str(&response.body).unwrap_or_default(),
            _ => serde_json::Value::Null,
        }
    }

    pub async fn metrics(&self) -> String {
        get(self.admin, "/metrics").await.body
    }

    /// A metric's value (`name{labels}`), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        super::weft::metric(&self.metrics().await, series).unwrap_or(0.0)
    }

    /// Where listener `name` is bound, once the proxy runs a config with it.
    pub async fn listener(&self, name: &str) -> SocketAddr {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let config = self.admin_json("/config").await;
            if let Some(address) = config["listeners"][name].as_str().and_then(|a| a.parse().ok()) {
                return address;
            }
            assert!(tokio::time::Instant::now() < deadline, "{} never bound {name}:\n{}", self.node, self.log());
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return status;
            }
            assert!(tokio::time::Instant::now() < deadline, "{} did not exit:\n{}", self.node, self.log());
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        }
    }
}

impl Drop for MeshProxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- weft proxy {} stderr ----\n{}", self.node, self.log());
        }
    }
}
