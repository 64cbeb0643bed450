//! The proxy's side of the identity API (`weft_proto::identity`): keys and CSRs made here,
//! `Join`, `Renew`, and the `Follow` stream, over the same kind of HTTP/2 client as the config
//! stream.

use http::uri::PathAndQuery;
use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rcgen::{CertificateParams, KeyPair, SanType};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};
use weft_proto::identity::{
    IdentityReport, IdentityUpdate, Issued, JoinRequest, RenewRequest, FOLLOW_PATH, JOIN_PATH, RENEW_PATH,
};
use weft_proto::Codec;

pub type Channel = Client<HttpConnector, tonic::body::Body>;

/// A control plane's identity API.
#[derive(Clone)]
pub struct IdentityClient {
    control: Uri,
    channel: Channel,
}

/// A new key and a CSR for `spiffe_id` made with it.
pub struct Request {
    pub key_pem: String,
    pub csr: Vec<u8>,
}

/// A key for `spiffe_id` (ECDSA P-256, made here and kept here) and the CSR that asks for it.
pub fn new_request(spiffe_id: &str) -> anyhow::Result<Request> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into()?)];
    let csr = params.serialize_request(&key)?;
    Ok(Request { key_pem: key.serialize_pem(), csr: csr.der().to_vec() })
}

/// Whether a refusal will be the same next time (a wrong token, an identity not allowed), as
/// opposed to a control plane away or failing for now.
pub fn is_final(status: &Status) -> bool {
    matches!(status.code(), Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument)
}

impl IdentityClient {
    pub fn new(control: Uri) -> IdentityClient {
        IdentityClient { control, channel: Client::builder(TokioExecutor::new()).http2_only(true).build_http() }
    }

    fn grpc(&self) -> tonic::client::Grpc<Channel> {
        tonic::client::Grpc::with_origin(self.channel.clone(), self.control.clone())
    }

    /// `Join` with a join token.
    pub async fn join(&self, token: &str, node: &str, csr: Vec<u8>) -> Result<Issued, Status> {
        let mut grpc = self.grpc();
        grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
        let request = tonic::Request::new(JoinRequest { token: token.to_owned(), node: node.to_owned(), csr });
        let codec = Codec::<JoinRequest, Issued>::default();
        Ok(grpc.unary(request, PathAndQuery::from_static(JOIN_PATH), codec).await?.into_inner())
    }

    /// `Renew` with the proxy credential.
    pub async fn renew(&self, credential: &str, node: &str, csr: Vec<u8>) -> Result<Issued, Status> {
        let mut grpc = self.grpc();
        grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
        let request = authorized(tonic::Request::new(RenewRequest { node: node.to_owned(), csr }), credential);
        let codec = Codec::<RenewRequest, Issued>::default();
        Ok(grpc.unary(request, PathAndQuery::from_static(RENEW_PATH), codec).await?.into_inner())
    }

    /// Opens the `Follow` stream: reports go out from `reports`, updates come back.
    pub async fn follow(
        &self,
        credential: &str,
        reports: impl futures_util::Stream<Item = IdentityReport> + Send + 'static,
    ) -> Result<tonic::Streaming<IdentityUpdate>, Status> {
        let mut grpc = self.grpc();
        grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
        let request = authorized(tonic::Request::new(reports), credential);
        let codec = Codec::<IdentityReport, IdentityUpdate>::default();
        Ok(grpc.streaming(request, PathAndQuery::from_static(FOLLOW_PATH), codec).await?.into_inner())
    }
}

fn authorized<T>(mut request: tonic::Request<T>, credential: &str) -> tonic::Request<T> {
    if let Ok(value) = MetadataValue::try_from(format!("Bearer {credential}")) {
        request.metadata_mut().insert("authorization", value);
    }
    request
}
