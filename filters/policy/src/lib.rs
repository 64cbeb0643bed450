//! weft's built-in policy filter: ordered allow/deny rules on the source principal, source
//! address, path, method and headers (`matching`); on the rules that ask for it, a JWT checked
//! against configured keys or a JWKS (`jwt`, `keys`) with claims copied to request headers;
//! and per-rule token-bucket rate limits shared by every instance of the filter (`rate_limit`).
//! It answers 403, 401 or 429 itself, with a JSON body saying why. Config:
//! docs/filters/policy.md.

mod config;
mod jwt;
mod keys;
mod matching;
mod rate_limit;
#[cfg(test)]
mod tests;

use config::{BucketKey, Config, Jwt, Rule, Verdict};
use jwt::Rejection;
use matching::{first_match, normalize_path, Facts};
use rate_limit::Outcome;
use serde_json::json;
use std::time::UNIX_EPOCH;
use weft_sdk::metrics::count;
use weft_sdk::prelude::*;

pub struct Policy {
    config: Rc<Config>,
}

impl Filter for Policy {
    type Config = Config;

    fn prepare(config: &mut Config) -> Result<()> {
        config::prepare(config)
    }

    fn new(config: &Rc<Config>) -> Self {
        Policy { config: config.clone() }
    }

    fn on_request_headers(&mut self, req: &mut Request) -> Result<Action> {
        let config = self.config.clone();
        if let Some(jwt) = &config.jwt {
            // Only a valid token may set these: whatever the client sent is dropped.
            for header in jwt.claim_headers.values() {
                req.remove_header(header)?;
            }
        }
        let needs = config.needs;
        let facts = Facts {
            path: if needs.path { normalize_path(&req.path()?) } else { String::new() },
            method: if needs.method { req.method()? } else { String::new() },
            source_ip: if needs.source_ip { req.source_ip()?.map(|ip| ip.to_canonical()) } else { None },
            principal: if needs.principal { req.source_principal()? } else { None },
        };
        let Some(rule) = first_match(&config.rules, &facts, &mut |name| req.header(name))? else {
            return match config.default {
                Verdict::Allow => allow(),
                Verdict::Deny => forbid(req, "no rule matches and the default is deny"),
            };
        };
        if rule.action == Verdict::Deny {
            return forbid(req, &format!("rule {:?} denies", rule.name));
        }
        if let (true, Some(jwt)) = (rule.require_jwt, &config.jwt) {
            if let Err(rejection) = check_jwt(req, jwt)? {
                return unauthorized(req, jwt, rejection);
            }
        }
        if let Some(answer) = rate_limit(req, rule, &facts)? {
            return Ok(answer);
        }
        allow()
    }
}

weft_sdk::filter!(Policy);

fn allow() -> Result<Action> {
    count("policy_allowed");
    Ok(Action::Continue)
}

/// Checks the request's token and, when it is valid, sets the claim headers. The outer
/// `Result` is the host's; the inner one the token's.
fn check_jwt(req: &mut Request, jwt: &Jwt) -> Result<Result<(), Rejection>> {
    let value = req.header(&jwt.header)?;
    let now = weft_sdk::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let headers = match jwt::token_in(jwt, value.as_deref()).and_then(|token| jwt.verified.check(jwt, token, now)) {
        Ok(headers) => headers,
        Err(rejection) => return Ok(Err(rejection)),
    };
    for (header, value) in &headers {
        req.set_header(header, value)?;
    }
    Ok(Ok(()))
}

/// Takes a token from the rule's bucket, if it has a rate limit; `Some` answer when there was
/// none left.
fn rate_limit(req: &mut Request, rule: &Rule, facts: &Facts) -> Result<Option<Action>> {
    let Some(limit) = &rule.rate_limit else { return Ok(None) };
    let key = match &limit.bucket_key {
        BucketKey::SourceIp => facts.source_ip.map(|ip| ip.to_string()),
        BucketKey::SourcePrincipal => facts.principal.clone(),
        BucketKey::Header(name) => req.header(name)?,
    };
    let now = weft_sdk::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let Outcome::Limited { retry_after } =
        rate_limit::take(&rate_limit::bucket(&rule.name, key.as_deref()), limit, now)?
    else {
        return Ok(None);
    };
    count("policy_rate_limited");
    let reason = format!("rule {:?} allows {} with a burst of {}", rule.name, limit.rate, limit.burst);
    let retry_after = retry_after.to_string();
    answer(
        req,
        Refusal { status: 429, error: "rate limited", grpc: 8, reason: &reason },
        &[("retry-after", &retry_after)],
    )
    .map(Some)
}

fn forbid(req: &mut Request, reason: &str) -> Result<Action> {
    count("policy_denied");
    answer(req, Refusal { status: 403, error: "forbidden", grpc: 7, reason }, &[])
}

fn unauthorized(req: &mut Request, jwt: &Jwt, rejection: Rejection) -> Result<Action> {
    count("policy_jwt_rejected");
    let (reason, challenge) = match &rejection {
        Rejection::Missing => (format!("missing bearer token in {}", jwt.header), r#"Bearer realm="weft""#.to_owned()),
        Rejection::Invalid(reason) => {
            let challenge = format!(
                r#"Bearer realm="weft", error="invalid_token", error_description="{}""#,
                challenge_text(reason)
            );
            (reason.clone(), challenge)
        }
    };
    weft_sdk::debug!("request {} refused: {reason}", req.context_id());
    answer(
        req,
        Refusal { status: 401, error: "unauthorized", grpc: 16, reason: &reason },
        &[("www-authenticate", &challenge)],
    )
}

/// RFC 6750 allows only printable ASCII other than `"` and `\` in `error_description`.
fn challenge_text(reason: &str) -> String {
    reason.chars().map(|c| if (' '..='~').contains(&c) && c != '"' && c != '\\' { c } else { '\'' }).collect()
}

/// How a request is refused: the HTTP status, the stable error name (`x-weft-error` and the
/// body's `error`), the gRPC status for gRPC clients, and the reason for people.
struct Refusal<'a> {
    status: u16,
    error: &'a str,
    grpc: u32,
    reason: &'a str,
}

fn answer(req: &mut Request, refusal: Refusal, headers: &[(&str, &str)]) -> Result<Action> {
    let grpc = req.header("content-type")?.is_some_and(|t| t.starts_with("application/grpc"));
    let mut response = if grpc {
        LocalResponse::grpc(refusal.grpc, &format!("{}: {}", refusal.error, refusal.reason))
    } else {
        LocalResponse::new(refusal.status).json(&json!({ "error": refusal.error, "reason": refusal.reason }))
    };
    response =
        response.header("x-weft-error", refusal.error).details(&format!("policy_{}", refusal.error.replace(' ', "_")));
    for (name, value) in headers {
        response = response.header(name, value);
    }
    req.respond(response)
}
