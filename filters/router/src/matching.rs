//! Which rule a request meets, by Gateway API precedence: the most specific hostname, then an
//! exact path over the longest prefix over a pattern, then a method match, then the most header
//! matches, then the most query matches; the earlier route and rule on a tie.

use crate::config::{Config, Match, PathMatchType, Rule, ValueMatch, ValueMatchType};
use std::cmp::Reverse;

/// What the router reads of a request, once.
pub struct Facts {
    /// Lowercase, without a port.
    pub host: String,
    /// Without the query.
    pub path: String,
    pub query: String,
    pub method: String,
}

/// The rule a request meets, and what its match needs later (the prefix that matched, for
/// `ReplacePrefixMatch`).
pub struct Chosen<'c> {
    pub rule: &'c Rule,
    pub route_index: usize,
    pub rule_index: usize,
    pub matched_prefix: Option<&'c str>,
}

/// Higher is more specific; the derived order compares fields top to bottom.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    host: (u8, usize),
    path: (u8, usize),
    method: bool,
    headers: usize,
    query: usize,
    order: Reverse<(usize, usize, usize)>,
}

/// The best rule for the request, if any; `header` reads a request header (cached by the caller).
pub fn choose<'c, E>(
    config: &'c Config,
    facts: &Facts,
    header: &mut dyn FnMut(&str) -> Result<Option<String>, E>,
) -> Result<Option<Chosen<'c>>, E> {
    let mut best: Option<(Rank, Chosen<'c>)> = None;
    for (r, route) in config.routes.iter().enumerate() {
        let Some(host) = host_rank(&route.hostnames, &facts.host) else { continue };
        for (i, rule) in route.rules.iter().enumerate() {
            for (m, matching) in rule.matches.iter().enumerate() {
                let Some(path) = path_rank(matching, &facts.path) else { continue };
                if matching.method.as_ref().is_some_and(|method| *method != facts.method) {
                    continue;
                }
                if !all_headers_match(&matching.headers, header)?
                    || !all_query_match(&matching.query_params, &facts.query)
                {
                    continue;
                }
                let rank = Rank {
                    host,
                    path,
                    method: matching.method.is_some(),
                    headers: matching.headers.len(),
                    query: matching.query_params.len(),
                    order: Reverse((r, i, m)),
                };
                if best.as_ref().is_none_or(|(top, _)| rank > *top) {
                    let matched_prefix = match &matching.path {
                        Some(p) if p.kind == PathMatchType::PathPrefix => Some(p.value.as_str()),
                        None => Some("/"),
                        _ => None,
                    };
                    best = Some((rank, Chosen { rule, route_index: r, rule_index: i, matched_prefix }));
                }
            }
        }
    }
    Ok(best.map(|(_, chosen)| chosen))
}

/// Exact hostnames rank over wildcards, longer wildcards over shorter; a route with no
/// hostnames serves every host, ranking last.
fn host_rank(hostnames: &[String], host: &str) -> Option<(u8, usize)> {
    if hostnames.is_empty() {
        return Some((0, 0));
    }
    hostnames
        .iter()
        .filter_map(|name| match name.strip_prefix("*.") {
            Some(suffix) => {
                let matches = host.len() > suffix.len() + 1
                    && host.ends_with(suffix)
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.';
                matches.then_some((1, suffix.len()))
            }
            None => (name == host).then_some((2, name.len())),
        })
        .max()
}

fn path_rank(matching: &Match, path: &str) -> Option<(u8, usize)> {
    let Some(rule) = &matching.path else { return Some((2, 1)) }; // PathPrefix "/"
    match rule.kind {
        PathMatchType::Exact => (path == rule.value).then_some((3, rule.value.len())),
        PathMatchType::PathPrefix => prefix_matches(&rule.prefix, path).then_some((2, rule.prefix.len() + 1)),
        PathMatchType::RegularExpression => rule.regex.as_ref()?.is_match(path).then_some((1, rule.value.len())),
    }
}

/// Gateway API prefixes match whole path segments: `/api` matches `/api` and `/api/x`, not
/// `/apix`. `prefix` comes without its trailing slashes (which Gateway API ignores).
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.as_bytes().strip_prefix(prefix.as_bytes()) {
        Some(rest) => rest.is_empty() || rest[0] == b'/' || prefix.is_empty(),
        None => false,
    }
}

fn value_matches(rule: &ValueMatch, value: &str) -> bool {
    match rule.kind {
        ValueMatchType::Exact => rule.value == value,
        ValueMatchType::RegularExpression => rule.regex.as_ref().is_some_and(|re| re.is_match(value)),
    }
}

fn all_headers_match<E>(
    rules: &[ValueMatch],
    header: &mut dyn FnMut(&str) -> Result<Option<String>, E>,
) -> Result<bool, E> {
    for rule in rules {
        match header(&rule.name)? {
            Some(value) if value_matches(rule, &value) => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

fn all_query_match(rules: &[ValueMatch], query: &str) -> bool {
    rules.iter().all(|rule| {
        query.split('&').any(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            name == rule.name && value_matches(rule, value)
        })
    })
}
