//! Reading the targeted traffic out of the proxies' reports. Each proxy reports, every second,
//! counts that only grow since the experiment was assigned to it; a window or a phase is the
//! difference between two reports, summed over the proxies. Phase boundaries are the reports
//! at hand when the phase changed, so they are as exact as the report interval.

use super::record::{PhaseStats, ProxyResult, Reading, Results};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use weft_proto::experiments::{latency, Report};

/// What one proxy told about one experiment, and what it acknowledged.
#[derive(Default)]
pub struct ProxyMeasure {
    pub latest: Report,
    /// The reports of the last guard window, with when they arrived.
    recent: VecDeque<(u64, Report)>,
    at_faults: Option<Report>,
    at_removed: Option<Report>,
    /// It acknowledged the experiment and measures its target.
    pub watching: bool,
    pub applied_at_ms: Option<u64>,
    pub removed_at_ms: Option<u64>,
    pub refused: Option<String>,
}

impl ProxyMeasure {
    pub fn reported(&mut self, at_ms: u64, report: Report, keep: Duration) {
        self.latest = report.clone();
        self.recent.push_back((at_ms, report));
        let keep_from = at_ms.saturating_sub(keep.as_millis() as u64 + 2_000);
        while self.recent.len() > 1 && self.recent.front().is_some_and(|(at, _)| *at < keep_from) {
            self.recent.pop_front();
        }
    }

    /// The counts at this moment mark the start of the faults.
    pub fn faults_began(&mut self) {
        self.at_faults = Some(self.latest.clone());
    }

    /// The counts at this moment mark the end of the faults.
    pub fn faults_ended(&mut self) {
        self.at_removed = Some(self.latest.clone());
    }

    /// The counts since `from_ms`: from the newest report that is not newer, or else from the
    /// start of the faults.
    fn since(&self, from_ms: u64) -> Report {
        let base = self
            .recent
            .iter()
            .rev()
            .find(|(at, _)| *at <= from_ms)
            .map(|(_, r)| r)
            .or(self.at_faults.as_ref())
            .cloned()
            .unwrap_or_default();
        self.latest.since(&base)
    }
}

/// The proxies' measurements of one experiment.
#[derive(Default)]
pub struct Measures {
    pub by_proxy: BTreeMap<String, ProxyMeasure>,
}

impl Measures {
    pub fn new(proxies: &[String]) -> Measures {
        Measures { by_proxy: proxies.iter().map(|p| (p.clone(), ProxyMeasure::default())).collect() }
    }

    /// The guard's reading: the targeted traffic since `from_ms` (the window's start, or the
    /// start of the faults when that is later).
    pub fn reading(&self, at_ms: u64, from_ms: u64) -> Reading {
        let mut sum = Report::default();
        for measure in self.by_proxy.values() {
            sum.add(&measure.since(from_ms));
        }
        let stats = stats(&sum);
        Reading {
            at_ms,
            requests: stats.requests,
            errors: stats.errors,
            error_percent: stats.error_percent,
            p99_ms: stats.p99_ms,
        }
    }

    /// Before, during and after the faults, and each proxy's part, from what is known now.
    pub fn results(&self) -> Results {
        let (mut before, mut during, mut after) = (Report::default(), Report::default(), Report::default());
        let mut proxies = Vec::new();
        for (proxy, measure) in &self.by_proxy {
            let zero = Report::default();
            let at_faults = measure.at_faults.as_ref();
            let at_removed = measure.at_removed.as_ref();
            before.add(&at_faults.unwrap_or(&measure.latest).since(&zero));
            if let Some(start) = at_faults {
                during.add(&at_removed.unwrap_or(&measure.latest).since(start));
            }
            if let Some(end) = at_removed {
                after.add(&measure.latest.since(end));
            }
            let latest = &measure.latest;
            proxies.push(ProxyResult {
                proxy: proxy.clone(),
                requests: latest.requests,
                errors: latest.errors,
                delays: latest.delays,
                aborts: latest.aborts,
                throttles: latest.throttles,
                toxics: latest.toxics,
                applied_at_ms: measure.applied_at_ms,
                removed_at_ms: measure.removed_at_ms,
                refused: measure.refused.clone(),
            });
        }
        Results { before: stats(&before), during: stats(&during), after: stats(&after), proxies }
    }
}

fn stats(report: &Report) -> PhaseStats {
    let ms = |q: f64| latency::quantile(&report.latency, q).map(|d| (d.as_secs_f64() * 1e4).round() / 10.0);
    PhaseStats {
        requests: report.requests,
        errors: report.errors,
        error_percent: if report.requests == 0 {
            0.0
        } else {
            (report.errors as f64 * 1000.0 / report.requests as f64).round() / 10.0
        },
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(requests: u64, errors: u64, slow: u64) -> Report {
        let mut latency = vec![0; latency::BUCKETS];
        latency[latency::bucket(Duration::from_millis(1))] = requests - slow;
        latency[latency::bucket(Duration::from_millis(300))] = slow;
        Report { id: "exp-1".into(), requests, errors, latency, ..Default::default() }
    }

    #[test]
    fn phases_and_windows_are_differences_between_reports_summed_over_proxies() {
        let mut measures = Measures::new(&["a".into(), "b".into()]);
        let keep = Duration::from_secs(10);
        for (proxy, factor) in [("a", 1), ("b", 2)] {
            let m = measures.by_proxy.get_mut(proxy).unwrap();
            m.reported(1_000, report(10 * factor, 0, 0), keep);
            m.faults_began();
            m.reported(2_000, report(20 * factor, 5 * factor, 10 * factor), keep);
            m.reported(3_000, report(30 * factor, 10 * factor, 20 * factor), keep);
            m.faults_ended();
            m.reported(4_000, report(40 * factor, 10 * factor, 20 * factor), keep);
        }
        let results = measures.results();
        assert_eq!((results.before.requests, results.before.errors), (30, 0));
        assert_eq!((results.during.requests, results.during.errors, results.during.error_percent), (60, 30, 50.0));
        assert!(results.during.p99_ms.unwrap() >= 300.0, "{:?}", results.during);
        assert!(results.before.p99_ms.unwrap() < 2.0);
        assert_eq!((results.after.requests, results.after.errors), (30, 0));
        assert_eq!(results.proxies[1].requests, 80);
        // The window from 2s holds what came after the report at 2s.
        let reading = measures.reading(4_000, 2_000);
        assert_eq!((reading.requests, reading.errors), (60, 15));
    }
}
