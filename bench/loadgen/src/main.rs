//! Load generator for weft's side-by-side benchmark.
//!
//! Two modes, both printing one JSON object on stdout:
//!
//! * `rate`: open-loop HTTP/1.1 GETs at a fixed request rate. A pacer thread releases request
//!   number `i` at its *intended* time `start + i / rate`; keep-alive connections take the next
//!   released request as soon as they are free. Latency runs from the intended time to the last
//!   byte of the response, so time spent waiting behind a slow response is counted (coordinated
//!   omission is corrected, as in wrk2).
//! * `idle`: opens N keep-alive connections, does one request on each, holds them idle and reads
//!   the resident memory (VmRSS) of the given processes before, while open and after closing;
//!   repeated for several cycles to show leaks.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex, Semaphore};

const USAGE: &str = "usage:
  loadgen rate --url http://HOST:PORT/PATH --rate N [--duration SECS] [--warmup SECS] [--conns N] [--timeout SECS]
  loadgen idle --addr HOST:PORT --conns N --pids PID[,PID...] [--cycles N] [--settle-ms MS] [--connect-concurrency N]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = args.first().cloned() else {
        die(USAGE);
    };
    let opts = parse_opts(&args[1..]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let out = match mode.as_str() {
        "rate" => rt.block_on(rate_mode(&opts)),
        "idle" => rt.block_on(idle_mode(&opts)),
        _ => die(USAGE),
    };
    println!("{out}");
}

fn die(msg: &str) -> ! {
    eprintln!("{msg}");
    std::process::exit(2);
}

fn parse_opts(args: &[String]) -> HashMap<String, String> {
    let mut m = HashMap::new();
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let Some(name) = k.strip_prefix("--") else {
            die(&format!("unexpected argument {k:?}\n{USAGE}"));
        };
        let Some(v) = it.next() else {
            die(&format!("--{name} needs a value"));
        };
        m.insert(name.to_string(), v.clone());
    }
    m
}

fn opt<T: std::str::FromStr>(o: &HashMap<String, String>, name: &str, default: Option<T>) -> T {
    match o.get(name) {
        Some(v) => v
            .parse()
            .unwrap_or_else(|_| die(&format!("--{name}: cannot parse {v:?}"))),
        None => default.unwrap_or_else(|| die(&format!("--{name} is required\n{USAGE}"))),
    }
}

// ---------------------------------------------------------------------------------------------
// rate: open-loop, coordinated-omission corrected latency
// ---------------------------------------------------------------------------------------------

struct Target {
    addr: String,
    host: String,
    path: String,
}

fn parse_url(url: &str) -> Target {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| die("--url must start with http://"));
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Target {
        addr: authority.to_string(),
        host: authority.to_string(),
        path: path.to_string(),
    }
}

struct WorkerStats {
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    warmup_done: u64,
}

async fn rate_mode(o: &HashMap<String, String>) -> Value {
    let url: String = opt(o, "url", None);
    let rate: f64 = opt(o, "rate", None);
    let duration: f64 = opt(o, "duration", Some(10.0));
    let warmup: f64 = opt(o, "warmup", Some(1.0));
    let conns: usize = opt(o, "conns", Some(32));
    let timeout = Duration::from_secs_f64(opt(o, "timeout", Some(5.0)));
    if rate <= 0.0 || duration <= 0.0 || conns == 0 {
        die("--rate, --duration and --conns must be positive");
    }
    let target = Arc::new(parse_url(&url));
    let warmup_n = (rate * warmup).round() as u64;
    let total = warmup_n + (rate * duration).round() as u64;
    let interval_ns = 1e9 / rate;

    // Open every connection before the clock starts.
    let mut senders = Vec::with_capacity(conns);
    for _ in 0..conns {
        match connect_h1(&target.addr).await {
            Ok(s) => senders.push(s),
            Err(e) => {
                return json!({"error": format!("connect {}: {e}", target.addr)});
            }
        }
    }

    let (tx, rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let rx = Arc::new(Mutex::new(rx));
    let start = Instant::now() + Duration::from_millis(50);

    // The pacer runs on its own OS thread so that request release times do not depend on the
    // runtime's millisecond timer wheel; its own lateness is measured and reported.
    let pacer = std::thread::spawn(move || {
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
        }
        let mut lag = Histogram::<u64>::new(3).expect("histogram");
        for i in 0..total {
            let intended = start + Duration::from_nanos((i as f64 * interval_ns) as u64);
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            let late = Instant::now().saturating_duration_since(intended);
            let _ = lag.record(late.as_nanos() as u64);
            if tx.send((i, intended)).is_err() {
                break;
            }
        }
        lag
    });

    let mut handles = Vec::with_capacity(conns);
    for sender in senders {
        let rx = rx.clone();
        let target = target.clone();
        handles.push(tokio::spawn(async move {
            let mut st = WorkerStats {
                hist: Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram"),
                ok: 0,
                errors: 0,
                warmup_done: 0,
            };
            let mut sender = Some(sender);
            loop {
                let ticket = { rx.lock().await.recv().await };
                let Some((i, intended)) = ticket else { break };
                let measured = i >= warmup_n;
                if sender.is_none() {
                    sender = connect_h1(&target.addr).await.ok();
                }
                let ok = match sender.as_mut() {
                    Some(s) => {
                        matches!(
                            tokio::time::timeout(timeout, one_request(s, &target)).await,
                            Ok(Ok(()))
                        )
                    }
                    None => false,
                };
                let latency = Instant::now().saturating_duration_since(intended);
                if !ok {
                    sender = None; // reconnect on the next request
                }
                if !measured {
                    st.warmup_done += 1;
                    continue;
                }
                if ok {
                    st.ok += 1;
                    let _ = st.hist.record(latency.as_nanos().max(1) as u64);
                } else {
                    st.errors += 1;
                }
            }
            st
        }));
    }

    let lag = tokio::task::spawn_blocking(move || pacer.join().expect("pacer"))
        .await
        .expect("pacer join");
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
    let (mut ok, mut errors) = (0u64, 0u64);
    for h in handles {
        let st = h.await.expect("worker");
        hist.add(&st.hist).expect("merge");
        ok += st.ok;
        errors += st.errors;
    }
    let end = Instant::now();
    let measured_start = start + Duration::from_nanos((warmup_n as f64 * interval_ns) as u64);
    let elapsed = end.saturating_duration_since(measured_start).as_secs_f64();
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    json!({
        "url": url,
        "rate": rate,
        "duration_s": duration,
        "conns": conns,
        "requests": ok + errors,
        "ok": ok,
        "errors": errors,
        "achieved_rps": if elapsed > 0.0 { ok as f64 / elapsed } else { 0.0 },
        "latency_us": {
            "p50": us(0.50),
            "p90": us(0.90),
            "p99": us(0.99),
            "p999": us(0.999),
            "max": hist.max() as f64 / 1000.0,
            "mean": hist.mean() / 1000.0,
        },
        "pacer_lag_us": {
            "p50": lag.value_at_quantile(0.5) as f64 / 1000.0,
            "p99": lag.value_at_quantile(0.99) as f64 / 1000.0,
            "max": lag.max() as f64 / 1000.0,
        },
    })
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect_h1(addr: &str) -> Result<Sender, Box<dyn std::error::Error + Send + Sync>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn one_request(
    s: &mut Sender,
    t: &Target,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    s.ready().await?;
    let req = hyper::Request::builder()
        .uri(t.path.as_str())
        .header(hyper::header::HOST, t.host.as_str())
        .body(Empty::<Bytes>::new())?;
    let resp = s.send_request(req).await?;
    let status = resp.status();
    resp.into_body().collect().await?;
    if !status.is_success() {
        return Err(format!("status {status}").into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// idle: memory per idle keep-alive connection
// ---------------------------------------------------------------------------------------------

fn rss_bytes(pids: &[u32]) -> u64 {
    let mut total = 0;
    for pid in pids {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            for line in s.lines() {
                if let Some(rest) = line.strip_prefix("VmRSS:") {
                    let kb: u64 = rest
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse()
                        .unwrap_or(0);
                    total += kb * 1024;
                }
            }
        }
    }
    total
}

/// Connects, sends one GET and reads the whole response, leaving the connection open.
async fn open_used_conn(addr: &str) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(head_end) = find(&buf, b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 2") {
            return Err(std::io::Error::other(format!(
                "unexpected response: {}",
                head.lines().next().unwrap_or("")
            )));
        }
        let body = &buf[head_end + 4..];
        if let Some(cl) = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            if body.len() >= cl {
                return Ok(s);
            }
        } else if head.contains("transfer-encoding: chunked") {
            if find(body, b"0\r\n\r\n").is_some() {
                return Ok(s);
            }
        } else {
            return Err(std::io::Error::other("response without length"));
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn idle_mode(o: &HashMap<String, String>) -> Value {
    let addr: String = opt(o, "addr", None);
    let conns: usize = opt(o, "conns", None);
    let cycles: usize = opt(o, "cycles", Some(2));
    let settle = Duration::from_millis(opt(o, "settle-ms", Some(1500)));
    let concurrency: usize = opt(o, "connect-concurrency", Some(128));
    let pids: Vec<u32> = opt::<String>(o, "pids", None)
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or_else(|_| die("--pids: not a pid list")))
        .collect();

    let mut out = Vec::new();
    for cycle in 1..=cycles {
        tokio::time::sleep(settle).await;
        let before = rss_bytes(&pids);
        let sem = Arc::new(Semaphore::new(concurrency));
        let addr = Arc::new(addr.clone());
        let mut tasks = Vec::with_capacity(conns);
        let t0 = Instant::now();
        for _ in 0..conns {
            let permit = sem.clone().acquire_owned().await.expect("semaphore");
            let addr = addr.clone();
            tasks.push(tokio::spawn(async move {
                let r = tokio::time::timeout(Duration::from_secs(10), open_used_conn(&addr)).await;
                drop(permit);
                match r {
                    Ok(Ok(s)) => Ok(s),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("timeout".to_string()),
                }
            }));
        }
        let mut streams = Vec::with_capacity(conns);
        let mut errors: HashMap<String, u64> = HashMap::new();
        for t in tasks {
            match t.await.expect("task") {
                Ok(s) => streams.push(s),
                Err(e) => *errors.entry(e).or_default() += 1,
            }
        }
        let open_secs = t0.elapsed().as_secs_f64();
        tokio::time::sleep(settle).await;
        let open = rss_bytes(&pids);
        // A connection the proxy has closed reads EOF; an idle open one would block.
        let mut alive = 0u64;
        let mut buf = [0u8; 64];
        for s in &streams {
            match s.try_read(&mut buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => alive += 1,
                Ok(n) if n > 0 => alive += 1,
                _ => {}
            }
        }
        let opened = streams.len() as u64;
        drop(streams);
        tokio::time::sleep(settle).await;
        let closed = rss_bytes(&pids);
        let per_conn = if opened > 0 {
            (open as f64 - before as f64) / opened as f64
        } else {
            0.0
        };
        out.push(json!({
            "cycle": cycle,
            "requested": conns,
            "opened": opened,
            "alive_at_measure": alive,
            "errors": errors,
            "open_seconds": open_secs,
            "rss_before": before,
            "rss_open": open,
            "rss_after_close": closed,
            "bytes_per_conn": per_conn,
        }));
    }
    json!({ "addr": addr, "pids": pids, "cycles": out })
}
