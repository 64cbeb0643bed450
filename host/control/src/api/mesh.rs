//! The mesh's REST endpoints: join tokens (`/v1/tokens`), the CA and its root rotation
//! (`/v1/mesh`). The work blocks on the store and on key generation: it runs on the blocking pool.

use super::routes::Endpoint;
use super::{full, json_response, Body};
use crate::error::ControlError;
use crate::identity::IdentityError;
use crate::plane::{Author, ControlPlane};
use crate::records::rfc3339;
use bytes::Bytes;
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

/// `POST /v1/tokens`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    #[serde(default = "default_namespace")]
    namespace: String,
    service: String,
    /// How long it can be used: `10m`, `1h` (the default), `24h`.
    #[serde(default = "default_ttl")]
    ttl: weft_config::Duration,
    /// How many proxies may join with it (1 by default).
    #[serde(default = "default_uses")]
    uses: u32,
}

fn default_namespace() -> String {
    "default".into()
}

fn default_ttl() -> weft_config::Duration {
    weft_config::Duration::from_secs(3600)
}

fn default_uses() -> u32 {
    1
}

/// `POST /v1/mesh/rotation`: an operator's CA for the new root, or none (weft makes one).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewRoot {
    cert: Option<String>,
    key: Option<String>,
}

/// `POST /v1/mesh/rotation/finish`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Finish {
    #[serde(default)]
    force: bool,
}

pub(super) async fn serve(
    plane: &ControlPlane,
    endpoint: Endpoint,
    parameter: Option<String>,
    author: Author,
    body: Bytes,
) -> Result<Response<Body>, ControlError> {
    let mesh = plane.mesh().clone();
    match endpoint {
        Endpoint::CreateToken => {
            let asked: NewToken =
                parse(&body, r#"{"service": "NAME", "namespace": "default", "ttl": "1h", "uses": 1}"#)?
                    .ok_or_else(|| ControlError::BadRequest("expected {\"service\": NAME, ...}".into()))?;
            let (text, token) = blocking(move || {
                mesh.create_token(&asked.namespace, &asked.service, asked.ttl.get(), asked.uses, &author.by)
            })
            .await?;
            Ok(json_response(
                StatusCode::CREATED,
                &json!({
                    "token": text,
                    "id": token.id,
                    "spiffe_id": token.spiffe_id,
                    "expires_at": rfc3339(token.expires_at_ms),
                    "uses": token.uses_left,
                }),
            ))
        }
        Endpoint::ListTokens => {
            let tokens = blocking(move || mesh.tokens()).await?;
            let list: Vec<Value> = tokens
                .iter()
                .map(|t| {
                    json!({
                        "id": t.id,
                        "spiffe_id": t.spiffe_id,
                        "uses_left": t.uses_left,
                        "created_at": rfc3339(t.created_at_ms),
                        "created_by": t.created_by,
                        "expires_at": rfc3339(t.expires_at_ms),
                    })
                })
                .collect();
            Ok(json_response(StatusCode::OK, &json!({ "tokens": list })))
        }
        Endpoint::RevokeToken => {
            let id = parameter.ok_or_else(|| ControlError::Internal("no path parameter".into()))?;
            blocking(move || mesh.revoke_token(&id)).await?;
            let mut response = Response::new(full(Bytes::new()));
            *response.status_mut() = StatusCode::NO_CONTENT;
            Ok(response)
        }
        Endpoint::GetMesh => Ok(json_response(StatusCode::OK, &blocking(move || mesh.to_json()).await?)),
        Endpoint::StartRotation => {
            let asked: NewRoot = parse(&body, r#"{"cert": "PEM", "key": "PEM"} or nothing"#)?.unwrap_or_default();
            let operator = match (asked.cert, asked.key) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                _ => return Err(ControlError::BadRequest("cert and key go together: give both or neither".into())),
            };
            tracing::info!(by = %author.by, operator_ca = operator.is_some(), "root rotation asked for");
            let document = blocking(move || {
                mesh.start_rotation(operator.as_ref().map(|(c, k)| (c.as_str(), k.as_str())))?;
                mesh.to_json()
            })
            .await?;
            Ok(json_response(StatusCode::OK, &document))
        }
        Endpoint::FinishRotation => {
            let asked: Finish = parse(&body, r#"{"force": false} or nothing"#)?.unwrap_or_default();
            tracing::info!(by = %author.by, force = asked.force, "end of the root rotation asked for");
            let document = blocking(move || {
                mesh.finish_rotation(asked.force)?;
                mesh.to_json()
            })
            .await?;
            Ok(json_response(StatusCode::OK, &document))
        }
        other => Err(ControlError::Internal(format!("{other:?} is not a mesh endpoint"))),
    }
}

/// A JSON body; `None` when it is empty.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8], expected: &str) -> Result<Option<T>, ControlError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body).map(Some).map_err(|e| ControlError::BadRequest(format!("expected {expected}: {e}")))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, IdentityError> + Send + 'static,
) -> Result<T, ControlError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ControlError::Internal(format!("mesh call: {e}")))?
        .map_err(ControlError::from)
}

impl From<IdentityError> for ControlError {
    fn from(error: IdentityError) -> Self {
        match error {
            IdentityError::Conflict(reason) => ControlError::Conflict(reason),
            IdentityError::NotFound(reason) => ControlError::NotFound(reason),
            IdentityError::Store(error) => ControlError::Store(error),
            IdentityError::Internal(reason) => ControlError::Internal(reason),
            other => ControlError::BadRequest(other.to_string()),
        }
    }
}
