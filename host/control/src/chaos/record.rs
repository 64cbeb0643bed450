//! What is kept of an experiment, in the store and in the API's answers: its spec, where it is
//! in its life, the timeline of what happened, the guard's readings, and the results.

use super::spec::Spec;
use crate::records::rfc3339;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Where an experiment is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A schedule: it starts runs at its times.
    Scheduled,
    /// The target is watched without faults (before them).
    Observing,
    /// Faults are in.
    Injecting,
    /// Faults are out; the target is watched to see it recover.
    Recovering,
    Ended,
}

impl Status {
    pub fn is_over(self) -> bool {
        self == Status::Ended
    }
}

/// Why an experiment ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ending {
    /// `completed`, `guard`, `aborted`, `kill_switch`, `failed`, `interrupted`, `cancelled`.
    pub reason: String,
    pub detail: String,
}

/// Something that happened, for the timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: u64,
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// The guard's view of the targeted traffic over its window, once a second while faults are in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub at_ms: u64,
    pub requests: u64,
    pub errors: u64,
    pub error_percent: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
}

/// The targeted traffic over one phase, all targeted proxies together.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseStats {
    pub requests: u64,
    pub errors: u64,
    pub error_percent: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
}

/// One proxy's part.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProxyResult {
    pub proxy: String,
    pub requests: u64,
    pub errors: u64,
    pub delays: u64,
    pub aborts: u64,
    pub throttles: u64,
    /// Connections the toxics acted on.
    #[serde(default)]
    pub toxics: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub before: PhaseStats,
    pub during: PhaseStats,
    pub after: PhaseStats,
    pub proxies: Vec<ProxyResult>,
}

/// How many guard readings a record keeps (an hour of them); older ones are dropped.
pub const MAX_READINGS: usize = 3600;

/// An experiment: a single run, or a schedule that starts runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub number: u64,
    pub spec: Spec,
    pub created_at_ms: u64,
    pub created_by: String,
    pub status: Status,
    /// A run a schedule started: the schedule's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_of: Option<String>,
    /// A schedule: its runs so far, and when the next is due.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_at_ms: Option<u64>,
    /// The proxies that take part, and how many the selector matched.
    #[serde(default)]
    pub proxies: Vec<String>,
    #[serde(default)]
    pub matched_proxies: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults_at_ms: Option<u64>,
    /// When the faults end by themselves (they may be taken out earlier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults_until_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults_removed_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<Ending>,
    #[serde(default)]
    pub timeline: Vec<Event>,
    #[serde(default)]
    pub readings: Vec<Reading>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<Results>,
}

impl Record {
    pub fn id(&self) -> String {
        id_of(self.number)
    }

    pub fn note(&mut self, at_ms: u64, event: &str, proxy: Option<&str>, detail: impl Into<String>) {
        self.timeline.push(Event {
            at_ms,
            event: event.to_owned(),
            proxy: proxy.map(str::to_owned),
            detail: detail.into(),
        });
    }

    pub fn end(&mut self, at_ms: u64, reason: &str, detail: impl Into<String>) {
        let detail = detail.into();
        self.status = Status::Ended;
        self.ended_at_ms = Some(at_ms);
        self.note(
            at_ms,
            "ended",
            None,
            format!("{reason}{}", if detail.is_empty() { String::new() } else { format!(": {detail}") }),
        );
        self.ended = Some(Ending { reason: reason.to_owned(), detail });
        self.next_run_at_ms = None;
    }

    /// A line of the list: `GET /v1/experiments`.
    pub fn summary_json(&self) -> Value {
        json!({
            "id": self.id(),
            "name": self.spec.name,
            "status": self.status,
            "schedule": self.spec.schedule,
            "schedule_of": self.schedule_of,
            "next_run_at": self.next_run_at_ms.map(rfc3339),
            "created_at": rfc3339(self.created_at_ms),
            "proxies": self.proxies,
            "faults_at": self.faults_at_ms.map(rfc3339),
            "ended_at": self.ended_at_ms.map(rfc3339),
            "ended": self.ended,
        })
    }

    /// Everything: `GET /v1/experiments/{id}`.
    pub fn full_json(&self) -> Value {
        let mut value = self.summary_json();
        let times = |ms: Option<u64>| ms.map(rfc3339);
        value["spec"] = serde_json::to_value(&self.spec).unwrap_or(Value::Null);
        value["created_by"] = json!(self.created_by);
        value["runs"] = json!(self.runs);
        value["matched_proxies"] = json!(self.matched_proxies);
        value["faults_until"] = json!(times(self.faults_until_ms));
        value["faults_removed_at"] = json!(times(self.faults_removed_at_ms));
        value["timeline"] = self
            .timeline
            .iter()
            .map(|e| json!({ "at": rfc3339(e.at_ms), "event": e.event, "proxy": e.proxy, "detail": e.detail }))
            .collect();
        value["readings"] = self
            .readings
            .iter()
            .map(|r| {
                json!({ "at": rfc3339(r.at_ms), "requests": r.requests, "errors": r.errors, "error_percent": r.error_percent, "p99_ms": r.p99_ms })
            })
            .collect();
        value["results"] = match &self.results {
            Some(results) => {
                let mut results = serde_json::to_value(results).unwrap_or(Value::Null);
                for proxy in results["proxies"].as_array_mut().into_iter().flatten() {
                    for field in ["applied_at_ms", "removed_at_ms"] {
                        if let Some(ms) = proxy.get(field).and_then(Value::as_u64) {
                            proxy[field.trim_end_matches("_ms")] = json!(rfc3339(ms));
                        }
                        if let Some(object) = proxy.as_object_mut() {
                            object.remove(field);
                        }
                    }
                }
                results
            }
            None => Value::Null,
        };
        value
    }
}

pub fn id_of(number: u64) -> String {
    format!("exp-{number}")
}

/// `exp-7` → 7.
pub fn number_of(id: &str) -> Option<u64> {
    id.strip_prefix("exp-").and_then(|n| n.parse().ok())
}
