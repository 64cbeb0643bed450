//! A real `weft proxy --control` process for a test, with a node id and labels; killed when
//! dropped (its log printed if the test failed). Its listeners may bind port 0: [`Managed::addr`]
//! asks its admin API where they are.

use super::control::Control;
use super::{get, TempDir, PATIENCE};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};

pub struct Managed {
    child: Option<Child>,
    dir: TempDir,
    pub admin: SocketAddr,
    pub node: String,
}

impl Managed {
    /// `weft proxy --control URL --node NODE --label K=V...`, following `control`.
    pub fn start(control: &Control, node: &str, labels: &[&str]) -> Managed {
        let dir = TempDir::new("managed");
        let admin: SocketAddr = format!("127.0.0.1:{}", super::free_port()).parse().unwrap();
        let mut command = Command::new(super::weft::binary());
        command.args(["proxy", "--control", &control.url(), "--node", node]);
        for label in labels {
            command.args(["--label", label]);
        }
        command
            .args(["--admin", &admin.to_string(), "--drain-timeout", "2s", "--log-level", "info"])
            .arg("--data")
            .arg(dir.join("data"))
            .arg("--cache-dir")
            .arg(dir.join("module-cache"))
            .env("WEFT_TOKEN", &control.token);
        Managed::spawn(command, dir, admin, node)
    }

    /// Starts `command` (a `weft proxy` whose data dir is in `dir` and whose admin API is at
    /// `admin`), its output going to its log in `dir`.
    pub fn spawn(mut command: Command, dir: TempDir, admin: SocketAddr, node: &str) -> Managed {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("proxy.log")).unwrap())
            .spawn()
            .expect("start weft proxy");
        Managed { child: Some(child), dir, admin, node: node.to_owned() }
    }

    /// The proxy's data dir.
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("proxy.log")).unwrap_or_default()
    }

    /// Where listener `name` is bound, once the proxy runs a config that has it.
    pub async fn addr(&self, name: &str) -> SocketAddr {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let config =
                super::try_raw_exchange(self.admin, b"GET /config HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                    .await;
            let bound = config
                .ok()
                .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok())
                .and_then(|c| c["listeners"][name].as_str().and_then(|a| a.parse().ok()));
            if let Some(addr) = bound {
                return addr;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: no listener {name} in time:\n{}",
                self.node,
                self.log()
            );
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

    pub async fn metrics(&self) -> String {
        get(self.admin, "/metrics").await.body
    }
}

impl Drop for Managed {
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
