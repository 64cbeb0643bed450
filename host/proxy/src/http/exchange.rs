//! One request's record: what it was, where it went, how it ended. Recorded into metrics and the
//! access log exactly once, when the response body ends (or is abandoned).

use crate::metrics::{Metrics, Name, RouteMetrics};
use http::{HeaderValue, Method, Version};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

pub struct Exchange {
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    pub listener: Name,
    pub cluster: Option<Name>,
    /// Where the request counts itself: its listener toward its cluster (or toward none).
    pub route: Arc<RouteMetrics>,
    pub status: u16,
    pub upstream: Option<SocketAddr>,
    /// Time until the upstream's response head arrived.
    pub upstream_latency: Option<std::time::Duration>,
    pub bytes_received: Arc<AtomicU64>,
    pub bytes_sent: u64,
    pub local_reply: Option<&'static str>,
    pub body_error: bool,
    /// Keeps the request counted on its endpoint (least_request) until the response ends.
    pub in_flight: Option<crate::cluster::InFlight>,
    /// The request's filters; dropped (ending the request for them) when the exchange is recorded.
    pub filters: Option<crate::chain::ChainStreams>,
    /// Present when the listener writes an access log.
    pub log: Option<AccessLogFields>,
    /// The chaos experiments whose target this request is in (usually none).
    pub probes: Vec<Arc<crate::probes::Probe>>,
    /// The response said a gRPC error in its headers (a trailers-only answer).
    pub grpc_error: bool,
}

/// What only the access log needs, gathered only when it is on.
pub struct AccessLogFields {
    pub wall_time: SystemTime,
    pub method: Method,
    pub path: String,
    pub version: Version,
    pub request_id: HeaderValue,
    pub client: SocketAddr,
    pub authority: String,
    /// The client certificate's URI SAN (mTLS listeners).
    pub principal: Option<String>,
    pub tls_version: Option<&'static str>,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        let route = &self.route;
        route.count(self.status);
        route.duration.observe(elapsed.as_secs_f64());
        route.request_bytes.inc_by(self.bytes_received.load(Ordering::Relaxed));
        route.response_bytes.inc_by(self.bytes_sent);
        if let Some(log) = &self.log {
            write_access_log(self, log, elapsed);
        }
        let failed = self.status >= 500 || self.body_error || self.grpc_error;
        for probe in &self.probes {
            probe.record(failed, elapsed);
        }
    }
}

fn write_access_log(exchange: &Exchange, log: &AccessLogFields, elapsed: std::time::Duration) {
    let line = serde_json::json!({
        "time": rfc3339(log.wall_time),
        "listener": exchange.listener.as_str(),
        "client": log.client.to_string(),
        "method": log.method.as_str(),
        "authority": log.authority,
        "path": log.path,
        "protocol": format!("{:?}", log.version),
        "status": exchange.status,
        "duration_ms": millis(elapsed),
        "upstream_ms": exchange.upstream_latency.map(millis),
        "cluster": exchange.cluster.as_ref().map(|c| c.as_str()),
        "upstream": exchange.upstream.map(|a| a.to_string()),
        "bytes_received": exchange.bytes_received.load(Ordering::Relaxed),
        "bytes_sent": exchange.bytes_sent,
        "request_id": log.request_id.to_str().unwrap_or("-"),
        "source_principal": log.principal,
        "tls_version": log.tls_version,
        "error": exchange.local_reply,
        "aborted": exchange.body_error,
    });
    print_access_log(&line);
}

/// Writes one access-log line (a request's, or a tcp connection's) to stdout.
pub fn print_access_log(line: &serde_json::Value) {
    // A closed stdout must not take the proxy down; the line is simply lost.
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// `2026-11-28T06:33:35.123Z` without a date-time crate: the civil-from-days algorithm.
pub fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        let at = |s: u64, ms: u64| SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(s * 1000 + ms);
        assert_eq!(rfc3339(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(at(951_782_400, 5)), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(at(1_795_242_815, 123)), "2026-11-21T06:33:35.123Z");
    }
}
