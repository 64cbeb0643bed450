//! What travels between the control plane and a proxy for chaos experiments, as the JSON of
//! [`ControlMessage::experiments`](crate::ControlMessage) and
//! [`ProxyMessage::reports`](crate::ProxyMessage): each experiment the proxy takes part in, with
//! the traffic it watches and the faults to inject now; and the proxy's measurements of that
//! traffic, which the control plane's guards and reports read.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// One experiment, as one proxy is to run it now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// The experiment's id (`exp-7`).
    pub id: String,
    /// The traffic the experiment watches, and its faults touch.
    pub target: Target,
    /// The faults to inject now; `None` while the experiment only watches (before and after).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inject: Option<Injection>,
}

/// Which requests (or connections) of a proxy an experiment is about; all given must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// One listener by name; `None`: every listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    /// The exact path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Upper-case methods; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// The client's mTLS identity (`spiffe://…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_principal: Option<String>,
}

impl Target {
    /// Whether an HTTP request with these facts is in the target.
    pub fn matches(&self, listener: &str, path: &str, method: &str, principal: Option<&str>) -> bool {
        self.listener.as_deref().is_none_or(|l| l == listener)
            && self.path.as_deref().is_none_or(|p| p == path)
            && self.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && self.source_principal.as_deref().is_none_or(|p| Some(p) == principal)
    }

    /// Whether the target is about connections rather than requests: only a listener is named.
    pub fn whole_listener(&self) -> bool {
        self.path.is_none() && self.path_prefix.is_none() && self.methods.is_empty() && self.source_principal.is_none()
    }
}

/// The faults an experiment injects on one proxy while it runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Injection {
    /// The chaos filter, by its name in the config, that gets `fault`.
    pub filter: String,
    /// A chaos-filter fault (docs/filters/chaos.md): named `experiment:<id>`, matching the target,
    /// with `expires` at `ends_at_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<serde_json::Value>,
    /// Toxics (Toxiproxy's shape: `type`, `stream`, `toxicity`, `attributes`) for the target's tcp
    /// listener.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub toxics: Vec<serde_json::Value>,
    /// Unix time (ms) when the faults stop, even if the proxy never hears from the control plane
    /// again: the experiment's end travels with its faults.
    pub ends_at_ms: u64,
}

/// A proxy's measurements of one experiment's target since it was assigned: counts only grow,
/// so the control plane takes differences between reports for a window or a phase.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub id: String,
    /// Requests (connections, for a whole tcp listener) in the target that ended.
    pub requests: u64,
    /// Those that failed: a 5xx, a gRPC error status in the headers, a broken response, or a
    /// connection reset.
    pub errors: u64,
    /// How many took each [`latency`] bucket's time; trailing empty buckets left out.
    #[serde(default)]
    pub latency: Vec<u64>,
    /// Faults the chaos filter injected for this experiment.
    #[serde(default)]
    pub delays: u64,
    #[serde(default)]
    pub aborts: u64,
    #[serde(default)]
    pub throttles: u64,
    /// Connections the experiment's toxics acted on (their toxicity roll said so).
    #[serde(default)]
    pub toxics: u64,
}

impl Report {
    /// `self - earlier`, for a window or a phase (counters reset by a proxy restart count from 0).
    pub fn since(&self, earlier: &Report) -> Report {
        Report {
            id: self.id.clone(),
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            latency: (0..self.latency.len())
                .map(|i| self.latency[i].saturating_sub(earlier.latency.get(i).copied().unwrap_or(0)))
                .collect(),
            delays: self.delays.saturating_sub(earlier.delays),
            aborts: self.aborts.saturating_sub(earlier.aborts),
            throttles: self.throttles.saturating_sub(earlier.throttles),
            toxics: self.toxics.saturating_sub(earlier.toxics),
        }
    }

    /// Adds `other`'s counts (another proxy's) to these.
    pub fn add(&mut self, other: &Report) {
        self.requests += other.requests;
        self.errors += other.errors;
        if self.latency.len() < other.latency.len() {
            self.latency.resize(other.latency.len(), 0);
        }
        for (sum, n) in self.latency.iter_mut().zip(&other.latency) {
            *sum += n;
        }
        self.delays += other.delays;
        self.aborts += other.aborts;
        self.throttles += other.throttles;
        self.toxics += other.toxics;
    }
}

/// The latency histogram both sides agree on: bucket `i` holds times up to
/// `100 µs × 2^(i/4)` (four buckets per doubling, so a percentile read from it is within 19%),
/// from 100 µs to about 100 s; the last bucket holds everything longer.
pub mod latency {
    use std::time::Duration;

    /// The number of buckets.
    pub const BUCKETS: usize = 82;

    /// The bucket a time falls in.
    pub fn bucket(elapsed: Duration) -> usize {
        let ratio = elapsed.as_secs_f64() / 1e-4;
        if ratio <= 1.0 {
            return 0;
        }
        ((4.0 * ratio.log2()).ceil() as usize).min(BUCKETS - 1)
    }

    /// The longest time bucket `i` holds.
    pub fn upper_bound(i: usize) -> Duration {
        Duration::from_secs_f64(1e-4 * 2f64.powf(i as f64 / 4.0))
    }

    /// The time under which `quantile` (0.99 for p99) of the counts fall: the upper bound of the
    /// bucket where it is reached. `None` for an empty histogram.
    pub fn quantile(counts: &[u64], quantile: f64) -> Option<Duration> {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let wanted = ((total as f64) * quantile).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= wanted {
                return Some(upper_bound(i));
            }
        }
        Some(upper_bound(counts.len().saturating_sub(1)))
    }
}

/// The assignments' JSON for a [`ControlMessage`](crate::ControlMessage) (empty: none).
pub fn encode_assignments(assignments: &[Assignment]) -> String {
    if assignments.is_empty() {
        return String::new();
    }
    serde_json::to_string(assignments).unwrap_or_default()
}

/// The assignments of a [`ControlMessage`](crate::ControlMessage).
pub fn decode_assignments(text: &str) -> Result<Vec<Assignment>, serde_json::Error> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(text)
}

/// How often a proxy reports on its experiments while it has any.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_cover_their_times_and_quantiles_read_them_back() {
        for ms in [0.05, 0.1, 0.3, 1.0, 12.0, 250.0, 3_000.0] {
            let d = Duration::from_secs_f64(ms / 1e3);
            let i = latency::bucket(d);
            assert!(latency::upper_bound(i) >= d, "{ms} ms fits its bucket");
            assert!(i == 0 || latency::upper_bound(i - 1) < d, "{ms} ms is in the first bucket that fits");
        }
        assert_eq!(latency::bucket(Duration::from_secs(1000)), latency::BUCKETS - 1);
        let mut counts = vec![0u64; latency::BUCKETS];
        counts[latency::bucket(Duration::from_millis(2))] = 98;
        counts[latency::bucket(Duration::from_millis(500))] = 2;
        let p50 = latency::quantile(&counts, 0.5).unwrap();
        let p99 = latency::quantile(&counts, 0.99).unwrap();
        assert!(p50 >= Duration::from_millis(2) && p50 < Duration::from_millis(3), "{p50:?}");
        assert!(p99 >= Duration::from_millis(500) && p99 < Duration::from_millis(600), "{p99:?}");
        assert_eq!(latency::quantile(&[], 0.99), None);
    }

    #[test]
    fn reports_subtract_and_add() {
        let early = Report { id: "e".into(), requests: 10, errors: 1, latency: vec![5, 5], ..Default::default() };
        let late =
            Report { id: "e".into(), requests: 30, errors: 4, latency: vec![5, 20, 5], delays: 3, ..early.clone() };
        let window = late.since(&early);
        assert_eq!((window.requests, window.errors, window.latency.clone(), window.delays), (20, 3, vec![0, 15, 5], 3));
        let mut sum = window.clone();
        sum.add(&early);
        assert_eq!((sum.requests, sum.latency), (30, vec![5, 20, 5]));
    }

    #[test]
    fn targets_match_requests() {
        let target = Target {
            listener: Some("public".into()),
            path_prefix: Some("/checkout".into()),
            methods: vec!["POST".into()],
            ..Default::default()
        };
        assert!(target.matches("public", "/checkout/pay", "POST", None));
        assert!(!target.matches("public", "/checkout/pay", "GET", None));
        assert!(!target.matches("internal", "/checkout/pay", "POST", None));
        assert!(!target.matches("public", "/cart", "POST", None));
        assert!(!target.whole_listener());
        assert!(Target { listener: Some("db".into()), ..Default::default() }.whole_listener());
    }
}
