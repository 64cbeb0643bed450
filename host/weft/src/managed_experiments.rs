//! A managed proxy's side of chaos experiments. The control plane sends, with each config version,
//! the experiments this proxy takes part in: the traffic each watches and, while it injects, the
//! fault for the chaos filter (and toxics for a tcp listener). The proxy runs the version's
//! resources with those faults laid over them, measures each target with a probe, and ends the
//! faults by itself when their end time passes, whether or not the control plane is still there:
//! an experiment's end travels with its faults. The resources kept on disk never carry faults, so
//! a restarted proxy comes back without them.

use anyhow::{anyhow, bail};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{watch, Mutex};
use weft_config::Config;
use weft_proto::experiments::Assignment;
use weft_proxy::probes::Probe;
use weft_proxy::{Proxy, Toxic};

/// What the proxy was last asked to run, and when the next fault ends.
pub struct Experiments {
    asked: Mutex<Asked>,
    next_end: watch::Sender<Option<u64>>,
}

#[derive(Default)]
struct Asked {
    resources: Option<Value>,
    assignments: Vec<Assignment>,
    /// The toxics put on tcp listeners, by experiment: the listener and the toxics' names.
    toxics: BTreeMap<String, (String, Vec<String>)>,
}

/// An experiment's toxics, ready to go on their listener.
type Toxics = BTreeMap<String, (String, Vec<Toxic>)>;

impl Experiments {
    /// Starts the task that takes each fault out when its end time passes.
    pub fn start(proxy: Arc<Proxy>) -> Arc<Experiments> {
        let (next_end, mut watched) = watch::channel(None);
        let experiments = Arc::new(Experiments { asked: Mutex::default(), next_end });
        let keeper = Arc::downgrade(&experiments);
        tokio::spawn(async move {
            loop {
                let next = *watched.borrow_and_update();
                let ended = async {
                    match next {
                        Some(at) => tokio::time::sleep(until(at)).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    changed = watched.changed() => if changed.is_err() { return },
                    () = ended => {
                        let Some(experiments) = keeper.upgrade() else { return };
                        experiments.end_due(&proxy).await;
                    }
                }
            }
        });
        experiments
    }

    /// Loads `resources` with the faults of `assignments` that have not ended, and measures each
    /// assignment's target. On error nothing changed.
    pub async fn take(&self, proxy: &Proxy, resources: Value, assignments: Vec<Assignment>) -> anyhow::Result<()> {
        let mut asked = self.asked.lock().await;
        let now = now_ms();
        let config = overlay(&resources, &assignments, now)?;
        let config = Config::from_value(config).map_err(|e| anyhow!("{e}"))?;
        let toxics = wanted_toxics(&assignments, now)?;
        proxy.apply(config).await.map_err(|e| anyhow!("{e}"))?;
        watch_targets(proxy, &assignments);
        place_toxics(proxy, &mut asked.toxics, toxics)?;
        let before: Vec<String> =
            asked.assignments.iter().filter(|a| a.inject.is_some()).map(|a| a.id.clone()).collect();
        for assignment in &assignments {
            match (&assignment.inject, before.contains(&assignment.id)) {
                (Some(inject), false) => {
                    tracing::warn!(experiment = %assignment.id, ends_at = %weft_proxy::http::rfc3339(at(inject.ends_at_ms)), "chaos experiment: faults injected")
                }
                (None, true) => tracing::info!(experiment = %assignment.id, "chaos experiment: faults removed"),
                _ => {}
            }
        }
        asked.resources = Some(resources);
        asked.assignments = assignments;
        self.next_end.send_replace(next_end(&asked.assignments, now_ms()));
        Ok(())
    }

    /// Takes out the faults whose end time has passed.
    async fn end_due(&self, proxy: &Proxy) {
        let mut asked = self.asked.lock().await;
        let now = now_ms();
        let Some(resources) = asked.resources.clone() else { return };
        let ended: Vec<String> = asked
            .assignments
            .iter()
            .filter(|a| a.inject.as_ref().is_some_and(|i| i.ends_at_ms <= now))
            .map(|a| a.id.clone())
            .collect();
        let reloaded = match overlay(&resources, &asked.assignments, now).map(Config::from_value) {
            Ok(Ok(config)) => proxy.apply(config).await.map(|_| ()).map_err(|e| e.to_string()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(error) => Err(format!("{error:#}")),
        };
        // Toxics end by themselves at their `expires`; this only forgets them.
        if let Ok(toxics) = wanted_toxics(&asked.assignments, now) {
            let _ = place_toxics(proxy, &mut asked.toxics, toxics);
        }
        match reloaded {
            Ok(_) => {
                for id in &ended {
                    tracing::warn!(experiment = %id, "chaos experiment: its end time passed; faults removed");
                }
            }
            // The chaos filter stops each fault at its `expires` time by itself as well.
            Err(error) => {
                tracing::error!(experiments = ?ended, %error, "cannot reload without the ended faults; the chaos filter stops them at their end time anyway")
            }
        }
        for assignment in asked.assignments.iter_mut() {
            if assignment.inject.as_ref().is_some_and(|i| i.ends_at_ms <= now) {
                assignment.inject = None;
            }
        }
        self.next_end.send_replace(next_end(&asked.assignments, now));
    }
}

/// The toxics of each injecting assignment that has not ended, each ending at the assignment's
/// end time; an error names the experiment and what is wrong.
fn wanted_toxics(assignments: &[Assignment], now_ms: u64) -> anyhow::Result<Toxics> {
    let mut wanted = Toxics::new();
    for assignment in assignments {
        let Some(inject) = assignment.inject.as_ref().filter(|i| i.ends_at_ms > now_ms && !i.toxics.is_empty()) else {
            continue;
        };
        let Some(listener) = assignment.target.listener.clone() else {
            bail!("experiment {}: toxics need the tcp listener they act on", assignment.id);
        };
        let toxics = inject
            .toxics
            .iter()
            .map(|json| {
                let mut toxic =
                    Toxic::from_json(json).map_err(|e| anyhow!("experiment {}: toxic {json}: {e}", assignment.id))?;
                toxic.expires = Some(at(inject.ends_at_ms));
                toxic.validate().map_err(|e| anyhow!("experiment {}: toxic {}: {e}", assignment.id, toxic.name))?;
                Ok(toxic)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        wanted.insert(assignment.id.clone(), (listener, toxics));
    }
    Ok(wanted)
}

/// Takes off the toxics of experiments no longer injecting and puts on those of new ones.
fn place_toxics(
    proxy: &Proxy,
    placed: &mut BTreeMap<String, (String, Vec<String>)>,
    wanted: Toxics,
) -> anyhow::Result<()> {
    let ended: Vec<String> = placed.keys().filter(|id| !wanted.contains_key(*id)).cloned().collect();
    for id in ended {
        if let Some((listener, names)) = placed.remove(&id) {
            for name in names {
                // Gone already when it expired by itself.
                let _ = proxy.toxics().remove(&listener, &name);
            }
        }
    }
    for (id, (listener, toxics)) in wanted {
        if placed.contains_key(&id) {
            continue;
        }
        let mut names: Vec<String> = Vec::new();
        let mut types = Vec::new();
        for toxic in toxics {
            let name = toxic.name.clone();
            types.push(toxic.kind.type_name());
            if let Err(error) = proxy.toxics().add(&listener, toxic) {
                for added in &names {
                    let _ = proxy.toxics().remove(&listener, added);
                }
                bail!("experiment {id}: toxic {name} on listener {listener:?}: {error}");
            }
            names.push(name);
        }
        if let Some(probe) = proxy.probes().get(&id) {
            probe.toxics_on(&listener, types, proxy.metrics());
        }
        placed.insert(id, (listener, names));
    }
    Ok(())
}

/// The probes for `assignments`, keeping the counts of those that ran already.
fn watch_targets(proxy: &Proxy, assignments: &[Assignment]) {
    let probes = assignments
        .iter()
        .map(|assignment| {
            let probe = proxy
                .probes()
                .get(&assignment.id)
                .filter(|p| p.target == assignment.target)
                .unwrap_or_else(|| Probe::new(&assignment.id, assignment.target.clone()));
            if let Some(inject) = &assignment.inject {
                probe.injected_by(&inject.filter);
            }
            probe
        })
        .collect();
    proxy.probes().set(probes);
}

/// `resources` with the fault of each injecting assignment that has not ended put first in its
/// chaos filter's `faults`, so it wins over the config's own.
fn overlay(resources: &Value, assignments: &[Assignment], now_ms: u64) -> anyhow::Result<Value> {
    let mut resources = resources.clone();
    for assignment in assignments {
        let Some(inject) = assignment.inject.as_ref().filter(|i| i.ends_at_ms > now_ms) else { continue };
        let Some(fault) = &inject.fault else { continue };
        let filters = resources.get_mut("filters").and_then(Value::as_array_mut);
        let Some(filter) = filters.and_then(|f| f.iter_mut().find(|f| f["name"] == inject.filter.as_str())) else {
            bail!(
                "experiment {}: this config has no filter named {:?} to inject its faults",
                assignment.id,
                inject.filter
            );
        };
        let config = filter.as_object_mut().ok_or_else(|| anyhow!("filter {:?} is not an object", inject.filter))?;
        let config = config.entry("config").or_insert_with(|| Value::Object(Default::default()));
        if config.is_null() {
            *config = Value::Object(Default::default());
        }
        let Some(config) = config.as_object_mut() else {
            bail!("experiment {}: filter {:?} has a config that is not a map of fields", assignment.id, inject.filter);
        };
        let faults = config.entry("faults").or_insert_with(|| Value::Array(Vec::new()));
        let Some(faults) = faults.as_array_mut() else {
            bail!("experiment {}: filter {:?} has `faults` that is not a list", assignment.id, inject.filter);
        };
        faults.insert(0, fault.clone());
    }
    Ok(resources)
}

fn next_end(assignments: &[Assignment], now_ms: u64) -> Option<u64> {
    assignments.iter().filter_map(|a| a.inject.as_ref()).map(|i| i.ends_at_ms).filter(|&end| end > now_ms).min()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn at(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

fn until(ms: u64) -> Duration {
    at(ms).duration_since(SystemTime::now()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use weft_proto::experiments::{Injection, Target};

    fn injecting(id: &str, ends_at_ms: u64) -> Assignment {
        Assignment {
            id: id.into(),
            target: Target::default(),
            inject: Some(Injection {
                filter: "chaos".into(),
                fault: Some(json!({ "name": format!("experiment:{id}"), "abort": { "status": 503 } })),
                toxics: vec![],
                ends_at_ms,
            }),
        }
    }

    #[test]
    fn faults_go_first_in_their_filter_until_they_end() {
        let resources = json!({ "filters": [
            { "name": "router", "module": "r.wasm" },
            { "name": "chaos", "module": "c.wasm", "config": { "faults": [{ "name": "own", "abort": { "status": 500 } }] } }
        ] });
        let laid = overlay(&resources, &[injecting("exp-1", 2_000)], 1_000).unwrap();
        let faults = &laid["filters"][1]["config"]["faults"];
        assert_eq!(faults[0]["name"], "experiment:exp-1");
        assert_eq!(faults[1]["name"], "own", "the config's own faults stay, after it");
        assert_eq!(overlay(&resources, &[injecting("exp-1", 2_000)], 2_000).unwrap(), resources, "ended");
        assert_eq!(next_end(&[injecting("a", 5_000), injecting("b", 3_000)], 1_000), Some(3_000));
    }

    #[test]
    fn a_filter_without_config_gets_one_and_a_missing_filter_is_an_error() {
        let bare = json!({ "filters": [{ "name": "chaos", "module": "c.wasm" }] });
        let laid = overlay(&bare, &[injecting("exp-2", 2_000)], 0).unwrap();
        assert_eq!(laid["filters"][0]["config"]["faults"][0]["name"], "experiment:exp-2");
        let error = overlay(&json!({ "filters": [] }), &[injecting("exp-2", 2_000)], 0).unwrap_err();
        assert!(error.to_string().contains("no filter named \"chaos\""), "{error}");
    }
}
