//! weft's config model: the resources users write, their units and defaults, and validation that
//! names the field at fault (`clusters[1].endpoints[0]: invalid address "127.0.0.1:99999"`).
//!
//! A config is parsed and validated whole; anything wrong anywhere refuses all of it.

mod model;
pub mod spiffe;
pub mod units;
mod validate;

pub use model::*;
pub use spiffe::SpiffeId;
pub use units::{ByteSize, Duration};

use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};

/// One thing wrong with a config: the field's path and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path to the field, `listeners[0].tls.cert`; empty for the document as a whole.
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError { field: field.into(), reason: reason.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}", render_invalid(file.as_deref(), errors))]
    Invalid { file: Option<PathBuf>, errors: Vec<FieldError> },
}

impl ConfigError {
    /// The individual field errors (empty for a read failure).
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            ConfigError::Invalid { errors, .. } => errors,
            ConfigError::Read { .. } => &[],
        }
    }
}

fn render_invalid(file: Option<&Path>, errors: &[FieldError]) -> String {
    let prefix = file.map(|f| format!("{}: ", f.display())).unwrap_or_default();
    errors.iter().map(|e| format!("{prefix}{e}")).collect::<Vec<_>>().join("\n")
}

/// The text format of a config document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    /// `.json` files are JSON; everything else is read as YAML.
    pub fn of_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Format::Json,
            _ => Format::Yaml,
        }
    }
}

impl Config {
    /// Parses and validates a document. Relative file paths inside stay as written.
    pub fn parse(text: &str, format: Format) -> Result<Config, ConfigError> {
        let config = parse_document(text, format).map_err(|e| ConfigError::Invalid { file: None, errors: vec![e] })?;
        Config::validated(config)
    }

    /// Validates a document that was parsed already (the control plane takes its own fields,
    /// such as `selector`, out of an applied document and hands the rest here).
    pub fn from_value(value: serde_json::Value) -> Result<Config, ConfigError> {
        let config = serde_path_to_error::deserialize(value).map_err(|e| ConfigError::Invalid {
            file: None,
            errors: vec![field_error(e.path().to_string(), e.into_inner().to_string())],
        })?;
        Config::validated(config)
    }

    fn validated(config: Config) -> Result<Config, ConfigError> {
        let errors = validate::validate(&config);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid { file: None, errors })
        }
    }

    /// Reads, parses and validates a file; relative paths inside it are taken from the file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut config = Config::parse(&text, Format::of_path(path)).map_err(|e| match e {
            ConfigError::Invalid { errors, .. } => ConfigError::Invalid { file: Some(path.to_owned()), errors },
            other => other,
        })?;
        if let Some(base) = path.parent() {
            config.resolve_paths(base);
        }
        Ok(config)
    }

    /// Makes every relative file path in the config relative to `base` instead.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for listener in &mut self.listeners {
            if let Some(tls) = &mut listener.tls {
                fix(&mut tls.cert);
                fix(&mut tls.key);
                if let Some(ca) = &mut tls.client_ca {
                    fix(ca);
                }
            }
        }
        for cluster in &mut self.clusters {
            if let Some(tls) = &mut cluster.tls {
                for p in [&mut tls.ca, &mut tls.cert, &mut tls.key].into_iter().flatten() {
                    fix(p);
                }
            }
        }
        for filter in &mut self.filters {
            if !filter.module.starts_with("sha256:") && Path::new(&filter.module).is_relative() {
                filter.module = base.join(&filter.module).to_string_lossy().into_owned();
            }
        }
    }

    /// `sha256:<hex>` of the config's canonical JSON form: equal configs have equal digests.
    pub fn digest(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        format!("sha256:{}", hex::encode(Sha256::digest(&canonical)))
    }

    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.name == name)
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

fn parse_document(text: &str, format: Format) -> Result<Config, FieldError> {
    if text.trim().is_empty() {
        return Err(FieldError::new("", "the document is empty"));
    }
    let result = match format {
        Format::Yaml => serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text))
            .map_err(|e| (e.path().to_string(), e.into_inner().to_string())),
        Format::Json => serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(text))
            .map_err(|e| (e.path().to_string(), e.into_inner().to_string())),
    };
    result.map_err(|(path, reason)| field_error(path, reason))
}

/// A deserialization error as a [`FieldError`], its path as the validation errors write paths.
fn field_error(path: String, reason: String) -> FieldError {
    let path = if path == "." { String::new() } else { path };
    // serde_yaml prefixes its messages with the enclosing mapping's path; ours is more precise.
    let reason = match reason.split_once(": ") {
        Some((prefix, rest)) if !prefix.contains(' ') && path.starts_with(prefix) => rest.to_string(),
        _ => reason,
    };
    FieldError::new(path, reason)
}

#[cfg(test)]
mod tests;
