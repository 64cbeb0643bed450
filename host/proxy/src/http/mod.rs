//! The HTTP request path: limits, request id, the filter chain, routing to a cluster, forwarding
//! with proper proxy headers, and the way back (including protocol upgrades).

mod body;
mod exchange;
mod filtered;
pub(crate) mod h1_text;
mod headers;
mod local_reply;

pub use body::{BoxError, ProxyBody};
pub use exchange::{print_access_log, rfc3339};
pub use filtered::{BodyAnswer, FilteredBody};
pub use headers::forwarded_for;
pub use local_reply::LocalReply;

use crate::chain::{RequestDecisions, StreamInfo};
use crate::cluster::{hash_bytes, hash_ip, Cluster};
use crate::listener::Downstream;
use crate::metrics::{ClusterLabels, ListenerLabels};
use crate::snapshot::{ListenerState, Snapshot};
use crate::upstream::{self, retry, PeerBody, UpstreamError};
use crate::Shared;
use exchange::{AccessLogFields, Exchange};
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

impl From<UpstreamError> for LocalReply {
    fn from(error: UpstreamError) -> LocalReply {
        match error {
            UpstreamError::Connect => LocalReply::UpstreamConnectFailure,
            UpstreamError::Reset => LocalReply::UpstreamReset,
            UpstreamError::Timeout => LocalReply::UpstreamTimeout,
            UpstreamError::Overloaded => LocalReply::Overloaded,
        }
    }
}

/// Answers one request from a client connection.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<Downstream>,
    request: Request<PeerBody>,
) -> Result<Response<ProxyBody>, Infallible> {
    // The config in force now, unless this connection's listener is gone from it (it is draining).
    let current = shared.snapshot.load_full();
    let (snapshot, listener) = match current.listeners.get(conn.listener.as_str()).cloned() {
        Some(listener) => (current, listener),
        None => match conn.accepted.listeners.get(conn.listener.as_str()).cloned() {
            Some(listener) => (conn.accepted.clone(), listener),
            None => return Ok(LocalReply::NoRoute.into_response()),
        },
    };

    let mut exchange = Exchange {
        metrics: shared.metrics.clone(),
        started: Instant::now(),
        listener: listener.name.clone(),
        cluster: None,
        route: listener.unrouted.clone(),
        status: 0,
        upstream: None,
        upstream_latency: None,
        bytes_received: Default::default(),
        bytes_sent: 0,
        local_reply: None,
        body_error: false,
        in_flight: None,
        filters: None,
        log: None,
        probes: shared.probes.matching(
            listener.name.as_str(),
            request.uri().path(),
            request.method().as_str(),
            conn.tls.as_ref().and_then(|t| t.peer_uri_san.as_deref()),
        ),
        grpc_error: false,
    };
    let response = match proxy(&snapshot, &listener, &conn, request, &mut exchange).await {
        Ok(response) => response,
        Err(reply) => {
            exchange.local_reply = Some(reply.reason());
            shared.metrics.local_replies.get_or_create(&ListenerLabels { listener: listener.name.clone() }).inc();
            reply.into_response()
        }
    };
    exchange.status = response.status().as_u16();
    if !exchange.probes.is_empty() {
        exchange.grpc_error = response.headers().get("grpc-status").is_some_and(|status| status != "0");
    }
    Ok(response.map(|body| body.finishing(exchange)))
}

async fn proxy(
    snapshot: &Snapshot,
    listener: &ListenerState,
    conn: &Downstream,
    mut request: Request<PeerBody>,
    exchange: &mut Exchange,
) -> Result<Response<ProxyBody>, LocalReply> {
    let limits = &listener.config.limits;
    let headers = request.headers();
    if headers.len() > limits.max_request_headers as usize
        || headers::head_size(headers, request.uri().path_and_query().map_or(0, |p| p.as_str().len()))
            > limits.max_request_header_size.bytes() as usize
    {
        return Err(LocalReply::HeadersTooLarge);
    }
    if request.version() == Version::HTTP_11
        && !request.headers().contains_key(header::HOST)
        && request.uri().authority().is_none()
    {
        return Err(LocalReply::BadRequest("missing host header"));
    }
    let request_id = headers::ensure_request_id(request.headers_mut());
    // Kept apart from the headers only when the access log will write it.
    if let Some(request_id) = listener.config.access_log.then(|| request_id.clone()) {
        exchange.log = Some(AccessLogFields {
            wall_time: SystemTime::now(),
            method: request.method().clone(),
            path: request.uri().path_and_query().map_or_else(|| "/".into(), |p| p.as_str().to_owned()),
            version: request.version(),
            request_id,
            client: conn.peer,
            authority: authority_of(&request).unwrap_or_default(),
            principal: conn.tls.as_ref().and_then(|t| t.peer_uri_san.clone()),
            tls_version: conn.tls.as_ref().map(|t| t.version),
        });
    }

    let wants_upgrade = request.version() == Version::HTTP_11 && headers::is_upgrade_request(request.headers());
    let downstream_upgrade = wants_upgrade.then(|| conn.upgrade.wait());
    let (mut parts, body) = request.into_parts();

    let mut decisions = RequestDecisions::default();
    let filters = listener.chain.start(|| StreamInfo {
        listener: listener.name.clone(),
        connection_id: conn.id,
        source: conn.peer,
        destination: conn.local,
        tls: conn.tls.clone(),
        started: SystemTime::now(),
    });
    exchange.filters = Some(filters.clone());
    if let Some(response) = filters.request_headers(&mut parts, &mut decisions, body.is_end_stream()).await {
        return Ok(response);
    }
    let request_timeout = decisions.request_timeout;
    let cluster_name =
        decisions.upstream_cluster.or_else(|| listener.default_cluster.clone()).ok_or(LocalReply::NoRoute)?;
    let cluster = snapshot.clusters.get(cluster_name.as_str()).ok_or(LocalReply::NoRoute)?;
    exchange.cluster = Some(cluster.name.clone());
    if let Some(route) = listener.routes.get(cluster.name.as_str()) {
        exchange.route = route.clone();
    }

    let Some(_admitted) = cluster.load.admit(cluster.config.circuit_breaker.max_requests) else {
        exchange.metrics.upstream_overloaded.get_or_create(&ClusterLabels { cluster: cluster.name.clone() }).inc();
        return Err(LocalReply::Overloaded);
    };
    let hash = request_hash(cluster, &parts, conn);
    let endpoint = cluster.pick_for(hash, &[]).ok_or(LocalReply::NoHealthyUpstream)?.clone();
    exchange.upstream = Some(endpoint.address);

    headers::strip_hop_by_hop(&mut parts.headers, wants_upgrade);
    // weft answers `Expect: 100-continue` itself: hyper sends the 100 when the body is first read,
    // which happens once the upstream is connected and ready for it.
    parts.headers.remove(header::EXPECT);
    headers::set_forwarded(&mut parts.headers, &conn.forwarded_for, conn.tls.is_some());
    address_upstream(cluster, &mut parts, &endpoint.name)?;
    parts.version = Version::HTTP_11;

    let timeout = request_timeout.unwrap_or_else(|| cluster.config.request_timeout.get());
    if let Some(retries) = &cluster.config.retries {
        // A body that may be sent again is read whole first, within its limit; a larger one, or
        // one a filter is reading, goes once.
        let small = body.size_hint().upper().is_some_and(|n| n <= retries.max_replay_body.bytes());
        if filters.is_empty() && !wants_upgrade && small {
            let whole = http_body_util::BodyExt::collect(body)
                .await
                .map_err(|_| LocalReply::BadRequest("the request body broke off"))?
                .to_bytes();
            exchange.bytes_received.fetch_add(whole.len() as u64, std::sync::atomic::Ordering::Relaxed);
            let started = Instant::now();
            // Boxed: its state (tries, waits between them) would otherwise add its size to the
            // future of every request, retried or not.
            let tried = Box::pin(retry::send_replayable(
                cluster,
                retries,
                hash,
                endpoint,
                &parts,
                whole,
                timeout,
                &exchange.metrics,
            ))
            .await?;
            exchange.upstream = Some(tried.endpoint.address);
            exchange.in_flight = Some(tried.in_flight);
            exchange.upstream_latency = Some(started.elapsed());
            let (mut parts, body) = tried.result?.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers, false);
            return Ok(Response::from_parts(parts, ProxyBody::streamed(body)));
        }
    }

    let buffer_limit = limits.max_buffered_body.bytes() as usize;
    let (body, filter_reply) = if filters.is_empty() || body.is_end_stream() {
        (ProxyBody::streamed(body), None)
    } else {
        let (to_client, filter_reply) = tokio::sync::oneshot::channel();
        (ProxyBody::filtered(FilteredBody::request(body, filters.clone(), buffer_limit, to_client)), Some(filter_reply))
    };
    let body = body.counted(exchange.bytes_received.clone());
    let started = Instant::now();
    let in_flight = exchange.in_flight.insert(endpoint.start_request());
    let request = Request::from_parts(parts, body);
    let metrics = &exchange.metrics;
    let response = match filter_reply {
        // Sent from this arm, so the future that sends it is made where it is awaited (a future
        // made before the `match` is moved into place, all its bytes, on every request).
        None => upstream::send(cluster, &endpoint, in_flight, request, timeout, metrics).await?,
        // Boxed: requests whose body filters read are the fewer, and the race's state would
        // otherwise add its size to every request's future.
        Some(filter_reply) => {
            let sending = upstream::send(cluster, &endpoint, in_flight, request, timeout, metrics);
            match Box::pin(first_answer(filter_reply, sending)).await {
                FirstAnswer::Upstream(response) => response,
                FirstAnswer::Filters(answer) => return answered(answer),
                FirstAnswer::Failed(error) => return Err(error.into()),
            }
        }
    };
    exchange.upstream_latency = Some(started.elapsed());

    let (mut parts, body) = response.into_parts();
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(downstream) = downstream_upgrade else {
            return Err(LocalReply::UpstreamReset);
        };
        let mut upstream_response = Response::from_parts(parts.clone(), body);
        let upstream = hyper::upgrade::on(&mut upstream_response);
        tokio::spawn(tunnel(downstream, upstream));
        return Ok(Response::from_parts(parts, ProxyBody::empty()));
    }
    headers::strip_hop_by_hop(&mut parts.headers, false);
    if filters.is_empty() {
        return Ok(Response::from_parts(parts, ProxyBody::streamed(body)));
    }
    if let Some(response) = filters.response_headers(&mut parts, body.is_end_stream()).await {
        return Ok(response);
    }
    let body = if body.is_end_stream() {
        ProxyBody::streamed(body)
    } else {
        ProxyBody::filtered(FilteredBody::response(body, filters, buffer_limit))
    };
    Ok(Response::from_parts(parts, body))
}

/// Which answer came first when filters read the request body.
enum FirstAnswer {
    Upstream(Response<PeerBody>),
    Filters(BodyAnswer),
    Failed(UpstreamError),
}

/// The upstream's response, unless filters answer while the request body is on its way (or
/// refuse it as too large): their answer wins over the upstream's error that abandoning the
/// body causes.
async fn first_answer(
    mut filter_reply: tokio::sync::oneshot::Receiver<BodyAnswer>,
    sending: impl std::future::Future<Output = Result<Response<PeerBody>, UpstreamError>>,
) -> FirstAnswer {
    tokio::select! {
        biased;
        Ok(answer) = &mut filter_reply => FirstAnswer::Filters(answer),
        response = sending => match response {
            Ok(response) => FirstAnswer::Upstream(response),
            Err(error) => filter_reply.try_recv().map_or(FirstAnswer::Failed(error), FirstAnswer::Filters),
        },
    }
}

/// The answer filters gave while the request body was on its way.
fn answered(answer: BodyAnswer) -> Result<Response<ProxyBody>, LocalReply> {
    match answer {
        BodyAnswer::Filter(response) => Ok(response),
        BodyAnswer::Local(reply) => Err(reply),
    }
}

/// The client's authority: the URI's (HTTP/2, absolute-form) or the `Host` header.
fn authority_of<B>(request: &Request<B>) -> Option<String> {
    request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned))
}

/// Points a request at a cluster's endpoint: sets the absolute URI its pool needs, keeping what
/// the client named as it arrives upstream (`Host` / `:authority`); the connection itself goes to
/// the endpoint whatever the URI says.
///
/// Over HTTP/2 the client's authority travels in the URI (`:authority`), so the URI keeps it.
/// An HTTP/1.1 cluster never speaks HTTP/2 (its TLS offers only `http/1.1`): the authority
/// travels in `Host` alone and the request line carries only the path (origin form), except for
/// `CONNECT`, whose request line is the authority.
pub(crate) fn address_upstream(
    cluster: &Cluster,
    parts: &mut http::request::Parts,
    endpoint: &str,
) -> Result<(), LocalReply> {
    let invalid = |_| LocalReply::BadRequest("invalid request target");
    // The URI's own parts are reused as they are (already parsed); only a `Host` is parsed here.
    let authority = match parts.uri.authority() {
        Some(authority) => authority.clone(),
        None => match parts.headers.get(header::HOST) {
            Some(host) => http::uri::Authority::try_from(host.as_bytes()).map_err(invalid)?,
            None => http::uri::Authority::try_from(endpoint).map_err(invalid)?,
        },
    };
    let mut uri = http::uri::Parts::default();
    match (cluster.config.protocol, &parts.method) {
        (weft_config::UpstreamProtocol::Http1, &Method::CONNECT) => uri.authority = Some(authority),
        (weft_config::UpstreamProtocol::Http1, _) => {
            if !parts.headers.contains_key(header::HOST) {
                let host =
                    HeaderValue::from_str(authority.as_str()).map_err(|_| LocalReply::BadRequest("invalid host"))?;
                parts.headers.insert(header::HOST, host);
            }
            uri.path_and_query = Some(path_and_query(&parts.uri));
        }
        (weft_config::UpstreamProtocol::Http2, _) => {
            uri.scheme = Some(cluster.scheme.clone());
            uri.authority = Some(authority);
            uri.path_and_query = Some(path_and_query(&parts.uri));
        }
    }
    parts.uri = Uri::from_parts(uri).map_err(|_| LocalReply::BadRequest("invalid request target"))?;
    Ok(())
}

fn path_and_query(uri: &Uri) -> http::uri::PathAndQuery {
    uri.path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"))
}

/// The request's key on a ring_hash cluster: the configured header, else the client's IP.
fn request_hash(cluster: &Cluster, parts: &http::request::Parts, conn: &Downstream) -> u64 {
    if !cluster.uses_hash() {
        return 0;
    }
    if let weft_config::HashOn::Header(name) = &cluster.hash_on {
        if let Some(value) = parts.headers.get(name.as_str()) {
            return hash_bytes(value.as_bytes());
        }
    }
    hash_ip(conn.peer.ip())
}

/// Joins a client and an upstream that agreed to switch protocols, byte for byte, until either ends.
async fn tunnel(
    downstream: tokio::sync::oneshot::Receiver<Box<dyn crate::tcp::Socket>>,
    upstream: hyper::upgrade::OnUpgrade,
) {
    let (mut downstream, mut upstream) = match tokio::join!(downstream, upstream) {
        (Ok(downstream), Ok(upstream)) => (downstream, TokioIo::new(upstream)),
        (Err(_), _) => return tracing::debug!("protocol upgrade failed: the client connection ended first"),
        (_, Err(error)) => return tracing::debug!(%error, "protocol upgrade failed"),
    };
    if let Err(error) = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
        tracing::debug!(%error, "upgraded connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::address_upstream;
    use crate::cluster::Cluster;
    use crate::metrics::Metrics;
    use http::{header, Method, Request};

    async fn cluster(protocol: &str) -> Cluster {
        let config: weft_config::Cluster = serde_json::from_value(serde_json::json!({
            "name": "web", "endpoints": ["127.0.0.1:8080"], "protocol": protocol,
        }))
        .unwrap();
        Cluster::build(&config, "clusters[0]", &Metrics::new(), None).await.ok().unwrap()
    }

    fn addressed(cluster: &Cluster, request: Request<()>) -> http::request::Parts {
        let (mut parts, ()) = request.into_parts();
        address_upstream(cluster, &mut parts, "127.0.0.1:8080").ok().unwrap();
        parts
    }

    #[tokio::test]
    async fn http1_requests_name_their_host_in_host_and_http2_in_the_uri() {
        let http1 = cluster("http1").await;
        // An HTTP/2 client's authority becomes the Host an HTTP/1.1 upstream sees.
        let from_h2 = addressed(&http1, Request::get("http://shop.example:8443/a?b=1").body(()).unwrap());
        assert_eq!(from_h2.headers[header::HOST], "shop.example:8443");
        assert_eq!(from_h2.uri, "/a?b=1", "origin form: the request line carries the path alone");
        // A client's own Host is left as it was.
        let from_h1 = addressed(&http1, Request::get("/a").header("host", "shop.example").body(()).unwrap());
        assert_eq!(from_h1.headers[header::HOST], "shop.example");
        assert_eq!(from_h1.headers.get_all(header::HOST).iter().count(), 1);
        // CONNECT's request line is the authority itself.
        let connect =
            addressed(&http1, Request::builder().method(Method::CONNECT).uri("db.internal:5432").body(()).unwrap());
        assert_eq!(connect.uri, "db.internal:5432", "authority form");
        // A Host that names no authority is refused.
        let (mut bad_host, ()) = Request::get("/a").header("host", "a b").body(()).unwrap().into_parts();
        assert!(address_upstream(&http1, &mut bad_host, "127.0.0.1:8080").is_err());

        let http2 = cluster("http2").await;
        let to_h2 = addressed(&http2, Request::get("/a").header("host", "shop.example").body(()).unwrap());
        assert_eq!(to_h2.uri.authority().unwrap(), "shop.example", ":authority is the client's");
    }
}
