//! From Proxy-Wasm callbacks to [`Filter`] methods: one filter value per request context, the
//! parsed config shared by all of them, and the bookkeeping that spares filter authors the
//! context ids: which request is paused in which direction, and when to resume it.
//!
//! Used by the exports [`crate::filter!`] generates and, natively, by the test harness; it is
//! public only for them.

use crate::host::{self, Buffer, Direction, LogLevel, Map};
use crate::http::{Body, Effects, LogView, Request, Response};
use crate::{Action, CallId, CallResponse, Error, Filter};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;
use std::time::Duration;

/// `proxy_on_memory_allocate`: memory the host fills and the guest later owns (and frees).
pub fn allocate(size: usize) -> *mut u8 {
    let mut buffer = std::mem::ManuallyDrop::new(Vec::<u8>::with_capacity(size));
    buffer.as_mut_ptr()
}

/// How often the root wakes to resume held requests while any are waiting.
const TIMER_TICK: Duration = Duration::from_millis(5);

/// Everything one filter instance keeps between callbacks.
pub struct State<F: Filter> {
    config: RefCell<Option<Rc<F::Config>>>,
    requests: RefCell<HashMap<u32, Slot<F>, ContextIds>>,
    timers: RefCell<Vec<Timer>>,
    ticking: Cell<bool>,
}

/// One request: its filter value (taken out while a method of it runs, so that the filter may
/// make host calls that reach back into this state) and where it stands.
struct Slot<F> {
    filter: Option<F>,
    /// The direction the request is held in, if a phase said `Pause`.
    paused: Option<Direction>,
    /// A local response was sent: the request must never be resumed.
    responded: bool,
}

struct Timer {
    due_nanos: u64,
    context: u32,
}

/// Context ids are small distinct integers: they need no hashing.
#[derive(Default)]
struct ContextIdHasher(u64);

impl Hasher for ContextIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 << 8) | u64::from(*byte);
        }
    }
    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id);
    }
}

type ContextIds = BuildHasherDefault<ContextIdHasher>;

const CONTINUE: u32 = 0;
const PAUSE: u32 = 1;

impl<F: Filter> Default for State<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Filter> State<F> {
    pub fn new() -> Self {
        State {
            config: RefCell::new(None),
            requests: RefCell::new(HashMap::default()),
            timers: RefCell::new(Vec::new()),
            ticking: Cell::new(false),
        }
    }

    /// `proxy_on_configure`: parses and prepares the config; `false` refuses it.
    pub fn on_configure(&self, _root: u32, size: usize) -> bool {
        let bytes = match host::get_buffer(Buffer::PluginConfiguration, 0, size) {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(error) => {
                host::log(LogLevel::Error, &format!("cannot read the filter config: {error}"));
                return false;
            }
        };
        match parse_config::<F>(&bytes) {
            Ok(config) => {
                *self.config.borrow_mut() = Some(Rc::new(config));
                true
            }
            Err(error) => {
                host::log(LogLevel::Error, &error.to_string());
                false
            }
        }
    }

    /// `proxy_on_context_create`: a request context (parent ≠ 0) gets its filter value.
    pub fn on_context_create(&self, context: u32, parent: u32) {
        if parent == 0 {
            return; // the root context: nothing per root beyond the config
        }
        let Some(config) = self.config.borrow().clone() else {
            host::log(LogLevel::Error, "a request arrived before the filter was configured; it passes untouched");
            return;
        };
        let slot = Slot { filter: Some(F::new(&config)), paused: None, responded: false };
        self.requests.borrow_mut().insert(context, slot);
    }

    pub fn on_request_headers(&self, context: u32, _end_of_stream: bool) -> u32 {
        self.phase(context, Direction::Request, "request headers", |filter, fx| {
            filter.on_request_headers(&mut Request::new(fx))
        })
    }

    pub fn on_request_body(&self, context: u32, size: usize, end_of_stream: bool) -> u32 {
        self.phase(context, Direction::Request, "request body", |filter, fx| {
            filter.on_request_body(&mut Request::new(fx), Body::new(size, end_of_stream))
        })
    }

    pub fn on_response_headers(&self, context: u32, _end_of_stream: bool) -> u32 {
        self.phase(context, Direction::Response, "response headers", |filter, fx| {
            filter.on_response_headers(&mut Response::new(fx))
        })
    }

    pub fn on_response_body(&self, context: u32, size: usize, end_of_stream: bool) -> u32 {
        self.phase(context, Direction::Response, "response body", |filter, fx| {
            filter.on_response_body(&mut Response::new(fx), Body::new(size, end_of_stream))
        })
    }

    /// `proxy_on_http_call_response`: hands the answer to the request that asked, and resumes
    /// that request when the filter says `Continue`.
    pub fn on_http_call_response(&self, context: u32, token: u32, headers: usize, body_size: usize) {
        let response = read_call_response(headers, body_size);
        let direction = self.paused_direction(context).unwrap_or(Direction::Request);
        let was_paused = self.paused_direction(context).is_some();
        let action = self.phase(context, direction, "callout response", |filter, fx| {
            filter.on_call_response(&mut Request::new(fx), CallId(token), response)
        });
        if action == CONTINUE && was_paused {
            self.continue_unless_answered(context, direction);
        }
    }

    /// `proxy_on_tick`: runs [`Filter::on_timer`] for the requests whose time has come, and
    /// resumes those it lets go on.
    pub fn on_tick(&self, _root: u32) {
        let now = host::now_nanos();
        let due: Vec<u32> = {
            let mut timers = self.timers.borrow_mut();
            let due = timers.iter().filter(|t| t.due_nanos <= now).map(|t| t.context).collect();
            timers.retain(|t| t.due_nanos > now);
            due
        };
        for context in due {
            let Some(direction) = self.paused_direction(context) else { continue };
            if host::set_effective_context(context).is_err() {
                continue;
            }
            let action = self.phase(context, direction, "timer", |filter, fx| filter.on_timer(&mut Request::new(fx)));
            if action == CONTINUE {
                self.continue_unless_answered(context, direction);
            }
        }
        self.tick_while_timers();
    }

    pub fn on_log(&self, context: u32) {
        let Some(mut filter) = self.take(context) else { return };
        filter.on_log(&LogView::new());
        self.put_back(context, filter);
    }

    pub fn on_delete(&self, context: u32) {
        self.requests.borrow_mut().remove(&context);
        let had_timers = {
            let mut timers = self.timers.borrow_mut();
            let before = timers.len();
            timers.retain(|t| t.context != context);
            before != timers.len()
        };
        if had_timers {
            self.tick_while_timers();
        }
    }

    /// Requests currently held by a `Pause` (for the harness and for the filter's own metrics).
    pub fn paused_requests(&self) -> usize {
        self.requests.borrow().values().filter(|slot| slot.paused.is_some()).count()
    }

    /// Runs one phase method with the request's filter value taken out of its slot, and settles
    /// what it answered: an `Err` becomes a 503 (the request must not go on half-filtered).
    fn phase(
        &self,
        context: u32,
        direction: Direction,
        phase: &str,
        run: impl FnOnce(&mut F, &mut Effects) -> crate::Result<Action>,
    ) -> u32 {
        let Some(mut filter) = self.take(context) else { return CONTINUE };
        let mut fx = Effects::new(context);
        let outcome = run(&mut filter, &mut fx);
        let action = match outcome {
            Ok(action) => action,
            Err(error) => {
                host::log(LogLevel::Error, &format!("{phase}: {error}; answering 503"));
                if !fx.responded {
                    let answer = host::send_local_response(
                        503,
                        &[("x-weft-error", "filter error")],
                        b"filter error\n",
                        None,
                        "filter_error",
                    );
                    fx.responded = answer.is_ok();
                }
                Action::Pause
            }
        };
        if let Some(due) = fx.resume_at.take() {
            self.timers.borrow_mut().push(Timer { due_nanos: due, context });
            self.tick_while_timers();
        }
        self.put_back(context, filter);
        if let Some(slot) = self.requests.borrow_mut().get_mut(&context) {
            slot.responded |= fx.responded;
            slot.paused = (action == Action::Pause).then_some(direction);
        }
        match action {
            Action::Continue => CONTINUE,
            Action::Pause => PAUSE,
        }
    }

    /// `proxy_continue_stream`, unless the request was answered locally: that one is over.
    fn continue_unless_answered(&self, context: u32, direction: Direction) {
        let answered = self.requests.borrow().get(&context).is_none_or(|slot| slot.responded);
        if !answered {
            if let Err(error) = host::continue_stream(direction) {
                host::log(LogLevel::Warn, &format!("cannot resume the request: {error}"));
            }
        }
    }

    fn paused_direction(&self, context: u32) -> Option<Direction> {
        self.requests.borrow().get(&context).and_then(|slot| slot.paused)
    }

    fn take(&self, context: u32) -> Option<F> {
        self.requests.borrow_mut().get_mut(&context).and_then(|slot| slot.filter.take())
    }

    fn put_back(&self, context: u32, filter: F) {
        if let Some(slot) = self.requests.borrow_mut().get_mut(&context) {
            slot.filter = Some(filter);
        }
    }

    /// Ticks only while a request waits on a timer: an idle filter costs nothing.
    fn tick_while_timers(&self) {
        let want = !self.timers.borrow().is_empty();
        if want != self.ticking.get() {
            let period = if want { TIMER_TICK } else { Duration::ZERO };
            if host::set_tick_period(period).is_ok() {
                self.ticking.set(want);
            }
        }
    }
}

/// Parses a filter's config. No config at all reads as JSON `null`, then as `{}`, so that a
/// filter whose config fields all have defaults needs none.
pub fn parse_config<F: Filter>(bytes: &[u8]) -> crate::Result<F::Config> {
    let parse = |bytes: &[u8]| {
        let mut json = serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize::<_, F::Config>(&mut json).map_err(|e| match e.path().to_string().as_str() {
            "." => Error::Config(e.into_inner().to_string()),
            path => Error::Config(format!("{path}: {}", e.into_inner())),
        })
    };
    let parsed =
        if bytes.iter().all(u8::is_ascii_whitespace) { parse(b"null").or_else(|_| parse(b"{}")) } else { parse(bytes) };
    let mut config = parsed?;
    F::prepare(&mut config).map_err(|e| match e {
        Error::Config(reason) => Error::Config(reason),
        other => Error::Config(other.to_string()),
    })?;
    Ok(config)
}

fn read_call_response(headers: usize, body_size: usize) -> CallResponse {
    let headers =
        if headers > 0 { host::get_map_pairs(Map::CallResponseHeaders).unwrap_or_default() } else { Vec::new() };
    let body = if body_size > 0 {
        host::get_buffer(Buffer::CallResponseBody, 0, body_size).ok().flatten().unwrap_or_default()
    } else {
        Vec::new()
    };
    CallResponse::new(headers, body)
}
