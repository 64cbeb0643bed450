use super::*;

const BASE: Duration = Duration::from_secs(30);

fn outlier(max_ejection_percent: u32) -> OutlierDetection {
    OutlierDetection {
        consecutive_5xx: 3,
        consecutive_connect_failures: 2,
        base_ejection: weft_config::Duration(BASE),
        max_ejection_percent,
    }
}

/// The health of `n` endpoints of one cluster with outlier detection.
fn cluster(n: usize, max_ejection_percent: u32) -> Vec<EndpointHealth> {
    let metrics = Metrics::new();
    let shared = ClusterHealth::new(Some(outlier(max_ejection_percent)), n, &Name::new("web"), &metrics);
    (0..n)
        .map(|i| {
            let labels = EndpointLabels { cluster: Name::new("web"), endpoint: Name::new(&format!("e{i}:80")) };
            EndpointHealth::new(&shared, i, labels, &metrics)
        })
        .collect()
}

fn fail(endpoint: &EndpointHealth, outcome: Outcome, times: u32, now: Instant) {
    for _ in 0..times {
        endpoint.record(outcome, now);
    }
}

#[test]
fn consecutive_5xx_eject_and_a_success_resets_the_count() {
    let endpoints = cluster(4, 50);
    let (e, now) = (&endpoints[0], Instant::now());
    fail(e, Outcome::ServerError, 2, now);
    e.record(Outcome::Success, now);
    fail(e, Outcome::ServerError, 2, now);
    assert!(e.available(|| now), "a success in between: not yet ejected");
    e.record(Outcome::ServerError, now);
    assert!(!e.available(|| now), "the third 5xx in a row ejects");
    assert_eq!(e.ejections(), 1);
    assert_eq!(e.ejected_for(now), Some(BASE));
    assert!(endpoints[1].available(|| now), "only that endpoint");
}

#[test]
fn resets_and_timeouts_count_as_5xx_and_connect_failures_have_their_own_threshold() {
    let endpoints = cluster(4, 100);
    let now = Instant::now();
    fail(&endpoints[0], Outcome::Reset, 1, now);
    fail(&endpoints[0], Outcome::Timeout, 1, now);
    fail(&endpoints[0], Outcome::ServerError, 1, now);
    assert!(!endpoints[0].available(|| now));
    fail(&endpoints[1], Outcome::ConnectFailure, 1, now);
    assert!(endpoints[1].available(|| now));
    fail(&endpoints[1], Outcome::ConnectFailure, 1, now);
    assert!(!endpoints[1].available(|| now), "two connect failures in a row eject");
}

#[test]
fn an_ejected_endpoint_returns_when_its_time_is_up_and_each_ejection_lasts_longer() {
    let endpoints = cluster(2, 50);
    let e = &endpoints[0];
    let mut now = Instant::now();
    for round in 1..=12u32 {
        fail(e, Outcome::ServerError, 3, now);
        let expected = BASE * round.min(MAX_EJECTION_FACTOR as u32);
        assert_eq!(e.ejected_for(now), Some(expected), "ejection {round}");
        assert!(!e.available(|| now + expected - Duration::from_millis(1)), "still out just before its time");
        now += expected;
        assert!(e.available(|| now), "back when its time is up");
        assert_eq!(e.ejected_for(now), None);
    }
    assert_eq!(e.ejections(), 12);
}

#[test]
fn max_ejection_percent_keeps_enough_endpoints_in() {
    let endpoints = cluster(4, 50);
    let now = Instant::now();
    fail(&endpoints[0], Outcome::ServerError, 3, now);
    fail(&endpoints[1], Outcome::ServerError, 3, now);
    fail(&endpoints[2], Outcome::ServerError, 3, now);
    assert!(!endpoints[0].available(|| now));
    assert!(!endpoints[1].available(|| now));
    assert!(endpoints[2].available(|| now), "a third of four would be more than 50%");
    assert_eq!(endpoints[2].ejections(), 0);
    assert_eq!(endpoints[0].cluster.ejections_skipped(), 1);
    // Once the first two are back, the third may go.
    let later = now + BASE;
    fail(&endpoints[2], Outcome::ServerError, 3, later);
    assert!(!endpoints[2].available(|| later));
}

#[test]
fn a_lone_endpoint_is_never_ejected_under_a_cap_below_100() {
    let endpoints = cluster(1, 99);
    let now = Instant::now();
    fail(&endpoints[0], Outcome::ConnectFailure, 10, now);
    assert!(endpoints[0].available(|| now));
}

#[test]
fn without_outlier_detection_nothing_is_ejected() {
    let e = EndpointHealth::detached("a:1");
    let now = Instant::now();
    fail(&e, Outcome::ServerError, 100, now);
    assert!(e.available(|| now));
}

#[test]
fn checks_flip_health_after_their_thresholds_in_a_row() {
    let e = EndpointHealth::detached("a:1");
    let check = HealthCheck {
        path: None,
        interval: weft_config::Duration::from_secs(1),
        timeout: weft_config::Duration::from_secs(1),
        unhealthy_threshold: 3,
        healthy_threshold: 2,
    };
    let now = Instant::now;
    for passed in [false, false, true, false, false] {
        e.observe_check(passed, &check);
    }
    assert!(e.available(now), "never three failures in a row");
    e.observe_check(false, &check);
    assert!(!e.healthy() && !e.available(now), "three in a row");
    e.observe_check(true, &check);
    e.observe_check(false, &check);
    e.observe_check(true, &check);
    assert!(!e.healthy(), "never two passes in a row");
    e.observe_check(true, &check);
    assert!(e.healthy() && e.available(now));
    assert_eq!(e.checks_passed.get(), 4);
    assert_eq!(e.checks_failed.get(), 6);
}

#[tokio::test]
async fn the_prober_ends_with_its_cluster() {
    let yaml = r#"
clusters:
  - name: web
    endpoints: ["127.0.0.1:1"]
    health_check: { interval: 10ms, timeout: 10ms }
"#;
    let config = weft_config::Config::parse(yaml, weft_config::Format::Yaml).unwrap();
    let cluster =
        super::super::Cluster::build(&config.clusters[0], "clusters[0]", &Metrics::new(), None).await.unwrap();
    let endpoint = cluster.endpoints[0].clone();
    assert!(Arc::strong_count(&endpoint) > 2, "the prober holds the endpoint");
    drop(cluster);
    // The aborted task drops its references on its next poll; wait for that, with a deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Arc::strong_count(&endpoint) > 1 {
        assert!(Instant::now() < deadline, "the prober outlived its cluster");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
