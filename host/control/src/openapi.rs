//! The OpenAPI 3.1 document served at `GET /v1/openapi.json`, written by hand. A test checks
//! that every route of [`crate::api::routes::ROUTES`] is in it.

use serde_json::{json, Value};

mod mesh;

/// The document.
pub fn document() -> Value {
    let mut document = base();
    if let (Some(paths), Value::Object(more)) = (document["paths"].as_object_mut(), experiment_paths()) {
        paths.extend(more);
    }
    if let (Some(schemas), Value::Object(more)) =
        (document["components"]["schemas"].as_object_mut(), experiment_schemas())
    {
        schemas.extend(more);
    }
    mesh::extend(&mut document);
    document
}

fn base() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "weft control plane",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Filter modules and versioned config for weft proxies. Every call but GET /healthz \
                needs `Authorization: Bearer <admin token>`; the token is made at the first start and written \
                to the file admin-token in the data dir. Errors answer `{\"error\": \"...\"}`."
        },
        "security": [{ "admin": [] }],
        "paths": {
            "/healthz": {
                "get": {
                    "summary": "Liveness: 200 while the control plane serves",
                    "security": [],
                    "responses": { "200": json_of("Health", "serving") }
                }
            },
            "/v1/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": { "200": { "description": "the OpenAPI document" }, "401": error("no or wrong token") }
                }
            },
            "/v1/modules": {
                "get": {
                    "summary": "Every stored module, with the filters of the current config that use it",
                    "responses": { "200": json_of("ModuleList", "the modules"), "401": error("no or wrong token") }
                },
                "post": {
                    "summary": "Upload a Proxy-Wasm module; it is compiled and checked before it is stored",
                    "requestBody": {
                        "required": true,
                        "content": { "application/wasm": { "schema": { "type": "string", "format": "binary" } } }
                    },
                    "responses": {
                        "201": json_of("Pushed", "stored"),
                        "200": json_of("Pushed", "these bytes were stored already (same digest)"),
                        "400": error("not a WebAssembly module, or not a Proxy-Wasm one (the reason says which)"),
                        "401": error("no or wrong token"),
                        "413": error("larger than the control plane's module size limit")
                    }
                }
            },
            "/v1/modules/{digest}": {
                "parameters": [digest_parameter()],
                "get": {
                    "summary": "A module's bytes; with ?meta, its metadata instead",
                    "parameters": [{
                        "name": "meta", "in": "query", "required": false, "allowEmptyValue": true,
                        "schema": { "type": "boolean" }, "description": "answer the metadata (JSON), not the bytes"
                    }],
                    "responses": {
                        "200": {
                            "description": "the module",
                            "content": {
                                "application/wasm": { "schema": { "type": "string", "format": "binary" } },
                                "application/json": { "schema": schema_ref("Module") }
                            }
                        },
                        "400": error("not a digest"),
                        "401": error("no or wrong token"),
                        "404": error("no such module")
                    }
                },
                "delete": {
                    "summary": "Delete a module the current config does not use",
                    "responses": {
                        "204": { "description": "deleted" },
                        "401": error("no or wrong token"),
                        "404": error("no such module"),
                        "409": error("the current config uses it")
                    }
                }
            },
            "/v1/config": {
                "get": {
                    "summary": "The current config version and its resources (version 0 and null resources before the first apply)",
                    "responses": { "200": json_of("Version", "the current version"), "401": error("no or wrong token") }
                },
                "post": {
                    "summary": "Apply resources as a new version, validated whole; nothing changes when any of it is wrong",
                    "description": "The body is a config document (YAML or JSON, as a static config file) with an \
                        optional `selector` of proxy labels. Filters name modules by digest (`sha256:<hex>`) of \
                        pushed modules. Resources equal to the current version's add no version (200).",
                    "requestBody": {
                        "required": true,
                        "content": {
                            "application/yaml": { "schema": schema_ref("Resources") },
                            "application/json": { "schema": schema_ref("Resources") }
                        }
                    },
                    "responses": {
                        "201": json_of("Applied", "a new current version"),
                        "200": json_of("Applied", "equal to the current version: unchanged"),
                        "400": {
                            "description": "invalid; every error names its field",
                            "content": { "application/json": { "schema": schema_ref("ConfigError") } }
                        },
                        "401": error("no or wrong token"),
                        "413": error("the document is larger than 4 MiB")
                    }
                }
            },
            "/v1/config/versions": {
                "get": {
                    "summary": "The version history, oldest first",
                    "responses": { "200": json_of("VersionList", "the versions"), "401": error("no or wrong token") }
                }
            },
            "/v1/config/rollback": {
                "post": {
                    "summary": "Make a copy of an earlier version the new current version (history only grows)",
                    "requestBody": {
                        "required": true,
                        "content": { "application/json": { "schema": {
                            "type": "object", "required": ["version"],
                            "properties": { "version": { "type": "integer", "minimum": 1 } }
                        } } }
                    },
                    "responses": {
                        "201": json_of("Applied", "a new current version, a copy of the one asked for"),
                        "200": json_of("Applied", "that version's resources are current already: unchanged"),
                        "400": error("no version number in the body"),
                        "401": error("no or wrong token"),
                        "404": error("no such version"),
                        "409": error("that version loads a module since deleted, or is no longer valid")
                    }
                }
            },
            "/v1/proxies": {
                "get": {
                    "summary": "The proxies that connected since the control plane started: labels, the version each acknowledged, the one pending, and the last it refused and why",
                    "responses": {
                        "200": { "description": "the proxies", "content": { "application/json": { "schema": {
                            "type": "object",
                            "properties": { "proxies": { "type": "array", "items": { "type": "object", "properties": {
                                "node": { "type": "string" },
                                "labels": { "type": "object", "additionalProperties": { "type": "string" } },
                                "connected": { "type": "boolean" },
                                "connected_at": { "type": "string", "format": "date-time" },
                                "version": { "type": "integer", "description": "the version it acknowledged last" },
                                "pending_version": { "type": ["integer", "null"] },
                                "last_rejection": { "type": ["object", "null"], "properties": {
                                    "version": { "type": "integer" }, "reason": { "type": "string" },
                                    "at": { "type": "string", "format": "date-time" } } }
                            } } } }
                        } } } },
                        "401": error("no or wrong token")
                    }
                }
            }
        },
        "components": {
            "securitySchemes": { "admin": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas()
        }
    })
}

fn schemas() -> Value {
    json!({
        "Error": object(&["error"], json!({ "error": { "type": "string" } })),
        "ConfigError": object(&["error", "errors"], json!({
            "error": { "type": "string" },
            "errors": { "type": "array", "items": object(&["field", "reason"], json!({
                "field": { "type": "string", "examples": ["clusters[1].endpoints[0]"] },
                "reason": { "type": "string" }
            })) }
        })),
        "Health": object(&["status"], json!({ "status": { "const": "ok" } })),
        "Pushed": object(&["digest", "size"], json!({
            "digest": { "type": "string", "pattern": "^sha256:[0-9a-f]{64}$" },
            "size": { "type": "integer" }
        })),
        "Module": object(&["digest", "size", "uploaded_at", "used_by"], json!({
            "digest": { "type": "string", "pattern": "^sha256:[0-9a-f]{64}$" },
            "size": { "type": "integer" },
            "uploaded_at": { "type": "string", "format": "date-time" },
            "used_by": { "type": "array", "items": { "type": "string" }, "description": "filters of the current config" }
        })),
        "ModuleList": object(&["modules"], json!({ "modules": { "type": "array", "items": schema_ref("Module") } })),
        "Resources": {
            "type": "object",
            "description": "listeners, clusters and filters as in a static config file, plus selector",
            "properties": {
                "listeners": { "type": "array", "items": { "type": "object" } },
                "clusters": { "type": "array", "items": { "type": "object" } },
                "filters": { "type": "array", "items": { "type": "object" } },
                "selector": { "type": "object", "additionalProperties": { "type": "string" } }
            }
        },
        "Applied": object(&["version", "digest", "summary", "unchanged"], json!({
            "version": { "type": "integer" },
            "digest": { "type": "string" },
            "summary": { "type": "string" },
            "unchanged": { "type": "boolean" }
        })),
        "VersionSummary": object(&["version", "current", "applied_at", "applied_by", "origin", "digest", "summary"], json!({
            "version": { "type": "integer" },
            "current": { "type": "boolean" },
            "applied_at": { "type": "string", "format": "date-time" },
            "applied_by": { "type": "string" },
            "client": { "type": ["string", "null"] },
            "origin": object(&["kind"], json!({
                "kind": { "enum": ["apply", "rollback"] },
                "of": { "type": "integer", "description": "for a rollback: the version copied" }
            })),
            "digest": { "type": "string" },
            "summary": { "type": "string" },
            "selector": { "type": "object", "additionalProperties": { "type": "string" } }
        })),
        "Version": {
            "allOf": [schema_ref("VersionSummary")],
            "properties": { "resources": { "oneOf": [schema_ref("Resources"), { "type": "null" }] } }
        },
        "VersionList": object(&["current", "versions"], json!({
            "current": { "type": "integer", "description": "0 before the first apply" },
            "versions": { "type": "array", "items": schema_ref("VersionSummary") }
        }))
    })
}

/// `/v1/experiments`: chaos experiments (docs/experiments.md).
fn experiment_paths() -> Value {
    let id = json!({ "name": "id", "in": "path", "required": true, "schema": { "type": "string", "pattern": "^exp-[0-9]+$" } });
    json!({
        "/v1/experiments": {
            "get": {
                "summary": "Every chaos experiment and schedule, oldest first",
                "responses": { "200": json_of("ExperimentList", "the experiments"), "401": error("no or wrong token") }
            },
            "post": {
                "summary": "Start a chaos experiment now, or create a schedule of runs (with `schedule`)",
                "requestBody": { "required": true, "content": {
                    "application/yaml": { "schema": schema_ref("ExperimentSpec") },
                    "application/json": { "schema": schema_ref("ExperimentSpec") }
                } },
                "responses": {
                    "201": json_of("Experiment", "started (or scheduled)"),
                    "400": json_of("ConfigError", "the experiment is invalid; `errors` names each field"),
                    "401": error("no or wrong token"),
                    "409": error("no connected proxy matches, the blast radius allows none, or it overlaps an experiment going on the same listener")
                }
            }
        },
        "/v1/experiments/abort": {
            "post": {
                "summary": "The kill switch: end every experiment and schedule now; their faults are taken out at once",
                "responses": {
                    "200": { "description": "the ids ended", "content": { "application/json": { "schema": object(&["aborted"], json!({ "aborted": { "type": "array", "items": { "type": "string" } } })) } } },
                    "401": error("no or wrong token")
                }
            }
        },
        "/v1/experiments/{id}": {
            "parameters": [id.clone()],
            "get": {
                "summary": "An experiment with its timeline, guard readings and results (live while it runs)",
                "responses": { "200": json_of("Experiment", "the experiment"), "401": error("no or wrong token"), "404": error("no such experiment") }
            }
        },
        "/v1/experiments/{id}/abort": {
            "parameters": [id],
            "post": {
                "summary": "End an experiment now (a schedule: no more runs); its faults are taken out at once",
                "responses": { "200": json_of("Experiment", "ended (or over already)"), "401": error("no or wrong token"), "404": error("no such experiment") }
            }
        }
    })
}

fn experiment_schemas() -> Value {
    json!({
        "ExperimentSpec": {
            "type": "object",
            "required": ["target", "faults", "duration"],
            "description": "docs/experiments.md",
            "properties": {
                "name": { "type": "string" },
                "target": { "type": "object", "properties": {
                    "selector": { "type": "object", "additionalProperties": { "type": "string" } },
                    "listener": { "type": "string" }, "path": { "type": "string" }, "path_prefix": { "type": "string" },
                    "methods": { "type": "array", "items": { "type": "string" } }, "source_principal": { "type": "string" }
                } },
                "faults": { "type": "array", "items": { "type": "object", "description": "one of delay, abort, grpc_abort, throttle, toxic" } },
                "duration": { "type": "string", "examples": ["5m"] },
                "observe": { "type": "string", "examples": ["10s"] },
                "guard": { "type": "object", "properties": {
                    "max_error_percent": { "type": "number" }, "max_p99": { "type": "string" },
                    "min_requests": { "type": "integer" }, "window": { "type": "string" }
                } },
                "blast_radius": { "type": "object", "properties": {
                    "max_proxies_percent": { "type": "number" }, "max_requests_percent": { "type": "number" }
                } },
                "schedule": { "type": "string", "description": "cron, five fields, UTC" },
                "filter": { "type": "string", "description": "the chaos filter's name in the config (default chaos)" }
            }
        },
        "ExperimentSummary": object(&["id", "status", "created_at"], json!({
            "id": { "type": "string" },
            "name": { "type": "string" },
            "status": { "enum": ["scheduled", "observing", "injecting", "recovering", "ended"] },
            "schedule": { "type": ["string", "null"] },
            "schedule_of": { "type": ["string", "null"] },
            "next_run_at": { "type": ["string", "null"], "format": "date-time" },
            "created_at": { "type": "string", "format": "date-time" },
            "proxies": { "type": "array", "items": { "type": "string" } },
            "faults_at": { "type": ["string", "null"], "format": "date-time" },
            "ended_at": { "type": ["string", "null"], "format": "date-time" },
            "ended": { "type": ["object", "null"], "properties": { "reason": { "type": "string" }, "detail": { "type": "string" } } }
        })),
        "Experiment": {
            "allOf": [schema_ref("ExperimentSummary")],
            "properties": {
                "spec": schema_ref("ExperimentSpec"),
                "timeline": { "type": "array", "items": { "type": "object" } },
                "readings": { "type": "array", "items": { "type": "object" } },
                "results": { "type": ["object", "null"], "description": "before, during, after, and per proxy" }
            }
        },
        "ExperimentList": object(&["experiments"], json!({ "experiments": { "type": "array", "items": schema_ref("ExperimentSummary") } }))
    })
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({ "type": "object", "required": required, "properties": properties })
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn json_of(schema: &str, description: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema_ref(schema) } } })
}

fn error(description: &str) -> Value {
    json_of("Error", description)
}

fn digest_parameter() -> Value {
    json!({
        "name": "digest", "in": "path", "required": true,
        "schema": { "type": "string", "pattern": "^sha256:[0-9a-f]{64}$" }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::routes::ROUTES;

    #[test]
    fn every_route_served_is_described() {
        let document = document();
        for route in ROUTES {
            let method = route.method.as_str().to_ascii_lowercase();
            let operation = &document["paths"][route.path][&method];
            assert!(operation.is_object(), "{} {} is not in the OpenAPI document", route.method, route.path);
            assert!(operation["responses"].is_object(), "{} {} has no responses", route.method, route.path);
            let public = operation.get("security").is_some_and(|s| s.as_array().is_some_and(Vec::is_empty));
            assert_eq!(public, route.public, "{} {}: security differs from the server's", route.method, route.path);
        }
    }

    #[test]
    fn every_path_described_is_served() {
        let document = document();
        for (path, item) in document["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys().filter(|k| *k != "parameters") {
                let served = ROUTES.iter().any(|r| r.path == path && r.method.as_str().eq_ignore_ascii_case(method));
                assert!(served, "{method} {path} is described but not served");
            }
        }
    }

    #[test]
    fn every_schema_referenced_exists() {
        let document = document();
        let text = document.to_string();
        for reference in text.split("\"#/components/schemas/").skip(1) {
            let name = &reference[..reference.find('"').unwrap()];
            assert!(document["components"]["schemas"][name].is_object(), "no schema {name}");
        }
    }
}
