//! What the control plane keeps: module metadata and config versions, as stored and as the API
//! shows them. Timestamps are kept as Unix milliseconds and shown as RFC 3339 UTC.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};
use weft_config::{Config, ConfigError, Format};

/// A pushed module's metadata (its bytes are stored beside it, by digest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleInfo {
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
    /// Length of the module in bytes.
    pub size: u64,
    /// When it was first pushed, Unix milliseconds.
    pub uploaded_at_ms: u64,
}

impl ModuleInfo {
    /// The API's view; `used_by` names the filters of the current config that load it.
    pub fn to_json(&self, used_by: &[String]) -> Value {
        json!({
            "digest": self.digest,
            "size": self.size,
            "uploaded_at": rfc3339(self.uploaded_at_ms),
            "used_by": used_by,
        })
    }
}

/// How a version came to be.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// `POST /v1/config` (`weft apply`).
    Apply,
    /// `POST /v1/config/rollback`: a copy of the version named.
    Rollback { of: u64 },
}

/// One config version, immutable once committed. Stored as JSON, so history written by an older
/// weft stays readable even when the config model grows.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct VersionRecord {
    /// 1, 2, 3…: never reused, never renumbered.
    pub version: u64,
    /// Unix milliseconds of the commit.
    pub applied_at_ms: u64,
    /// Who applied it: the token's principal (`admin` while there is only the admin token).
    pub applied_by: String,
    /// The client's IP address, as the control plane saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    pub origin: Origin,
    /// `sha256:<hex>` of the canonical JSON of `resources` and `selector`: equal configs, equal digests.
    pub digest: String,
    /// A one-line description for listings (`1 listener, 1 cluster, 2 filters; all proxies`).
    pub summary: String,
    /// Which proxies get these resources, by label; empty: every proxy.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// The resources as validated, defaults filled in (the canonical JSON form of a [`Config`]).
    pub resources: Value,
}

impl VersionRecord {
    /// The resources as a [`Config`], validated again (a version stays loadable only while the
    /// running weft accepts it).
    pub fn config(&self) -> Result<Config, ConfigError> {
        Config::parse(&self.resources.to_string(), Format::Json)
    }

    /// The module digests the resources load, with the field that names each.
    pub fn module_refs(&self) -> Vec<ModuleRef> {
        module_refs(&self.resources)
    }

    /// The API's view: everything but the resources (for listings).
    pub fn summary_json(&self, current: u64) -> Value {
        let origin = match self.origin {
            Origin::Apply => json!({ "kind": "apply" }),
            Origin::Rollback { of } => json!({ "kind": "rollback", "of": of }),
        };
        json!({
            "version": self.version,
            "current": self.version == current,
            "applied_at": rfc3339(self.applied_at_ms),
            "applied_by": self.applied_by,
            "client": self.client,
            "origin": origin,
            "digest": self.digest,
            "summary": self.summary,
            "selector": self.selector,
        })
    }

    /// The API's view with the resources.
    pub fn full_json(&self, current: u64) -> Value {
        let mut view = self.summary_json(current);
        view["resources"] = self.resources.clone();
        view
    }
}

/// A filter's module reference inside a config document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleRef {
    /// `filters[2].module`.
    pub field: String,
    /// The filter's name.
    pub filter: String,
    /// What `module:` says: a digest when the config is valid.
    pub module: String,
}

/// Every `filters[i].module` string in a config document (valid or not).
pub fn module_refs(document: &Value) -> Vec<ModuleRef> {
    let Some(filters) = document.get("filters").and_then(Value::as_array) else {
        return Vec::new();
    };
    filters
        .iter()
        .enumerate()
        .filter_map(|(i, filter)| {
            let module = filter.get("module")?.as_str()?;
            let name = filter.get("name").and_then(Value::as_str).unwrap_or_default();
            Some(ModuleRef {
                field: format!("filters[{i}].module"),
                filter: name.to_owned(),
                module: module.to_owned(),
            })
        })
        .collect()
}

/// Now, in Unix milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `2026-05-01T12:34:56.789Z`.
pub fn rfc3339(ms: u64) -> String {
    let (days, rest) = (ms / 86_400_000, ms % 86_400_000);
    let (year, month, day) = civil_from_days(days as i64);
    let (hour, minute, second, milli) = (rest / 3_600_000, rest / 60_000 % 60, rest / 1000 % 60, rest % 1000);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{milli:03}Z")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `civil_from_days`).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_767_225_599_999), "2025-12-31T23:59:59.999Z");
    }

    #[test]
    fn module_refs_name_their_field_even_in_a_broken_document() {
        let document = json!({ "filters": [ { "name": "a", "module": "sha256:00" }, { "name": "b" }, "junk",
            { "module": "x.wasm" } ] });
        let refs = module_refs(&document);
        assert_eq!(refs.len(), 2);
        assert_eq!(
            refs[0],
            ModuleRef { field: "filters[0].module".into(), filter: "a".into(), module: "sha256:00".into() }
        );
        assert_eq!(refs[1].field, "filters[3].module");
    }
}
