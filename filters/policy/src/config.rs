//! The policy's config: ordered authorization rules, the JWT settings and keys, and per-rule
//! rate limits, parsed from the filter's `config` and checked whole at load. Everything a
//! request needs (CIDRs, keys, rates) is compiled here once, so that a request only compares.

use crate::keys::{self, Key};
use crate::matching::Cidr;
use serde::Deserialize;
use std::collections::BTreeMap;
use weft_sdk::units::Duration;
use weft_sdk::Error;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// What happens to a request no rule matches.
    pub default: Verdict,
    /// Tried in order; the first whose `match` holds decides.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// How tokens are checked on the rules that say `require_jwt`.
    #[serde(default)]
    pub jwt: Option<Jwt>,
    /// What of a request the rules look at (set by `prepare`): the rest is never read.
    #[serde(skip)]
    pub needs: Needs,
}

/// The request facts some rule uses; each read costs a host call, so unused ones are skipped.
#[derive(Default, Clone, Copy)]
pub struct Needs {
    pub path: bool,
    pub method: bool,
    pub source_ip: bool,
    pub principal: bool,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique; named in answers, logs and rate-limit keys.
    pub name: String,
    pub action: Verdict,
    /// Every condition given must hold; none given: every request.
    #[serde(default, rename = "match")]
    pub conditions: Match,
    /// An allowed request must also carry a valid JWT.
    #[serde(default)]
    pub require_jwt: bool,
    /// An allowed request must also find a token in this bucket.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

/// The conditions of a rule. Within `paths`, `methods`, `source_cidrs` and `principals` any one
/// entry is enough; every entry of `headers` must hold.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Match {
    #[serde(default)]
    pub paths: Vec<PathMatch>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
    #[serde(default)]
    pub source_cidrs: Vec<String>,
    /// `source_cidrs`, parsed.
    #[serde(skip)]
    pub cidrs: Vec<Cidr>,
    #[serde(default)]
    pub principals: Vec<StringMatch>,
}

/// One of `exact` or `prefix` (whole segments: `/api` matches `/api` and `/api/x`, not `/apix`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
}

/// One of `exact`, `prefix` or `suffix`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub suffix: Option<String>,
}

/// A header by name with one of `exact`, `prefix`, `suffix`, or `present` (true: the header is
/// there with any value; false: it is absent).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub present: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// `source_ip`, `source_principal` or `header:NAME`.
    pub key: String,
    /// Tokens added per unit of time: `10/s`, `100/m`, `1000/h`.
    pub rate: String,
    /// The bucket's size: how many requests may come at once after a quiet time.
    pub burst: u32,
    /// `key`, parsed.
    #[serde(skip)]
    pub bucket_key: BucketKey,
    /// `rate`, in tokens per second.
    #[serde(skip)]
    pub per_second: f64,
}

/// What a rate limit counts by.
#[derive(Default, Clone, PartialEq, Eq, Debug)]
pub enum BucketKey {
    #[default]
    SourceIp,
    SourcePrincipal,
    Header(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Jwt {
    /// The `iss` a token must carry; none: any.
    #[serde(default)]
    pub issuer: Option<String>,
    /// A token's `aud` must name one of these; none: any.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Claims a token must carry (with any value besides null).
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Claim → request header, set from a valid token (and removed from every request first,
    /// so that a client cannot send them itself).
    #[serde(default)]
    pub claim_headers: BTreeMap<String, String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway: Duration,
    /// The header the token comes in; in `authorization` it must follow `Bearer `.
    #[serde(default = "authorization")]
    pub header: String,
    /// Keys given one by one.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// A JSON Web Key Set, as an object or as JSON text.
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// `keys` and the usable keys of `jwks`, parsed.
    #[serde(skip)]
    pub verifiers: Vec<Key>,
    /// Tokens this instance has verified under this config.
    #[serde(skip)]
    pub verified: crate::jwt::VerifiedTokens,
}

fn default_leeway() -> Duration {
    Duration(std::time::Duration::from_secs(30))
}

fn authorization() -> String {
    "authorization".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Matched against a token's `kid`; a key without one serves tokens of its algorithm.
    #[serde(default)]
    pub kid: Option<String>,
    /// `HS256`, `RS256` or `ES256`.
    pub alg: String,
    /// HS256: the shared secret, as text (at least 32 bytes).
    #[serde(default)]
    pub secret: Option<String>,
    /// RS256, ES256: the public key, PEM.
    #[serde(default)]
    pub pem: Option<String>,
}

/// Checks what serde cannot and compiles what requests use; every error names where it is.
pub fn prepare(config: &mut Config) -> Result<(), Error> {
    let at = |field: String, reason: String| Error::Config(format!("{field}: {reason}"));
    if let Some(jwt) = &mut config.jwt {
        prepare_jwt(jwt).map_err(|(field, reason)| at(format!("jwt{field}"), reason))?;
    }
    for (r, rule) in config.rules.iter_mut().enumerate() {
        let here = format!("rules[{r}]");
        if rule.name.is_empty() || !rule.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(at(format!("{here}.name"), format!("{:?} must be letters, digits, -, _ or .", rule.name)));
        }
        prepare_match(&mut rule.conditions).map_err(|(field, reason)| at(format!("{here}.match{field}"), reason))?;
        if rule.action == Verdict::Deny && rule.require_jwt {
            return Err(at(format!("{here}.require_jwt"), "applies to allow rules only".into()));
        }
        if rule.require_jwt && config.jwt.is_none() {
            return Err(at(format!("{here}.require_jwt"), "needs a top-level jwt block with keys".into()));
        }
        if let Some(limit) = &mut rule.rate_limit {
            if rule.action == Verdict::Deny {
                return Err(at(format!("{here}.rate_limit"), "applies to allow rules only".into()));
            }
            prepare_rate_limit(limit).map_err(|(field, reason)| at(format!("{here}.rate_limit.{field}"), reason))?;
        }
    }
    let mut names: Vec<&str> = Vec::new();
    for (r, rule) in config.rules.iter().enumerate() {
        if names.contains(&rule.name.as_str()) {
            return Err(at(format!("rules[{r}].name"), format!("{:?} is used by an earlier rule", rule.name)));
        }
        names.push(&rule.name);
    }
    for rule in &config.rules {
        let c = &rule.conditions;
        let key = rule.rate_limit.as_ref().map(|limit| &limit.bucket_key);
        config.needs.path |= !c.paths.is_empty();
        config.needs.method |= !c.methods.is_empty();
        config.needs.source_ip |= !c.cidrs.is_empty() || matches!(key, Some(BucketKey::SourceIp));
        config.needs.principal |= !c.principals.is_empty() || matches!(key, Some(BucketKey::SourcePrincipal));
    }
    Ok(())
}

/// A failure as (field path after the caller's, reason).
type Failure = (String, String);

fn prepare_match(conditions: &mut Match) -> Result<(), Failure> {
    for (p, path) in conditions.paths.iter_mut().enumerate() {
        let field = format!(".paths[{p}]");
        let value = match (&mut path.exact, &mut path.prefix) {
            (Some(value), None) => value,
            (None, Some(prefix)) => {
                // Whole segments: a trailing slash adds nothing, and `/` alone means every path.
                let trimmed = prefix.trim_end_matches('/').to_owned();
                let original = std::mem::replace(prefix, trimmed);
                if !original.starts_with('/') {
                    return Err((format!("{field}.prefix"), format!("{original:?} must start with /")));
                }
                continue;
            }
            _ => return Err((field, "give exactly one of exact or prefix".into())),
        };
        if !value.starts_with('/') {
            return Err((format!("{field}.exact"), format!("{value:?} must start with /")));
        }
    }
    for method in &mut conditions.methods {
        *method = method.to_ascii_uppercase();
    }
    for (h, header) in conditions.headers.iter_mut().enumerate() {
        header.name = header.name.to_ascii_lowercase();
        let given =
            [header.exact.is_some(), header.prefix.is_some(), header.suffix.is_some(), header.present.is_some()];
        if header.name.is_empty() || given.iter().filter(|g| **g).count() != 1 {
            return Err((
                format!(".headers[{h}]"),
                "give a name and exactly one of exact, prefix, suffix or present".into(),
            ));
        }
    }
    for (c, text) in conditions.source_cidrs.iter().enumerate() {
        conditions.cidrs.push(text.parse().map_err(|reason| (format!(".source_cidrs[{c}]"), reason))?);
    }
    for (p, principal) in conditions.principals.iter().enumerate() {
        let given = [&principal.exact, &principal.prefix, &principal.suffix];
        if given.iter().filter(|g| g.as_ref().is_some_and(|v| !v.is_empty())).count() != 1 {
            return Err((format!(".principals[{p}]"), "give exactly one of exact, prefix or suffix, not empty".into()));
        }
    }
    Ok(())
}

fn prepare_rate_limit(limit: &mut RateLimit) -> Result<(), Failure> {
    limit.bucket_key = match limit.key.as_str() {
        "source_ip" => BucketKey::SourceIp,
        "source_principal" => BucketKey::SourcePrincipal,
        other => match other.strip_prefix("header:") {
            Some(name) if !name.is_empty() => BucketKey::Header(name.to_ascii_lowercase()),
            _ => return Err(("key".into(), format!("{other:?} is not source_ip, source_principal or header:NAME"))),
        },
    };
    limit.per_second = parse_rate(&limit.rate).map_err(|reason| ("rate".to_owned(), reason))?;
    if limit.burst == 0 {
        return Err(("burst".into(), "must be at least 1, or no request could pass".into()));
    }
    Ok(())
}

fn prepare_jwt(jwt: &mut Jwt) -> Result<(), Failure> {
    jwt.header = jwt.header.to_ascii_lowercase();
    if jwt.header.is_empty() {
        return Err((".header".into(), "must name a header".into()));
    }
    for (name, header) in jwt.claim_headers.iter_mut() {
        *header = header.to_ascii_lowercase();
        if header.is_empty() || header.starts_with(':') || *header == jwt.header {
            return Err((format!(".claim_headers.{name}"), format!("{header:?} cannot carry a claim")));
        }
    }
    for (k, key) in jwt.keys.iter().enumerate() {
        jwt.verifiers.push(keys::from_config(key).map_err(|(field, reason)| (format!(".keys[{k}]{field}"), reason))?);
    }
    if let Some(jwks) = &jwt.jwks {
        jwt.verifiers.extend(keys::from_jwks(jwks).map_err(|(field, reason)| (format!(".jwks{field}"), reason))?);
    }
    if jwt.verifiers.is_empty() {
        return Err(("".into(), "no keys: give keys or jwks".into()));
    }
    Ok(())
}

/// `10/s`, `100/m`, `1000/h`, `0.5/s`: tokens per second.
fn parse_rate(text: &str) -> Result<f64, String> {
    let invalid = || format!("invalid rate {text:?}: expected a number per unit, e.g. 10/s, 100/m or 1000/h");
    let (count, unit) = text.split_once('/').ok_or_else(invalid)?;
    let count: f64 = count.trim().parse().map_err(|_| invalid())?;
    let seconds = match unit.trim() {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(invalid()),
    };
    if !(count.is_finite() && count > 0.0) {
        return Err(format!("invalid rate {text:?}: must be more than 0"));
    }
    Ok(count / seconds)
}
