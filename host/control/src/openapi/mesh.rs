//! The mesh's part of the OpenAPI document: join tokens, the CA and root rotation, and each
//! proxy's identity in `/v1/proxies`.

use super::{error, json_of, object, schema_ref};
use serde_json::{json, Value};

/// Adds the mesh's paths and schemas to `document`.
pub fn extend(document: &mut Value) {
    let paths = json!({
        "/v1/tokens": {
            "post": {
                "summary": "Make a join token: a new proxy joins the mesh with it and gets its identity",
                "description": "The token is for one identity (spiffe://<trust-domain>/ns/<namespace>/sa/<service>), \
                    valid for `ttl` (default 1h) and `uses` joins (default 1). Its text is in this answer only; the \
                    control plane keeps its hash.",
                "requestBody": { "required": true, "content": { "application/json": { "schema": object(&["service"], json!({
                    "namespace": { "type": "string", "default": "default" },
                    "service": { "type": "string" },
                    "ttl": { "type": "string", "default": "1h", "examples": ["10m", "24h"] },
                    "uses": { "type": "integer", "minimum": 1, "default": 1 }
                })) } } },
                "responses": {
                    "201": json_of("NewToken", "made"),
                    "400": error("a bad namespace, service, ttl or uses"),
                    "401": error("no or wrong token")
                }
            },
            "get": {
                "summary": "The join tokens that can still be used (without their secrets)",
                "responses": { "200": json_of("TokenList", "the tokens"), "401": error("no or wrong token") }
            }
        },
        "/v1/tokens/{id}": {
            "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
            "delete": {
                "summary": "Revoke a join token",
                "responses": { "204": { "description": "revoked" }, "401": error("no or wrong token"), "404": error("no such token") }
            }
        },
        "/v1/mesh": {
            "get": {
                "summary": "The mesh: trust domain, certificate lifetime, trust bundle, authorities and any root rotation",
                "responses": { "200": json_of("Mesh", "the mesh"), "401": error("no or wrong token") }
            }
        },
        "/v1/mesh/rotation": {
            "post": {
                "summary": "Start a root rotation: a new root (made, or the operator's CA) joins the trust bundle",
                "description": "The new root signs once every proxy following the control plane holds the bundle \
                    with both roots; proxies are then asked to renew. The old root stays trusted until its last \
                    certificate could have expired, or until POST /v1/mesh/rotation/finish.",
                "requestBody": { "required": false, "content": { "application/json": { "schema": object(&[], json!({
                    "cert": { "type": "string", "description": "PEM: the CA certificate, then those above it up to the root" },
                    "key": { "type": "string", "description": "PEM: its private key" }
                })) } } },
                "responses": {
                    "200": json_of("Mesh", "started"),
                    "400": error("a bad CA or key"),
                    "401": error("no or wrong token"),
                    "409": error("a rotation is under way already")
                }
            }
        },
        "/v1/mesh/rotation/finish": {
            "post": {
                "summary": "Finish a root rotation: the old root leaves the trust bundle",
                "requestBody": { "required": false, "content": { "application/json": { "schema": object(&[], json!({
                    "force": { "type": "boolean", "default": false, "description": "even while proxies still need the old root" }
                })) } } },
                "responses": {
                    "200": json_of("Mesh", "finished"),
                    "401": error("no or wrong token"),
                    "409": error("no rotation under way, or proxies still need the old root (named)")
                }
            }
        }
    });
    let schemas = json!({
        "NewToken": object(&["token", "id", "spiffe_id", "expires_at", "uses"], json!({
            "token": { "type": "string", "description": "the secret: give it to the proxy (weft proxy --join-token)" },
            "id": { "type": "string" },
            "spiffe_id": { "type": "string" },
            "expires_at": { "type": "string", "format": "date-time" },
            "uses": { "type": "integer" }
        })),
        "TokenList": object(&["tokens"], json!({ "tokens": { "type": "array", "items": object(&["id", "spiffe_id"], json!({
            "id": { "type": "string" },
            "spiffe_id": { "type": "string" },
            "uses_left": { "type": "integer" },
            "created_at": { "type": "string", "format": "date-time" },
            "created_by": { "type": "string" },
            "expires_at": { "type": "string", "format": "date-time" }
        })) } })),
        "Mesh": object(&["trust_domain", "trust_bundle", "signer", "authorities"], json!({
            "trust_domain": { "type": "string" },
            "cert_ttl_seconds": { "type": "integer" },
            "trust_bundle": object(&["digest", "pem"], json!({ "digest": { "type": "string" }, "pem": { "type": "string" } })),
            "signer": { "type": "string", "description": "the id of the authority that signs now" },
            "authorities": { "type": "array", "items": object(&["id", "role"], json!({
                "id": { "type": "string" },
                "role": { "enum": ["active", "next", "retiring"] },
                "root": { "type": "string" },
                "root_expires_at": { "type": "string", "format": "date-time" },
                "operator": { "type": "boolean" },
                "created_at": { "type": "string", "format": "date-time" },
                "retire_at": { "type": ["string", "null"], "format": "date-time" }
            })) },
            "rotation": { "type": ["object", "null"], "properties": {
                "phase": { "enum": ["distributing", "issuing"] },
                "started_at": { "type": "string", "format": "date-time" },
                "waiting_for_bundle": { "type": "array", "items": { "type": "string" } },
                "old_root_holders": { "type": "array", "items": { "type": "string" } }
            } }
        })),
        "ProxyIdentity": { "type": ["object", "null"], "properties": {
            "spiffe_id": { "type": "string" },
            "expires_at": { "type": ["string", "null"], "format": "date-time" },
            "expires_at_unix": { "type": "integer" },
            "issued_by": { "type": ["string", "null"] },
            "issued_by_signer": { "type": "boolean" },
            "trust_bundle": { "type": ["string", "null"] },
            "trust_bundle_current": { "type": "boolean" },
            "following": { "type": "boolean" },
            "certificates_issued": { "type": "integer" },
            "last_issued_at": { "type": ["string", "null"], "format": "date-time" },
            "renewal_failures": { "type": "integer" },
            "last_renewal_error": { "type": ["object", "null"], "properties": {
                "reason": { "type": "string" }, "at": { "type": "string", "format": "date-time" } } }
        } }
    });
    if let (Some(all), Value::Object(mesh)) = (document["paths"].as_object_mut(), paths) {
        all.extend(mesh);
    }
    if let (Some(all), Value::Object(mesh)) = (document["components"]["schemas"].as_object_mut(), schemas) {
        all.extend(mesh);
    }
    let proxy = &mut document["paths"]["/v1/proxies"]["get"]["responses"]["200"]["content"]["application/json"]
        ["schema"]["properties"]["proxies"]["items"]["properties"];
    if let Some(properties) = proxy.as_object_mut() {
        properties.insert("identity".into(), schema_ref("ProxyIdentity"));
    }
}
