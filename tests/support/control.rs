//! A real `weft control` process for a test: started on a fresh data dir, ready when `/healthz`
//! answers, killed when dropped (its logs are printed if the test failed). It can be killed with
//! SIGKILL and started again on the same data dir. Its API is called with raw HTTP/1.1, bodies
//! as bytes (module uploads and downloads are binary).

use super::{TempDir, PATIENCE};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Control {
    child: Option<Child>,
    pub dir: TempDir,
    pub addr: SocketAddr,
    /// The admin token, read from the data dir once the control plane is ready.
    pub token: String,
    extra_args: Vec<String>,
    /// How many times the process was started (each start has its own log files).
    starts: usize,
}

/// An answer of the control plane.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {} {}", self.status, self.text()))
    }

    /// A header's value (case-insensitive name), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

impl Control {
    /// `weft control` on a fresh data dir.
    pub async fn start() -> Control {
        Control::start_with(&[]).await
    }

    /// `weft control EXTRA_ARGS...` on a fresh data dir.
    pub async fn start_with(extra_args: &[&str]) -> Control {
        let addr: SocketAddr = format!("127.0.0.1:{}", super::free_port()).parse().unwrap();
        let mut control = Control {
            child: None,
            dir: TempDir::new("control"),
            addr,
            token: String::new(),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            starts: 0,
        };
        control.spawn().await;
        control
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn spawn(&mut self) {
        self.starts += 1;
        let child = Command::new(super::weft::binary())
            .arg("control")
            .arg("--data")
            .arg(self.data_dir())
            .args(["--listen", &self.addr.to_string(), "--log-level", "info"])
            .args(&self.extra_args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.log("stdout")).unwrap())
            .stderr(std::fs::File::create(self.log("stderr")).unwrap())
            .spawn()
            .expect("start weft control");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("weft control exited with {status} before it was ready:\n{}", self.stderr());
            }
            if self.try_call(None, "GET", "/healthz", &[], b"").await.is_ok_and(|r| r.status == 200) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "weft control not ready in time:\n{}", self.stderr());
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let token = std::fs::read_to_string(self.data_dir().join("admin-token")).expect("the admin token file");
        self.token = token.trim().to_string();
    }

    fn log(&self, stream: &str) -> PathBuf {
        self.dir.join(&format!("{stream}-{}.log", self.starts))
    }

    /// What this start of the process printed on stdout.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.log("stdout")).unwrap_or_default()
    }

    /// What this start of the process logged on stderr.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.log("stderr")).unwrap_or_default()
    }

    /// SIGKILL (no chance to clean up), then a new process on the same data dir and port.
    pub async fn kill_and_restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// SIGKILL: the control plane is gone until [`Control::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// A new process on the same data dir and port, after [`Control::kill`].
    pub async fn restart(&mut self) {
        self.spawn().await;
    }

    /// Calls the API with the admin token.
    pub async fn call(&self, method: &str, path: &str, body: &[u8]) -> Reply {
        self.call_as(Some(&self.token.clone()), method, path, &[], body).await
    }

    /// `GET path` with the admin token, expecting 200 and JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let reply = self.call("GET", path, b"").await;
        assert_eq!(reply.status, 200, "GET {path}: {}", reply.text());
        reply.json()
    }

    /// Calls the API with `token` (none: no Authorization header) and extra headers.
    pub async fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        self.try_call(token, method, path, headers, body).await.unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    async fn try_call(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Reply> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if let Some(token) = token {
            head += &format!("Authorization: Bearer {token}\r\n");
        }
        for (name, value) in headers {
            head += &format!("{name}: {value}\r\n");
        }
        head += "\r\n";
        let mut stream = tokio::net::TcpStream::connect(self.addr).await?;
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut bytes = Vec::new();
        tokio::time::timeout(PATIENCE, stream.read_to_end(&mut bytes))
            .await
            .map_err(|_| std::io::Error::other("no answer in time"))??;
        let split = bytes.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| std::io::Error::other("no head"))?;
        let head = String::from_utf8_lossy(&bytes[..split]).into_owned();
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        Ok(Reply { status, head, body: bytes[split + 4..].to_vec() })
    }

    /// Runs `weft ARGS...` against this control plane (`WEFT_CONTROL` and `WEFT_TOKEN` set).
    pub async fn cli(&self, args: &[&str]) -> Output {
        cli(args, &[("WEFT_CONTROL", &self.url()), ("WEFT_TOKEN", &self.token)], self.dir.path()).await
    }
}

/// Runs `weft ARGS...` with `env` in `dir`, to completion (bounded by [`PATIENCE`]).
pub async fn cli(args: &[&str], env: &[(&str, &str)], dir: &std::path::Path) -> Output {
    let mut command = tokio::process::Command::new(super::weft::binary());
    command.args(args).current_dir(dir).env_remove("WEFT_CONTROL").env_remove("WEFT_TOKEN").kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    tokio::time::timeout(PATIENCE, command.output()).await.expect("weft exits in time").expect("run weft")
}

impl Drop for Control {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- weft control stderr ----\n{}", self.stderr());
        }
    }
}
