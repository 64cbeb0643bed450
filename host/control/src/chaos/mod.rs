//! Chaos experiments: a target (proxies by label, and a listener, path, method or principal),
//! faults, a duration, a guard and a blast radius. The control plane picks the proxies, sends
//! each the experiment with its stream's config (`weft_proto::experiments`), watches the target
//! first, puts the faults in, reads the proxies' reports once a second against the guard, takes
//! the faults out when the duration is over, the guard trips or someone aborts, watches the
//! target recover, and keeps the timeline and the results. Faults always carry their end time, so
//! a proxy that loses the control plane still ends them on time. A schedule starts a run at each
//! of its cron times, never two at once.
//!
//! [`Experiments`] holds the experiments that are not over and answers the API; [`run`] drives
//! each of them through its life.

pub mod cron;
mod measure;
pub mod record;
mod run;
pub mod spec;

use crate::error::ControlError;
use crate::plane::{Author, ControlPlane};
use crate::records::now_ms;
use crate::store::{Store, StoreError};
use measure::Measures;
use record::{number_of, Record, Status};
use spec::{Checked, Spec};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use weft_config::Format;
use weft_proto::experiments::{Assignment, Injection, Report};

/// What each proxy (by node id) is to run now.
pub type Assignments = BTreeMap<String, Vec<Assignment>>;

/// The experiments of one control plane.
pub struct Experiments {
    store: Store,
    next_number: AtomicU64,
    /// Runs and schedules that are not over, by number.
    active: Mutex<BTreeMap<u64, Arc<Active>>>,
    assignments: watch::Sender<Arc<Assignments>>,
    /// Schedules found in the store at start, waiting for [`Experiments::resume`].
    to_resume: Mutex<Vec<Record>>,
}

/// An experiment that is not over.
pub struct Active {
    checked: Checked,
    state: Mutex<State>,
    /// Set to end it early (abort, kill switch, cancelled schedule).
    stop: watch::Sender<Option<Stop>>,
}

struct State {
    record: Record,
    measures: Measures,
}

/// Why someone ended an experiment early.
#[derive(Clone, Debug)]
pub struct Stop {
    reason: &'static str,
    detail: String,
}

impl Active {
    fn update<T>(&self, change: impl FnOnce(&mut State) -> T) -> T {
        change(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The record as it stands, with results from what the proxies reported so far.
    fn snapshot(&self) -> Record {
        self.update(|state| {
            let mut record = state.record.clone();
            if record.status != Status::Scheduled {
                record.results = Some(state.measures.results());
            }
            record
        })
    }
}

impl Experiments {
    /// Loads what the store holds. Runs that were going when the control plane stopped are ended
    /// as interrupted (their proxies ended the faults at their end time by themselves); schedules
    /// go on once [`Experiments::resume`] is called.
    pub fn open(store: Store) -> Result<Experiments, StoreError> {
        store.prepare_experiments()?;
        let mut to_resume = Vec::new();
        for value in store.experiments()? {
            let Ok(mut record) = serde_json::from_value::<Record>(value) else { continue };
            match record.status {
                Status::Ended => {}
                Status::Scheduled => to_resume.push(record),
                _ => {
                    record.end(
                        now_ms(),
                        "interrupted",
                        "the control plane stopped while it ran; proxies ended its faults at their end time",
                    );
                    store.put_experiment(record.number, &serde_json::to_value(&record).unwrap_or_default())?;
                }
            }
        }
        Ok(Experiments {
            next_number: AtomicU64::new(store.next_experiment_number()?),
            store,
            active: Mutex::default(),
            assignments: watch::channel(Arc::new(Assignments::new())).0,
            to_resume: Mutex::new(to_resume),
        })
    }

    /// Starts the schedules kept in the store again.
    pub fn resume(self: &Arc<Self>, plane: &Arc<ControlPlane>) {
        let schedules = std::mem::take(&mut *self.to_resume.lock().unwrap_or_else(|e| e.into_inner()));
        for record in schedules {
            // A schedule's spec is checked again against the config of the day at each run.
            let checked = Checked { spec: record.spec.clone(), target: Default::default(), l4: false };
            let active = self.insert(record.number, checked, record, Measures::default());
            tokio::spawn(run::schedule(self.clone(), plane.clone(), active));
        }
    }

    /// What each proxy is to run now; changes whenever an experiment moves on.
    pub fn watch(&self) -> watch::Receiver<Arc<Assignments>> {
        self.assignments.subscribe()
    }

    /// Creates an experiment from a document: a run that starts now, or a schedule.
    pub async fn create(
        self: &Arc<Self>,
        plane: &Arc<ControlPlane>,
        text: &str,
        format: Format,
        author: &Author,
    ) -> Result<Record, ControlError> {
        let spec = Spec::parse(text, format).map_err(ControlError::InvalidExperiment)?;
        if spec.schedule.is_some() {
            let config = current_config(plane).await?;
            let checked = spec.check(config.as_ref()).map_err(ControlError::InvalidExperiment)?;
            let number = self.next_number.fetch_add(1, Ordering::Relaxed);
            let now = now_ms();
            let mut record = new_record(number, checked.spec.clone(), now, &author.by, Status::Scheduled);
            record.note(
                now,
                "scheduled",
                None,
                format!("on {:?} (UTC)", checked.spec.schedule.as_deref().unwrap_or_default()),
            );
            let active = self.insert(number, checked, record, Measures::default());
            tracing::info!(id = %record::id_of(number), "chaos schedule created");
            self.persist(&active).await;
            tokio::spawn(run::schedule(self.clone(), plane.clone(), active.clone()));
            return Ok(active.snapshot());
        }
        self.start_run(plane, spec, &author.by, None).await
    }

    /// Starts a run of `spec` now: picks the proxies within the blast radius, refuses an overlap
    /// with a run that is going, and sets it off.
    async fn start_run(
        self: &Arc<Self>,
        plane: &Arc<ControlPlane>,
        spec: Spec,
        by: &str,
        schedule_of: Option<String>,
    ) -> Result<Record, ControlError> {
        let current = plane.current().await?;
        let config =
            current.as_ref().map(|v| v.config()).transpose().map_err(|e| ControlError::Internal(e.to_string()))?;
        let checked = spec.check(config.as_ref()).map_err(ControlError::InvalidExperiment)?;
        let version_selector = current.map(|v| v.selector).unwrap_or_default();
        let selector = &checked.spec.target.selector;
        let mut matched: Vec<String> = plane
            .proxies()
            .connected()
            .into_iter()
            .filter(|(_, labels)| {
                selector.iter().chain(&version_selector).all(|(key, value)| labels.get(key) == Some(value))
            })
            .map(|(node, _)| node)
            .collect();
        if matched.is_empty() {
            return Err(ControlError::Conflict(format!(
                "no connected proxy matches the target's selector {selector:?} (and the config's {version_selector:?}): see GET /v1/proxies"
            )));
        }
        let allowed =
            (matched.len() as f64 * checked.spec.blast_radius.max_proxies_percent / 100.0 + 1e-9).floor() as usize;
        if allowed == 0 {
            return Err(ControlError::Conflict(format!(
                "blast_radius.max_proxies_percent {}% of the {} matching prox{} allows none",
                checked.spec.blast_radius.max_proxies_percent,
                matched.len(),
                if matched.len() == 1 { "y" } else { "ies" }
            )));
        }
        fastrand::shuffle(&mut matched);
        let matched_count = matched.len();
        let mut proxies: Vec<String> = matched.into_iter().take(allowed).collect();
        proxies.sort();

        let number = {
            let active = self.active.lock().unwrap_or_else(|e| e.into_inner());
            for other in active.values() {
                if let Some(reason) = overlap(other, &checked, &proxies) {
                    return Err(ControlError::Conflict(reason));
                }
            }
            self.next_number.fetch_add(1, Ordering::Relaxed)
        };
        let now = now_ms();
        let mut record = new_record(number, checked.spec.clone(), now, by, Status::Observing);
        record.schedule_of = schedule_of;
        record.matched_proxies = matched_count;
        record.proxies = proxies.clone();
        record.note(
            now,
            "started",
            None,
            format!("on {} of {matched_count} matching proxies: {}", proxies.len(), proxies.join(", ")),
        );
        let active = self.insert(number, checked, record, Measures::new(&proxies));
        tracing::warn!(id = %record::id_of(number), proxies = ?proxies, "chaos experiment started");
        self.persist(&active).await;
        tokio::spawn(run::drive(self.clone(), active.clone()));
        Ok(active.snapshot())
    }

    fn insert(&self, number: u64, checked: Checked, record: Record, measures: Measures) -> Arc<Active> {
        let active =
            Arc::new(Active { checked, state: Mutex::new(State { record, measures }), stop: watch::channel(None).0 });
        self.active.lock().unwrap_or_else(|e| e.into_inner()).insert(number, active.clone());
        active
    }

    /// Every experiment, oldest first.
    pub async fn list(&self) -> Result<Vec<Record>, ControlError> {
        let store = self.store.clone();
        let stored = tokio::task::spawn_blocking(move || store.experiments())
            .await
            .map_err(|e| ControlError::Internal(e.to_string()))??;
        let active: BTreeMap<u64, Record> =
            self.active.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(n, a)| (*n, a.snapshot())).collect();
        let mut records: BTreeMap<u64, Record> = stored
            .into_iter()
            .filter_map(|v| serde_json::from_value::<Record>(v).ok())
            .map(|r| (r.number, r))
            .collect();
        records.extend(active);
        Ok(records.into_values().collect())
    }

    /// One experiment, by id (`exp-7`).
    pub async fn get(&self, id: &str) -> Result<Record, ControlError> {
        let number = number_of(id).ok_or_else(|| not_found(id))?;
        if let Some(active) = self.active_run(number) {
            return Ok(active.snapshot());
        }
        self.list().await?.into_iter().find(|r| r.number == number).ok_or_else(|| not_found(id))
    }

    fn active_run(&self, number: u64) -> Option<Arc<Active>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner()).get(&number).cloned()
    }

    /// Ends an experiment now (a schedule: no more runs, and its run going is aborted too); its
    /// faults are taken out at once. An experiment that is over is answered as it is.
    pub async fn abort(&self, id: &str, by: &str) -> Result<Record, ControlError> {
        let number = number_of(id).ok_or_else(|| not_found(id))?;
        match self.active_run(number) {
            Some(active) => {
                self.stop(&active, Stop { reason: "aborted", detail: format!("by {by}") }).await;
                Ok(active.snapshot())
            }
            None => self.get(id).await,
        }
    }

    /// The kill switch: ends every experiment and schedule now. Returns the ids it ended.
    pub async fn abort_all(&self, by: &str) -> Vec<String> {
        let all: Vec<Arc<Active>> = self.active.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        let mut ended = Vec::new();
        for active in all {
            ended.push(active.update(|s| s.record.id()));
            self.stop(&active, Stop { reason: "kill_switch", detail: format!("every experiment aborted by {by}") })
                .await;
        }
        tracing::warn!(experiments = ?ended, %by, "chaos kill switch: every experiment aborted");
        ended
    }

    /// Ends `active` early and waits until its faults are out of the assignments.
    async fn stop(&self, active: &Arc<Active>, stop: Stop) {
        let (status, runs) = active.update(|s| (s.record.status, s.record.runs.clone()));
        if status == Status::Scheduled {
            // A schedule has no task that ends it: it ends here, and so does its run going.
            if let Some(run) = runs.last().and_then(|id| number_of(id)).and_then(|n| self.active_run(n)) {
                Box::pin(self.stop(&run, stop.clone())).await;
            }
            active.update(|s| {
                s.record.end(
                    now_ms(),
                    if stop.reason == "aborted" { "cancelled" } else { stop.reason },
                    stop.detail.clone(),
                )
            });
            active.stop.send_replace(Some(stop));
            self.finish(active).await;
            return;
        }
        let mut changes = self.assignments.subscribe();
        active.stop.send_replace(Some(stop));
        // The run's task takes the faults out and ends it; wait for that (a step, not a wait on
        // the outside world, so bounded tightly).
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while !active.update(|s| s.record.status.is_over()) {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// Writes the record, and takes an ended experiment out of the active ones.
    async fn finish(&self, active: &Arc<Active>) {
        self.persist(active).await;
        let number = active.update(|s| s.record.number);
        let over = active.update(|s| s.record.status.is_over());
        if over {
            self.active.lock().unwrap_or_else(|e| e.into_inner()).remove(&number);
        }
        self.publish();
    }

    async fn persist(&self, active: &Arc<Active>) {
        self.persist_active(active).await
    }

    async fn persist_active(&self, active: &Active) {
        let record = active.snapshot();
        let store = self.store.clone();
        let number = record.number;
        let value = serde_json::to_value(&record).unwrap_or_default();
        let written = tokio::task::spawn_blocking(move || store.put_experiment(number, &value)).await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::error!(id = %record.id(), "cannot write the experiment to the store");
        }
    }

    /// Recomputes what each proxy runs from the experiments going.
    fn publish(&self) {
        let mut assignments = Assignments::new();
        for active in self.active.lock().unwrap_or_else(|e| e.into_inner()).values() {
            active.update(|state| {
                let record = &state.record;
                if !matches!(record.status, Status::Observing | Status::Injecting | Status::Recovering) {
                    return;
                }
                let id = record.id();
                let inject = (record.status == Status::Injecting).then(|| {
                    let ends_at_ms = record.faults_until_ms.unwrap_or_else(now_ms);
                    Injection {
                        filter: active.checked.spec.filter.clone(),
                        fault: active.checked.chaos_fault(&id, &crate::records::rfc3339(ends_at_ms)),
                        toxics: active.checked.toxics(&id),
                        ends_at_ms,
                    }
                });
                for proxy in &record.proxies {
                    assignments.entry(proxy.clone()).or_default().push(Assignment {
                        id: id.clone(),
                        target: active.checked.target.clone(),
                        inject: inject.clone(),
                    });
                }
            });
        }
        self.assignments.send_replace(Arc::new(assignments));
    }

    /// A proxy answered a message that carried these experiments (id, injecting): `error` is its
    /// refusal, if it refused.
    pub fn acknowledged(&self, proxy: &str, carried: &[(String, bool)], error: Option<&str>) {
        let now = now_ms();
        for (id, injecting) in carried {
            let Some(active) = number_of(id).and_then(|n| self.active_run(n)) else { continue };
            active.update(|state| {
                let Some(measure) = state.measures.by_proxy.get_mut(proxy) else { return };
                match error {
                    Some(reason) => {
                        if measure.refused.is_none() {
                            state.record.note(now, "faults_refused", Some(proxy), reason);
                        }
                        measure.refused = Some(reason.to_owned());
                    }
                    None if !*injecting && !measure.watching && measure.applied_at_ms.is_none() => {
                        measure.watching = true;
                        state.record.note(now, "watching", Some(proxy), "the target, before the faults");
                    }
                    None if *injecting && measure.applied_at_ms.is_none() => {
                        measure.applied_at_ms = Some(now);
                        state.record.note(now, "faults_applied", Some(proxy), "");
                    }
                    None if !*injecting && measure.applied_at_ms.is_some() && measure.removed_at_ms.is_none() => {
                        measure.removed_at_ms = Some(now);
                        state.record.note(now, "faults_removed", Some(proxy), "");
                    }
                    None => {}
                }
            });
        }
    }

    /// A proxy's measurements.
    pub fn reported(&self, proxy: &str, reports: Vec<Report>) {
        let now = now_ms();
        for report in reports {
            let Some(active) = number_of(&report.id).and_then(|n| self.active_run(n)) else { continue };
            let keep =
                active.checked.spec.guard.as_ref().map_or(std::time::Duration::from_secs(10), |g| g.window.get());
            active.update(|state| {
                if let Some(measure) = state.measures.by_proxy.get_mut(proxy) {
                    measure.reported(now, report, keep);
                }
            });
        }
    }

    /// A proxy's stream ended: noted in the timeline of the experiments it takes part in.
    pub fn disconnected(&self, proxy: &str) {
        let now = now_ms();
        for active in self.active.lock().unwrap_or_else(|e| e.into_inner()).values() {
            active.update(|state| {
                if state.record.status != Status::Scheduled && state.record.proxies.iter().any(|p| p == proxy) {
                    let detail = if state.record.status == Status::Injecting {
                        "it ends the faults at their end time by itself"
                    } else {
                        ""
                    };
                    state.record.note(now, "proxy_disconnected", Some(proxy), detail);
                }
            });
        }
    }
}

/// Why `checked` on `proxies` would overlap `other`, if it would: runs never share a listener of
/// a proxy (a run without a listener shares them all).
fn overlap(other: &Active, checked: &Checked, proxies: &[String]) -> Option<String> {
    other.update(|state| {
        let record = &state.record;
        if !matches!(record.status, Status::Observing | Status::Injecting | Status::Recovering) {
            return None;
        }
        let shared: Vec<&String> = record.proxies.iter().filter(|p| proxies.contains(p)).collect();
        let (theirs, ours) = (&other.checked.target.listener, &checked.target.listener);
        let listeners_meet = theirs.is_none() || ours.is_none() || theirs == ours;
        (!shared.is_empty() && listeners_meet).then(|| {
            format!(
                "{} is running on proxy {} ({}): experiments on the same listener never overlap; wait for it to end or abort it",
                record.id(),
                shared[0],
                theirs.as_deref().map_or("every listener".to_owned(), |l| format!("listener {l:?}"))
            )
        })
    })
}

fn new_record(number: u64, spec: Spec, now: u64, by: &str, status: Status) -> Record {
    Record {
        number,
        spec,
        created_at_ms: now,
        created_by: by.to_owned(),
        status,
        schedule_of: None,
        runs: Vec::new(),
        next_run_at_ms: None,
        proxies: Vec::new(),
        matched_proxies: 0,
        faults_at_ms: None,
        faults_until_ms: None,
        faults_removed_at_ms: None,
        ended_at_ms: None,
        ended: None,
        timeline: Vec::new(),
        readings: Vec::new(),
        results: None,
    }
}

async fn current_config(plane: &ControlPlane) -> Result<Option<weft_config::Config>, ControlError> {
    let current = plane.current().await?;
    current.as_ref().map(|v| v.config()).transpose().map_err(|e| ControlError::Internal(e.to_string()))
}

fn not_found(id: &str) -> ControlError {
    ControlError::NotFound(format!("no experiment {id:?}; see GET /v1/experiments"))
}
