//! The REST routes, as one table: the router matches requests against it and the OpenAPI test
//! checks the document against it, so a route cannot be served without being described.

use http::Method;

/// What a route does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Healthz,
    OpenApi,
    ListModules,
    PushModule,
    GetModule,
    DeleteModule,
    GetConfig,
    ApplyConfig,
    ListVersions,
    Rollback,
    ListProxies,
    ListExperiments,
    CreateExperiment,
    GetExperiment,
    AbortExperiment,
    AbortAllExperiments,
    CreateToken,
    ListTokens,
    RevokeToken,
    GetMesh,
    StartRotation,
    FinishRotation,
}

/// A method and a path pattern; `{name}` matches one path segment.
#[derive(Debug, PartialEq)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub endpoint: Endpoint,
    /// Served without the admin token.
    pub public: bool,
}

const fn route(method: Method, path: &'static str, endpoint: Endpoint) -> Route {
    Route { method, path, endpoint, public: false }
}

/// Every route the control plane serves over REST.
pub const ROUTES: &[Route] = &[
    Route { method: Method::GET, path: "/healthz", endpoint: Endpoint::Healthz, public: true },
    route(Method::GET, "/v1/openapi.json", Endpoint::OpenApi),
    route(Method::GET, "/v1/modules", Endpoint::ListModules),
    route(Method::POST, "/v1/modules", Endpoint::PushModule),
    route(Method::GET, "/v1/modules/{digest}", Endpoint::GetModule),
    route(Method::DELETE, "/v1/modules/{digest}", Endpoint::DeleteModule),
    route(Method::GET, "/v1/config", Endpoint::GetConfig),
    route(Method::POST, "/v1/config", Endpoint::ApplyConfig),
    route(Method::GET, "/v1/config/versions", Endpoint::ListVersions),
    route(Method::POST, "/v1/config/rollback", Endpoint::Rollback),
    route(Method::GET, "/v1/proxies", Endpoint::ListProxies),
    route(Method::GET, "/v1/experiments", Endpoint::ListExperiments),
    route(Method::POST, "/v1/experiments", Endpoint::CreateExperiment),
    route(Method::POST, "/v1/experiments/abort", Endpoint::AbortAllExperiments),
    route(Method::GET, "/v1/experiments/{id}", Endpoint::GetExperiment),
    route(Method::POST, "/v1/experiments/{id}/abort", Endpoint::AbortExperiment),
    route(Method::POST, "/v1/tokens", Endpoint::CreateToken),
    route(Method::GET, "/v1/tokens", Endpoint::ListTokens),
    route(Method::DELETE, "/v1/tokens/{id}", Endpoint::RevokeToken),
    route(Method::GET, "/v1/mesh", Endpoint::GetMesh),
    route(Method::POST, "/v1/mesh/rotation", Endpoint::StartRotation),
    route(Method::POST, "/v1/mesh/rotation/finish", Endpoint::FinishRotation),
];

/// What a request's method and path matched.
#[derive(Debug, PartialEq)]
pub enum Matched {
    /// The route, and the path parameter when its pattern has one.
    Route(&'static Route, Option<String>),
    /// The path exists, with other methods (listed for the `Allow` header).
    WrongMethod(String),
    NotFound,
}

/// Finds the route for `method` and `path`.
pub fn find(method: &Method, path: &str) -> Matched {
    let mut allowed = Vec::new();
    for route in ROUTES {
        let Some(parameter) = matches(route.path, path) else {
            continue;
        };
        if route.method == method {
            return Matched::Route(route, parameter);
        }
        allowed.push(route.method.as_str());
    }
    if allowed.is_empty() {
        Matched::NotFound
    } else {
        Matched::WrongMethod(allowed.join(", "))
    }
}

/// `Some(parameter)` when `path` fits `pattern` (a trailing slash is forgiven).
fn matches(pattern: &str, path: &str) -> Option<Option<String>> {
    let path = path.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(path);
    let (mut wanted, mut given) = (pattern.split('/'), path.split('/'));
    let mut parameter = None;
    loop {
        match (wanted.next(), given.next()) {
            (None, None) => return Some(parameter),
            (Some(w), Some(g)) if w.starts_with('{') && !g.is_empty() => parameter = Some(percent_decode(g)?),
            (Some(w), Some(g)) if w == g => {}
            _ => return None,
        }
    }
}

/// Decodes `%XX` escapes (clients may send `sha256%3A…`); `None` when that is not UTF-8.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| segment.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(decoded).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_their_routes_with_parameters() {
        let Matched::Route(route, parameter) = find(&Method::GET, "/v1/modules/sha256%3Aab") else {
            panic!("no match")
        };
        assert_eq!(route.endpoint, Endpoint::GetModule);
        assert_eq!(parameter.as_deref(), Some("sha256:ab"));
        assert!(
            matches!(find(&Method::GET, "/v1/modules/"), Matched::Route(r, None) if r.endpoint == Endpoint::ListModules)
        );
        assert!(
            matches!(find(&Method::POST, "/v1/config"), Matched::Route(r, None) if r.endpoint == Endpoint::ApplyConfig)
        );
    }

    #[test]
    fn other_methods_and_paths_are_told_apart() {
        assert_eq!(find(&Method::PUT, "/v1/config"), Matched::WrongMethod("GET, POST".into()));
        assert_eq!(find(&Method::GET, "/v1/nothing"), Matched::NotFound);
        assert_eq!(find(&Method::GET, "/v1/modules/a/b"), Matched::NotFound);
        assert_eq!(find(&Method::GET, "/v1/modules//"), Matched::NotFound);
        assert!(matches!(
            find(&Method::POST, "/v1/experiments/abort"),
            Matched::Route(r, None) if r.endpoint == Endpoint::AbortAllExperiments
        ));
        assert!(matches!(
            find(&Method::POST, "/v1/experiments/exp-3/abort"),
            Matched::Route(r, Some(id)) if r.endpoint == Endpoint::AbortExperiment && id == "exp-3"
        ));
    }

    #[test]
    fn only_healthz_is_public() {
        let public: Vec<_> = ROUTES.iter().filter(|r| r.public).map(|r| r.path).collect();
        assert_eq!(public, vec!["/healthz"]);
    }
}
