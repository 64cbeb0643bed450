//! The life of an experiment: watch the target, put the faults in, read the guard once a second,
//! take the faults out (duration over, guard tripped, or stopped), watch the target recover, end.
//! And the life of a schedule: start a run at each of its times unless the last one still runs.

use super::cron::Schedule;
use super::record::{Reading, Status, MAX_READINGS};
use super::{Active, Experiments, Stop};
use crate::plane::ControlPlane;
use crate::records::{now_ms, rfc3339};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the guard reads the targeted traffic while faults are in.
const GUARD_INTERVAL: Duration = Duration::from_secs(1);

/// Drives one run from its start to its end.
pub(super) async fn drive(experiments: Arc<Experiments>, active: Arc<Active>) {
    let mut stop = active.stop.subscribe();
    let spec = active.checked.spec.clone();
    experiments.publish();
    let mut ending = match wait(&mut stop, spec.observe.get()).await {
        Some(stopped) => stopped,
        None => inject(&experiments, &active, &mut stop).await,
    };
    let faults_were_in = active.update(|s| s.record.faults_at_ms.is_some());
    if faults_were_in {
        let now = now_ms();
        active.update(|state| {
            state.record.status = Status::Recovering;
            state.record.faults_removed_at_ms = Some(now);
            for measure in state.measures.by_proxy.values_mut() {
                measure.faults_ended();
            }
            let why = format!(
                "{}{}",
                ending.reason,
                if ending.detail.is_empty() { String::new() } else { format!(": {}", ending.detail) }
            );
            state.record.note(now, "faults_removed", None, why);
        });
        experiments.publish();
        tracing::warn!(id = %active.update(|s| s.record.id()), reason = ending.reason, "chaos experiment: faults taken out");
        experiments.persist(&active).await;
        // Watching the recovery is worth it unless someone wants the experiment gone now.
        if matches!(ending.reason, "completed" | "guard") {
            if let Some(stopped) = wait(&mut stop, spec.observe.get()).await {
                ending.detail = format!(
                    "{}; the watch after the faults was cut short ({} {})",
                    ending.detail, stopped.reason, stopped.detail
                );
            }
        }
    }
    let now = now_ms();
    active.update(|state| {
        state.record.results = Some(state.measures.results());
        state.record.end(now, ending.reason, ending.detail.clone());
    });
    tracing::info!(id = %active.update(|s| s.record.id()), reason = ending.reason, "chaos experiment ended");
    experiments.finish(&active).await;
}

/// Puts the faults in and holds them until the duration is over, the guard trips or the run is
/// stopped; says which.
async fn inject(experiments: &Experiments, active: &Active, stop: &mut watch::Receiver<Option<Stop>>) -> Stop {
    let spec = &active.checked.spec;
    let now = now_ms();
    let until = now + spec.duration.get().as_millis() as u64;
    active.update(|state| {
        state.record.status = Status::Injecting;
        state.record.faults_at_ms = Some(now);
        state.record.faults_until_ms = Some(until);
        for measure in state.measures.by_proxy.values_mut() {
            measure.faults_began();
        }
        let faults: Vec<String> = spec.faults.iter().map(|f| f.describe()).collect();
        state.record.note(now, "faults_sent", None, format!("{} until {}", faults.join("; "), rfc3339(until)));
    });
    experiments.publish();
    tracing::warn!(id = %active.update(|s| s.record.id()), until = %rfc3339(until), "chaos experiment: faults sent");
    experiments.persist_active(active).await;
    loop {
        let left = Duration::from_millis(until.saturating_sub(now_ms()));
        if left.is_zero() {
            return Stop { reason: "completed", detail: String::new() };
        }
        if let Some(stopped) = wait(stop, left.min(GUARD_INTERVAL)).await {
            return stopped;
        }
        if let Some(tripped) = read_guard(active) {
            return Stop { reason: "guard", detail: tripped };
        }
    }
}

/// Takes the guard's reading; says why it tripped, if it did.
fn read_guard(active: &Active) -> Option<String> {
    let guard = active.checked.spec.guard.as_ref()?;
    let now = now_ms();
    active
        .update(|state| {
            let window_ms = guard.window.get().as_millis() as u64;
            let from = now.saturating_sub(window_ms).max(state.record.faults_at_ms.unwrap_or(now));
            let reading: Reading = state.measures.reading(now, from);
            let readings = &mut state.record.readings;
            if readings.len() >= MAX_READINGS {
                readings.remove(0);
            }
            readings.push(reading.clone());
            if reading.requests < guard.min_requests {
                return None;
            }
            let over =
                |what: String| Some(format!("{what} over the last {} ({} requests)", guard.window, reading.requests));
            if let Some(max) = guard.max_error_percent.filter(|max| reading.error_percent > *max) {
                return over(format!("error rate {}% is above {max}%", reading.error_percent));
            }
            if let (Some(max), Some(p99)) = (guard.max_p99, reading.p99_ms) {
                if p99 > max.get().as_secs_f64() * 1e3 {
                    return over(format!("p99 {p99}ms is above {max}"));
                }
            }
            None
        })
        .inspect(|why| {
            active.update(|state| state.record.note(now, "guard_tripped", None, why.clone()));
        })
}

/// Waits `duration`, unless the run is stopped first: then why.
async fn wait(stop: &mut watch::Receiver<Option<Stop>>, duration: Duration) -> Option<Stop> {
    if let Some(stopped) = stop.borrow_and_update().clone() {
        return Some(stopped);
    }
    tokio::select! {
        () = tokio::time::sleep(duration) => None,
        changed = stop.changed() => match changed {
            Ok(()) => stop.borrow_and_update().clone(),
            // The experiment is gone from the control plane: nothing can take the faults out later.
            Err(_) => Some(Stop { reason: "aborted", detail: "the control plane is stopping".into() }),
        },
    }
}

/// Starts a run at each of the schedule's times, never two at once, until the schedule is
/// cancelled.
pub(super) async fn schedule(experiments: Arc<Experiments>, plane: Arc<ControlPlane>, active: Arc<Active>) {
    let mut stop = active.stop.subscribe();
    let id = active.update(|s| s.record.id());
    let Some(Ok(cron)) = active.checked.spec.schedule.as_deref().map(Schedule::parse) else {
        active.update(|s| s.record.end(now_ms(), "failed", "the schedule does not parse"));
        experiments.finish(&active).await;
        return;
    };
    loop {
        let Some(next) = cron.next_after(now_ms()) else {
            active.update(|s| s.record.end(now_ms(), "completed", "the schedule has no time left"));
            experiments.finish(&active).await;
            return;
        };
        active.update(|s| s.record.next_run_at_ms = Some(next));
        experiments.persist_active(&active).await;
        if wait(&mut stop, Duration::from_millis(next.saturating_sub(now_ms()))).await.is_some() {
            return;
        }
        let now = now_ms();
        let last = active.update(|s| s.record.runs.last().cloned());
        let still_going = last.as_deref().and_then(super::record::number_of).and_then(|n| experiments.active_run(n));
        if let (Some(last), Some(_)) = (last, still_going) {
            active.update(|s| {
                s.record.note(
                    now,
                    "run_skipped",
                    None,
                    format!("{last} is still running: runs of a schedule never overlap"),
                )
            });
            continue;
        }
        let mut spec = active.checked.spec.clone();
        spec.schedule = None;
        let by = format!("schedule {id}");
        match experiments.start_run(&plane, spec, &by, Some(id.clone())).await {
            Ok(run) => active.update(|s| {
                s.record.note(now, "run_started", None, run.id());
                s.record.runs.push(run.id());
            }),
            Err(error) => active.update(|s| s.record.note(now, "run_skipped", None, error.to_string())),
        }
    }
}
