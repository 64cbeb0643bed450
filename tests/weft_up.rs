//! `weft up`, the README's first command, end to end: a real process that starts a control
//! plane, a proxy following it and demo upstreams, deploys the built-in filters through the
//! control plane, prints its tour, answers the tour's requests, and stops cleanly on Ctrl-C.

#[allow(unused_imports)] // the shared support re-exports what other targets use
mod support;

use std::process::{Command, Stdio};
use std::time::Duration;
use support::filters::builtin;
use support::{free_port, raw_exchange, seen, TempDir};

/// Kills the process when dropped, so a failing assertion does not leave `weft up` running.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn weft_up_deploys_the_built_in_filters_and_stops_on_ctrl_c() {
    let dir = TempDir::new("up");
    let ports: Vec<String> = (0..6).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let filters = builtin("router").parent().unwrap().to_owned();
    let child = Command::new(support::weft::binary())
        .args(["up", "--listen", &ports[0], "--admin", &ports[1], "--upstream", &ports[2], "--canary", &ports[3]])
        .args(["--control", &ports[4], "--toxiproxy-listen", &ports[5]])
        .arg("--filters")
        .arg(&filters)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    let child = &mut running.0;
    let printed = || std::fs::read_to_string(dir.join("stdout")).unwrap_or_default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !printed().contains("Ctrl-C stops everything") {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("weft up exited with {status}:\n{}", std::fs::read_to_string(dir.join("stderr")).unwrap());
        }
        assert!(tokio::time::Instant::now() < deadline, "weft up not up in time:\n{}", printed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tour = printed();
    assert!(tour.contains(&format!("http://{}/admin", ports[0])), "the tour names the proxy: {tour}");
    assert!(tour.contains(&format!("http://{}/proxies/demo/toxics", ports[5])), "and the Toxiproxy API: {tour}");
    let version =
        raw_exchange(ports[5].parse().unwrap(), b"GET /version HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n").await;
    assert!(seen(&version.body)["version"].is_string(), "the Toxiproxy API answers: {version:?}");

    let proxy = ports[0].parse().unwrap();
    let ask =
        |path: &str, extra: &str| format!("GET {path} HTTP/1.1\r\nhost: demo\r\n{extra}connection: close\r\n\r\n");
    let answer = raw_exchange(proxy, ask("/hello", "").as_bytes()).await;
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert!(seen(&answer.body)["headers"]["x-request-id"].is_string(), "the demo upstream shows what it got");
    assert_eq!(raw_exchange(proxy, ask("/admin", "").as_bytes()).await.status, 403, "the policy filter");
    assert_eq!(raw_exchange(proxy, ask("/", "x-weft-fault-abort: 418\r\n").as_bytes()).await.status, 418, "chaos");
    let redirect = raw_exchange(proxy, ask("/old", "").as_bytes()).await;
    assert_eq!((redirect.status, redirect.header("location").as_deref()), (301, Some("http://demo/new")));

    // The CLI, from the same folder, finds the control plane's token in ./weft-data.
    let listed = Command::new(support::weft::binary())
        .args(["get", "proxies", "--control", &format!("http://{}", ports[4])])
        .current_dir(dir.path())
        .env_remove("WEFT_TOKEN")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(
        table.contains("weft-up") && table.contains("env=demo"),
        "{table}{}",
        String::from_utf8_lossy(&listed.stderr)
    );

    // The tour's chaos experiment runs on weft up's proxy; started detached, then aborted.
    let experiment = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/chaos/try-it.yaml");
    let chaos = |args: &[&str]| {
        Command::new(support::weft::binary())
            .arg("chaos")
            .args(args)
            .args(["--control", &format!("http://{}", ports[4])])
            .current_dir(dir.path())
            .env_remove("WEFT_TOKEN")
            .output()
            .unwrap()
    };
    let started = chaos(&["run", "--detach", experiment.to_str().unwrap()]);
    let id = String::from_utf8_lossy(&started.stdout).trim().to_owned();
    assert!(started.status.success() && id.starts_with("exp-"), "{id}{}", String::from_utf8_lossy(&started.stderr));
    assert!(String::from_utf8_lossy(&started.stderr).contains("started on 1 of 1 matching proxies (weft-up)"));
    let aborted = chaos(&["abort", &id]);
    assert!(String::from_utf8_lossy(&aborted.stdout).contains("ended (aborted"), "{aborted:?}");

    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(tokio::time::Instant::now() < deadline, "weft up did not stop on Ctrl-C");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    assert!(printed().contains("stopping"));
}
