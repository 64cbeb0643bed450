//! The router's config: Gateway API `HTTPRoute`s (hostnames, rules, matches, filters,
//! backendRefs, timeouts), parsed from the filter's `config` and checked whole at load.

use serde::Deserialize;
use weft_sdk::Error;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The routes, in order; on equal precedence the earlier one wins.
    pub routes: Vec<Route>,
    /// Some route names hostnames (set by `prepare`); if none does, the authority is not read.
    #[serde(skip)]
    pub uses_hostnames: bool,
    /// Some match names a method (set by `prepare`).
    #[serde(skip)]
    pub uses_methods: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// For logs and errors.
    #[serde(default)]
    pub name: String,
    /// Hosts the route serves (`example.com`, `*.example.com`); none: every host.
    #[serde(default)]
    pub hostnames: Vec<String>,
    pub rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    /// Any one of them selects the rule; none: every request (a `PathPrefix` of `/`).
    #[serde(default)]
    pub matches: Vec<Match>,
    #[serde(default)]
    pub filters: Vec<RouteFilter>,
    /// Where matching requests go, split by weight; none: the listener's `cluster`.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    /// weft's extension: keep a client on one backend of a split by hashing a header or cookie.
    #[serde(default)]
    pub sticky_by: Option<StickyBy>,
    #[serde(default)]
    pub timeouts: Option<Timeouts>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Match {
    #[serde(default)]
    pub path: Option<PathMatch>,
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    #[serde(default)]
    pub query_params: Vec<ValueMatch>,
    #[serde(default)]
    pub method: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    #[serde(rename = "type", default)]
    pub kind: PathMatchType,
    #[serde(default = "root")]
    pub value: String,
    #[serde(skip)]
    pub regex: Option<regex_lite::Regex>,
    /// A `PathPrefix` without its trailing slashes, ready to compare (set by `prepare`).
    #[serde(skip)]
    pub prefix: String,
}

fn root() -> String {
    "/".into()
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq, Debug)]
pub enum PathMatchType {
    Exact,
    #[default]
    PathPrefix,
    RegularExpression,
}

/// A header or query parameter match.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueMatch {
    #[serde(rename = "type", default)]
    pub kind: ValueMatchType,
    pub name: String,
    pub value: String,
    #[serde(skip)]
    pub regex: Option<regex_lite::Regex>,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq, Debug)]
pub enum ValueMatchType {
    #[default]
    Exact,
    RegularExpression,
}

#[derive(Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum RouteFilter {
    RequestHeaderModifier {
        #[serde(rename = "requestHeaderModifier")]
        modifier: HeaderModifier,
    },
    ResponseHeaderModifier {
        #[serde(rename = "responseHeaderModifier")]
        modifier: HeaderModifier,
    },
    RequestRedirect {
        #[serde(rename = "requestRedirect")]
        redirect: Redirect,
    },
    #[serde(rename = "URLRewrite")]
    UrlRewrite {
        #[serde(rename = "urlRewrite")]
        rewrite: Rewrite,
    },
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HeaderModifier {
    #[serde(default)]
    pub set: Vec<Header>,
    #[serde(default)]
    pub add: Vec<Header>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Redirect {
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub path: Option<PathModifier>,
    #[serde(default = "found")]
    pub status_code: u16,
}

fn found() -> u16 {
    302
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<PathModifier>,
}

#[derive(Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum PathModifier {
    ReplaceFullPath {
        #[serde(rename = "replaceFullPath")]
        path: String,
    },
    ReplacePrefixMatch {
        #[serde(rename = "replacePrefixMatch")]
        prefix: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendRef {
    /// A cluster of the proxy's config.
    pub name: String,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum StickyBy {
    Header(String),
    Cookie(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// The whole request's limit upstream, like `2s` or `500ms`.
    pub request: weft_sdk::units::Duration,
}

/// Checks what serde cannot and compiles the patterns; every error names where it is.
pub fn prepare(config: &mut Config) -> Result<(), Error> {
    config.uses_hostnames = config.routes.iter().any(|route| !route.hostnames.is_empty());
    config.uses_methods =
        config.routes.iter().flat_map(|route| &route.rules).flat_map(|rule| &rule.matches).any(|m| m.method.is_some());
    for (r, route) in config.routes.iter_mut().enumerate() {
        let at = |rest: String| Error::Config(format!("routes[{r}]{rest}"));
        for (h, hostname) in route.hostnames.iter_mut().enumerate() {
            *hostname = hostname.to_ascii_lowercase();
            let bare = hostname.strip_prefix("*.").unwrap_or(hostname);
            if bare.is_empty() || bare.contains('*') || bare.contains(':') {
                return Err(at(format!(".hostnames[{h}]: {hostname:?} is not a hostname or a *.wildcard")));
            }
        }
        for (i, rule) in route.rules.iter_mut().enumerate() {
            let at = |rest: String| at(format!(".rules[{i}]{rest}"));
            if rule.matches.is_empty() {
                rule.matches.push(Match::default());
            }
            for (m, matching) in rule.matches.iter_mut().enumerate() {
                let at = |rest: String| at(format!(".matches[{m}]{rest}"));
                if let Some(path) = &mut matching.path {
                    path.prefix = path.value.trim_end_matches('/').to_owned();
                    match path.kind {
                        PathMatchType::RegularExpression => {
                            path.regex = Some(full_match(&path.value).map_err(|e| at(format!(".path.value: {e}")))?)
                        }
                        _ if !path.value.starts_with('/') => {
                            return Err(at(format!(".path.value: {:?} must start with /", path.value)))
                        }
                        _ => {}
                    }
                }
                for (kind, list) in [("headers", &mut matching.headers), ("queryParams", &mut matching.query_params)] {
                    for (v, value) in list.iter_mut().enumerate() {
                        if kind == "headers" {
                            value.name = value.name.to_ascii_lowercase();
                        }
                        if value.kind == ValueMatchType::RegularExpression {
                            value.regex =
                                Some(full_match(&value.value).map_err(|e| at(format!(".{kind}[{v}].value: {e}")))?);
                        }
                    }
                }
                if let Some(method) = &mut matching.method {
                    *method = method.to_ascii_uppercase();
                }
            }
            for (f, filter) in rule.filters.iter().enumerate() {
                if let RouteFilter::RequestRedirect { redirect } = filter {
                    if !matches!(redirect.status_code, 301 | 302 | 303 | 307 | 308) {
                        return Err(at(format!(".filters[{f}].requestRedirect.statusCode: {} is not a redirect status (301, 302, 303, 307, 308)", redirect.status_code)));
                    }
                }
                let prefix_rewrite = match filter {
                    RouteFilter::RequestRedirect { redirect } => {
                        matches!(redirect.path, Some(PathModifier::ReplacePrefixMatch { .. }))
                    }
                    RouteFilter::UrlRewrite { rewrite } => {
                        matches!(rewrite.path, Some(PathModifier::ReplacePrefixMatch { .. }))
                    }
                    _ => false,
                };
                let prefix_matches =
                    rule.matches.iter().all(|m| m.path.as_ref().is_none_or(|p| p.kind == PathMatchType::PathPrefix));
                if prefix_rewrite && !prefix_matches {
                    return Err(at(format!(
                        ".filters[{f}]: ReplacePrefixMatch needs every match of the rule to be a PathPrefix"
                    )));
                }
            }
            if rule.backend_refs.iter().any(|b| b.name.is_empty()) {
                return Err(at(".backendRefs: a backend needs a name (a cluster)".into()));
            }
            if !rule.backend_refs.is_empty() && rule.backend_refs.iter().all(|b| b.weight == 0) {
                return Err(at(".backendRefs: every weight is 0, so no request could be sent".into()));
            }
        }
    }
    Ok(())
}

/// Gateway API patterns match the whole value, as Envoy's do.
fn full_match(pattern: &str) -> Result<regex_lite::Regex, String> {
    regex_lite::Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| format!("invalid regular expression {pattern:?}: {e}"))
}
