//! Checks that span fields: references between resources, addresses, combinations that make no
//! sense. Every problem found is reported, each with the path of its field.

use crate::{Cluster, Config, FieldError, LbPolicy, Listener, ListenerProtocol};
use std::collections::HashSet;
use std::net::SocketAddr;

pub fn validate(config: &Config) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let cluster_names = unique_names(config.clusters.iter().map(|c| c.name.as_str()), "clusters", &mut errors);
    let filter_names = unique_names(config.filters.iter().map(|f| f.name.as_str()), "filters", &mut errors);
    unique_names(config.listeners.iter().map(|l| l.name.as_str()), "listeners", &mut errors);

    let mut addresses = HashSet::new();
    for (i, listener) in config.listeners.iter().enumerate() {
        let at = format!("listeners[{i}]");
        validate_listener(listener, &at, &cluster_names, &filter_names, &mut errors);
        if let Ok(addr) = listener.address.parse::<SocketAddr>() {
            if addr.port() != 0 && !addresses.insert(addr) {
                errors.push(FieldError::new(format!("{at}.address"), format!("{addr} is used by another listener")));
            }
        }
    }
    for (i, cluster) in config.clusters.iter().enumerate() {
        validate_cluster(cluster, &format!("clusters[{i}]"), &mut errors);
    }
    for (i, filter) in config.filters.iter().enumerate() {
        if filter.module.trim().is_empty() {
            errors.push(FieldError::new(format!("filters[{i}].module"), "must name a file or a sha256:<hex> digest"));
        }
        if filter.limits.memory.bytes() < 64 * 1024 {
            errors
                .push(FieldError::new(format!("filters[{i}].limits.memory"), "must be at least 64KiB (one Wasm page)"));
        }
        if filter.limits.time_per_call.get().is_zero() {
            errors.push(FieldError::new(format!("filters[{i}].limits.time_per_call"), "must be more than zero"));
        }
    }
    errors
}

fn unique_names<'a>(
    names: impl Iterator<Item = &'a str>,
    kind: &str,
    errors: &mut Vec<FieldError>,
) -> HashSet<&'a str> {
    let mut seen = HashSet::new();
    for (i, name) in names.enumerate() {
        if name.trim().is_empty() {
            errors.push(FieldError::new(format!("{kind}[{i}].name"), "must not be empty"));
        } else if !seen.insert(name) {
            errors.push(FieldError::new(
                format!("{kind}[{i}].name"),
                format!("{name:?} is already used by another entry"),
            ));
        }
    }
    seen
}

fn validate_listener(
    listener: &Listener,
    at: &str,
    clusters: &HashSet<&str>,
    filters: &HashSet<&str>,
    errors: &mut Vec<FieldError>,
) {
    if listener.address.parse::<SocketAddr>().is_err() {
        errors.push(FieldError::new(
            format!("{at}.address"),
            format!("invalid address {:?}: expected ip:port, e.g. 127.0.0.1:8080", listener.address),
        ));
    }
    match (listener.protocol, &listener.tls, listener.mtls) {
        (_, Some(_), Some(_)) => errors.push(FieldError::new(
            format!("{at}.mtls"),
            "mtls: mesh replaces tls (the proxy's mesh identity is its certificate): set one of them",
        )),
        (ListenerProtocol::Https, None, None) => {
            errors.push(FieldError::new(format!("{at}.tls"), "required when protocol is https"))
        }
        (ListenerProtocol::Http, Some(_), _) => errors.push(FieldError::new(
            format!("{at}.tls"),
            "set, but protocol is http: use protocol https to terminate TLS",
        )),
        (ListenerProtocol::Http, _, Some(_)) => errors.push(FieldError::new(
            format!("{at}.mtls"),
            "set, but protocol is http: use protocol https (or tcp) with mtls: mesh",
        )),
        _ => {}
    }
    if listener.protocol == ListenerProtocol::Tcp && listener.cluster.is_none() {
        errors.push(FieldError::new(format!("{at}.cluster"), "required when protocol is tcp: it is the upstream"));
    }
    if let Some(cluster) = &listener.cluster {
        if !clusters.contains(cluster.as_str()) {
            errors.push(FieldError::new(format!("{at}.cluster"), format!("unknown cluster {cluster:?}")));
        }
    }
    for (j, name) in listener.filters.iter().enumerate() {
        if !filters.contains(name.as_str()) {
            errors.push(FieldError::new(format!("{at}.filters[{j}]"), format!("unknown filter {name:?}")));
        }
    }
    let limits = &listener.limits;
    if limits.max_connections == 0 {
        errors.push(FieldError::new(format!("{at}.limits.max_connections"), "must be at least 1"));
    }
    if limits.max_request_headers == 0 {
        errors.push(FieldError::new(format!("{at}.limits.max_request_headers"), "must be at least 1"));
    }
    if limits.max_request_header_size.bytes() < 1024 {
        errors.push(FieldError::new(format!("{at}.limits.max_request_header_size"), "must be at least 1KiB"));
    }
    for (field, value) in
        [("header_read_timeout", limits.header_read_timeout), ("tls_handshake_timeout", limits.tls_handshake_timeout)]
    {
        if value.get().is_zero() {
            errors.push(FieldError::new(format!("{at}.limits.{field}"), "must be more than zero"));
        }
    }
}

fn validate_cluster(cluster: &Cluster, at: &str, errors: &mut Vec<FieldError>) {
    if cluster.endpoints.is_empty() {
        errors.push(FieldError::new(format!("{at}.endpoints"), "must list at least one host:port"));
    }
    for (j, endpoint) in cluster.endpoints.iter().enumerate() {
        if let Err(reason) = check_host_port(endpoint) {
            errors.push(FieldError::new(
                format!("{at}.endpoints[{j}]"),
                format!("invalid address {endpoint:?}: {reason}"),
            ));
        }
    }
    match (&cluster.hash_on, cluster.lb) {
        (Some(hash_on), LbPolicy::RingHash) => {
            if let Err(reason) = crate::HashOn::parse(hash_on) {
                errors.push(FieldError::new(format!("{at}.hash_on"), reason));
            }
        }
        (Some(_), _) => errors.push(FieldError::new(format!("{at}.hash_on"), "only used with lb: ring_hash")),
        (None, _) => {}
    }
    if let Some(tls) = &cluster.tls {
        if tls.cert.is_some() != tls.key.is_some() {
            errors.push(FieldError::new(format!("{at}.tls"), "cert and key go together: set both or neither"));
        }
        if cluster.mtls.is_some() {
            errors.push(FieldError::new(
                format!("{at}.mtls"),
                "mtls: mesh replaces tls (the proxy's mesh identity is its certificate): set one of them",
            ));
        }
    }
    if !cluster.identities.is_empty() && cluster.mtls.is_none() {
        errors.push(FieldError::new(
            format!("{at}.identities"),
            "only used with mtls: mesh (the identities are the endpoints' mesh certificates)",
        ));
    }
    for (j, identity) in cluster.identities.iter().enumerate() {
        if let Err(reason) = crate::SpiffeId::parse(identity) {
            errors.push(FieldError::new(format!("{at}.identities[{j}]"), reason));
        }
    }
    for (field, value) in [
        ("connect_timeout", cluster.connect_timeout),
        ("request_timeout", cluster.request_timeout),
        ("idle_timeout", cluster.idle_timeout),
    ] {
        if value.get().is_zero() {
            errors.push(FieldError::new(format!("{at}.{field}"), "must be more than zero"));
        }
    }
    validate_resilience(cluster, at, errors);
}

/// `retries`, `circuit_breaker`, `health_check` and `outlier_detection` of a cluster.
fn validate_resilience(cluster: &Cluster, at: &str, errors: &mut Vec<FieldError>) {
    let mut error = |field: String, reason: String| errors.push(FieldError::new(format!("{at}.{field}"), reason));
    if let Some(retries) = &cluster.retries {
        for (k, condition) in retries.retry_on.iter().enumerate() {
            if crate::RetryOn::parse(condition).is_none() {
                error(
                    format!("retries.retry_on[{k}]"),
                    format!(
                        "{condition:?} is not a retry condition: connect-failure, reset, timeout, grpc-unavailable,                          an HTTP status (\"503\") or a class (\"5xx\")"
                    ),
                );
            }
        }
        if retries.per_try_timeout.is_some_and(|t| t.get().is_zero()) {
            error("retries.per_try_timeout".into(), "must be more than zero".into());
        }
        if retries.budget_percent == 0 || retries.budget_percent > 100 {
            error(
                "retries.budget_percent".into(),
                format!("{} is not a percentage from 1 to 100", retries.budget_percent),
            );
        }
        if retries.max_backoff < retries.backoff {
            error("retries.max_backoff".into(), "must not be shorter than backoff".into());
        }
    }
    let breaker = &cluster.circuit_breaker;
    // max_pending may be 0: no request waits, past max_connections busy the answer is 503 at once.
    for (field, value) in [("max_connections", breaker.max_connections), ("max_requests", breaker.max_requests)] {
        if value == 0 {
            error(format!("circuit_breaker.{field}"), "must be at least 1".into());
        }
    }
    if let Some(check) = &cluster.health_check {
        if check.path.as_ref().is_some_and(|p| !p.starts_with('/')) {
            error("health_check.path".into(), "must start with /".into());
        }
        if check.interval.get().is_zero() || check.timeout.get().is_zero() {
            error("health_check".into(), "interval and timeout must be more than zero".into());
        }
        if check.healthy_threshold == 0 || check.unhealthy_threshold == 0 {
            error("health_check".into(), "healthy_threshold and unhealthy_threshold must be at least 1".into());
        }
    }
    if let Some(outlier) = &cluster.outlier_detection {
        if outlier.consecutive_5xx == 0 || outlier.consecutive_connect_failures == 0 {
            error(
                "outlier_detection".into(),
                "consecutive_5xx and consecutive_connect_failures must be at least 1".into(),
            );
        }
        if outlier.base_ejection.get().is_zero() {
            error("outlier_detection.base_ejection".into(), "must be more than zero".into());
        }
        if outlier.max_ejection_percent > 100 {
            error(
                "outlier_detection.max_ejection_percent".into(),
                format!("{} is more than 100", outlier.max_ejection_percent),
            );
        }
    }
}

/// Accepts `host:port` and `[v6]:port` with a port in 1..=65535.
fn check_host_port(endpoint: &str) -> Result<(), String> {
    let (host, port) = endpoint.rsplit_once(':').ok_or("expected host:port")?;
    let port: u32 = port.parse().map_err(|_| format!("port {port:?} is not a number"))?;
    if !(1..=65535).contains(&port) {
        return Err(format!("port {port} is out of range 1-65535"));
    }
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err("expected host:port".into());
    }
    Ok(())
}
