//! An applied config document (`POST /v1/config`, `weft apply -f`): the resources of a static
//! config file plus an optional `selector`, checked whole with weft-config's own validation, and
//! with the rule a control plane adds: a filter's `module` is the digest of a pushed module.

use crate::records::{module_refs, ModuleRef};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use weft_config::{Config, FieldError, Format};

/// A document parsed but not yet validated.
#[derive(Debug)]
pub struct Document {
    /// The resources, `selector` taken out.
    body: Value,
    selector: Option<Value>,
}

/// Resources that passed validation, in the form they are stored and distributed.
#[derive(Debug)]
pub struct Resources {
    pub config: Config,
    /// The canonical JSON form of `config` (defaults filled in).
    pub canonical: Value,
    pub selector: BTreeMap<String, String>,
    /// `sha256:<hex>` of the canonical resources and the selector.
    pub digest: String,
    /// `1 listener, 1 cluster, 2 filters; proxies with app=web`.
    pub summary: String,
}

/// The format of a request body: by its content type, else JSON when it starts with `{`.
pub fn format_of(content_type: Option<&str>, text: &str) -> Format {
    match content_type.map(|c| c.to_ascii_lowercase()) {
        Some(c) if c.contains("json") => Format::Json,
        Some(c) if c.contains("yaml") => Format::Yaml,
        _ if text.trim_start().starts_with('{') => Format::Json,
        _ => Format::Yaml,
    }
}

impl Document {
    /// Parses the text (syntax only; errors carry the line and column).
    pub fn parse(text: &str, format: Format) -> Result<Document, Vec<FieldError>> {
        if text.trim().is_empty() {
            return Err(vec![FieldError::new("", "the document is empty")]);
        }
        let parsed: Result<Value, String> = match format {
            Format::Json => serde_json::from_str(text).map_err(|e| e.to_string()),
            Format::Yaml => serde_yaml::from_str(text).map_err(|e| e.to_string()),
        };
        let mut body = parsed.map_err(|reason| vec![FieldError::new("", format!("not a valid document: {reason}"))])?;
        let selector = body.as_object_mut().and_then(|fields| fields.remove("selector"));
        Ok(Document { body, selector })
    }

    /// The module references in the document, whatever else is wrong with it.
    pub fn module_refs(&self) -> Vec<ModuleRef> {
        module_refs(&self.body)
    }

    /// Validates everything at once: every problem found is reported, each with its field.
    pub fn validate(self) -> Result<Resources, Vec<FieldError>> {
        let mut errors = Vec::new();
        let selector = parse_selector(self.selector.as_ref(), &mut errors);
        for module_ref in self.module_refs() {
            if let Err(reason) = check_digest(&module_ref.module) {
                errors.push(FieldError::new(module_ref.field, reason));
            }
        }
        match Config::from_value(self.body) {
            Ok(config) if errors.is_empty() => Ok(Resources::new(config, selector)),
            Ok(_) => Err(errors),
            Err(refused) => {
                let mut all = refused.field_errors().to_vec();
                all.extend(errors);
                Err(all)
            }
        }
    }
}

impl Resources {
    /// Stored resources validated again (for a rollback: the version was valid when applied,
    /// but this weft's rules may be newer than the weft that applied it).
    pub fn revalidate(canonical: &Value, selector: &BTreeMap<String, String>) -> Result<Resources, Vec<FieldError>> {
        let mut document = Document { body: canonical.clone(), selector: None };
        if !selector.is_empty() {
            document.selector = Some(json!(selector));
        }
        document.validate()
    }

    fn new(config: Config, selector: BTreeMap<String, String>) -> Resources {
        // A Config always serializes: its fields are strings, numbers, lists and JSON values.
        let canonical = serde_json::to_value(&config).unwrap_or(Value::Null);
        let digest = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(json!({ "resources": canonical, "selector": selector }).to_string()))
        );
        let summary = summarize(&config, &selector);
        Resources { config, canonical, selector, digest, summary }
    }
}

fn parse_selector(value: Option<&Value>, errors: &mut Vec<FieldError>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return labels;
    };
    let Some(fields) = value.as_object() else {
        errors.push(FieldError::new("selector", "must be a mapping of label names to values, e.g. { app: web }"));
        return labels;
    };
    for (name, value) in fields {
        if name.trim().is_empty() || name.contains(char::is_whitespace) {
            errors.push(FieldError::new(format!("selector.{name}"), "a label name must be a word without spaces"));
        }
        match value.as_str() {
            Some(text) => {
                labels.insert(name.clone(), text.to_owned());
            }
            None => errors.push(FieldError::new(format!("selector.{name}"), format!("must be a string, not {value}"))),
        }
    }
    labels
}

/// A control plane names modules only by digest: a path would be a path on the proxy's machine.
fn check_digest(module: &str) -> Result<(), String> {
    if module.trim().is_empty() {
        return Ok(()); // weft-config reports an empty module itself
    }
    match module.strip_prefix("sha256:") {
        Some(_) if crate::modules::is_digest(module) => Ok(()),
        Some(_) => Err(format!("{module:?} is not a sha256 digest: expected sha256: and 64 lower-case hex digits")),
        None => Err(format!(
            "{module:?} is not a module digest: through a control plane, filters load pushed modules by digest \
             (sha256:<hex>, as `weft module push` prints it)"
        )),
    }
}

fn summarize(config: &Config, selector: &BTreeMap<String, String>) -> String {
    let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let target = if selector.is_empty() {
        "all proxies".to_owned()
    } else {
        let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("proxies with {}", labels.join(","))
    };
    format!(
        "{}, {}, {}; {target}",
        count(config.listeners.len(), "listener"),
        count(config.clusters.len(), "cluster"),
        count(config.filters.len(), "filter")
    )
}

#[cfg(test)]
mod tests;
