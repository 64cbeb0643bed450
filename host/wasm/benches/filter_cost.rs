//! What a filter costs a request, timed inside one process: no sockets, no HTTP parsing, no
//! scheduler, so the only thing that changes between chain lengths is the filters.
//!
//! The filters load the way `weft proxy` loads them (the same loader, engine and warm instances),
//! and every request runs the phases a keep-alive GET through an HTTP listener runs: request
//! headers (end of stream), response headers, the response's one body piece (end of stream), and
//! the end of the stream (log, done, delete). Rounds interleave the chain lengths; the report is
//! the median nanoseconds per request of each length and the least-squares slope over the
//! lengths, which is what one more filter adds.
//!
//! `bench/filter-cost` builds the modules and runs this; see bench/README.md for the knobs.

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use weft_proxy::chain::{
    BodyStep, CalloutFuture, Callouts, Direction, FilterChain, FilterHost, FilterLoader, HttpFilter, RequestDecisions,
    StreamInfo,
};
use weft_proxy::metrics::{Metrics, Name};

struct Knobs {
    kinds: Vec<String>,
    chains: Vec<usize>,
    rounds: usize,
    /// Requests per chain length per round.
    requests: usize,
    /// Evict the core's caches before every request.
    cold: bool,
}

fn knobs() -> Knobs {
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_string());
    let list = |name: &str, default: &str| -> Vec<String> {
        var(name, default).split_whitespace().map(str::to_string).collect()
    };
    let number = |name: &str, default: &str| -> usize {
        var(name, default).parse().unwrap_or_else(|_| panic!("{name} must be a whole number"))
    };
    Knobs {
        kinds: list("KINDS", "noop bench16 chaos_off chaos_idle router_50 policy_jwt"),
        chains: list("FILTER_CHAINS", "0 1 2 4 8")
            .iter()
            .map(|n| n.parse().unwrap_or_else(|_| panic!("FILTER_CHAINS: {n} is not a chain length")))
            .collect(),
        rounds: number("ROUNDS", "7"),
        requests: number("REQUESTS", "20000"),
        cold: var("CACHES", "hot") == "cold",
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A kind's module, config and extra request header: a mode of `tests/filters`, or a built-in
/// filter's config in `bench/filters/KIND.json`.
fn kind_spec(kind: &str) -> (PathBuf, serde_json::Value, Option<(String, String)>) {
    let spec = repo().join("bench/filters").join(format!("{kind}.json"));
    if !spec.exists() {
        let module = repo().join("tests/filters/target/wasm32-wasip1/release/weft_test_filters.wasm");
        return (module, serde_json::json!({ "mode": kind }), None);
    }
    let text = std::fs::read_to_string(&spec).unwrap_or_else(|e| panic!("{}: {e}", spec.display()));
    let data: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", spec.display()));
    let package = data["package"].as_str().expect("a package name").replace('-', "_");
    let module = repo().join("target/wasm32-wasip1/filter").join(format!("{package}.wasm"));
    let header = data["header"].as_str().map(|h| {
        let (name, value) = h.split_once(':').expect("header as `name: value`");
        (name.trim().to_string(), value.trim().to_string())
    });
    (module, data["config"].clone(), header)
}

/// The bench has no clusters: a filter that calls out is told the cluster is unknown.
struct NoClusters;

impl Callouts for NoClusters {
    fn knows(&self, _cluster: &str) -> bool {
        false
    }
    fn send(&self, cluster: &str, _request: Request<Bytes>, _timeout: Duration) -> CalloutFuture {
        let cluster = cluster.to_string();
        Box::pin(async move { Err(format!("no cluster {cluster} in the bench")) })
    }
}

/// One request through `chain`, phase by phase, as the HTTP listener drives it.
fn one_request(chain: &FilterChain, request: &http::request::Parts, response: &http::response::Parts) {
    let streams = chain.start(|| StreamInfo {
        listener: Name::new("bench"),
        connection_id: 1,
        source: SocketAddr::from(([127, 0, 0, 1], 40000)),
        destination: SocketAddr::from(([127, 0, 0, 1], 8000)),
        tls: None,
        started: SystemTime::now(),
    });
    let mut request = request.clone();
    let mut decisions = RequestDecisions::default();
    let answered = now(streams.request_headers(&mut request, &mut decisions, true));
    assert!(answered.is_none(), "a filter answered the request itself");
    let mut response = response.clone();
    assert!(now(streams.response_headers(&mut response, false)).is_none(), "a filter replaced the response");
    let body = Bytes::from_static(b"a body of thirty-three bytes ok.\n");
    match streams.body_now(Direction::Response, body, true, 1 << 20) {
        BodyStep::Done(Ok(passed)) => assert_eq!(passed.len(), 33, "a filter changed the body"),
        BodyStep::Done(Err(_)) => panic!("a filter stopped the response body"),
        BodyStep::Waiting(_) => panic!("a filter paused the response body"),
    }
    // The end of the stream: each filter's log, done and delete callbacks.
    drop(streams);
}

/// The outcome of a phase that must not wait (no filter here pauses).
fn now<T>(future: impl std::future::Future<Output = T>) -> T {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(value) => value,
        std::task::Poll::Pending => panic!("a filter paused a request"),
    }
}

/// Nanoseconds per request, requests back to back: everything the filters touch stays in the
/// core's caches, the best case. Never inlined, so a profiler can count it alone
/// (`valgrind --tool=callgrind --toggle-collect='*time_hot*'`).
#[inline(never)]
fn time_hot(
    chain: &FilterChain,
    request: &http::request::Parts,
    response: &http::response::Parts,
    requests: usize,
) -> f64 {
    let started = Instant::now();
    for _ in 0..requests {
        one_request(chain, request, response);
    }
    started.elapsed().as_nanos() as f64 / requests as f64
}

/// More than this core's L2 cache (1 MiB on the bench machine): written over before every request.
const EVICT_BYTES: usize = 3 << 19;

/// Nanoseconds per request when, before each, other work has pushed the filters' memory and code
/// out of the core's own caches, as a busy proxy's sockets, parsing and other connections do. Only
/// the request is timed.
fn time_cold(
    chain: &FilterChain,
    request: &http::request::Parts,
    response: &http::response::Parts,
    requests: usize,
    evict: &mut [u8],
) -> f64 {
    let mut total = Duration::ZERO;
    for _ in 0..requests {
        for line in evict.chunks_mut(64) {
            line[0] = line[0].wrapping_add(1);
        }
        std::hint::black_box(&mut *evict);
        let started = Instant::now();
        one_request(chain, request, response);
        total += started.elapsed();
    }
    total.as_nanos() as f64 / requests as f64
}

/// Every filter must have run its three phases on every request it saw, and never failed: a
/// bench of filters that were skipped would measure nothing.
fn check_calls(loaded: &HashMap<String, Arc<dyn HttpFilter>>, kind: &str, knobs: &Knobs, warm_up: usize) {
    for (name, filter) in loaded {
        let position: usize = name.rsplit('-').next().and_then(|i| i.parse().ok()).expect("a numbered filter");
        let chains_with_it = knobs.chains.iter().filter(|&&n| n >= position).count();
        let expected = 3 * chains_with_it * (warm_up + knobs.rounds * knobs.requests);
        let status = filter.status();
        let (calls, failures) = (status["calls"].as_u64(), status["failures"].as_u64());
        if calls != Some(expected as u64) || failures != Some(0) {
            panic!("{kind}: {name} ran {calls:?} phases with {failures:?} failures; expected {expected} and none");
        }
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Least-squares slope of `ys` over `xs`.
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let covariance: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let variance: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    covariance / variance
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and expects no run.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let knobs = knobs();
    let longest = knobs.chains.iter().copied().max().unwrap_or(0);
    let loader = weft_wasm::WasmLoader::new(1, None).expect("a Wasm engine");
    let host = FilterHost { metrics: Metrics::new(), callouts: Arc::new(NoClusters) };
    println!(
        "| kind | {} | per filter (slope) | round slopes |",
        knobs.chains.iter().map(|n| format!("{n} filters ns/req")).collect::<Vec<_>>().join(" | ")
    );
    println!("|---|{}---:|---|", "---:|".repeat(knobs.chains.len()));
    for kind in &knobs.kinds {
        let (module, config, header) = kind_spec(kind);
        if !module.exists() {
            eprintln!("{kind}: no module at {} (bench/filter-cost builds it)", module.display());
            std::process::exit(1);
        }
        let filters: Vec<weft_config::Filter> = (1..=longest)
            .map(|i| {
                serde_json::from_value(serde_json::json!({
                    "name": format!("{kind}-{i}"),
                    "module": module.to_string_lossy(),
                    "config": config,
                }))
                .expect("a filter entry")
            })
            .collect();
        let loaded: HashMap<String, Arc<dyn HttpFilter>> = match loader.load(&filters, &host) {
            Ok(loaded) => loaded,
            Err(errors) => {
                for error in errors {
                    eprintln!("{kind}: {error}");
                }
                std::process::exit(1);
            }
        };
        let chains: Vec<FilterChain> = knobs
            .chains
            .iter()
            .map(|&n| FilterChain::new((1..=n).map(|i| loaded[&format!("{kind}-{i}")].clone()).collect()))
            .collect();

        let mut request = Request::get("/").header("host", "127.0.0.1:8000").header("user-agent", "bench");
        if let Some((name, value)) = &header {
            request = request.header(name.as_str(), HeaderValue::from_str(value).expect("a header value"));
        }
        let (request, ()) = request.body(()).expect("a request").into_parts();
        let (response, ()) = Response::builder()
            .header("content-type", "text/plain")
            .header("content-length", "33")
            .body(())
            .expect("a response")
            .into_parts();

        let warm_up = knobs.requests / 10;
        for chain in &chains {
            for _ in 0..warm_up {
                one_request(chain, &request, &response);
            }
        }
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); chains.len()];
        let mut evict = vec![0u8; EVICT_BYTES];
        for round in 0..knobs.rounds {
            for offset in 0..chains.len() {
                // The order rotates from round to round, so drift spreads over every length.
                let index = (offset + round) % chains.len();
                samples[index].push(if knobs.cold {
                    time_cold(&chains[index], &request, &response, knobs.requests, &mut evict)
                } else {
                    time_hot(&chains[index], &request, &response, knobs.requests)
                });
            }
        }
        check_calls(&loaded, kind, &knobs, warm_up);
        let xs: Vec<f64> = knobs.chains.iter().map(|&n| n as f64).collect();
        let round_slopes: Vec<String> = (0..knobs.rounds)
            .map(|r| format!("{:.0}", slope(&xs, &samples.iter().map(|s| s[r]).collect::<Vec<_>>())))
            .collect();
        let medians: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
        println!(
            "| {kind} | {} | **{:.0} ns** | {} |",
            medians.iter().map(|m| format!("{m:.0}")).collect::<Vec<_>>().join(" | "),
            slope(&xs, &medians),
            round_slopes.join(", ")
        );
        eprintln!(
            "{}",
            serde_json::json!({
                "kind": kind, "chains": knobs.chains, "median_ns_per_request": medians,
                "per_filter_ns": slope(&xs, &medians), "samples_ns_per_request": samples,
            })
        );
    }
}
