//! weft's built-in chaos filter: injects delays, aborts (HTTP or gRPC) and response throttling
//! into the requests a fault matches, each at its own percentage; lets clients ask for faults by
//! header when that is turned on; and never holds more than `max_active_faults` requests at once
//! across the proxy. Faults with an `expires` time stop by themselves. Config:
//! docs/filters/chaos.md.

mod config;
#[cfg(test)]
mod tests;

use config::{Config, Fault, Match};
use std::time::Duration;
use weft_sdk::metrics::count;
use weft_sdk::prelude::*;
use weft_sdk::shared;

/// Shared data key of the number of requests held by a fault in the whole proxy.
const ACTIVE_KEY: &str = "chaos.active_faults";
const DELAY_HEADER: &str = "x-weft-fault-delay";
const ABORT_HEADER: &str = "x-weft-fault-abort";
const GRPC_ABORT_HEADER: &str = "x-weft-fault-abort-grpc";

pub struct Chaos {
    config: Rc<Config>,
    /// An answer to give once the delay is over.
    abort_after_delay: Option<LocalResponse>,
    /// The response's pace, when a throttle fired.
    throttle_kib_per_second: Option<u64>,
    /// This request counts in [`ACTIVE_KEY`] and must leave it when it ends.
    holds_slot: bool,
    /// The name of the fault that fired, when it has one: its injections are also counted under
    /// it (`chaos_delays_injected:NAME`), which is how an experiment learns what it did.
    fault_name: Option<String>,
}

/// The faults that fired for one request.
#[derive(Default)]
struct Decision {
    delay: Option<Duration>,
    abort: Option<LocalResponse>,
    throttle: Option<u64>,
}

impl Filter for Chaos {
    type Config = Config;

    fn prepare(config: &mut Config) -> Result<()> {
        config::prepare(config)
    }

    fn new(config: &Rc<Config>) -> Self {
        Chaos {
            config: config.clone(),
            abort_after_delay: None,
            throttle_kib_per_second: None,
            holds_slot: false,
            fault_name: None,
        }
    }

    fn on_request_headers(&mut self, req: &mut Request) -> Result<Action> {
        let mut decision = self.asked_by_header(req)?;
        if decision.delay.is_none() && decision.abort.is_none() {
            if let Some(fault) = self.first_matching(req)? {
                decision = roll(fault);
                self.fault_name = Some(fault.name.clone()).filter(|name| !name.is_empty());
            }
        }
        if (decision.delay.is_some() || decision.throttle.is_some()) && !self.take_slot()? {
            // Over the cap: this request is left alone rather than held.
            self.count("chaos_faults_skipped");
            decision.delay = None;
            decision.throttle = None;
        }
        self.throttle_kib_per_second = decision.throttle;
        if decision.throttle.is_some() {
            self.count("chaos_throttles_injected");
        }
        if let Some(delay) = decision.delay {
            self.count("chaos_delays_injected");
            self.abort_after_delay = decision.abort;
            return req.resume_after(delay);
        }
        match decision.abort {
            Some(answer) => {
                self.count("chaos_aborts_injected");
                req.respond(answer)
            }
            None => Ok(Action::Continue),
        }
    }

    fn on_timer(&mut self, req: &mut Request) -> Result<Action> {
        match self.abort_after_delay.take() {
            Some(answer) => {
                self.count("chaos_aborts_injected");
                req.respond(answer)
            }
            None => Ok(Action::Continue),
        }
    }

    /// A throttled response reaches the client no sooner than its size allows at the rate:
    /// held from its headers when its length is known, else until its body is whole.
    fn on_response_headers(&mut self, resp: &mut Response) -> Result<Action> {
        let Some(rate) = self.throttle_kib_per_second else { return Ok(Action::Continue) };
        let Some(length) = resp.header("content-length")?.and_then(|l| l.parse::<u64>().ok()) else {
            return Ok(Action::Continue);
        };
        self.throttle_kib_per_second = None;
        resp.resume_after(pace(length, rate))
    }

    fn on_response_body(&mut self, resp: &mut Response, body: Body) -> Result<Action> {
        let Some(rate) = self.throttle_kib_per_second else { return Ok(Action::Continue) };
        if !body.end_of_stream() {
            return Ok(Action::Pause);
        }
        self.throttle_kib_per_second = None;
        resp.resume_after(pace(body.size() as u64, rate))
    }

    fn on_log(&mut self, _log: &LogView) {
        if self.holds_slot {
            let _ = shared::update(ACTIVE_KEY, 16, |current| (encode(decode(current).saturating_sub(1)), ()));
        }
    }
}

weft_sdk::filter!(Chaos);

impl Chaos {
    /// The faults a client asked for by header, when the config lets it; the headers are removed
    /// so that the upstream never sees them.
    fn asked_by_header(&self, req: &mut Request) -> Result<Decision> {
        let mut decision = Decision::default();
        if !self.config.header_faults.enabled {
            return Ok(decision);
        }
        if let Some(ms) = req.header(DELAY_HEADER)?.and_then(|v| v.trim().parse::<u64>().ok()) {
            decision.delay = Some(Duration::from_millis(ms).min(self.config.header_faults.max_delay.get()));
        }
        if let Some(status) = req.header(ABORT_HEADER)?.and_then(|v| v.trim().parse::<u16>().ok()) {
            if (200..=599).contains(&status) {
                decision.abort = Some(http_abort(status));
            }
        }
        if let Some(code) = req.header(GRPC_ABORT_HEADER)?.and_then(|v| v.trim().parse::<u32>().ok()) {
            if code <= 16 {
                decision.abort = Some(grpc_abort(code));
            }
        }
        for header in [DELAY_HEADER, ABORT_HEADER, GRPC_ABORT_HEADER] {
            req.remove_header(header)?;
        }
        Ok(decision)
    }

    /// The first fault that matches the request and has not expired.
    fn first_matching(&self, req: &Request) -> Result<Option<&Fault>> {
        // The clock is only asked when some fault can expire: the path of a request no fault
        // touches stays free of host calls it does not need.
        let mut now = None;
        let mut seen = Seen::default();
        for fault in &self.config.faults {
            if let Some(end) = fault.expires_unix_nanos {
                let now = *now.get_or_insert_with(|| {
                    weft_sdk::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
                });
                if now >= end {
                    continue;
                }
            }
            if matches(&fault.matching, req, &mut seen)? {
                return Ok(Some(fault));
            }
        }
        Ok(None)
    }

    /// Counts an injection (or a skip), and again under the fault's name when it has one.
    fn count(&self, metric: &str) {
        count(metric);
        if let Some(name) = &self.fault_name {
            count(&format!("{metric}:{name}"));
        }
    }

    /// Counts this request in the proxy-wide number of held requests, unless that is at the cap.
    fn take_slot(&mut self) -> Result<bool> {
        let cap = self.config.max_active_faults;
        let taken = shared::update(ACTIVE_KEY, 16, |current| {
            let active = decode(current);
            if active >= cap {
                (encode(active), false)
            } else {
                (encode(active + 1), true)
            }
        })?;
        self.holds_slot = taken;
        Ok(taken)
    }
}

/// What the matches read of a request, read once however many faults look at it.
#[derive(Default)]
struct Seen {
    path: Option<String>,
    method: Option<String>,
}

fn matches(rule: &Match, req: &Request, seen: &mut Seen) -> Result<bool> {
    if rule.path.is_some() || rule.path_prefix.is_some() {
        if seen.path.is_none() {
            seen.path = Some(req.url_path()?);
        }
        let path = seen.path.as_deref().unwrap_or_default();
        if rule.path.as_ref().is_some_and(|exact| exact != path) {
            return Ok(false);
        }
        if rule.path_prefix.as_ref().is_some_and(|prefix| !path.starts_with(prefix.as_str())) {
            return Ok(false);
        }
    }
    if !rule.methods.is_empty() {
        if seen.method.is_none() {
            seen.method = Some(req.method()?);
        }
        if !rule.methods.iter().any(|m| Some(m.as_str()) == seen.method.as_deref()) {
            return Ok(false);
        }
    }
    for (name, expected) in &rule.headers {
        match req.header(name)? {
            Some(value) if expected == "*" || value == *expected => {}
            _ => return Ok(false),
        }
    }
    if let Some(principal) = &rule.source_principal {
        if req.source_principal()?.as_deref() != Some(principal.as_str()) {
            return Ok(false);
        }
    }
    if let Some(listener) = &rule.listener {
        if req.property_text(&["listener_name"])?.as_deref() != Some(listener.as_str()) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Rolls each of the fault's parts against its own percentage.
fn roll(fault: &Fault) -> Decision {
    let mut decision = Decision::default();
    if let Some(delay) = fault.delay.as_ref().filter(|d| chance(d.percentage)) {
        let jitter = delay.jitter.get().as_nanos() as u64;
        let extra = if jitter == 0 { 0 } else { weft_sdk::random() % (jitter + 1) };
        decision.delay = Some(delay.fixed.get() + Duration::from_nanos(extra));
    }
    if let Some(abort) = fault.abort.as_ref().filter(|a| chance(a.percentage)) {
        decision.abort = Some(match (abort.status, abort.grpc_status) {
            (_, Some(code)) => grpc_abort(code),
            (status, None) => http_abort(status.unwrap_or(503)),
        });
    }
    if let Some(throttle) = fault.throttle.as_ref().filter(|t| chance(t.percentage)) {
        decision.throttle = Some(throttle.kib_per_second);
    }
    decision
}

/// `true` with the given percentage (0 to 100, fractions allowed).
fn chance(percentage: f64) -> bool {
    if percentage >= 100.0 {
        return true;
    }
    let draw = (weft_sdk::random() % 1_000_000) as f64 / 10_000.0;
    draw < percentage
}

fn http_abort(status: u16) -> LocalResponse {
    LocalResponse::new(status).header("x-weft-fault", "abort").body("fault injected\n").details("fault_injected")
}

fn grpc_abort(code: u32) -> LocalResponse {
    LocalResponse::grpc(code, "fault injected").header("x-weft-fault", "abort").details("fault_injected")
}

/// How long `bytes` take at `kib_per_second`.
fn pace(bytes: u64, kib_per_second: u64) -> Duration {
    Duration::from_secs_f64(bytes as f64 / (kib_per_second as f64 * 1024.0))
}

fn decode(bytes: Option<&[u8]>) -> u64 {
    bytes.and_then(|b| <[u8; 8]>::try_from(b).ok()).map_or(0, u64::from_le_bytes)
}

fn encode(value: u64) -> Vec<u8> {
    value.to_le_bytes().to_vec()
}
