//! An experiment as a user writes it (`weft chaos run FILE`, `POST /v1/experiments`): a target,
//! faults, a duration, a guard, a blast radius and maybe a schedule; checked whole, every error
//! naming its field, and turned into what the proxies run: a chaos-filter fault, or toxics.

use super::cron::Schedule;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use weft_config::{Config, Duration, FieldError, Format, ListenerProtocol};
use weft_proto::experiments::Target;

/// The longest an experiment may inject faults.
const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The toxics a tcp listener can take (Toxiproxy's).
const TOXICS: &[&str] = &["latency", "bandwidth", "slow_close", "timeout", "reset_peer", "slicer", "limit_data"];

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// For people: shown in lists and reports.
    #[serde(default)]
    pub name: String,
    pub target: TargetSpec,
    pub faults: Vec<FaultSpec>,
    /// How long the faults are injected.
    pub duration: Duration,
    /// How long the target is watched without faults before and after them, for the comparison.
    #[serde(default = "default_observe")]
    pub observe: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<Guard>,
    #[serde(default)]
    pub blast_radius: BlastRadius,
    /// A cron expression (UTC): run again at each of its times. A run still going then is not
    /// overlapped: that time is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The chaos filter that injects the HTTP faults, by its name in the config.
    #[serde(default = "default_filter")]
    pub filter: String,
}

fn default_observe() -> Duration {
    Duration(std::time::Duration::from_secs(10))
}

fn default_filter() -> String {
    "chaos".to_owned()
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// Proxies with these labels (all of them); empty: every proxy.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_principal: Option<String>,
}

/// One fault. HTTP faults go to the chaos filter of the targeted listeners; a toxic goes to a
/// tcp listener.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultSpec {
    Delay {
        fixed: Duration,
        #[serde(default = "no_time")]
        jitter: Duration,
        #[serde(default = "all")]
        percentage: f64,
    },
    Abort {
        status: u16,
        #[serde(default = "all")]
        percentage: f64,
    },
    GrpcAbort {
        status: u32,
        #[serde(default = "all")]
        percentage: f64,
    },
    Throttle {
        kib_per_second: u64,
        #[serde(default = "all")]
        percentage: f64,
    },
    Toxic {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default = "downstream")]
        stream: String,
        #[serde(default = "whole")]
        toxicity: f64,
        #[serde(default)]
        attributes: serde_json::Map<String, Value>,
    },
}

fn all() -> f64 {
    100.0
}

fn no_time() -> Duration {
    Duration(std::time::Duration::ZERO)
}

fn whole() -> f64 {
    1.0
}

fn downstream() -> String {
    "downstream".to_owned()
}

/// When an experiment ends early: thresholds on the targeted traffic while faults are in.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    /// Failed requests (5xx, gRPC errors, broken responses; injected aborts count too) over the
    /// window, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_percent: Option<f64>,
    /// The 99th percentile of the targeted requests' latency over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99: Option<Duration>,
    /// A window with fewer requests says too little to end an experiment.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    #[serde(default = "default_window")]
    pub window: Duration,
}

fn default_min_requests() -> u64 {
    10
}

fn default_window() -> Duration {
    Duration(std::time::Duration::from_secs(10))
}

/// How much an experiment may touch.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BlastRadius {
    /// Of the proxies the selector matches, the share that get faults (rounded down).
    #[serde(default = "all")]
    pub max_proxies_percent: f64,
    /// The most of the targeted requests the faults together may touch: the faults' percentages
    /// (a toxic's toxicity, as a percentage) may not add up to more.
    #[serde(default = "all")]
    pub max_requests_percent: f64,
}

impl Default for BlastRadius {
    fn default() -> Self {
        BlastRadius { max_proxies_percent: 100.0, max_requests_percent: 100.0 }
    }
}

/// A spec that was checked against the config in force.
#[derive(Clone, Debug)]
pub struct Checked {
    pub spec: Spec,
    pub target: Target,
    /// A tcp experiment: toxics on a listener, connections for requests.
    pub l4: bool,
}

impl Spec {
    /// Parses a document (YAML or JSON); errors name the field.
    pub fn parse(text: &str, format: Format) -> Result<Spec, Vec<FieldError>> {
        let value: Value = match format {
            Format::Json => serde_json::from_str(text).map_err(|e| e.to_string()),
            Format::Yaml => serde_yaml::from_str(text).map_err(|e| e.to_string()),
        }
        .map_err(|reason| vec![FieldError::new("", format!("not a valid document: {reason}"))])?;
        Spec::from_value(value)
    }

    pub fn from_value(value: Value) -> Result<Spec, Vec<FieldError>> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            vec![FieldError::new(if field == "." { String::new() } else { field }, e.into_inner().to_string())]
        })
    }

    /// Checks the spec whole against `config` (the version in force): what it names must be
    /// there, and what it asks must be possible and within its own limits.
    pub fn check(self, config: Option<&Config>) -> Result<Checked, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut error = |field: &str, reason: String| errors.push(FieldError::new(field, reason));
        let duration = self.duration.get();
        if duration.is_zero() || duration > MAX_DURATION {
            error("duration", format!("{} is not between 1ms and 24h", self.duration));
        }
        if self.observe.get() > MAX_DURATION {
            error("observe", "must be at most 24h".into());
        }
        if self.faults.is_empty() {
            error("faults", "give at least one fault".into());
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        let mut share = 0.0;
        let (mut l7, mut l4) = (false, false);
        for (i, fault) in self.faults.iter().enumerate() {
            let at = |field: &str| format!("faults[{i}].{}{field}", fault.kind());
            let percentage = fault.share();
            if !(0.0..=100.0).contains(&percentage) || percentage.is_nan() {
                let field = if matches!(fault, FaultSpec::Toxic { .. }) { ".toxicity" } else { ".percentage" };
                error(&at(field), "is not between 0 and 100 percent".into());
            }
            share += percentage;
            match fault {
                FaultSpec::Toxic { kind, stream, attributes, .. } => {
                    l4 = true;
                    if !TOXICS.contains(&kind.as_str()) {
                        error(&at(".type"), format!("{kind:?} is not a toxic: expected one of {}", TOXICS.join(", ")));
                    }
                    if stream != "upstream" && stream != "downstream" {
                        error(&at(".stream"), format!("{stream:?}: expected upstream or downstream"));
                    }
                    if let Some((name, _)) = attributes.iter().find(|(_, v)| !v.is_number()) {
                        error(&at(&format!(".attributes.{name}")), "must be a number".into());
                    }
                }
                other => {
                    l7 = true;
                    let kind = if matches!(other, FaultSpec::GrpcAbort { .. }) { "abort" } else { other.kind() };
                    if let Some(first) = seen.insert(kind, i) {
                        error(
                            &format!("faults[{i}]"),
                            format!("faults[{first}] is an {kind} already: one delay, one abort (HTTP or gRPC) and one throttle at most"),
                        );
                    }
                    match other {
                        FaultSpec::Abort { status, .. } if !(200..=599).contains(status) => {
                            error(&at(".status"), format!("{status} is not an HTTP status (200 to 599)"))
                        }
                        FaultSpec::GrpcAbort { status, .. } if !(1..=16).contains(status) => {
                            error(&at(".status"), format!("{status} is not a gRPC error status (1 to 16)"))
                        }
                        FaultSpec::Throttle { kib_per_second: 0, .. } => {
                            error(&at(".kib_per_second"), "must be at least 1".into())
                        }
                        _ => {}
                    }
                }
            }
        }
        if l7 && l4 {
            error(
                "faults",
                "HTTP faults and toxics cannot be mixed: an experiment targets one kind of listener".into(),
            );
        }
        let target = &self.target;
        if l4
            && (target.path.is_some()
                || target.path_prefix.is_some()
                || !target.methods.is_empty()
                || target.source_principal.is_some())
        {
            error("target", "a toxic acts on whole tcp connections: name only a listener (and a selector)".into());
        }
        if target.path.is_some() && target.path_prefix.is_some() {
            error("target.path", "give path or path_prefix, not both".into());
        }
        if let Some(path) = target.path.as_ref().or(target.path_prefix.as_ref()).filter(|p| !p.starts_with('/')) {
            error(
                if target.path.is_some() { "target.path" } else { "target.path_prefix" },
                format!("{path:?} must start with /"),
            );
        }
        let radius = &self.blast_radius;
        for (field, value) in
            [("max_proxies_percent", radius.max_proxies_percent), ("max_requests_percent", radius.max_requests_percent)]
        {
            if !(value > 0.0 && value <= 100.0) {
                error(&format!("blast_radius.{field}"), format!("{value} is not above 0 and at most 100"));
            }
        }
        if share > radius.max_requests_percent + 1e-9 {
            error(
                "blast_radius.max_requests_percent",
                format!(
                    "the faults may touch up to {share}% of the targeted requests, more than the {}% allowed",
                    radius.max_requests_percent
                ),
            );
        }
        if let Some(guard) = &self.guard {
            if guard.max_error_percent.is_none() && guard.max_p99.is_none() {
                error("guard", "give max_error_percent, max_p99 or both".into());
            }
            if let Some(max) = guard.max_error_percent.filter(|m| !(0.0..=100.0).contains(m)) {
                error("guard.max_error_percent", format!("{max} is not between 0 and 100"));
            }
            if guard.window.get() < std::time::Duration::from_secs(1) {
                error("guard.window", "must be at least 1s (proxies report every second)".into());
            }
            if l4 && guard.max_p99.is_some() {
                error(
                    "guard.max_p99",
                    "a tcp experiment counts connections, not requests: it has no request latency".into(),
                );
            }
        }
        if let Some(cron) = &self.schedule {
            if let Err(reason) = Schedule::parse(cron) {
                error("schedule", reason);
            }
        }
        match config {
            None => error("target", "no config has been applied yet: there is nothing to experiment on".into()),
            Some(config) => check_against(&self, config, l4, &mut error),
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let target = Target {
            listener: self.target.listener.clone(),
            path: self.target.path.clone(),
            path_prefix: self.target.path_prefix.clone(),
            methods: self.target.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
            source_principal: self.target.source_principal.clone(),
        };
        Ok(Checked { spec: self, target, l4 })
    }
}

/// What the spec names must be in the config, and of the right kind.
fn check_against(spec: &Spec, config: &Config, l4: bool, error: &mut impl FnMut(&str, String)) {
    let chains_with_filter =
        |l: &&weft_config::Listener| l.protocol != ListenerProtocol::Tcp && l.filters.contains(&spec.filter);
    match &spec.target.listener {
        Some(name) => match config.listeners.iter().find(|l| &l.name == name) {
            None => error("target.listener", format!("no listener named {name:?} in the config in force")),
            Some(listener) if l4 && listener.protocol != ListenerProtocol::Tcp => {
                error("target.listener", format!("listener {name:?} is not a tcp listener: toxics need one"))
            }
            Some(listener) if !l4 && !chains_with_filter(&listener) => error(
                "target.listener",
                format!(
                    "listener {name:?} has no filter {:?} in its chain to inject HTTP faults (add the chaos filter to it, or set `filter:`)",
                    spec.filter
                ),
            ),
            Some(_) => {}
        },
        None if l4 => error("target.listener", "a toxic needs the tcp listener it acts on".into()),
        None if !config.listeners.iter().any(|l| chains_with_filter(&l)) => error(
            "filter",
            format!("no listener of the config in force has a filter {:?} in its chain to inject HTTP faults", spec.filter),
        ),
        None => {}
    }
}

impl FaultSpec {
    fn kind(&self) -> &'static str {
        match self {
            FaultSpec::Delay { .. } => "delay",
            FaultSpec::Abort { .. } => "abort",
            FaultSpec::GrpcAbort { .. } => "grpc_abort",
            FaultSpec::Throttle { .. } => "throttle",
            FaultSpec::Toxic { .. } => "toxic",
        }
    }

    /// The share of the targeted requests (or connections) this fault may touch, in percent.
    fn share(&self) -> f64 {
        match self {
            FaultSpec::Delay { percentage, .. }
            | FaultSpec::Abort { percentage, .. }
            | FaultSpec::GrpcAbort { percentage, .. }
            | FaultSpec::Throttle { percentage, .. } => *percentage,
            FaultSpec::Toxic { toxicity, .. } => toxicity * 100.0,
        }
    }

    /// One line for people: `delay 200ms (+0-50ms) 25%`.
    pub fn describe(&self) -> String {
        match self {
            FaultSpec::Delay { fixed, jitter, percentage } if jitter.get().is_zero() => {
                format!("delay {fixed} {percentage}%")
            }
            FaultSpec::Delay { fixed, jitter, percentage } => format!("delay {fixed} (+0-{jitter}) {percentage}%"),
            FaultSpec::Abort { status, percentage } => format!("abort {status} {percentage}%"),
            FaultSpec::GrpcAbort { status, percentage } => format!("gRPC abort {status} {percentage}%"),
            FaultSpec::Throttle { kib_per_second, percentage } => {
                format!("throttle {kib_per_second} KiB/s {percentage}%")
            }
            FaultSpec::Toxic { kind, stream, toxicity, attributes } => {
                let attributes: Vec<String> = attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("toxic {kind} {stream} {} {}%", attributes.join(" "), toxicity * 100.0)
            }
        }
    }
}

impl Checked {
    /// The chaos-filter fault for run `id` (named `experiment:<id>`, ending at `expires`), when the
    /// experiment has HTTP faults.
    pub fn chaos_fault(&self, id: &str, expires: &str) -> Option<Value> {
        let mut fault = json!({ "name": format!("experiment:{id}"), "expires": expires });
        let mut matching = serde_json::Map::new();
        let target = &self.target;
        let fields = [
            ("listener", &target.listener),
            ("path", &target.path),
            ("path_prefix", &target.path_prefix),
            ("source_principal", &target.source_principal),
        ];
        for (field, value) in fields {
            if let Some(value) = value {
                matching.insert(field.to_owned(), json!(value));
            }
        }
        if !target.methods.is_empty() {
            matching.insert("methods".to_owned(), json!(target.methods));
        }
        fault["match"] = Value::Object(matching);
        let mut any = false;
        for spec in &self.spec.faults {
            any |= !matches!(spec, FaultSpec::Toxic { .. });
            match spec {
                FaultSpec::Delay { fixed, jitter, percentage } => {
                    fault["delay"] =
                        json!({ "fixed": fixed.to_string(), "jitter": jitter.to_string(), "percentage": percentage })
                }
                FaultSpec::Abort { status, percentage } => {
                    fault["abort"] = json!({ "status": status, "percentage": percentage })
                }
                FaultSpec::GrpcAbort { status, percentage } => {
                    fault["abort"] = json!({ "grpc_status": status, "percentage": percentage })
                }
                FaultSpec::Throttle { kib_per_second, percentage } => {
                    fault["throttle"] = json!({ "kib_per_second": kib_per_second, "percentage": percentage })
                }
                FaultSpec::Toxic { .. } => {}
            }
        }
        any.then_some(fault)
    }

    /// The toxics, in Toxiproxy's shape, each named `experiment:<id>:<n>`.
    pub fn toxics(&self, id: &str) -> Vec<Value> {
        self.spec
            .faults
            .iter()
            .filter_map(|fault| match fault {
                FaultSpec::Toxic { kind, stream, toxicity, attributes } => Some((kind, stream, toxicity, attributes)),
                _ => None,
            })
            .enumerate()
            .map(|(n, (kind, stream, toxicity, attributes))| {
                json!({ "name": format!("experiment:{id}:{n}"), "type": kind, "stream": stream, "toxicity": toxicity, "attributes": attributes })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            r#"
listeners:
  - { name: public, address: "127.0.0.1:8080", filters: [chaos], cluster: web }
  - { name: plain, address: "127.0.0.1:8081", cluster: web }
  - { name: db, address: "127.0.0.1:5433", protocol: tcp, cluster: web }
clusters:
  - { name: web, endpoints: ["127.0.0.1:3000"] }
filters:
  - { name: chaos, module: chaos.wasm }
"#,
            Format::Yaml,
        )
        .unwrap()
    }

    fn check(yaml: &str) -> Result<Checked, Vec<String>> {
        Spec::parse(yaml, Format::Yaml)
            .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>())?
            .check(Some(&config()))
            .map_err(|e| e.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn an_http_experiment_becomes_one_named_chaos_fault_that_expires() {
        let checked = check(
            "target: { listener: public, path_prefix: /checkout, methods: [post] }\n\
             faults: [ { delay: { fixed: 200ms, percentage: 25 } }, { abort: { status: 503, percentage: 5 } } ]\n\
             duration: 1m",
        )
        .unwrap();
        let fault = checked.chaos_fault("exp-3", "2026-12-01T10:00:00.000Z").unwrap();
        assert_eq!(fault["name"], "experiment:exp-3");
        assert_eq!(fault["expires"], "2026-12-01T10:00:00.000Z");
        assert_eq!(fault["match"], json!({ "listener": "public", "path_prefix": "/checkout", "methods": ["POST"] }));
        assert_eq!(fault["delay"]["fixed"], "200ms");
        assert_eq!(fault["abort"], json!({ "status": 503, "percentage": 5.0 }));
        assert!(checked.toxics("exp-3").is_empty() && !checked.l4);
    }

    #[test]
    fn a_toxic_experiment_needs_a_tcp_listener() {
        let checked = check("target: { listener: db }\nfaults: [ { toxic: { type: latency, attributes: { latency: 100 } } } ]\nduration: 10s").unwrap();
        assert!(checked.l4 && checked.chaos_fault("exp-1", "x").is_none());
        assert_eq!(checked.toxics("exp-1")[0]["name"], "experiment:exp-1:0");
        let errors =
            check("target: { listener: public }\nfaults: [ { toxic: { type: latency } } ]\nduration: 10s").unwrap_err();
        assert!(errors.iter().any(|e| e.contains("target.listener") && e.contains("not a tcp listener")), "{errors:?}");
    }

    #[test]
    fn every_mistake_is_named_by_its_field() {
        let errors = check(
            "target: { listener: plain, path: checkout }\n\
             faults: [ { abort: { status: 99 } }, { grpc_abort: { status: 14 } }, { toxic: { type: fire } } ]\n\
             duration: 0s\n\
             guard: { window: 100ms }\n\
             blast_radius: { max_requests_percent: 50 }\n\
             schedule: \"61 * * * *\"",
        )
        .unwrap_err();
        for expected in [
            "duration:",
            "faults[0].abort.status: 99 is not an HTTP status",
            "faults[1]: faults[0] is an abort already",
            "faults[2].toxic.type: \"fire\" is not a toxic",
            "faults: HTTP faults and toxics cannot be mixed",
            "target.path: \"checkout\" must start with /",
            "blast_radius.max_requests_percent: the faults may touch up to 300%",
            "guard: give max_error_percent",
            "guard.window: must be at least 1s",
            "schedule:",
            "target.listener: listener \"plain\" is not a tcp listener",
        ] {
            assert!(errors.iter().any(|e| e.starts_with(expected)), "no {expected:?} in {errors:?}");
        }
        let unknown = Spec::parse("target: {}\nfaults: []\nduration: 1s\nsurprise: 1", Format::Yaml).unwrap_err();
        assert!(unknown[0].to_string().contains("unknown field `surprise`"), "{unknown:?}");
    }

    #[test]
    fn a_listener_without_the_chaos_filter_cannot_take_http_faults() {
        let errors =
            check("target: { listener: plain }\nfaults: [ { abort: { status: 503 } } ]\nduration: 1s").unwrap_err();
        assert!(errors[0].contains("has no filter \"chaos\" in its chain"), "{errors:?}");
        let errors = Spec::parse("target: {}\nfaults: [ { abort: { status: 503 } } ]\nduration: 1s", Format::Yaml)
            .unwrap()
            .check(None)
            .unwrap_err();
        assert!(errors[0].to_string().contains("no config has been applied yet"));
    }
}
