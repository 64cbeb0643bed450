//! The CLI's client of the control plane's REST API, and how its answers become exit codes:
//! unreachable or a refused token → 1; a request the control plane refused (invalid config,
//! unknown version, …) → 2 with the control plane's errors.

use crate::cli::{RemoteArgs, DEFAULT_DATA_DIR};
use crate::Failure;
use anyhow::anyhow;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::time::Duration;

/// Time to connect to the control plane.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for a whole call; a module upload is compiled and checked before the answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

pub struct ControlClient {
    /// `http://host:port` plus any path prefix, without a trailing slash.
    base: String,
    authorization: Option<HeaderValue>,
    http: Client<HttpConnector, Full<Bytes>>,
}

/// A successful answer.
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Result<Value, Failure> {
        serde_json::from_slice(&self.body).map_err(|e| Failure::Runtime(anyhow!("the control plane's answer: {e}")))
    }
}

impl ControlClient {
    pub fn new(remote: &RemoteArgs) -> Result<ControlClient, Failure> {
        let uri: Uri = remote
            .control
            .parse()
            .map_err(|e| Failure::Invalid(format!("--control {:?}: not a URL: {e}", remote.control)))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(Failure::Invalid(format!(
                    "--control {}: https is not supported yet; use http:// on loopback or a trusted network",
                    remote.control
                )))
            }
            _ => {
                return Err(Failure::Invalid(format!(
                    "--control {:?}: expected http://HOST:PORT, e.g. http://127.0.0.1:7700",
                    remote.control
                )))
            }
        }
        let Some(authority) = uri.authority() else {
            return Err(Failure::Invalid(format!("--control {:?}: no host", remote.control)));
        };
        let token = remote.token.clone().or_else(|| local_token(authority.host()));
        let authorization = match token {
            Some(token) => Some(
                HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                    .map_err(|_| Failure::Invalid("the token has characters a header cannot carry".into()))?,
            ),
            None => None,
        };
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        Ok(ControlClient {
            base: format!("http://{authority}{}", uri.path().trim_end_matches('/')),
            authorization,
            http: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// `GET path`, expecting success.
    pub async fn get(&self, path: &str) -> Result<Reply, Failure> {
        self.call(Method::GET, path, None, Bytes::new()).await
    }

    /// Sends a request; a 2xx answer is returned, anything else becomes the failure it means.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Reply, Failure> {
        let reply = self.exchange(method, path, content_type, body).await?;
        if reply.status.is_success() {
            Ok(reply)
        } else {
            Err(self.refused(&reply))
        }
    }

    /// Sends a request; any answer is returned (only an unreachable control plane fails).
    pub async fn exchange(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Reply, Failure> {
        let mut request = Request::builder().method(method).uri(format!("{}{path}", self.base));
        if let Some(authorization) = &self.authorization {
            request = request.header(header::AUTHORIZATION, authorization.clone());
        }
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let request = request.body(Full::new(body)).map_err(|e| Failure::Runtime(anyhow!("a request: {e}")))?;
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| self.unreachable(&e))?;
            let status = response.status();
            let body = response.into_body().collect().await.map_err(|e| self.unreachable(&e))?.to_bytes();
            Ok::<_, Failure>(Reply { status, body })
        };
        tokio::time::timeout(CALL_TIMEOUT, exchange).await.map_err(|_| {
            Failure::Runtime(anyhow!("the control plane at {} did not answer within {CALL_TIMEOUT:?}", self.base))
        })?
    }

    fn unreachable(&self, error: &(dyn std::error::Error + 'static)) -> Failure {
        let mut cause = error.to_string();
        let mut source = error.source();
        while let Some(inner) = source {
            cause = inner.to_string();
            source = inner.source();
        }
        Failure::Runtime(anyhow!(
            "cannot reach the control plane at {}: {cause} (is `weft control` running there? \
             --control or WEFT_CONTROL say where it is)",
            self.base
        ))
    }

    /// A non-2xx answer as a failure: the control plane's own words, and the exit code it means.
    pub fn refused(&self, reply: &Reply) -> Failure {
        let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        let message =
            body["error"].as_str().map_or_else(|| String::from_utf8_lossy(&reply.body).into_owned(), str::to_owned);
        match reply.status {
            StatusCode::UNAUTHORIZED => Failure::Runtime(anyhow!(
                "the control plane at {} refused the token: pass --token or set WEFT_TOKEN (the admin token is in \
                 the file admin-token in the control plane's data dir)",
                self.base
            )),
            StatusCode::BAD_REQUEST
            | StatusCode::NOT_FOUND
            | StatusCode::CONFLICT
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::METHOD_NOT_ALLOWED => Failure::Invalid(message),
            status => Failure::Runtime(anyhow!("the control plane answered {status}: {message}")),
        }
    }
}

/// The admin token of a control plane started in this folder with the default data dir, for a
/// control plane on this machine only: a local secret is never sent to another host.
fn local_token(host: &str) -> Option<String> {
    let loopback = matches!(host, "localhost" | "[::1]" | "::1")
        || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        return None;
    }
    let path = std::path::Path::new(DEFAULT_DATA_DIR).join(weft_control::token::FILE_NAME);
    let token = std::fs::read_to_string(path).ok()?;
    Some(token.trim().to_owned()).filter(|t| !t.is_empty())
}
