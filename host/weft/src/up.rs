//! `weft up`: everything on localhost to try weft in one command — a control plane, a proxy that
//! follows it, two demo upstreams, and the built-in router, policy and chaos filters pushed and
//! deployed through the control plane as a user would. It prints what runs where and `curl`
//! lines that show routing, a policy denial and an injected fault; Ctrl-C stops everything.

use crate::cli::UpArgs;
use crate::Failure;
use anyhow::{anyhow, bail, Context};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use weft_config::Format;
use weft_control::{Author, ControlPlane, Settings, TokenOrigin};
use weft_proxy::Proxy;

/// The built-in filters, by crate; each is pushed to the control plane as a module.
const BUILT_IN: [&str; 3] = ["weft-policy", "weft-chaos", "weft-router"];

/// How long the proxy may take to load its first config from the control plane.
const FIRST_CONFIG: Duration = Duration::from_secs(60);

pub async fn run(args: UpArgs) -> Result<(), Failure> {
    let modules = built_in_modules(args.filters.as_deref()).await?;
    // The proxy binds its listener only once its config arrives: find a taken port now.
    drop(bind(args.listen, "the proxy", "--listen").await?);
    let upstream = bind(args.upstream, "the demo upstream", "--upstream").await?;
    let canary = bind(args.canary, "the canary upstream", "--canary").await?;
    let admin = bind(args.admin, "the proxy's admin API", "--admin").await?;
    let control = bind(args.control, "the control plane", "--control").await?;
    let toxiproxy = match args.no_toxiproxy {
        true => None,
        false => {
            Some(bind(args.toxiproxy_listen, "the Toxiproxy API", "--toxiproxy-listen ADDR, or --no-toxiproxy,").await?)
        }
    };
    tokio::spawn(crate::demo_upstream::serve(upstream, "demo"));
    tokio::spawn(crate::demo_upstream::serve(canary, "demo-canary"));

    let (plane, token) = open_control_plane(&args.data).await?;
    let (stop_control, control_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(weft_control::server::serve(control, plane.clone(), async {
        let _ = control_stopped.await;
    }));
    let author = Author { by: "weft up".into(), client: None };
    let mut digests = Vec::new();
    for (package, path) in BUILT_IN.iter().zip(&modules) {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let (info, _) = plane.push_module(bytes.into()).await.map_err(|e| anyhow!("pushing {package}: {e}"))?;
        digests.push(info.digest);
    }
    let config = demo_config(&args, &digests);
    plane.apply(&config, Format::Yaml, author).await.map_err(|e| anyhow!("applying the demo config: {e}"))?;

    // The proxy follows the control plane like any other: over its gRPC stream, on loopback.
    let proxy = Proxy::new(Duration::from_secs(5), Some(Arc::new(wasm_loader(&args.data)?))).await;
    tokio::spawn(weft_proxy::admin::serve(admin, proxy.clone()));
    crate::proxy_cmd::serve_toxiproxy(toxiproxy, &proxy);
    let settings = crate::managed::Settings {
        control: format!("http://{}", args.control).parse().context("the control plane's address")?,
        token: Some(token),
        node: "weft-up".into(),
        labels: [("env".to_owned(), "demo".to_owned())].into(),
        data: args.data.join("proxy"),
    };
    let follower = tokio::spawn(crate::managed::run(proxy.clone(), settings));
    wait_for_config(&proxy).await?;
    print_tour(&args);

    tokio::signal::ctrl_c().await.context("cannot watch Ctrl-C")?;
    println!("stopping");
    follower.abort();
    proxy.shutdown().await;
    let _ = stop_control.send(());
    let _ = server.await;
    Ok(())
}

async fn bind(address: std::net::SocketAddr, what: &str, flag: &str) -> Result<tokio::net::TcpListener, Failure> {
    Ok(tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot start {what} on {address} (use {flag} to pick another address)"))?)
}

async fn open_control_plane(data: &Path) -> Result<(Arc<ControlPlane>, String), Failure> {
    let settings = Settings {
        data_dir: data.to_owned(),
        max_module_size: Settings::DEFAULT_MAX_MODULE_SIZE,
        identity: Default::default(),
    };
    let (plane, origin) = crate::control_cmd::open(settings).await?;
    let token = match origin {
        TokenOrigin::Created { token, .. } => token,
        TokenOrigin::Existing { path } => std::fs::read_to_string(&path)
            .map(|t| t.trim().to_owned())
            .with_context(|| format!("weft up needs the admin token in {} (or a fresh --data)", path.display()))?,
    };
    Ok((plane, token))
}

fn wasm_loader(data: &Path) -> Result<weft_wasm::WasmLoader, Failure> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let loader = weft_wasm::WasmLoader::new(workers, Some(data.join("compiled"))).map_err(|e| anyhow!(e))?;
    Ok(loader.with_module_store(data.join("proxy").join("modules")))
}

async fn wait_for_config(proxy: &Proxy) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + FIRST_CONFIG;
    while proxy.bound_addresses().is_empty() {
        if tokio::time::Instant::now() > deadline {
            return Err(
                anyhow!("the proxy did not load the demo config within {FIRST_CONFIG:?}; see the log above").into()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The built-in filters' modules: from `prebuilt`, or built first (with a line saying so) when
/// this weft runs from its source tree — `cargo build` is quick when they are up to date.
async fn built_in_modules(prebuilt: Option<&Path>) -> Result<Vec<PathBuf>, Failure> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = workspace.join("target");
    let folder = prebuilt.map_or_else(|| target.join("wasm32-wasip1/filter"), Path::to_owned);
    let modules: Vec<PathBuf> =
        BUILT_IN.iter().map(|package| folder.join(format!("{}.wasm", package.replace('-', "_")))).collect();
    if prebuilt.is_none() && workspace.join("filters").is_dir() && which("cargo") {
        eprintln!("weft up: building the built-in filters (router, policy, chaos) to Wasm; the first time takes a minute or two");
        let workspace = workspace.clone();
        tokio::task::spawn_blocking(move || build_filters(&workspace, &target))
            .await
            .map_err(|e| anyhow!("building the filters: {e}"))??;
    }
    if let Some(missing) = modules.iter().find(|m| !m.exists()) {
        return Err(anyhow!(
            "no built-in filter module at {}: weft up runs from weft's source tree, where it builds them \
             (cargo build --profile filter --target wasm32-wasip1 -p weft-router -p weft-policy -p weft-chaos)",
            missing.display()
        )
        .into());
    }
    Ok(modules)
}

fn build_filters(workspace: &Path, target: &Path) -> anyhow::Result<()> {
    let installed = std::process::Command::new("rustup").args(["target", "list", "--installed"]).output();
    if installed.is_ok_and(|out| !String::from_utf8_lossy(&out.stdout).contains("wasm32-wasip1")) {
        eprintln!("weft up: rustup target add wasm32-wasip1");
        let status = std::process::Command::new("rustup").args(["target", "add", "wasm32-wasip1"]).status()?;
        if !status.success() {
            bail!("rustup target add wasm32-wasip1 failed");
        }
    }
    let mut cargo = std::process::Command::new("cargo");
    cargo.current_dir(workspace).args(["build", "--quiet", "--profile", "filter", "--target", "wasm32-wasip1"]);
    cargo.arg("--target-dir").arg(target);
    for package in BUILT_IN {
        cargo.args(["-p", package]);
    }
    let status = cargo.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("building the built-in filters failed (see cargo's errors above)");
    }
    Ok(())
}

fn which(program: &str) -> bool {
    std::process::Command::new(program).arg("--version").output().is_ok_and(|out| out.status.success())
}

/// The demo: policy first (deny /admin, rate-limit /api per client), then chaos (a fault on
/// /flaky, and faults asked for by header), then the router (a canary split for /api, a
/// redirect, everything else to the demo upstream).
fn demo_config(args: &UpArgs, digests: &[String]) -> String {
    format!(
        r#"
listeners:
  - name: public
    address: "{listen}"
    protocol: http
    filters: [policy, chaos, router]
clusters:
  - name: demo
    endpoints: ["{upstream}"]
  - name: demo-canary
    endpoints: ["{canary}"]
filters:
  - name: policy
    module: {policy}
    config:
      default: allow
      rules:
        - name: no-admin
          action: deny
          match: {{ paths: [{{ prefix: /admin }}] }}
        - name: api
          action: allow
          match: {{ paths: [{{ prefix: /api }}] }}
          rate_limit: {{ key: source_ip, rate: 20/s, burst: 40 }}
  - name: chaos
    module: {chaos}
    config:
      header_faults: {{ enabled: true, max_delay: 5s }}
      faults:
        - name: flaky
          match: {{ path_prefix: /flaky }}
          abort: {{ status: 503, percentage: 50 }}
  - name: router
    module: {router}
    config:
      routes:
        - name: demo
          rules:
            - matches: [{{ path: {{ type: PathPrefix, value: /api }} }}]
              backendRefs: [{{ name: demo, weight: 80 }}, {{ name: demo-canary, weight: 20 }}]
              stickyBy: {{ header: x-user }}
              filters:
                - type: RequestHeaderModifier
                  requestHeaderModifier: {{ set: [{{ name: x-routed-by, value: weft-router }}] }}
            - matches: [{{ path: {{ type: Exact, value: /old }} }}]
              filters:
                - type: RequestRedirect
                  requestRedirect: {{ path: {{ type: ReplaceFullPath, replaceFullPath: /new }}, statusCode: 301 }}
            - backendRefs: [{{ name: demo }}]
"#,
        listen = args.listen,
        upstream = args.upstream,
        canary = args.canary,
        policy = digests[0],
        chaos = digests[1],
        router = digests[2],
    )
}

fn print_tour(args: &UpArgs) {
    let proxy = format!("http://{}", args.listen);
    println!("weft is up:");
    println!("  proxy           {proxy}   (HTTP/1.1 and h2c; filters: policy, chaos, router)");
    println!(
        "  control plane   http://{}   (REST and gRPC; data and admin token in {})",
        args.control,
        args.data.display()
    );
    println!("  demo upstreams  http://{} (demo), http://{} (demo-canary)", args.upstream, args.canary);
    println!("  proxy admin     http://{}   (/ready /metrics /config /filters)", args.admin);
    if !args.no_toxiproxy {
        println!(
            "  toxiproxy API   http://{}   (Toxiproxy's clients work unchanged: tcp proxies, L4 toxics)",
            args.toxiproxy_listen
        );
    }
    println!();
    println!("Try:");
    println!("  curl -s {proxy}/hello                                   # routed to demo; it shows what it received");
    println!(
        "  curl -s -H 'x-user: ada' {proxy}/api/orders             # 80/20 split demo/demo-canary, sticky per x-user"
    );
    println!("  curl -si {proxy}/admin | head -1                        # 403: denied by the policy filter");
    println!(
        "  curl -si {proxy}/flaky | head -1                        # 503 half the time: a fault injected by chaos"
    );
    println!("  curl -si -H 'x-weft-fault-abort: 418' {proxy}/ | head -1   # a fault asked for by header");
    println!("  curl -si {proxy}/old | grep -i location                 # a redirect by the router");
    if !args.no_toxiproxy {
        let api = format!("http://{}", args.toxiproxy_listen);
        println!(
            "  curl -s {api}/proxies -d '{{\"name\":\"demo\",\"listen\":\"127.0.0.1:8475\",\"upstream\":\"{}\"}}'",
            args.upstream
        );
        println!(
            "  curl -s {api}/proxies/demo/toxics -d '{{\"type\":\"latency\",\"attributes\":{{\"latency\":500}}}}'"
        );
        println!("  curl -s -o /dev/null -w '%{{time_total}}s\\n' http://127.0.0.1:8475/   # half a second late: an L4 toxic");
    }
    println!("  weft chaos run examples/chaos/try-it.yaml   # a 30s experiment delaying /hello, with its report");
    println!("  weft get proxies; weft get versions     # what the control plane knows (from this folder,");
    println!("                                          # it finds the token in {}/admin-token)", args.data.display());
    println!();
    println!("Ctrl-C stops everything.");
}
