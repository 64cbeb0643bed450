//! What all instances of a filter share: key-value data with compare-and-swap, and the metrics
//! the filter defined. Both outlive config reloads (they belong to the filter's name).

use prometheus_client::metrics::{counter::Counter, gauge::Gauge, histogram::Histogram};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use weft_proxy::metrics::{FilterMetricLabels, Metrics, Name};

/// Key → (value, CAS token).
type Entries = HashMap<Vec<u8>, (Vec<u8>, u32)>;

/// `proxy_get/set_shared_data`: values with a CAS token that changes on every write (never 0).
#[derive(Default)]
pub struct SharedData {
    entries: Mutex<Entries>,
    next_cas: AtomicU32,
}

impl SharedData {
    pub fn get(&self, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }

    /// Stores `value`; with `cas` other than 0 only if the entry still carries that token.
    /// Returns false on a mismatch.
    pub fn set(&self, key: &[u8], value: Vec<u8>, cas: u32) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if cas != 0 && entries.get(key).is_some_and(|(_, current)| *current != cas) {
            return false;
        }
        let token = self.next_cas.fetch_add(1, Ordering::Relaxed).wrapping_add(1).max(1);
        entries.insert(key.to_vec(), (value, token));
        true
    }
}

/// What a filter's instances share, kept by the loader under the filter's name.
#[derive(Clone, Default)]
pub struct FilterState {
    pub data: std::sync::Arc<SharedData>,
    pub metrics: std::sync::Arc<DefinedMetrics>,
}

#[derive(Clone)]
enum Handle {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

/// Metrics a filter defined, by id (index + 1). Exported as `weft_filter_counter_total`,
/// `weft_filter_gauge` and `weft_filter_histogram` with the filter's and the metric's name.
#[derive(Default)]
pub struct DefinedMetrics {
    defined: Mutex<Vec<(String, u32, Handle)>>,
}

/// How a metric call went, in the ABI's terms.
pub enum MetricOutcome {
    Ok,
    NotFound,
    BadArgument,
}

impl DefinedMetrics {
    /// The id of metric `name` of `kind` (0 counter, 1 gauge, 2 histogram); the same name and kind
    /// give the same id in every instance.
    pub fn define(&self, metrics: &Metrics, filter: &str, kind: u32, name: &str) -> Option<u32> {
        let mut defined = self.defined.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(index) = defined.iter().position(|(n, k, _)| n == name && *k == kind) {
            return Some(index as u32 + 1);
        }
        let labels = FilterMetricLabels { filter: Name::new(filter), name: Name::new(name) };
        let handle = match kind {
            0 => Handle::Counter(metrics.filter_counters.get_or_create(&labels).clone()),
            1 => Handle::Gauge(metrics.filter_gauges.get_or_create(&labels).clone()),
            2 => Handle::Histogram(metrics.filter_histograms.get_or_create(&labels).clone()),
            _ => return None,
        };
        defined.push((name.to_owned(), kind, handle));
        Some(defined.len() as u32)
    }

    fn handle(&self, id: u32) -> Option<Handle> {
        let defined = self.defined.lock().unwrap_or_else(|e| e.into_inner());
        defined.get((id as usize).checked_sub(1)?).map(|(_, _, h)| h.clone())
    }

    pub fn increment(&self, id: u32, offset: i64) -> MetricOutcome {
        match self.handle(id) {
            None => MetricOutcome::NotFound,
            Some(Handle::Counter(c)) if offset > 0 => {
                c.inc_by(offset as u64);
                MetricOutcome::Ok
            }
            Some(Handle::Gauge(g)) => {
                g.inc_by(offset);
                MetricOutcome::Ok
            }
            Some(_) => MetricOutcome::BadArgument,
        }
    }

    pub fn record(&self, id: u32, value: u64) -> MetricOutcome {
        match self.handle(id) {
            None => return MetricOutcome::NotFound,
            Some(Handle::Counter(c)) => {
                c.inc_by(value);
            }
            Some(Handle::Gauge(g)) => {
                g.set(value as i64);
            }
            Some(Handle::Histogram(h)) => h.observe(value as f64),
        }
        MetricOutcome::Ok
    }

    pub fn get(&self, id: u32) -> Result<u64, MetricOutcome> {
        match self.handle(id) {
            None => Err(MetricOutcome::NotFound),
            Some(Handle::Counter(c)) => Ok(c.get()),
            Some(Handle::Gauge(g)) => Ok(g.get().max(0) as u64),
            Some(Handle::Histogram(_)) => Err(MetricOutcome::BadArgument),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_swap_refuses_a_stale_token() {
        let data = SharedData::default();
        assert!(data.get(b"k").is_none());
        assert!(data.set(b"k", b"1".to_vec(), 0));
        let (value, token) = data.get(b"k").unwrap();
        assert_eq!(value, b"1");
        assert_ne!(token, 0);
        assert!(data.set(b"k", b"2".to_vec(), token), "the current token wins");
        assert!(!data.set(b"k", b"3".to_vec(), token), "the old token is stale now");
        assert_eq!(data.get(b"k").unwrap().0, b"2");
    }

    #[test]
    fn metrics_keep_their_id_and_kind() {
        let metrics = Metrics::new();
        let defined = DefinedMetrics::default();
        let counter = defined.define(&metrics, "f", 0, "hits").unwrap();
        assert_eq!(defined.define(&metrics, "f", 0, "hits"), Some(counter), "same name, same id");
        assert!(matches!(defined.increment(counter, 2), MetricOutcome::Ok));
        assert!(matches!(defined.increment(counter, -1), MetricOutcome::BadArgument), "counters only go up");
        assert_eq!(defined.get(counter).ok(), Some(2));
        let gauge = defined.define(&metrics, "f", 1, "level").unwrap();
        assert!(matches!(defined.record(gauge, 40), MetricOutcome::Ok));
        assert!(matches!(defined.increment(gauge, -10), MetricOutcome::Ok));
        assert_eq!(defined.get(gauge).ok(), Some(30));
        assert!(defined.define(&metrics, "f", 9, "bad").is_none());
        assert!(matches!(defined.increment(99, 1), MetricOutcome::NotFound));
        assert!(metrics.render().contains(r#"weft_filter_counter_total{filter="f",name="hits"} 2"#));
    }
}
