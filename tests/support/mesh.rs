//! A real `weft proxy --control URL --service NAME` process for the mesh tests: it joins with a
//! join token and has no admin token; a [`Managed`] process otherwise (killed when dropped, its log
//! printed if the test failed).

use super::control::Control;
use super::managed::Managed;
use super::TempDir;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};

pub struct MeshProxy {
    proxy: Managed,
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
            .env_remove("WEFT_JOIN_TOKEN");
        if let Some(token) = token {
            command.args(["--join-token", token]);
        }
        MeshProxy { proxy: Managed::spawn(command, dir, admin, node), admin, node: node.to_owned() }
    }

    /// The proxy's data dir (its mesh identity is in identity/).
    pub fn data(&self) -> PathBuf {
        self.proxy.data()
    }

    pub fn log(&self) -> String {
        self.proxy.log()
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
        self.proxy.metrics().await
    }

    /// A metric's value (`name{labels}`), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        super::weft::metric(&self.metrics().await, series).unwrap_or(0.0)
    }

    /// Where listener `name` is bound, once the proxy runs a config with it.
    pub async fn listener(&self, name: &str) -> SocketAddr {
        self.proxy.addr(name).await
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        self.proxy.wait_exit().await
    }
}
