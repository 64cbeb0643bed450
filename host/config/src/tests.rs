use super::*;

fn errors_of(yaml: &str) -> Vec<String> {
    match Config::parse(yaml, Format::Yaml) {
        Ok(_) => vec![],
        Err(e) => e.field_errors().iter().map(|e| e.to_string()).collect(),
    }
}

const GOOD: &str = r#"
listeners:
  - name: public
    address: 127.0.0.1:8080
    cluster: web
clusters:
  - name: web
    endpoints: ["127.0.0.1:3000", "localhost:3001"]
    lb: ring_hash
    hash_on: header:X-User
    connect_timeout: 250ms
"#;

#[test]
fn a_good_config_parses_with_defaults() {
    let config = Config::parse(GOOD, Format::Yaml).unwrap();
    let listener = &config.listeners[0];
    assert_eq!(listener.protocol, ListenerProtocol::Http);
    assert_eq!(listener.limits.max_request_headers, 100);
    let cluster = &config.clusters[0];
    assert_eq!(cluster.protocol, UpstreamProtocol::Http1);
    assert_eq!(cluster.hash_on(), HashOn::Header("x-user".into()));
    assert_eq!(cluster.connect_timeout, Duration::from_millis(250));
    assert_eq!(cluster.request_timeout, Duration::from_secs(15));
}

#[test]
fn a_bad_port_names_the_endpoint() {
    let errors = errors_of(&GOOD.replace("127.0.0.1:3000", "127.0.0.1:99999"));
    assert_eq!(
        errors,
        vec![r#"clusters[0].endpoints[0]: invalid address "127.0.0.1:99999": port 99999 is out of range 1-65535"#]
    );
}

#[test]
fn unknown_fields_are_errors_with_their_path() {
    let errors = errors_of(&GOOD.replace("    cluster: web", "    cluster: web\n    colour: blue"));
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with("listeners[0].colour: unknown field `colour`"), "{}", errors[0]);
}

#[test]
fn a_bad_enum_value_names_the_field() {
    let errors = errors_of(&GOOD.replace("lb: ring_hash", "lb: fastest"));
    assert!(errors[0].starts_with("clusters[0].lb: unknown variant `fastest`"), "{}", errors[0]);
}

#[test]
fn a_bad_duration_names_the_field() {
    let errors = errors_of(&GOOD.replace("250ms", "soon"));
    assert!(errors[0].starts_with(r#"clusters[0].connect_timeout: invalid duration "soon""#), "{}", errors[0]);
}

#[test]
fn references_to_unknown_clusters_and_filters_are_errors() {
    let yaml = r#"
listeners:
  - { name: a, address: "127.0.0.1:1", cluster: nowhere, filters: [ghost] }
"#;
    assert_eq!(
        errors_of(yaml),
        vec![
            r#"listeners[0].cluster: unknown cluster "nowhere""#,
            r#"listeners[0].filters[0]: unknown filter "ghost""#
        ]
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let yaml = r#"
listeners:
  - { name: a, address: "nope", protocol: https }
  - { name: a, address: "127.0.0.1:2", protocol: tcp }
clusters:
  - { name: c, endpoints: [], hash_on: source_ip }
"#;
    let errors = errors_of(yaml);
    assert!(errors.contains(&r#"listeners[1].name: "a" is already used by another entry"#.to_string()), "{errors:?}");
    assert!(errors.iter().any(|e| e.starts_with(r#"listeners[0].address: invalid address "nope""#)), "{errors:?}");
    assert!(errors.contains(&"listeners[0].tls: required when protocol is https".to_string()), "{errors:?}");
    assert!(errors.iter().any(|e| e.starts_with("listeners[1].cluster: required when protocol is tcp")), "{errors:?}");
    assert!(errors.contains(&"clusters[0].endpoints: must list at least one host:port".to_string()), "{errors:?}");
    assert!(errors.contains(&"clusters[0].hash_on: only used with lb: ring_hash".to_string()), "{errors:?}");
}

#[test]
fn two_listeners_cannot_share_an_address() {
    let yaml = r#"
listeners:
  - { name: a, address: "127.0.0.1:8080", cluster: c }
  - { name: b, address: "127.0.0.1:8080", cluster: c }
clusters:
  - { name: c, endpoints: ["127.0.0.1:1"] }
"#;
    assert_eq!(errors_of(yaml), vec!["listeners[1].address: 127.0.0.1:8080 is used by another listener"]);
}

#[test]
fn json_documents_parse_too() {
    let json = r#"{"clusters": [{"name": "c", "endpoints": ["127.0.0.1:1"], "idle_timeout": "5m"}]}"#;
    let config = Config::parse(json, Format::Json).unwrap();
    assert_eq!(config.clusters[0].idle_timeout, Duration::from_secs(300));
}

#[test]
fn parsed_documents_are_validated_with_the_same_paths() {
    let value = serde_json::json!({ "clusters": [{ "name": "c", "endpoints": ["127.0.0.1:99999"] }] });
    let errors = Config::from_value(value).unwrap_err().field_errors().to_vec();
    assert_eq!(errors[0].field, "clusters[0].endpoints[0]");
    let value = serde_json::json!({ "listeners": [{ "name": "a", "address": "127.0.0.1:1", "colour": 1 }] });
    let errors = Config::from_value(value).unwrap_err().field_errors().to_vec();
    assert_eq!(errors[0].field, "listeners[0].colour");
    assert!(errors[0].reason.starts_with("unknown field `colour`"), "{}", errors[0].reason);
}

#[test]
fn an_empty_document_is_refused() {
    assert_eq!(errors_of("  \n"), vec!["the document is empty"]);
}

#[test]
fn load_prefixes_errors_with_the_file_and_resolves_paths() {
    let dir = std::env::temp_dir().join(format!("weft-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, GOOD.replace("127.0.0.1:3000", "127.0.0.1:99999")).unwrap();
    let message = Config::load(&bad).unwrap_err().to_string();
    assert!(message.starts_with(&format!("{}: clusters[0].endpoints[0]: invalid address", bad.display())), "{message}");

    let good = dir.join("good.yaml");
    let with_tls = GOOD.replace(
        "    cluster: web",
        "    cluster: web\n    protocol: https\n    tls: { cert: certs/a.pem, key: /abs/a.key }",
    );
    std::fs::write(&good, with_tls).unwrap();
    let config = Config::load(&good).unwrap();
    let tls = config.listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.cert, dir.join("certs/a.pem"));
    assert_eq!(tls.key, std::path::PathBuf::from("/abs/a.key"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn equal_configs_have_equal_digests() {
    let a = Config::parse(GOOD, Format::Yaml).unwrap();
    let b = Config::parse(&GOOD.replace("250ms", "250ms "), Format::Yaml).unwrap();
    assert_eq!(a.digest(), b.digest());
    let c = Config::parse(&GOOD.replace("250ms", "300ms"), Format::Yaml).unwrap();
    assert_ne!(a.digest(), c.digest());
    assert!(a.digest().starts_with("sha256:"));
}

const RESILIENT: &str = r#"
listeners:
  - { name: public, address: "127.0.0.1:8080", cluster: web }
clusters:
  - name: web
    endpoints: ["127.0.0.1:3000", "127.0.0.1:3001"]
    retries: { attempts: 3, retry_on: [connect-failure, reset, "503", 5xx, grpc-unavailable], per_try_timeout: 200ms, budget_percent: 25 }
    circuit_breaker: { max_connections: 100, max_pending: 10, max_requests: 50 }
    health_check: { path: /healthz, interval: 2s, timeout: 500ms, unhealthy_threshold: 2, healthy_threshold: 1 }
    outlier_detection: { consecutive_5xx: 3, base_ejection: 10s, max_ejection_percent: 50 }
"#;

#[test]
fn resilience_settings_parse_with_their_defaults() {
    let config = Config::parse(RESILIENT, Format::Yaml).unwrap();
    let web = &config.clusters[0];
    let retries = web.retries.as_ref().unwrap();
    assert_eq!(
        retries.conditions(),
        [
            RetryOn::ConnectFailure,
            RetryOn::Reset,
            RetryOn::Status(503),
            RetryOn::StatusClass(5),
            RetryOn::GrpcUnavailable
        ]
    );
    assert_eq!((retries.attempts, retries.budget_percent), (3, 25));
    assert_eq!(retries.max_replay_body.bytes(), 64 * 1024, "the default");
    assert_eq!(web.circuit_breaker.max_pending, 10);
    assert_eq!(web.health_check.as_ref().unwrap().path.as_deref(), Some("/healthz"));
    assert_eq!(web.outlier_detection.as_ref().unwrap().consecutive_connect_failures, 5, "the default");
    let plain = Config::parse(GOOD, Format::Yaml).unwrap();
    assert_eq!(plain.clusters[0].circuit_breaker.max_requests, 1024, "a breaker is always there");
    assert!(plain.clusters[0].retries.is_none() && plain.clusters[0].health_check.is_none());
}

#[test]
fn bad_resilience_settings_name_their_field() {
    let errors = errors_of(
        &RESILIENT
            .replace("grpc-unavailable]", "sometimes]")
            .replace("max_pending: 10", "max_pending: 0")
            .replace("max_requests: 50", "max_requests: 0"),
    );
    assert!(
        errors.iter().any(|e| e.starts_with("clusters[0].retries.retry_on[4]: \"sometimes\" is not a retry condition")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e == "clusters[0].circuit_breaker.max_requests: must be at least 1"), "{errors:?}");
    assert!(!errors.iter().any(|e| e.contains("max_pending")), "max_pending 0 means none may wait: {errors:?}");
    let errors = errors_of(
        &RESILIENT
            .replace("path: /healthz", "path: healthz")
            .replace("max_ejection_percent: 50", "max_ejection_percent: 150"),
    );
    assert!(errors.iter().any(|e| e == "clusters[0].health_check.path: must start with /"), "{errors:?}");
    assert!(errors.iter().any(|e| e.starts_with("clusters[0].outlier_detection.max_ejection_percent")), "{errors:?}");
}

const MESH: &str = r#"
listeners:
  - name: mesh-in
    address: 127.0.0.1:8443
    protocol: https
    mtls: mesh
    cluster: local
clusters:
  - name: local
    endpoints: ["127.0.0.1:3000"]
  - name: backend
    endpoints: ["127.0.0.1:8443"]
    mtls: mesh
    identities: ["spiffe://weft.local/ns/default/sa/backend"]
"#;

#[test]
fn mesh_mtls_parses_on_listeners_and_clusters() {
    let config = Config::parse(MESH, Format::Yaml).unwrap();
    assert_eq!(config.listeners[0].mtls, Some(Mtls::Mesh));
    assert!(config.listeners[0].tls.is_none(), "mtls: mesh stands in for tls on an https listener");
    assert_eq!(config.clusters[1].mtls, Some(Mtls::Mesh));
    assert_eq!(config.clusters[1].identities, ["spiffe://weft.local/ns/default/sa/backend"]);
    assert!(config.clusters[0].mtls.is_none() && config.clusters[0].identities.is_empty());
}

#[test]
fn bad_mesh_settings_name_their_field() {
    let errors = errors_of(&MESH.replace("protocol: https", "protocol: http"));
    assert!(errors.iter().any(|e| e.starts_with("listeners[0].mtls: set, but protocol is http")), "{errors:?}");
    let errors = errors_of(&MESH.replace("    mtls: mesh\n    cluster: local", "    cluster: local"));
    assert!(errors.iter().any(|e| e.starts_with("listeners[0].tls: required when protocol is https")), "{errors:?}");
    let errors = errors_of(&MESH.replace("mtls: mesh\n    identities", "identities"));
    assert!(errors.iter().any(|e| e.starts_with("clusters[1].identities: only used with mtls: mesh")), "{errors:?}");
    let errors = errors_of(&MESH.replace("sa/backend", "service/backend"));
    assert!(
        errors.iter().any(|e| e.starts_with("clusters[1].identities[0]: ") && e.contains("expected spiffe://")),
        "{errors:?}"
    );
    let errors = errors_of(&MESH.replace("mtls: mesh\n    identities", "tls: {}\n    mtls: mesh\n    identities"));
    assert!(errors.iter().any(|e| e.starts_with("clusters[1].mtls: mtls: mesh replaces tls")), "{errors:?}");
    let errors = errors_of(&MESH.replace("mtls: mesh\n    cluster", "mtls: tls\n    cluster"));
    assert!(errors.iter().any(|e| e.starts_with("listeners[0].mtls")), "{errors:?}");
}
