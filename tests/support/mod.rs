//! What the end-to-end tests share: a real `weft` process, test upstreams, certificates, and
//! small clients. Each test target uses a part of it.
#![allow(dead_code)]

pub mod certs;
pub mod control;
pub mod filters;
pub mod grpc;
pub mod load;
pub mod managed;
pub mod mesh;
pub mod upstream;
pub mod weft;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use weft::Weft;

/// How long any single wait in a test may take before the test fails instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A folder removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "weft-e2e-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A JSON body (such as the echo upstream's description of what it received).
pub fn seen(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// A port nobody listens on right now (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs curl with a time limit; panics with a hint when curl is missing.
/// Async, so upstreams running in the test's own runtime keep serving while curl waits.
pub async fn curl(args: &[&str]) -> Output {
    tokio::process::Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(args)
        .output()
        .await
        .expect("curl is needed by the end-to-end tests (the test set-up installs it)")
}

/// curl's stdout as text, asserting curl itself succeeded.
pub async fn curl_ok(args: &[&str]) -> String {
    let output = curl(args).await;
    assert!(output.status.success(), "curl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A response as a raw HTTP/1.1 client sees it.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl RawResponse {
    /// A header's value (case-insensitive name), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// Sends raw bytes on a fresh connection and reads until the server closes it.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> RawResponse {
    try_raw_exchange(addr, request).await.unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// Like [`raw_exchange`], but a refused connection is an error rather than a failed test.
pub async fn try_raw_exchange(addr: SocketAddr, request: &[u8]) -> std::io::Result<RawResponse> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(request).await.expect("write");
    let mut bytes = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut bytes)).await.expect("response in time").ok();
    Ok(parse_raw(&bytes))
}

pub fn parse_raw(bytes: &[u8]) -> RawResponse {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    RawResponse { status, head: head.to_string(), body: body.to_string() }
}

/// Reads one response from a keep-alive connection: its head, then `content-length` bytes of body.
pub async fn read_response(stream: &mut tokio::net::TcpStream) -> RawResponse {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            if let Some(head_end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
                let response = parse_raw(&bytes[..head_end + 4]);
                let length: usize = response.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                if bytes.len() >= head_end + 4 + length {
                    return parse_raw(&bytes[..head_end + 4 + length]);
                }
            }
            let n = stream.read(&mut chunk).await.expect("read a response");
            assert!(n > 0, "the connection closed before a whole response: {:?}", String::from_utf8_lossy(&bytes));
            bytes.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(PATIENCE, read).await.expect("a response in time")
}

/// `GET path` with `Connection: close`.
pub async fn get(addr: SocketAddr, path: &str) -> RawResponse {
    raw_exchange(addr, format!("GET {path} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n").as_bytes()).await
}

/// Polls `check` until it returns true, failing the test after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
