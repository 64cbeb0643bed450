//! A real `weft proxy` process for a test: started from a YAML config, ready when its admin says
//! so, killed when dropped (its logs are printed if the test failed).

use super::{eventually, get, TempDir, PATIENCE};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};

pub struct Weft {
    child: Option<Child>,
    pub dir: TempDir,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    listeners: HashMap<String, SocketAddr>,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_weft")
}

/// Runs `weft ARGS... CONFIG` to completion (a command expected to exit by itself).
pub async fn run_with_config(args: &[&str], config: &std::path::Path) -> std::process::Output {
    tokio::process::Command::new(binary()).args(args).arg(config).output().await.expect("run weft")
}

impl Weft {
    /// Starts `weft proxy` with `yaml` as its config file, in a fresh folder.
    pub async fn start(yaml: &str) -> Weft {
        Weft::start_in(TempDir::new("weft"), yaml).await
    }

    /// Starts `weft proxy` with `yaml` written to `config.yaml` in `dir` (certificates may be there).
    pub async fn start_in(dir: TempDir, yaml: &str) -> Weft {
        Weft::start_with(dir, yaml, &[]).await
    }

    /// Like [`Weft::start_in`], with more flags for `weft proxy`.
    pub async fn start_with(dir: TempDir, yaml: &str, extra: &[&str]) -> Weft {
        let config_path = dir.join("config.yaml");
        std::fs::write(&config_path, yaml).unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", super::free_port()).parse().unwrap();
        let (stdout_path, stderr_path) = (dir.join("stdout.log"), dir.join("stderr.log"));
        let child = Command::new(binary())
            .args(["proxy", "--config"])
            .arg(&config_path)
            .args(["--admin", &admin.to_string(), "--drain-timeout", "5s", "--log-level", "info,weft_proxy=debug"])
            .arg("--cache-dir")
            .arg(dir.join("module-cache"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("start weft");
        let mut weft =
            Weft { child: Some(child), dir, admin, config_path, stdout_path, stderr_path, listeners: HashMap::new() };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = weft.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("weft exited with {status} before it was ready:\n{}", weft.stderr());
            }
            let probe =
                super::try_raw_exchange(admin, b"GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
                    .await;
            if probe.is_ok_and(|r| r.status == 200) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "weft not ready in time:\n{}", weft.stderr());
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        }
        weft.refresh_listeners().await;
        weft
    }

    async fn refresh_listeners(&mut self) {
        let config: serde_json::Value = serde_json::from_str(&get(self.admin, "/config").await.body).unwrap();
        self.listeners = config["listeners"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, addr)| (name.clone(), addr.as_str().unwrap().parse().unwrap()))
            .collect();
    }

    /// Where listener `name` is bound.
    pub fn addr(&self, name: &str) -> SocketAddr {
        *self.listeners.get(name).unwrap_or_else(|| panic!("no listener {name:?}: {:?}", self.listeners))
    }

    /// `http://ADDR` of listener `name`.
    pub fn url(&self, name: &str, path: &str) -> String {
        format!("http://{}{path}", self.addr(name))
    }

    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        let response = get(self.admin, path).await;
        assert_eq!(response.status, 200, "admin {path}: {response:?}");
        serde_json::from_str(&response.body).unwrap()
    }

    /// Where the Toxiproxy API listens (started with `--toxiproxy-listen`).
    pub async fn toxiproxy_api(&self) -> SocketAddr {
        let config = self.admin_json("/config").await;
        let address =
            config["toxiproxy_api"].as_str().unwrap_or_else(|| panic!("no toxiproxy_api in /config: {config}"));
        address.parse().unwrap()
    }

    pub async fn metrics(&self) -> String {
        get(self.admin, "/metrics").await.body
    }

    pub async fn config_version(&self) -> u64 {
        self.admin_json("/config").await["version"].as_u64().unwrap()
    }

    /// Replaces the config file and sends SIGHUP; waits until a new version is in force.
    pub async fn reload(&mut self, yaml: &str) {
        let before = self.config_version().await;
        std::fs::write(&self.config_path, yaml).unwrap();
        self.signal("HUP");
        let admin = self.admin;
        eventually("the new config to load", || async move {
            let config: serde_json::Value = serde_json::from_str(&get(admin, "/config").await.body).unwrap_or_default();
            config["version"].as_u64().unwrap_or(0) > before
        })
        .await;
        self.refresh_listeners().await;
    }

    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let status = Command::new("kill").args([&format!("-{name}"), &pid]).status().unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return status;
            }
            assert!(tokio::time::Instant::now() < deadline, "weft did not exit:\n{}", self.stderr());
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The access log (JSON lines on stdout), parsed.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.stdout_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

impl Drop for Weft {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- weft stderr ----\n{}", self.stderr());
        }
    }
}

/// A metric's value from Prometheus text, by its full series text (`name{labels}`).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.trim().split(' ').next()?.parse().ok())
}
