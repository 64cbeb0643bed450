//! What an L4 toxic is: its kind and attributes (Toxiproxy's names and units), the direction it
//! acts on, its toxicity and an optional expiry; validated, and read from and written as
//! Toxiproxy's JSON (`{"name", "type", "stream", "toxicity", "attributes"}`).

use serde::Deserialize;
use std::fmt;
use std::time::SystemTime;

/// Which bytes a toxic acts on, as Toxiproxy names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Client → server: what the client sends.
    Upstream,
    /// Server → client: what the client receives (Toxiproxy's default).
    Downstream,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Upstream => "upstream",
            Stream::Downstream => "downstream",
        }
    }

    /// `upstream` or `downstream` (any case, as Toxiproxy accepts).
    pub fn parse(text: &str) -> Option<Stream> {
        match text.to_ascii_lowercase().as_str() {
            "upstream" => Some(Stream::Upstream),
            "downstream" => Some(Stream::Downstream),
            _ => None,
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A toxic's kind and attributes, in Toxiproxy's units (milliseconds unless said otherwise).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToxicKind {
    /// Every chunk is held `latency` ± `jitter` ms after it arrived (chunks keep their order).
    Latency { latency: u64, jitter: u64 },
    /// At most `rate` KB/s (1 KB = 1000 bytes); 0 does not limit.
    Bandwidth { rate: u64 },
    /// The close (end of stream) is passed on `delay` ms late.
    SlowClose { delay: u64 },
    /// Data is dropped; the connection is closed after `timeout` ms without data (0: never).
    /// Removing the toxic closes the connections it held, whose data is lost.
    Timeout { timeout: u64 },
    /// The first data (or close) is dropped and, `timeout` ms later, the connection is reset
    /// (TCP RST to both sides).
    ResetPeer { timeout: u64 },
    /// Chunks are cut into pieces of `average_size` ± `size_variation` bytes, sent `delay`
    /// microseconds apart.
    Slicer { average_size: u64, size_variation: u64, delay: u64 },
    /// After `bytes` bytes the connection is closed.
    LimitData { bytes: u64 },
}

impl ToxicKind {
    /// The Toxiproxy type name (`latency`, `reset_peer`, …).
    pub fn type_name(&self) -> &'static str {
        match self {
            ToxicKind::Latency { .. } => "latency",
            ToxicKind::Bandwidth { .. } => "bandwidth",
            ToxicKind::SlowClose { .. } => "slow_close",
            ToxicKind::Timeout { .. } => "timeout",
            ToxicKind::ResetPeer { .. } => "reset_peer",
            ToxicKind::Slicer { .. } => "slicer",
            ToxicKind::LimitData { .. } => "limit_data",
        }
    }

    /// Every type name this engine knows.
    pub const TYPES: [&'static str; 7] =
        ["latency", "bandwidth", "slow_close", "timeout", "reset_peer", "slicer", "limit_data"];

    /// The `attributes` object, every attribute present.
    pub fn attributes(&self) -> serde_json::Value {
        match *self {
            ToxicKind::Latency { latency, jitter } => serde_json::json!({ "latency": latency, "jitter": jitter }),
            ToxicKind::Bandwidth { rate } => serde_json::json!({ "rate": rate }),
            ToxicKind::SlowClose { delay } => serde_json::json!({ "delay": delay }),
            ToxicKind::Timeout { timeout } | ToxicKind::ResetPeer { timeout } => {
                serde_json::json!({ "timeout": timeout })
            }
            ToxicKind::Slicer { average_size, size_variation, delay } => {
                serde_json::json!({ "average_size": average_size, "size_variation": size_variation, "delay": delay })
            }
            ToxicKind::LimitData { bytes } => serde_json::json!({ "bytes": bytes }),
        }
    }

    /// A kind of type `type_name` with `attributes` laid over `base` (the attributes a missing
    /// one keeps: zero on create, the current ones on update). Unknown attributes are ignored,
    /// as Toxiproxy does.
    pub fn from_attributes(
        type_name: &str,
        attributes: &serde_json::Value,
        base: Option<&ToxicKind>,
    ) -> Result<ToxicKind, ToxicError> {
        let mut merged = match base {
            Some(kind) if kind.type_name() == type_name => kind.attributes(),
            _ => serde_json::json!({}),
        };
        match attributes {
            serde_json::Value::Object(given) => {
                if let Some(merged) = merged.as_object_mut() {
                    merged.extend(given.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
            serde_json::Value::Null => {}
            other => return Err(ToxicError::invalid("attributes", format!("expected an object, got {other}"))),
        }
        fn read<T: for<'de> Deserialize<'de>>(value: serde_json::Value) -> Result<T, ToxicError> {
            serde_path_to_error::deserialize(value).map_err(|e| {
                let path = e.path().to_string();
                ToxicError::invalid(format!("attributes.{path}"), e.into_inner().to_string())
            })
        }
        #[derive(Deserialize)]
        struct Latency {
            #[serde(default)]
            latency: u64,
            #[serde(default)]
            jitter: u64,
        }
        #[derive(Deserialize)]
        struct Rate {
            #[serde(default)]
            rate: u64,
        }
        #[derive(Deserialize)]
        struct Delay {
            #[serde(default)]
            delay: u64,
        }
        #[derive(Deserialize)]
        struct Timeout {
            #[serde(default)]
            timeout: u64,
        }
        #[derive(Deserialize)]
        struct Slicer {
            #[serde(default)]
            average_size: u64,
            #[serde(default)]
            size_variation: u64,
            #[serde(default)]
            delay: u64,
        }
        #[derive(Deserialize)]
        struct Bytes {
            #[serde(default)]
            bytes: u64,
        }
        Ok(match type_name {
            "latency" => {
                let Latency { latency, jitter } = read(merged)?;
                ToxicKind::Latency { latency, jitter }
            }
            "bandwidth" => ToxicKind::Bandwidth { rate: read::<Rate>(merged)?.rate },
            "slow_close" => ToxicKind::SlowClose { delay: read::<Delay>(merged)?.delay },
            "timeout" => ToxicKind::Timeout { timeout: read::<Timeout>(merged)?.timeout },
            "reset_peer" => ToxicKind::ResetPeer { timeout: read::<Timeout>(merged)?.timeout },
            "slicer" => {
                let Slicer { average_size, size_variation, delay } = read(merged)?;
                ToxicKind::Slicer { average_size, size_variation, delay }
            }
            "limit_data" => ToxicKind::LimitData { bytes: read::<Bytes>(merged)?.bytes },
            other => return Err(ToxicError::InvalidType(other.to_owned())),
        })
    }
}

/// One named toxic on a listener.
#[derive(Clone, Debug, PartialEq)]
pub struct Toxic {
    /// Unique on its listener (Toxiproxy's default: `<type>_<stream>`).
    pub name: String,
    pub kind: ToxicKind,
    pub stream: Stream,
    /// The share of connections it acts on, 0.0–1.0; rolled once per connection.
    pub toxicity: f32,
    /// When set, the toxic stops acting at this time by itself and is removed.
    pub expires: Option<SystemTime>,
}

impl Toxic {
    /// A toxic acting on every connection, with no expiry.
    pub fn new(name: impl Into<String>, kind: ToxicKind, stream: Stream) -> Toxic {
        Toxic { name: name.into(), kind, stream, toxicity: 1.0, expires: None }
    }

    /// Checks what the engine cannot act on; the error names the field.
    pub fn validate(&self) -> Result<(), ToxicError> {
        if self.name.is_empty() {
            return Err(ToxicError::invalid("name", "must not be empty"));
        }
        if !(0.0..=1.0).contains(&self.toxicity) {
            return Err(ToxicError::invalid("toxicity", format!("{} is not between 0 and 1", self.toxicity)));
        }
        if let ToxicKind::Slicer { average_size, size_variation, .. } = self.kind {
            if average_size == 0 {
                return Err(ToxicError::invalid("attributes.average_size", "must be at least 1"));
            }
            if size_variation >= average_size {
                return Err(ToxicError::invalid(
                    "attributes.size_variation",
                    format!("{size_variation} must be smaller than average_size ({average_size})"),
                ));
            }
        }
        Ok(())
    }

    /// Whether the expiry has passed at `now`.
    pub fn expired_at(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }

    /// Toxiproxy's JSON for this toxic (with `expires`, RFC 3339, when it has one).
    pub fn to_json(&self) -> serde_json::Value {
        let mut json = serde_json::json!({
            "name": self.name,
            "type": self.kind.type_name(),
            "stream": self.stream.as_str(),
            "toxicity": self.toxicity,
            "attributes": self.kind.attributes(),
        });
        if let (Some(at), Some(object)) = (self.expires, json.as_object_mut()) {
            object.insert("expires".into(), crate::http::rfc3339(at).into());
        }
        json
    }

    /// A toxic from Toxiproxy's create body, with its defaults: stream `downstream`, toxicity
    /// 1.0, name `<type>_<stream>`, attributes 0 when missing.
    pub fn from_json(body: &serde_json::Value) -> Result<Toxic, ToxicError> {
        let object = body.as_object().ok_or_else(|| ToxicError::BadBody(format!("expected an object, got {body}")))?;
        let text = |field: &str| -> Result<Option<String>, ToxicError> {
            match object.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(ToxicError::BadBody(format!("{field}: expected a string, got {other}"))),
            }
        };
        let stream_text = text("stream")?.unwrap_or_else(|| "downstream".into());
        let stream = Stream::parse(&stream_text).ok_or(ToxicError::InvalidStream)?;
        let type_name = text("type")?.unwrap_or_default();
        if !ToxicKind::TYPES.contains(&type_name.as_str()) {
            return Err(ToxicError::InvalidType(type_name));
        }
        let name = text("name")?.filter(|n| !n.is_empty()).unwrap_or_else(|| format!("{type_name}_{stream}"));
        let toxicity = toxicity(object.get("toxicity"))?.unwrap_or(1.0);
        let attributes = object.get("attributes").cloned().unwrap_or(serde_json::Value::Null);
        let kind = ToxicKind::from_attributes(&type_name, &attributes, None)?;
        let toxic = Toxic { name, kind, stream, toxicity, expires: None };
        toxic.validate()?;
        Ok(toxic)
    }

    /// This toxic with Toxiproxy's update body applied: `attributes` laid over the current
    /// ones and `toxicity` when given; name, type and stream stay.
    pub fn updated_from_json(&self, body: &serde_json::Value) -> Result<Toxic, ToxicError> {
        let object = body.as_object().ok_or_else(|| ToxicError::BadBody(format!("expected an object, got {body}")))?;
        let mut toxic = self.clone();
        if let Some(toxicity) = toxicity(object.get("toxicity"))? {
            toxic.toxicity = toxicity;
        }
        if let Some(attributes) = object.get("attributes") {
            toxic.kind = ToxicKind::from_attributes(self.kind.type_name(), attributes, Some(&self.kind))?;
        }
        toxic.validate()?;
        Ok(toxic)
    }
}

fn toxicity(value: Option<&serde_json::Value>) -> Result<Option<f32>, ToxicError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => Ok(n.as_f64().map(|f| f as f32)),
        Some(other) => Err(ToxicError::BadBody(format!("toxicity: expected a number, got {other}"))),
    }
}

/// Why a toxic was refused; nothing changed. The messages are Toxiproxy's where it has one.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ToxicError {
    #[error("toxic already exists")]
    Exists,
    #[error("toxic not found")]
    NotFound,
    #[error(
        "invalid toxic type: {0:?} (one of latency, bandwidth, slow_close, timeout, reset_peer, slicer, limit_data)"
    )]
    InvalidType(String),
    #[error("stream was invalid, can be either upstream or downstream")]
    InvalidStream,
    #[error("bad request body: {0}")]
    BadBody(String),
    #[error("bad request body: {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("no tcp listener or Toxiproxy proxy named {0:?}")]
    UnknownListener(String),
}

impl ToxicError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ToxicError {
        ToxicError::Invalid { field: field.into(), reason: reason.into() }
    }

    /// The HTTP status Toxiproxy answers this error with.
    pub fn status(&self) -> u16 {
        match self {
            ToxicError::Exists => 409,
            ToxicError::NotFound | ToxicError::UnknownListener(_) => 404,
            _ => 400,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_body_gets_toxiproxy_defaults() {
        let toxic =
            Toxic::from_json(&serde_json::json!({ "type": "latency", "attributes": { "latency": 100 } })).unwrap();
        assert_eq!(toxic.name, "latency_downstream");
        assert_eq!(toxic.stream, Stream::Downstream);
        assert_eq!(toxic.toxicity, 1.0);
        assert_eq!(toxic.kind, ToxicKind::Latency { latency: 100, jitter: 0 });
        assert_eq!(
            toxic.to_json(),
            serde_json::json!({ "name": "latency_downstream", "type": "latency", "stream": "downstream",
                "toxicity": 1.0, "attributes": { "latency": 100, "jitter": 0 } })
        );
    }

    #[test]
    fn bad_bodies_are_named() {
        let error = |body| Toxic::from_json(&body).unwrap_err();
        assert_eq!(error(serde_json::json!({ "type": "nope" })), ToxicError::InvalidType("nope".into()));
        assert_eq!(error(serde_json::json!({ "type": "latency", "stream": "sideways" })), ToxicError::InvalidStream);
        assert_eq!(
            error(serde_json::json!({ "type": "latency", "attributes": { "latency": -5 } })).to_string(),
            "bad request body: attributes.latency: invalid value: integer `-5`, expected u64"
        );
        assert!(
            matches!(error(serde_json::json!({ "type": "latency", "toxicity": 1.5 })), ToxicError::Invalid { field, .. } if field == "toxicity")
        );
        assert!(matches!(
            error(serde_json::json!({ "type": "slicer", "attributes": { "average_size": 10, "size_variation": 10 } })),
            ToxicError::Invalid { field, .. } if field == "attributes.size_variation"
        ));
        assert_eq!(
            error(serde_json::json!({ "type": "latency" , "attributes": {"latency": 1}, "toxicity": "x" })).status(),
            400
        );
    }

    #[test]
    fn unknown_attributes_are_ignored_as_toxiproxy_does() {
        let body = serde_json::json!({ "type": "timeout", "stream": "Upstream", "attributes": { "timeout": 5, "enabled": true } });
        let toxic = Toxic::from_json(&body).unwrap();
        assert_eq!((toxic.kind, toxic.stream), (ToxicKind::Timeout { timeout: 5 }, Stream::Upstream));
    }

    #[test]
    fn updates_keep_what_they_do_not_name() {
        let toxic = Toxic::from_json(&serde_json::json!({ "type": "latency", "toxicity": 0.5,
            "attributes": { "latency": 100, "jitter": 10 } }))
        .unwrap();
        let updated = toxic.updated_from_json(&serde_json::json!({ "attributes": { "jitter": 20 } })).unwrap();
        assert_eq!(updated.kind, ToxicKind::Latency { latency: 100, jitter: 20 });
        assert_eq!(updated.toxicity, 0.5);
        let updated = toxic.updated_from_json(&serde_json::json!({ "toxicity": 1 })).unwrap();
        assert_eq!((updated.toxicity, updated.kind), (1.0, toxic.kind.clone()));
    }
}
