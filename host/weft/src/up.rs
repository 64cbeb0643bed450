//! `weft up`: everything on localhost to try weft in one command. Today that is a demo upstream
//! and a proxy in front of it; Ctrl-C stops both.

use crate::cli::UpArgs;
use crate::Failure;
use anyhow::Context;
use std::time::Duration;
use weft_config::{Config, Format};
use weft_proxy::Proxy;

pub async fn run(args: UpArgs) -> Result<(), Failure> {
    let upstream = tokio::net::TcpListener::bind(args.upstream).await.with_context(|| {
        format!("cannot start the demo upstream on {} (use --upstream to pick another address)", args.upstream)
    })?;
    let admin = tokio::net::TcpListener::bind(args.admin).await.with_context(|| {
        format!("cannot bind the admin API on {} (use --admin to pick another address)", args.admin)
    })?;
    tokio::spawn(crate::demo_upstream::serve(upstream, "demo"));

    let config = Config::parse(&demo_config(&args), Format::Yaml).map_err(|e| Failure::Invalid(e.to_string()))?;
    let proxy = Proxy::new(Duration::from_secs(5), None).await;
    proxy.apply(config).await.map_err(|e| anyhow::anyhow!("{e} (use --listen to pick another address)"))?;
    tokio::spawn(weft_proxy::admin::serve(admin, proxy.clone()));

    println!("weft is up:");
    println!("  proxy          http://{}   (HTTP/1.1 and h2c)", args.listen);
    println!("  demo upstream  http://{}", args.upstream);
    println!("  admin          http://{}   (/ready /metrics /config /clusters)", args.admin);
    println!();
    println!("Try:");
    println!(
        "  curl -s http://{}/hello                      # proxied: the upstream shows what it received",
        args.listen
    );
    println!("  curl -s --http2-prior-knowledge http://{}/   # the same over HTTP/2", args.listen);
    println!("  curl -s http://{}/metrics | grep weft_requests", args.admin);
    println!();
    println!("Ctrl-C stops everything.");

    tokio::signal::ctrl_c().await.context("cannot watch Ctrl-C")?;
    println!("stopping");
    proxy.shutdown().await;
    Ok(())
}

fn demo_config(args: &UpArgs) -> String {
    format!(
        r#"
listeners:
  - name: public
    address: "{listen}"
    protocol: http
    cluster: demo
    access_log: false
clusters:
  - name: demo
    endpoints: ["{upstream}"]
"#,
        listen = args.listen,
        upstream = args.upstream
    )
}
