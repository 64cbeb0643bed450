//! weft's built-in router: Gateway API `HTTPRoute` semantics as a filter. It picks the rule a
//! request meets (`matching`), applies the rule's filters (header modifiers, redirect, URL
//! rewrite), and routes to one of the rule's backends by weight, optionally sticky by a header
//! or cookie. A request no rule meets gets 404 `no route`. Config: docs/filters/router.md.

mod config;
mod matching;
#[cfg(test)]
mod tests;

use config::{Config, HeaderModifier, PathModifier, Redirect, Rewrite, RouteFilter, Rule, StickyBy};
use matching::{choose, Chosen, Facts};
use weft_sdk::prelude::*;

pub struct Router {
    config: Rc<Config>,
    /// The chosen rule (route, rule) when it modifies response headers.
    response_rule: Option<(usize, usize)>,
}

impl Filter for Router {
    type Config = Config;

    fn prepare(config: &mut Config) -> Result<()> {
        config::prepare(config)
    }

    fn new(config: &Rc<Config>) -> Self {
        Router { config: config.clone(), response_rule: None }
    }

    fn on_request_headers(&mut self, req: &mut Request) -> Result<Action> {
        let config = self.config.clone();
        let facts = read_facts(req, &config)?;
        let mut seen: Vec<(String, Option<String>)> = Vec::new();
        let chosen = choose(&config, &facts, &mut |name| {
            if let Some((_, value)) = seen.iter().find(|(n, _)| n == name) {
                return Ok(value.clone());
            }
            let value = req.header(name)?;
            seen.push((name.to_owned(), value.clone()));
            Ok::<_, Error>(value)
        })?;
        let Some(chosen) = chosen else {
            weft_sdk::metrics::count("router_no_route");
            return req.respond(
                LocalResponse::new(404).header("x-weft-error", "no route").body("no route\n").details("no_route"),
            );
        };
        weft_sdk::metrics::count("router_routed");
        let rule = chosen.rule;
        for filter in &rule.filters {
            match filter {
                RouteFilter::RequestRedirect { redirect } => {
                    let location = redirect_location(redirect, &facts, req, &chosen)?;
                    return req.respond(
                        LocalResponse::new(redirect.status_code).header("location", &location).details("redirect"),
                    );
                }
                RouteFilter::RequestHeaderModifier { modifier } => modify_request(modifier, req)?,
                RouteFilter::UrlRewrite { rewrite } => rewrite_url(rewrite, &facts, req, &chosen)?,
                RouteFilter::ResponseHeaderModifier { .. } => {
                    self.response_rule = Some((chosen.route_index, chosen.rule_index));
                }
            }
        }
        if let Some(cluster) = pick_backend(rule, req)? {
            req.route_to(&cluster)?;
        }
        if let Some(timeouts) = &rule.timeouts {
            req.set_property(&["weft", "request_timeout"], timeouts.request.to_string().as_bytes())?;
        }
        Ok(Action::Continue)
    }

    fn on_response_headers(&mut self, resp: &mut Response) -> Result<Action> {
        let Some((route, rule)) = self.response_rule else { return Ok(Action::Continue) };
        for filter in &self.config.routes[route].rules[rule].filters {
            if let RouteFilter::ResponseHeaderModifier { modifier } = filter {
                apply(modifier, |op| match op {
                    Op::Set(name, value) => resp.set_header(name, value),
                    Op::Add(name, value) => resp.add_header(name, value),
                    Op::Remove(name) => resp.remove_header(name),
                })?;
            }
        }
        Ok(Action::Continue)
    }
}

weft_sdk::filter!(Router);

/// What the matching needs of the request: the authority and method only if some rule looks at
/// them (each read is a host call).
fn read_facts(req: &Request, config: &Config) -> Result<Facts> {
    let full = req.path()?;
    let (path, query) = full.split_once('?').unwrap_or((&full, ""));
    let host = if config.uses_hostnames {
        strip_port(&req.authority()?.to_ascii_lowercase()).to_owned()
    } else {
        String::new()
    };
    let method = if config.uses_methods { req.method()? } else { String::new() };
    Ok(Facts { host, path: path.to_owned(), query: query.to_owned(), method })
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.split_once(']').map_or(authority, |(host, _)| &host[1..]);
    }
    authority.rsplit_once(':').map_or(authority, |(host, _)| host)
}

enum Op<'a> {
    Set(&'a str, &'a str),
    Add(&'a str, &'a str),
    Remove(&'a str),
}

/// Gateway API order: set, then add, then remove.
fn apply(modifier: &HeaderModifier, mut run: impl FnMut(Op) -> Result<()>) -> Result<()> {
    for header in &modifier.set {
        run(Op::Set(&header.name, &header.value))?;
    }
    for header in &modifier.add {
        run(Op::Add(&header.name, &header.value))?;
    }
    for name in &modifier.remove {
        run(Op::Remove(name))?;
    }
    Ok(())
}

fn modify_request(modifier: &HeaderModifier, req: &mut Request) -> Result<()> {
    apply(modifier, |op| match op {
        Op::Set(name, value) => req.set_header(name, value),
        Op::Add(name, value) => req.add_header(name, value),
        Op::Remove(name) => req.remove_header(name),
    })
}

/// The path after a `ReplaceFullPath` or `ReplacePrefixMatch`, query kept.
fn modified_path(modifier: &PathModifier, facts: &Facts, chosen: &Chosen) -> String {
    let path = match modifier {
        PathModifier::ReplaceFullPath { path } => path.clone(),
        PathModifier::ReplacePrefixMatch { prefix: replacement } => {
            let matched = chosen.matched_prefix.unwrap_or("/").trim_end_matches('/');
            let rest = facts.path.get(matched.len()..).unwrap_or("");
            let joined = match (replacement.ends_with('/'), rest.starts_with('/')) {
                (true, true) => format!("{}{}", replacement, &rest[1..]),
                (false, false) if !rest.is_empty() => format!("{replacement}/{rest}"),
                _ => format!("{replacement}{rest}"),
            };
            if joined.is_empty() {
                "/".to_owned()
            } else {
                joined
            }
        }
    };
    if facts.query.is_empty() {
        path
    } else {
        format!("{path}?{}", facts.query)
    }
}

fn redirect_location(redirect: &Redirect, facts: &Facts, req: &Request, chosen: &Chosen) -> Result<String> {
    let scheme = match &redirect.scheme {
        Some(scheme) => scheme.clone(),
        None => Some(req.scheme()?).filter(|s| !s.is_empty()).unwrap_or_else(|| "http".into()),
    };
    let authority = req.authority()?;
    let host = match &redirect.hostname {
        Some(hostname) => hostname.clone(),
        None => strip_port(&authority).to_ascii_lowercase(),
    };
    let request_port = authority.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok());
    // Gateway API: with no port given, keep the request's unless the scheme changes; never
    // write the scheme's own default port.
    let port = redirect.port.or(if redirect.scheme.is_none() { request_port } else { None });
    let default_port = if scheme == "https" { 443 } else { 80 };
    let path = match &redirect.path {
        Some(modifier) => modified_path(modifier, facts, chosen),
        None if facts.query.is_empty() => facts.path.clone(),
        None => format!("{}?{}", facts.path, facts.query),
    };
    Ok(match port.filter(|p| *p != default_port) {
        Some(port) => format!("{scheme}://{host}:{port}{path}"),
        None => format!("{scheme}://{host}{path}"),
    })
}

fn rewrite_url(rewrite: &Rewrite, facts: &Facts, req: &mut Request, chosen: &Chosen) -> Result<()> {
    if let Some(hostname) = &rewrite.hostname {
        req.set_header(":authority", hostname)?;
    }
    if let Some(modifier) = &rewrite.path {
        req.set_header(":path", &modified_path(modifier, facts, chosen))?;
    }
    Ok(())
}

/// A backend by weight: by the hash of the sticky header or cookie when the rule has one and the
/// request carries it (the same value always lands on the same backend, in every proxy), at
/// random otherwise. `None` when the rule names no backends.
fn pick_backend(rule: &Rule, req: &Request) -> Result<Option<String>> {
    let total: u64 = rule.backend_refs.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return Ok(None);
    }
    let sticky = match &rule.sticky_by {
        Some(StickyBy::Header(name)) => req.header(name)?,
        Some(StickyBy::Cookie(name)) => req.header("cookie")?.and_then(|cookies| cookie(&cookies, name)),
        None => None,
    };
    let mut point = match sticky {
        Some(value) => fnv1a(value.as_bytes()),
        None => weft_sdk::random(),
    } % total;
    for backend in &rule.backend_refs {
        let weight = u64::from(backend.weight);
        if point < weight {
            return Ok(Some(backend.name.clone()));
        }
        point -= weight;
    }
    Ok(rule.backend_refs.last().map(|b| b.name.clone()))
}

fn cookie(cookies: &str, name: &str) -> Option<String> {
    cookies.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then(|| value.to_owned())
    })
}

/// FNV-1a: stable across processes and versions, which a sticky split needs.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}
