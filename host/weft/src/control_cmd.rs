//! `weft control`: the control plane, from its data dir, until SIGTERM or Ctrl-C.

use crate::cli::ControlArgs;
use crate::Failure;
use anyhow::{anyhow, Context};
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};
use weft_control::{ControlPlane, Settings, TokenOrigin};

pub async fn run(args: ControlArgs) -> Result<(), Failure> {
    let settings = Settings { data_dir: args.data.clone(), max_module_size: args.max_module_size.bytes() };
    let (plane, origin) = open(settings).await?;
    match origin {
        // The one time the token is shown: on stdout, not in the logs.
        TokenOrigin::Created { path, token } => println!("admin token written to {}: {token}", path.display()),
        TokenOrigin::Existing { path } => tracing::info!(file = %path.display(), "admin token made at the first start"),
    }
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr().context("the listener's address")?;
    tracing::info!(
        %address,
        data = %args.data.display(),
        version = *plane.subscribe().borrow(),
        "control plane listening"
    );
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!("shutting down");
    };
    weft_control::server::serve(listener, plane, shutdown).await;
    tracing::info!("stopped");
    Ok(())
}

/// Opens the control plane's data dir (blocking disk I/O, so off the runtime's threads): the
/// store and the admin token, made at the first start.
pub async fn open(settings: Settings) -> Result<(Arc<ControlPlane>, TokenOrigin), Failure> {
    let data = settings.data_dir.clone();
    Ok(tokio::task::spawn_blocking(move || ControlPlane::open(settings))
        .await
        .map_err(|e| anyhow!("opening the data dir: {e}"))?
        .with_context(|| format!("cannot open the data dir {}", data.display()))?)
}
