//! Measurements of the traffic chaos experiments target: each probe counts the requests (or the
//! connections of a whole tcp listener) in its experiment's target, their failures and latency,
//! and reads what the chaos filter injected for it. A managed proxy reports them to its control
//! plane, whose guards end an experiment that hurts too much. With no experiment running, a
//! request pays one atomic load for all this.

use crate::metrics::{FilterMetricLabels, Metrics, Name, ToxicLabels};
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weft_proto::experiments::{latency, Report, Target};

/// One experiment's measurements on this proxy, from when it was assigned.
pub struct Probe {
    pub id: String,
    pub target: Target,
    /// The chaos filter that injects the experiment's faults, once there is one.
    filter: Mutex<Option<Name>>,
    /// The experiment's toxics: their listener, their types, and how many connections toxics of
    /// those types had acted on there before.
    toxics: Mutex<Option<(Name, Vec<&'static str>, u64)>>,
    requests: AtomicU64,
    errors: AtomicU64,
    latency: Vec<AtomicU64>,
}

impl Probe {
    pub fn new(id: &str, target: Target) -> Arc<Probe> {
        Arc::new(Probe {
            id: id.to_owned(),
            target,
            filter: Mutex::new(None),
            toxics: Mutex::new(None),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: (0..latency::BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// Names the chaos filter whose counters say what was injected for this experiment.
    pub fn injected_by(&self, filter: &str) {
        *self.filter.lock().unwrap_or_else(|e| e.into_inner()) = Some(Name::new(filter));
    }

    /// Names the toxics (by type) the experiment put on `listener`, whose connections it counts
    /// from now.
    pub fn toxics_on(&self, listener: &str, types: Vec<&'static str>, metrics: &Metrics) {
        let listener = Name::new(listener);
        let before = toxic_connections(metrics, &listener, &types);
        *self.toxics.lock().unwrap_or_else(|e| e.into_inner()) = Some((listener, types, before));
    }

    /// Counts one request (or connection) of the target that ended.
    pub fn record(&self, failed: bool, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.latency[latency::bucket(elapsed)].fetch_add(1, Ordering::Relaxed);
    }

    /// Everything counted so far, with the chaos filter's injections for this experiment.
    pub fn report(&self, metrics: &Metrics) -> Report {
        let mut buckets: Vec<u64> = self.latency.iter().map(|n| n.load(Ordering::Relaxed)).collect();
        while buckets.last() == Some(&0) {
            buckets.pop();
        }
        let filter = self.filter.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let injected = |kind: &str| {
            filter.as_ref().map_or(0, |filter| {
                let name = Name::new(&format!("chaos_{kind}_injected:experiment:{}", self.id));
                metrics.filter_counters.get_or_create(&FilterMetricLabels { filter: filter.clone(), name }).get()
            })
        };
        let toxics = match &*self.toxics.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((listener, types, before)) => toxic_connections(metrics, listener, types).saturating_sub(*before),
            None => 0,
        };
        Report {
            toxics,
            id: self.id.clone(),
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency: buckets,
            delays: injected("delays"),
            aborts: injected("aborts"),
            throttles: injected("throttles"),
        }
    }
}

fn toxic_connections(metrics: &Metrics, listener: &Name, types: &[&'static str]) -> u64 {
    types
        .iter()
        .map(|toxic| metrics.toxic_connections.get_or_create(&ToxicLabels { listener: listener.clone(), toxic }).get())
        .sum()
}

/// The probes of the experiments running on this proxy.
#[derive(Default)]
pub struct Probes {
    all: ArcSwap<Vec<Arc<Probe>>>,
}

impl Probes {
    /// The probes whose target holds this request (usually none: then nothing is allocated).
    pub fn matching(&self, listener: &str, path: &str, method: &str, principal: Option<&str>) -> Vec<Arc<Probe>> {
        let all = self.all.load();
        if all.is_empty() {
            return Vec::new();
        }
        all.iter().filter(|p| p.target.matches(listener, path, method, principal)).cloned().collect()
    }

    /// The probes counting the connections of this tcp listener.
    pub fn for_connection(&self, listener: &str) -> Vec<Arc<Probe>> {
        let all = self.all.load();
        all.iter()
            .filter(|p| p.target.whole_listener() && p.target.listener.as_deref().is_none_or(|l| l == listener))
            .cloned()
            .collect()
    }

    /// The probe of experiment `id`, if it runs here.
    pub fn get(&self, id: &str) -> Option<Arc<Probe>> {
        self.all.load().iter().find(|p| p.id == id).cloned()
    }

    /// Replaces the set; requests in flight finish counting in the probes they started with.
    pub fn set(&self, probes: Vec<Arc<Probe>>) {
        self.all.store(Arc::new(probes));
    }

    /// Every probe's report.
    pub fn reports(&self, metrics: &Metrics) -> Vec<Report> {
        self.all.load().iter().map(|p| p.report(metrics)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_count_the_requests_of_their_target_only() {
        let probes = Probes::default();
        assert!(probes.matching("public", "/", "GET", None).is_empty());
        let checkout = Probe::new("exp-1", Target { path_prefix: Some("/checkout".into()), ..Default::default() });
        probes.set(vec![checkout.clone()]);
        let metrics = Metrics::new();
        for probe in probes.matching("public", "/checkout/pay", "GET", None) {
            probe.record(true, Duration::from_millis(5));
        }
        for probe in probes.matching("public", "/home", "GET", None) {
            probe.record(false, Duration::from_millis(5));
        }
        let report = checkout.report(&metrics);
        assert_eq!((report.requests, report.errors), (1, 1));
        assert_eq!(report.latency.iter().sum::<u64>(), 1);
        assert!(probes.for_connection("public").is_empty(), "a path target is about requests");
    }

    #[test]
    fn a_probe_reads_what_its_chaos_filter_injected() {
        let metrics = Metrics::new();
        let probe = Probe::new("exp-2", Target::default());
        let labels = |name: &str| FilterMetricLabels { filter: Name::new("chaos"), name: Name::new(name) };
        metrics.filter_counters.get_or_create(&labels("chaos_delays_injected:experiment:exp-2")).inc_by(3);
        assert_eq!(probe.report(&metrics).delays, 0, "no filter named yet");
        probe.injected_by("chaos");
        assert_eq!(probe.report(&metrics).delays, 3);
    }
}
