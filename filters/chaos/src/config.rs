//! The chaos filter's config: the faults to inject (each with a match, percentages and an
//! optional expiry), the opt-in header-triggered faults, and the cap on faults at once.

use serde::Deserialize;
use std::collections::BTreeMap;
use weft_sdk::units::Duration;
use weft_sdk::Error;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// Requests held by a delay or a throttle at once, across the proxy; past it, faults are
    /// skipped (and counted), so an experiment cannot pile up held requests without bound.
    #[serde(default = "default_max_active")]
    pub max_active_faults: u64,
    #[serde(default)]
    pub header_faults: HeaderFaults,
}

fn default_max_active() -> u64 {
    1000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    #[serde(default)]
    pub name: String,
    /// Which requests; none: all.
    #[serde(default, rename = "match")]
    pub matching: Match,
    #[serde(default)]
    pub delay: Option<Delay>,
    #[serde(default)]
    pub abort: Option<Abort>,
    #[serde(default)]
    pub throttle: Option<Throttle>,
    /// After this time (RFC 3339, `2026-11-28T15:00:00Z`) the fault is no longer injected, even
    /// if nobody removes it: an experiment's end travels with the fault.
    #[serde(default)]
    pub expires: Option<String>,
    #[serde(skip)]
    pub expires_unix_nanos: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Match {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    /// Header name → exact value (`"*"`: present with any value).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub source_principal: Option<String>,
    /// Only requests on this listener (by name); for a chaos filter several listeners share.
    #[serde(default)]
    pub listener: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delay {
    pub fixed: Duration,
    /// Up to this much more, at random.
    #[serde(default)]
    pub jitter: Duration,
    #[serde(default = "all")]
    pub percentage: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Abort {
    /// The HTTP status to answer with.
    #[serde(default)]
    pub status: Option<u16>,
    /// Or a gRPC status code (`14` is UNAVAILABLE), answered the gRPC way.
    #[serde(default)]
    pub grpc_status: Option<u32>,
    #[serde(default = "all")]
    pub percentage: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Throttle {
    /// The response's pace: its body reaches the client no sooner than this rate allows.
    pub kib_per_second: u64,
    #[serde(default = "all")]
    pub percentage: f64,
}

fn all() -> f64 {
    100.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderFaults {
    /// Let clients ask for faults with `x-weft-fault-delay: MS`, `x-weft-fault-abort: STATUS`
    /// and `x-weft-fault-abort-grpc: CODE`. Off unless turned on.
    #[serde(default)]
    pub enabled: bool,
    /// The longest delay a header may ask for; longer asks are cut to it.
    #[serde(default = "default_max_header_delay")]
    pub max_delay: Duration,
}

impl Default for HeaderFaults {
    fn default() -> Self {
        HeaderFaults { enabled: false, max_delay: default_max_header_delay() }
    }
}

fn default_max_header_delay() -> Duration {
    Duration(std::time::Duration::from_secs(5))
}

/// Checks what serde cannot; every error names the field.
pub fn prepare(config: &mut Config) -> Result<(), Error> {
    for (i, fault) in config.faults.iter_mut().enumerate() {
        let at = |field: &str, reason: String| Error::Config(format!("faults[{i}].{field}: {reason}"));
        if fault.delay.is_none() && fault.abort.is_none() && fault.throttle.is_none() {
            return Err(at("delay", "a fault needs a delay, an abort or a throttle".into()));
        }
        let percentages = [
            ("delay.percentage", fault.delay.as_ref().map(|d| d.percentage)),
            ("abort.percentage", fault.abort.as_ref().map(|a| a.percentage)),
            ("throttle.percentage", fault.throttle.as_ref().map(|t| t.percentage)),
        ];
        for (field, value) in percentages {
            if let Some(value) = value.filter(|v| !(0.0..=100.0).contains(v)) {
                return Err(at(field, format!("{value} is not a percentage (0 to 100)")));
            }
        }
        if let Some(abort) = &fault.abort {
            match (abort.status, abort.grpc_status) {
                (Some(status), None) if !(200..=599).contains(&status) => {
                    return Err(at("abort.status", format!("{status} is not an HTTP status (200 to 599)")))
                }
                (Some(_), None) => {}
                (None, Some(code)) if code > 16 => {
                    return Err(at("abort.grpc_status", format!("{code} is not a gRPC status (0 to 16)")))
                }
                (None, Some(_)) => {}
                _ => return Err(at("abort", "give exactly one of status and grpc_status".into())),
            }
        }
        if fault.throttle.as_ref().is_some_and(|t| t.kib_per_second == 0) {
            return Err(at("throttle.kib_per_second", "must be at least 1".into()));
        }
        for method in &mut fault.matching.methods {
            *method = method.to_ascii_uppercase();
        }
        fault.matching.headers =
            std::mem::take(&mut fault.matching.headers).into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
        if let Some(expires) = &fault.expires {
            fault.expires_unix_nanos = Some(parse_rfc3339(expires).map_err(|e| at("expires", e))?);
        }
    }
    Ok(())
}

/// An RFC 3339 time (`2026-11-28T15:00:00Z`, `2026-11-28T16:00:00.5+01:00`) as nanoseconds since
/// the Unix epoch.
pub fn parse_rfc3339(text: &str) -> Result<u64, String> {
    let invalid = || format!("invalid time {text:?}: expected RFC 3339, e.g. 2026-11-28T15:00:00Z");
    let b = text.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(invalid());
    }
    let num = |from: usize, to: usize| text.get(from..to).and_then(|s| s.parse::<i64>().ok()).ok_or_else(invalid);
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return Err(invalid());
    }
    let mut rest = &text[19..];
    let mut nanos = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        let padded = format!("{:0<9}", &fraction[..digits.min(9)]);
        nanos = padded.parse().map_err(|_| invalid())?;
        rest = &fraction[digits..];
    }
    let offset_seconds = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(&rest[..1], "+" | "-") && &rest[3..4] == ":" => {
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (rest[1..3].parse::<i64>().map_err(|_| invalid())? * 3600
                + rest[4..6].parse::<i64>().map_err(|_| invalid())? * 60)
        }
        _ => return Err(invalid()),
    };
    // Days since the epoch of a civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    u64::try_from(seconds).map(|s| s * 1_000_000_000 + nanos as u64).map_err(|_| invalid())
}
