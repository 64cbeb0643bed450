//! The identity API over gRPC (`weft_proto::identity`): `Join` (authenticated by its join
//! token), `Renew` and `Follow` (by the proxy credential). Signing and the store are blocking
//! work: they run on the blocking pool.

use super::{IdentityError, Issued};
use crate::plane::ControlPlane;
use futures_util::Stream;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::codec::Streaming;
use tonic::server::{Grpc, StreamingService, UnaryService};
use tonic::{Request, Response, Status};
use weft_proto::identity::{
    IdentityReport, IdentityUpdate, JoinRequest, RenewRequest, FOLLOW_PATH, JOIN_PATH, RENEW_PATH,
};
use weft_proto::Codec;

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<Response<T>, Status>> + Send>>;
type MessageStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Answers a request on an identity path.
pub async fn serve<B>(plane: Arc<ControlPlane>, request: http::Request<B>) -> http::Response<tonic::body::Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let path = request.uri().path().to_owned();
    if path == JOIN_PATH {
        return Grpc::new(Codec::<weft_proto::identity::Issued, JoinRequest>::default())
            .unary(Join(plane), request)
            .await;
    }
    let authorization = request.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let Some(caller) = plane.mesh().authenticate(authorization) else {
        return Status::unauthenticated(IdentityError::CredentialRefused.to_string()).into_http();
    };
    match path.as_str() {
        RENEW_PATH => {
            Grpc::new(Codec::<weft_proto::identity::Issued, RenewRequest>::default())
                .unary(Renew(plane, caller), request)
                .await
        }
        FOLLOW_PATH => {
            Grpc::new(Codec::<IdentityUpdate, IdentityReport>::default())
                .streaming(Follow(plane, caller), request)
                .await
        }
        other => Status::unimplemented(format!("no gRPC method {other}")).into_http(),
    }
}

/// The gRPC status of a refusal.
pub fn status_of(error: IdentityError) -> Status {
    let message = error.to_string();
    match error {
        IdentityError::TokenRefused | IdentityError::CredentialRefused => Status::unauthenticated(message),
        IdentityError::NotAllowed(_) => Status::permission_denied(message),
        IdentityError::BadCsr(_) | IdentityError::BadRequest(_) | IdentityError::BadCa(_) => {
            Status::invalid_argument(message)
        }
        IdentityError::Conflict(_) => Status::failed_precondition(message),
        IdentityError::NotFound(_) => Status::not_found(message),
        IdentityError::Store(_) | IdentityError::Internal(_) => {
            tracing::error!(error = %message, "identity call failed");
            Status::internal(message)
        }
    }
}

fn to_wire(issued: Issued) -> weft_proto::identity::Issued {
    weft_proto::identity::Issued {
        chain_pem: issued.chain_pem,
        bundle_pem: issued.bundle_pem,
        spiffe_id: issued.spiffe_id,
        not_after: issued.not_after,
        credential: issued.credential.unwrap_or_default(),
    }
}

/// Runs blocking identity work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, IdentityError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Status::internal(format!("identity work stopped: {e}")))?
        .map_err(status_of)
}

struct Join(Arc<ControlPlane>);

impl UnaryService<JoinRequest> for Join {
    type Response = weft_proto::identity::Issued;
    type Future = BoxFuture<Self::Response>;

    fn call(&mut self, request: Request<JoinRequest>) -> Self::Future {
        let plane = self.0.clone();
        Box::pin(async move {
            let request = request.into_inner();
            let issued = blocking(move || plane.mesh().join(&request.token, &request.node, &request.csr)).await?;
            Ok(Response::new(to_wire(issued)))
        })
    }
}

struct Renew(Arc<ControlPlane>, super::tokens::Credential);

impl UnaryService<RenewRequest> for Renew {
    type Response = weft_proto::identity::Issued;
    type Future = BoxFuture<Self::Response>;

    fn call(&mut self, request: Request<RenewRequest>) -> Self::Future {
        let (plane, caller) = (self.0.clone(), self.1.clone());
        Box::pin(async move {
            let request = request.into_inner();
            let issued = blocking(move || plane.mesh().renew(&caller, &request.node, &request.csr)).await?;
            Ok(Response::new(to_wire(issued)))
        })
    }
}

struct Follow(Arc<ControlPlane>, super::tokens::Credential);

impl StreamingService<IdentityReport> for Follow {
    type Response = IdentityUpdate;
    type ResponseStream = MessageStream<IdentityUpdate>;
    type Future = BoxFuture<Self::ResponseStream>;

    fn call(&mut self, request: Request<Streaming<IdentityReport>>) -> Self::Future {
        let (plane, caller) = (self.0.clone(), self.1.clone());
        Box::pin(async move {
            let mut inbound = request.into_inner();
            let first = inbound
                .message()
                .await?
                .ok_or_else(|| Status::invalid_argument("the stream must open with the proxy's report"))?;
            if first.node != caller.node {
                return Err(Status::permission_denied(format!(
                    "this credential belongs to node {:?}, not {:?}",
                    caller.node, first.node
                )));
            }
            let (to_proxy, outbound) = mpsc::channel(4);
            tokio::spawn(follow(plane, caller.node, first, inbound, to_proxy));
            let stream = futures_util::stream::unfold(outbound, |mut outbound| async move {
                outbound.recv().await.map(|message| (Ok(message), outbound))
            });
            Ok(Response::new(Box::pin(stream) as MessageStream<IdentityUpdate>))
        })
    }
}

/// One proxy's `Follow` stream: records its reports, sends it every new bundle, and asks it to
/// renew when the signing root is not the one its certificate came from.
async fn follow(
    plane: Arc<ControlPlane>,
    node: String,
    first: IdentityReport,
    mut inbound: Streaming<IdentityReport>,
    to_proxy: mpsc::Sender<IdentityUpdate>,
) {
    let mesh = plane.mesh();
    mesh.following(&node, true);
    mesh.record_report(&node, &first);
    tracing::info!(%node, "proxy following the mesh identity");
    let mut bundles = mesh.subscribe();
    let mut sent_signer = None::<String>;
    loop {
        let bundle = bundles.borrow_and_update().clone();
        // A certificate of a retired root is of no held authority: it needs renewing too.
        let signed_by_other =
            mesh.status(&node).is_some_and(|s| s.issued_by.as_deref() != Some(bundle.signer.as_str()));
        let renew = signed_by_other && sent_signer.as_deref() != Some(bundle.signer.as_str());
        let update = IdentityUpdate { bundle_pem: bundle.pem, bundle_digest: bundle.digest, renew };
        if to_proxy.send(update).await.is_err() {
            break;
        }
        if renew {
            tracing::info!(%node, "asked the proxy to renew: another root signs now");
        }
        sent_signer = Some(bundle.signer);
        tokio::select! {
            changed = bundles.changed() => if changed.is_err() { break },
            () = record_reports(&mut inbound, &plane, &node) => break,
        }
    }
    mesh.following(&node, false);
    advance(&plane).await;
    tracing::info!(%node, "proxy stopped following the mesh identity");
}

/// Records the proxy's reports until its stream ends.
async fn record_reports(inbound: &mut Streaming<IdentityReport>, plane: &Arc<ControlPlane>, node: &str) {
    while let Ok(Some(report)) = inbound.message().await {
        plane.mesh().record_report(node, &report);
        // A report may be the last acknowledgement a rotation waits for.
        advance(plane).await;
    }
}

async fn advance(plane: &Arc<ControlPlane>) {
    let plane = plane.clone();
    if let Ok(Err(error)) = tokio::task::spawn_blocking(move || plane.mesh().advance()).await {
        tracing::error!(%error, "the root rotation could not move on");
    }
}

/// How often a rotation is checked for an old root whose certificates have all expired.
const MAINTENANCE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Moves root rotations on while the control plane serves (a retiring root leaves the bundle
/// when its time is up, with no proxy report to trigger it).
pub async fn maintain(plane: Arc<ControlPlane>) {
    let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        advance(&plane).await;
    }
}
