//! `weft proxy --control URL --service NAME`: the proxy's mesh identity,
//! `spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/SERVICE`. At the first start the proxy makes its key,
//! joins with a join token and keeps what it got (certificate, trust bundle, proxy credential)
//! in `DATA/identity/`; later starts use what is kept. It renews at about half of each
//! certificate's life (a new key each time), retrying failures with backoff, and follows the
//! control plane's trust bundle over the `Follow` stream, reporting what it holds. Listeners and
//! clusters with `mtls: mesh` see every change at their next handshake.

mod client;
mod files;

use crate::Failure;
use anyhow::anyhow;
use clap::Args;
use client::{is_final, new_request, IdentityClient};
use files::{Files, Kept, Whoami};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use weft_config::SpiffeId;
use weft_proto::identity::{IdentityReport, IdentityUpdate, Issued};
use weft_proxy::metrics::ResultLabels;
use weft_proxy::tls::mesh::{MeshIdentity, RenewalStatus};
use weft_proxy::Proxy;

/// Retry waits (joins, renewals, the `Follow` stream): from the first, doubling, up to the
/// last, each with jitter.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const LAST_RETRY: Duration = Duration::from_secs(30);

/// The mesh identity flags of `weft proxy`.
#[derive(Args, Clone, Debug)]
pub struct IdentityArgs {
    /// This proxy's service in the mesh: with it the proxy (following a control plane with
    /// --control) gets the identity spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/SERVICE from the
    /// control plane's CA, for listeners and clusters with `mtls: mesh`.
    #[arg(long, value_name = "NAME", requires = "control")]
    pub service: Option<String>,
    /// The namespace of --service.
    #[arg(long, value_name = "NAME", default_value = "default")]
    pub namespace: String,
    /// The mesh's trust domain: the control plane's --trust-domain.
    #[arg(long, value_name = "DOMAIN", env = "WEFT_TRUST_DOMAIN", default_value = weft_config::spiffe::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// The join token of the first start (`weft token create --service NAME`); later starts
    /// use the proxy credential kept in --data (identity/), and ignore it.
    #[arg(long, value_name = "TOKEN", env = "WEFT_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
}

/// Who the proxy is in the mesh and where it asks.
pub struct Settings {
    pub control: http::Uri,
    pub node: String,
    pub spiffe_id: SpiffeId,
    pub join_token: Option<String>,
    pub data: PathBuf,
}

impl Settings {
    /// The settings of `args`, when they ask for a mesh identity.
    pub fn of(
        args: &IdentityArgs,
        control: &http::Uri,
        node: &str,
        data: &std::path::Path,
    ) -> Result<Option<Settings>, Failure> {
        let Some(service) = &args.service else {
            if args.join_token.is_some() {
                return Err(Failure::Invalid("--join-token: give --service too (the identity it joins as)".into()));
            }
            return Ok(None);
        };
        let spiffe_id = SpiffeId::new(&args.trust_domain, &args.namespace, service)
            .map_err(|reason| Failure::Invalid(format!("--service/--namespace/--trust-domain: {reason}")))?;
        Ok(Some(Settings {
            control: control.clone(),
            node: node.to_owned(),
            spiffe_id,
            join_token: args.join_token.clone().filter(|t| !t.trim().is_empty()),
            data: data.to_owned(),
        }))
    }
}

/// Keeps the proxy's identity current.
pub struct Manager {
    settings: Settings,
    client: IdentityClient,
    mesh: Arc<MeshIdentity>,
    proxy: Arc<Proxy>,
    files: Files,
    credential: String,
    /// What the control plane was told changed: report again.
    changed: Notify,
    /// The control plane asked for a renewal now.
    renew_now: Notify,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn jittered(wait: Duration) -> Duration {
    wait.mul_f64(0.5 + fastrand::f64())
}

impl Manager {
    /// Loads the kept identity, or joins the mesh (waiting for the control plane as long as it
    /// is away; a refusal is final). Returns the manager, whose credential authenticates the
    /// proxy from then on.
    pub async fn start(proxy: Arc<Proxy>, settings: Settings) -> Result<Arc<Manager>, Failure> {
        let mesh = proxy.enable_mesh(&settings.spiffe_id.trust_domain);
        let files = Files::new(&settings.data);
        let client = IdentityClient::new(settings.control.clone());
        let wanted = Whoami { node: settings.node.clone(), spiffe_id: settings.spiffe_id.uri() };
        let kept = match files.load() {
            Ok(kept) => kept,
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "the kept mesh identity is unreadable; joining again");
                None
            }
        };
        let kept = match kept {
            Some(kept) if kept.whoami == wanted => {
                tracing::info!(identity = %wanted.spiffe_id, dir = %files.dir().display(), "mesh identity kept from an earlier start");
                kept
            }
            other => {
                if let Some(other) = other {
                    tracing::info!(kept = %other.whoami.spiffe_id, wanted = %wanted.spiffe_id, "the kept mesh identity is another one; joining again");
                }
                let kept = join(&client, &settings, wanted).await?;
                files.save(&kept).map_err(|e| Failure::Runtime(e.context("cannot keep the mesh identity")))?;
                kept
            }
        };
        if let Err(error) = mesh.set_bundle(&kept.bundle_pem) {
            tracing::warn!(%error, "the kept trust bundle is unusable; waiting for the control plane's");
        }
        if let Err(error) = mesh.set_certificate(&kept.chain_pem, &kept.key_pem) {
            tracing::warn!(%error, "the kept mesh certificate is unusable; renewing");
        }
        Ok(Arc::new(Manager {
            settings,
            client,
            mesh,
            proxy,
            files,
            credential: kept.credential,
            changed: Notify::new(),
            renew_now: Notify::new(),
        }))
    }

    /// The proxy credential: the proxy authenticates with it on the config stream too.
    pub fn credential(&self) -> &str {
        &self.credential
    }

    /// Renews and follows the trust bundle, forever.
    pub async fn run(self: Arc<Self>) {
        tokio::join!(self.clone().renewals(), self.follow());
    }

    /// Renews at about half of each certificate's life; a failure is retried with backoff.
    async fn renewals(self: Arc<Self>) {
        let mut due = self.mesh.certificate().map_or_else(Instant::now, |c| half_life(c.not_after));
        let mut status = RenewalStatus { next_at: Some(at_unix(due)), ..RenewalStatus::default() };
        self.mesh.set_renewal(status.clone());
        let mut wait = FIRST_RETRY;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = self.renew_now.notified() => {}
            }
            let outcome = self.renew_once().await;
            let result = if outcome.is_ok() { "ok" } else { "failed" };
            self.proxy.metrics().identity_renewals.get_or_create(&ResultLabels { result }).inc();
            match outcome {
                Ok(not_after) => {
                    wait = FIRST_RETRY;
                    due = half_life(not_after);
                    status = RenewalStatus {
                        renewed_at: Some(unix_now()),
                        next_at: Some(at_unix(due)),
                        failures: 0,
                        last_error: None,
                    };
                    tracing::info!(identity = %self.settings.spiffe_id, expires_in_s = not_after.saturating_sub(unix_now()), "mesh certificate renewed");
                }
                Err(reason) => {
                    let retry_in = jittered(wait);
                    due = Instant::now() + retry_in;
                    wait = (wait * 2).min(LAST_RETRY);
                    status.failures += 1;
                    status.last_error = Some((reason.clone(), unix_now()));
                    status.next_at = Some(at_unix(due));
                    let expires_in_s = self.mesh.certificate().map_or(0, |c| c.not_after.saturating_sub(unix_now()));
                    tracing::warn!(%reason, ?retry_in, expires_in_s, failures = status.failures, "mesh certificate renewal failed");
                }
            }
            self.mesh.set_renewal(status.clone());
            self.changed.notify_one();
        }
    }

    /// One renewal with a new key; the certificate's end on success.
    async fn renew_once(&self) -> Result<u64, String> {
        let request = new_request(&self.settings.spiffe_id.uri()).map_err(|e| format!("cannot make a key: {e}"))?;
        let issued = self
            .client
            .renew(&self.credential, &self.settings.node, request.csr)
            .await
            .map_err(|status| refusal("the control plane", &status))?;
        self.take(&issued, &request.key_pem)?;
        Ok(issued.not_after)
    }

    /// Installs a renewed certificate and keeps it. The bundle that came with it is taken only
    /// when the proxy has none: the `Follow` stream is what keeps the bundle current, and a renewal
    /// answered just before a rotation moved on carries the bundle of before (taking it would put
    /// back a root the rotation just retired, and nothing would send the current one again).
    fn take(&self, issued: &Issued, key_pem: &str) -> Result<(), String> {
        if self.mesh.bundle_digest().is_none() {
            self.take_bundle(&issued.bundle_pem, None);
        }
        self.mesh.set_certificate(&issued.chain_pem, key_pem).map_err(|e| format!("the certificate received: {e}"))?;
        if let Err(error) = self.files.save_certificate(key_pem, &issued.chain_pem) {
            tracing::warn!(error = %format!("{error:#}"), "cannot keep the new mesh certificate on disk");
        }
        Ok(())
    }

    /// Installs a trust bundle unless it is the one in use.
    fn take_bundle(&self, bundle_pem: &str, digest: Option<&str>) {
        if digest.is_some() && digest.map(str::to_owned) == self.mesh.bundle_digest() {
            return;
        }
        let before = self.mesh.bundle_digest();
        match self.mesh.set_bundle(bundle_pem) {
            Ok(digest) if Some(&digest) != before.as_ref() => {
                tracing::info!(%digest, roots = bundle_pem.matches("BEGIN CERTIFICATE").count(), "mesh trust bundle updated");
                if let Err(error) = self.files.save_bundle(bundle_pem) {
                    tracing::warn!(error = %format!("{error:#}"), "cannot keep the trust bundle on disk");
                }
            }
            Ok(_) => {}
            Err(error) => {
                tracing::error!(%error, "the control plane sent an unusable trust bundle; the current one stays")
            }
        }
    }

    /// What the proxy holds, for the control plane.
    fn report(&self) -> IdentityReport {
        let renewal = self.mesh.renewal();
        let (last_error, last_error_at) = renewal.last_error.unwrap_or_default();
        IdentityReport {
            node: self.settings.node.clone(),
            certificate: self.mesh.certificate().map(|c| c.leaf).unwrap_or_default(),
            bundle_digest: self.mesh.bundle_digest().unwrap_or_default(),
            last_error,
            last_error_at,
            failures: renewal.failures,
        }
    }

    /// Holds the `Follow` stream, reconnecting with backoff: takes each bundle sent, renews when
    /// asked, and reports after every change.
    async fn follow(self: Arc<Self>) {
        let mut wait = FIRST_RETRY;
        loop {
            let (reports, outbound) = mpsc::channel::<IdentityReport>(4);
            let _ = reports.send(self.report()).await;
            let outbound =
                futures_util::stream::unfold(outbound, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
            match self.client.follow(&self.credential, outbound).await {
                Ok(mut updates) => loop {
                    tokio::select! {
                        update = updates.message() => match update {
                            Ok(Some(update)) => {
                                wait = FIRST_RETRY;
                                self.take_update(update);
                                let _ = reports.send(self.report()).await;
                            }
                            Ok(None) => break,
                            Err(status) => {
                                tracing::warn!(reason = %status.message(), "the mesh identity stream ended");
                                break;
                            }
                        },
                        () = self.changed.notified() => {
                            let _ = reports.send(self.report()).await;
                        }
                    }
                },
                Err(status) => {
                    tracing::warn!(reason = %refusal("the control plane", &status), retry_in = ?wait, "cannot follow the mesh identity")
                }
            }
            tokio::time::sleep(jittered(wait)).await;
            wait = (wait * 2).min(LAST_RETRY);
        }
    }

    fn take_update(&self, update: IdentityUpdate) {
        self.take_bundle(&update.bundle_pem, Some(&update.bundle_digest));
        if update.renew {
            tracing::info!("the control plane asks for a renewal: another root signs now");
            self.renew_now.notify_one();
        }
    }
}

/// Joins with the join token, waiting while the control plane is away.
async fn join(client: &IdentityClient, settings: &Settings, whoami: Whoami) -> Result<Kept, Failure> {
    let token = settings.join_token.as_deref().ok_or_else(|| {
        Failure::Invalid(format!(
            "--join-token: this proxy has not joined the mesh yet (nothing kept in {}); make a token with \
             `weft token create --namespace {} --service {}`",
            Files::new(&settings.data).dir().display(),
            settings.spiffe_id.namespace,
            settings.spiffe_id.service
        ))
    })?;
    let mut wait = FIRST_RETRY;
    loop {
        let request =
            new_request(&whoami.spiffe_id).map_err(|e| Failure::Runtime(anyhow!("cannot make a key: {e}")))?;
        match client.join(token, &settings.node, request.csr).await {
            Ok(issued) => {
                tracing::info!(identity = %issued.spiffe_id, "joined the mesh");
                return Ok(Kept {
                    whoami,
                    credential: issued.credential,
                    key_pem: request.key_pem,
                    chain_pem: issued.chain_pem,
                    bundle_pem: issued.bundle_pem,
                });
            }
            Err(status) if is_final(&status) => {
                return Err(Failure::Runtime(anyhow!(
                    "the control plane at {} refused to let this proxy join the mesh: {}",
                    settings.control,
                    status.message()
                )))
            }
            Err(status) => {
                let retry_in = jittered(wait);
                tracing::warn!(reason = %refusal("the control plane", &status), ?retry_in, "cannot join the mesh yet");
                tokio::time::sleep(retry_in).await;
                wait = (wait * 2).min(LAST_RETRY);
            }
        }
    }
}

fn refusal(who: &str, status: &tonic::Status) -> String {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown => format!("{who} is unreachable: {}", status.message()),
        _ => format!("{who} refused: {}", status.message()),
    }
}

/// When to renew a certificate valid until `not_after`: at about half of what is left of its
/// life (within ±10%, so that proxies started together do not renew together).
fn half_life(not_after: u64) -> Instant {
    let left = Duration::from_secs(not_after.saturating_sub(unix_now()));
    Instant::now() + left.mul_f64(0.45 + 0.1 * fastrand::f64())
}

fn at_unix(instant: Instant) -> u64 {
    unix_now() + instant.saturating_duration_since(Instant::now()).as_secs()
}
