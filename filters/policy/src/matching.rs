//! Which rule a request meets: the first, in order, whose every condition holds. Paths are
//! compared in a normalised form, so that `/a/../admin`, `//admin` or `/%61dmin` cannot slip
//! past a rule about `/admin`.

use crate::config::{HeaderMatch, Match, PathMatch, Rule, StringMatch};
use std::net::IpAddr;
use std::str::FromStr;
use weft_sdk::Result;

/// What the rules look at, read once per request, and only what some rule uses
/// ([`crate::config::Needs`]). Headers are read on demand.
pub struct Facts {
    /// The normalised path, without its query.
    pub path: String,
    pub method: String,
    /// In its canonical form: an IPv4-mapped IPv6 client (`::ffff:10.0.0.1`) is IPv4.
    pub source_ip: Option<IpAddr>,
    pub principal: Option<String>,
}

/// The first rule whose conditions hold.
pub fn first_match<'a>(
    rules: &'a [Rule],
    facts: &Facts,
    header: &mut dyn FnMut(&str) -> Result<Option<String>>,
) -> Result<Option<&'a Rule>> {
    for rule in rules {
        if holds(&rule.conditions, facts, header)? {
            return Ok(Some(rule));
        }
    }
    Ok(None)
}

fn holds(conditions: &Match, facts: &Facts, header: &mut dyn FnMut(&str) -> Result<Option<String>>) -> Result<bool> {
    let any = |empty: bool, found: bool| empty || found;
    if !any(conditions.paths.is_empty(), conditions.paths.iter().any(|p| path_matches(p, &facts.path))) {
        return Ok(false);
    }
    if !any(conditions.methods.is_empty(), conditions.methods.contains(&facts.method)) {
        return Ok(false);
    }
    let in_cidrs = facts.source_ip.is_some_and(|ip| conditions.cidrs.iter().any(|c| c.contains(ip)));
    if !any(conditions.cidrs.is_empty(), in_cidrs) {
        return Ok(false);
    }
    let principal = facts.principal.as_deref();
    let known = principal.is_some_and(|p| conditions.principals.iter().any(|m| string_matches(m, p)));
    if !any(conditions.principals.is_empty(), known) {
        return Ok(false);
    }
    for wanted in &conditions.headers {
        if !header_matches(wanted, header(&wanted.name)?.as_deref()) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn path_matches(matcher: &PathMatch, path: &str) -> bool {
    match (&matcher.exact, &matcher.prefix) {
        (Some(exact), _) => path == exact,
        // `prepare` trimmed the prefix's trailing slashes: `/` became empty and matches all.
        (None, Some(prefix)) => {
            path.strip_prefix(prefix.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        }
        (None, None) => false,
    }
}

fn string_matches(matcher: &StringMatch, value: &str) -> bool {
    text_matches([&matcher.exact, &matcher.prefix, &matcher.suffix], value)
}

/// `prepare` made sure exactly one of exact, prefix and suffix is given.
fn text_matches([exact, prefix, suffix]: [&Option<String>; 3], value: &str) -> bool {
    match (exact, prefix, suffix) {
        (Some(exact), _, _) => value == exact,
        (None, Some(prefix), _) => value.starts_with(prefix.as_str()),
        (None, None, Some(suffix)) => value.ends_with(suffix.as_str()),
        (None, None, None) => false,
    }
}

fn header_matches(matcher: &HeaderMatch, value: Option<&str>) -> bool {
    if let Some(present) = matcher.present {
        return value.is_some() == present;
    }
    value.is_some_and(|value| text_matches([&matcher.exact, &matcher.prefix, &matcher.suffix], value))
}

/// The path as rules see it: no query or fragment, percent-escapes of unreserved characters
/// and of `/` decoded (other escapes kept, with upper-case hex), empty and `.` segments
/// dropped, `..` segments resolved. A trailing slash is kept.
pub fn normalize_path(raw: &str) -> String {
    let end = raw.find(['?', '#']).unwrap_or(raw.len());
    let decoded = decode_unreserved(&raw[..end]);
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in decoded.split('/') {
        trailing_slash = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut path = String::with_capacity(decoded.len() + 1);
    for segment in &segments {
        path.push('/');
        path.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        path.push('/');
    }
    path
}

fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = (bytes[i] == b'%').then(|| bytes.get(i + 1..i + 3)).flatten();
        match escape.and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()) {
            // An escaped slash is a separator here: many upstreams decode it before routing.
            Some(byte) if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) => {
                out.push(char::from(byte));
                i += 3;
            }
            Some(byte) => {
                out.push_str(&format!("%{byte:02X}"));
                i += 3;
            }
            None => {
                let next = path[i..].chars().next().unwrap_or_default();
                out.push(next);
                i += next.len_utf8().max(1);
            }
        }
    }
    out
}

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address (`192.0.2.7`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Whether `ip` is in the block (an IPv6 address is never in an IPv4 block).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask32(u32::from(ip), self.bits) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask128(u128::from(ip), self.bits) == u128::from(net),
            _ => false,
        }
    }
}

fn mask32(value: u32, bits: u8) -> u32 {
    value & u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0)
}

fn mask128(value: u128, bits: u8) -> u128 {
    value & u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid = || format!("{text:?} is not an address block like 10.0.0.0/8 or 2001:db8::/32");
        let (address, bits) = match text.split_once('/') {
            Some((address, bits)) => (address, Some(bits.parse::<u8>().map_err(|_| invalid())?)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().map_err(|_| invalid())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        if bits > max {
            return Err(invalid());
        }
        let masked = match network {
            IpAddr::V4(v4) => IpAddr::from(mask32(u32::from(v4), bits).to_be_bytes()),
            IpAddr::V6(v6) => IpAddr::from(mask128(u128::from(v6), bits).to_be_bytes()),
        };
        // A block written with host bits is most likely a typo for another block.
        if masked != network {
            return Err(format!("{text:?} has bits set past /{bits}: the block is {masked}/{bits}"));
        }
        Ok(Cidr { network, bits })
    }
}
