//! Counters, gauges and histograms. weft shows them on its admin `/metrics`, labelled with the
//! filter's name. A metric is defined on first use and its id kept, so `counter("x")` is cheap
//! to call on every request.

use crate::host::{self, MetricKind};
use crate::Result;
use std::cell::RefCell;

thread_local! {
    /// Metrics defined so far: few per filter, so a list beats a map (no hashing, no key
    /// allocation on the per-request lookup).
    static DEFINED: RefCell<Vec<(MetricKind, String, u32)>> = const { RefCell::new(Vec::new()) };
}

fn define(kind: MetricKind, name: &str) -> Result<u32> {
    let known = DEFINED.with(|d| d.borrow().iter().find(|(k, n, _)| *k == kind && n == name).map(|(_, _, id)| *id));
    if let Some(id) = known {
        return Ok(id);
    }
    let id = host::define_metric(kind, name)?;
    DEFINED.with(|d| d.borrow_mut().push((kind, name.to_owned(), id)));
    Ok(id)
}

/// Forgets the ids of defined metrics (the test harness starts each filter with a fresh host).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn forget_definitions() {
    DEFINED.with(|d| d.borrow_mut().clear());
}

/// A number that only goes up.
#[derive(Clone, Copy, Debug)]
pub struct Counter(u32);

/// A number that goes up and down.
#[derive(Clone, Copy, Debug)]
pub struct Gauge(u32);

/// A distribution of recorded values.
#[derive(Clone, Copy, Debug)]
pub struct Histogram(u32);

/// The counter named `name`, defined on first use.
pub fn counter(name: &str) -> Result<Counter> {
    define(MetricKind::Counter, name).map(Counter)
}

/// The gauge named `name`, defined on first use.
pub fn gauge(name: &str) -> Result<Gauge> {
    define(MetricKind::Gauge, name).map(Gauge)
}

/// The histogram named `name`, defined on first use.
pub fn histogram(name: &str) -> Result<Histogram> {
    define(MetricKind::Histogram, name).map(Histogram)
}

impl Counter {
    /// Adds one.
    pub fn increment(&self) -> Result<()> {
        host::increment_metric(self.0, 1)
    }
    /// Adds `by`.
    pub fn add(&self, by: u64) -> Result<()> {
        host::increment_metric(self.0, i64::try_from(by).unwrap_or(i64::MAX))
    }
    /// The count so far (across every instance of the filter).
    pub fn value(&self) -> Result<u64> {
        host::get_metric(self.0)
    }
}

impl Gauge {
    /// Sets the value.
    pub fn set(&self, value: u64) -> Result<()> {
        host::record_metric(self.0, value)
    }
    /// Adds `by` (negative to subtract).
    pub fn add(&self, by: i64) -> Result<()> {
        host::increment_metric(self.0, by)
    }
    /// The value now.
    pub fn value(&self) -> Result<u64> {
        host::get_metric(self.0)
    }
}

impl Histogram {
    /// Records one value.
    pub fn record(&self, value: u64) -> Result<()> {
        host::record_metric(self.0, value)
    }
}

/// Adds one to the counter `name`, ignoring host errors: for the many places where a lost
/// count must not fail a request.
pub fn count(name: &str) {
    if let Ok(counter) = counter(name) {
        let _ = counter.increment();
    }
}
