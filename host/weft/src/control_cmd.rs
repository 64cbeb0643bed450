//! `weft control`: the control plane, from its data dir, until SIGTERM or Ctrl-C.

use crate::cli::ControlArgs;
use crate::Failure;
use anyhow::{anyhow, Context};
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};
use weft_control::identity::IdentityError;
use weft_control::{ControlPlane, OpenError, Settings, TokenOrigin};

pub async fn run(args: ControlArgs) -> Result<(), Failure> {
    let settings = Settings {
        data_dir: args.data.clone(),
        max_module_size: args.max_module_size.bytes(),
        identity: args.mesh.settings()?,
    };
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
        trust_domain = %plane.mesh().trust_domain(),
        cert_ttl = %args.mesh.cert_ttl,
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
    let opened = tokio::task::spawn_blocking(move || ControlPlane::open(settings))
        .await
        .map_err(|e| anyhow!("opening the data dir: {e}"))?;
    match opened {
        Ok(opened) => Ok(opened),
        // Mesh flags that contradict the data dir are a usage error.
        Err(OpenError::Identity(error @ (IdentityError::BadRequest(_) | IdentityError::BadCa(_)))) => {
            Err(Failure::Invalid(format!("{}: {error}", data.display())))
        }
        Err(error) => {
            Err(anyhow::Error::new(error).context(format!("cannot open the data dir {}", data.display())).into())
        }
    }
}
