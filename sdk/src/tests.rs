//! The SDK's own promises, checked through its test harness with small filters written here:
//! callouts come back to the request that made them and resume it; an `Err` answers 503;
//! bodies buffer on `Pause`; timers; metrics; shared data with CAS; config refusals.

use crate::prelude::*;
use crate::testing::{TestFilter, TestRequest, TestResponse};
use crate::{metrics, shared, Direction};

/// Asks an auth service about each request and lets it through only on a 200.
struct Gate {
    config: Rc<GateConfig>,
    asked: Option<CallId>,
}

#[derive(Deserialize)]
struct GateConfig {
    cluster: String,
}

impl Filter for Gate {
    type Config = GateConfig;

    fn new(config: &Rc<GateConfig>) -> Self {
        Gate { config: config.clone(), asked: None }
    }

    fn on_request_headers(&mut self, req: &mut Request) -> Result<Action> {
        let user = req.header("x-user")?.unwrap_or_default();
        let call = HttpCall::get("/check").header("x-user", &user).timeout(Duration::from_millis(300));
        self.asked = Some(req.http_call(&self.config.cluster, call)?);
        Ok(Action::Pause)
    }

    fn on_call_response(&mut self, req: &mut Request, call: CallId, response: CallResponse) -> Result<Action> {
        assert_eq!(Some(call), self.asked, "the answer came to the request that asked");
        match response.status() {
            Some(200) => {
                req.set_header("x-verdict", std::str::from_utf8(response.body()).unwrap_or("?"))?;
                Ok(Action::Continue)
            }
            Some(status) => req.respond(LocalResponse::new(403).body(format!("auth said {status}\n"))),
            None => Err(Error::msg("auth service unreachable")),
        }
    }
}

#[test]
fn a_callout_answer_comes_back_to_its_request_and_resumes_it() {
    let filter = TestFilter::<Gate>::new(r#"{"cluster": "auth"}"#).unwrap();
    let mut alice = filter.request(TestRequest::get("/").header("x-user", "alice"));
    let mut bob = filter.request(TestRequest::get("/").header("x-user", "bob"));
    assert_eq!(alice.send_request_headers(), Action::Pause);
    assert_eq!(bob.send_request_headers(), Action::Pause);
    let (asked_alice, asked_bob) = (alice.callouts().remove(0), bob.callouts().remove(0));
    assert_eq!((asked_alice.cluster.as_str(), asked_alice.header(":path")), ("auth", Some("/check")));
    assert_eq!(asked_alice.header("x-user"), Some("alice"));
    assert_eq!(asked_alice.timeout, Duration::from_millis(300));

    bob.reply(asked_bob.id, TestResponse::new(401));
    alice.reply(asked_alice.id, TestResponse::new(200).body("ok"));
    assert!(alice.resumed(Direction::Request));
    assert_eq!(alice.request_header("x-verdict").as_deref(), Some("ok"));
    assert!(!bob.resumed(Direction::Request), "a refused request must not go on");
    assert_eq!(bob.local_response().map(|r| (r.status, r.body)), Some((403, b"auth said 401\n".to_vec())));
}

#[test]
fn a_phase_that_fails_answers_503_and_logs_why() {
    let filter = TestFilter::<Gate>::new(r#"{"cluster": "auth"}"#).unwrap();
    let mut req = filter.request(TestRequest::get("/"));
    req.send_request_headers();
    let call = req.callouts().remove(0);
    req.fail_call(call.id);
    let answer = req.local_response().expect("an error answers the request");
    assert_eq!(answer.status, 503);
    assert!(answer.headers.contains(&("x-weft-error".into(), "filter error".into())));
    assert!(!req.resumed(Direction::Request));
    let logs = filter.logs();
    assert!(logs.iter().any(|(_, line)| line.contains("auth service unreachable")), "{logs:?}");
}

#[test]
fn a_config_that_does_not_parse_is_refused_with_the_serde_reason() {
    let error = TestFilter::<Gate>::new(r#"{"clustr": "auth"}"#).err().unwrap().to_string();
    assert!(error.contains("missing field `cluster`"), "{error}");
    let error = TestFilter::<Gate>::new(r#"{"cluster": 7}"#).err().unwrap().to_string();
    assert!(error.contains("cluster: invalid type: integer `7`"), "{error}");
}

/// Upper-cases request bodies, which it needs whole.
struct Shout;

impl Filter for Shout {
    type Config = ();

    fn new(_: &Rc<()>) -> Self {
        Shout
    }

    fn on_request_body(&mut self, req: &mut Request, body: Body) -> Result<Action> {
        if !body.end_of_stream() {
            return Ok(Action::Pause);
        }
        let whole = req.body()?;
        assert_eq!(whole.len(), body.size());
        req.set_body(&whole.to_ascii_uppercase())?;
        Ok(Action::Continue)
    }

    fn on_response_headers(&mut self, resp: &mut Response) -> Result<Action> {
        let status = resp.status()?;
        resp.set_header("x-status-seen", &status.to_string())?;
        metrics::counter("responses")?.increment()?;
        metrics::histogram("status")?.record(u64::from(status))?;
        Ok(Action::Continue)
    }
}

#[test]
fn a_paused_body_is_buffered_until_the_end_and_then_replaced() {
    let filter = TestFilter::<Shout>::new("").expect("no config needed for ()");
    let mut req = filter.request(TestRequest::post("/"));
    assert_eq!(req.send_request_headers(), Action::Continue);
    assert_eq!(req.send_request_body(b"hello ", false), Action::Pause);
    assert_eq!(req.upstream_request_body(), b"", "held back");
    assert_eq!(req.send_request_body(b"world", true), Action::Continue);
    assert_eq!(req.upstream_request_body(), b"HELLO WORLD");
}

#[test]
fn metrics_count_in_the_host() {
    let filter = TestFilter::<Shout>::new("").unwrap();
    for status in [200, 404] {
        let mut req = filter.request(TestRequest::get("/"));
        req.send_request_headers();
        req.send_response_headers(TestResponse::new(status));
        assert_eq!(req.response_header("x-status-seen"), Some(status.to_string()));
    }
    assert_eq!(filter.metric("responses"), Some(2));
}

/// Holds each request for the configured time and counts, in shared data, how many it held.
struct Hold {
    config: Rc<HoldConfig>,
}

#[derive(Deserialize)]
struct HoldConfig {
    hold: crate::units::Duration,
}

impl Filter for Hold {
    type Config = HoldConfig;

    fn prepare(config: &mut HoldConfig) -> Result<()> {
        if config.hold.get() > Duration::from_secs(60) {
            return Err(Error::Config("hold: at most 60s".into()));
        }
        Ok(())
    }

    fn new(config: &Rc<HoldConfig>) -> Self {
        Hold { config: config.clone() }
    }

    fn on_request_headers(&mut self, req: &mut Request) -> Result<Action> {
        let held = shared::update("held", 8, |current| {
            let n = current.map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))) + 1;
            (n.to_le_bytes().to_vec(), n)
        })?;
        req.set_header("x-held-number", &held.to_string())?;
        req.resume_after(self.config.hold.get())
    }
}

#[test]
fn resume_after_lets_the_request_go_when_the_clock_passes_and_shared_data_counts() {
    let filter = TestFilter::<Hold>::new(r#"{"hold": "2s"}"#).unwrap();
    let mut first = filter.request(TestRequest::get("/"));
    let mut second = filter.request(TestRequest::get("/"));
    assert_eq!(first.send_request_headers(), Action::Pause);
    filter.advance(Duration::from_secs(1));
    assert_eq!(second.send_request_headers(), Action::Pause);
    assert_eq!(filter.paused_requests(), 2);
    filter.advance(Duration::from_millis(1000));
    assert!(first.resumed(Direction::Request));
    assert!(!second.resumed(Direction::Request), "second has a second to go");
    filter.advance(Duration::from_secs(1));
    assert!(second.resumed(Direction::Request));
    assert_eq!(second.request_header("x-held-number").as_deref(), Some("2"));
    assert_eq!(filter.shared("held"), Some(2u64.to_le_bytes().to_vec()));
}

#[test]
fn prepare_refuses_what_serde_accepted() {
    let error = TestFilter::<Hold>::new(r#"{"hold": "5m"}"#).err().unwrap();
    assert_eq!(error, Error::Config("hold: at most 60s".into()));
}

#[test]
fn a_compare_and_swap_write_loses_to_a_newer_one() {
    let _host = TestFilter::<Shout>::new("").unwrap();
    shared::set("k", b"1", None).unwrap();
    let (_, version) = shared::get("k").unwrap().unwrap();
    shared::set("k", b"2", Some(version)).unwrap();
    assert_eq!(shared::set("k", b"3", Some(version)), Err(Error::CasMismatch));
    assert_eq!(shared::get("k").unwrap().map(|(v, _)| v), Some(b"2".to_vec()));
}
