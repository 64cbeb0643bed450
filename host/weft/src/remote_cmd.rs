//! The commands that talk to a control plane: `weft module push`, `weft apply`, `weft get`,
//! `weft rollback`. Results go to stdout (a pushed module's digest alone, so scripts can take
//! it); notes and errors to stderr.

use crate::cli::{ApplyArgs, GetArgs, GetWhat, Output, RemoteArgs, RollbackArgs};
use crate::client::{ControlClient, Reply};
use crate::table;
use crate::Failure;
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::io::Read;
use std::path::Path;

/// `weft module push FILE`.
pub async fn push(file: &Path, remote: &RemoteArgs) -> Result<(), Failure> {
    let client = ControlClient::new(remote)?;
    let bytes = std::fs::read(file).map_err(|e| Failure::Invalid(format!("{}: cannot read: {e}", file.display())))?;
    let reply = client.exchange(Method::POST, "/v1/modules", Some("application/wasm"), Bytes::from(bytes)).await?;
    if matches!(reply.status, StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE) {
        let body: Value = serde_json::from_slice(&reply.body).unwrap_or_default();
        return Err(Failure::Invalid(format!("{}: {}", file.display(), body["error"].as_str().unwrap_or("refused"))));
    }
    if !reply.status.is_success() {
        return Err(client.refused(&reply));
    }
    let pushed = reply.json()?;
    let fresh = if reply.status == StatusCode::CREATED { "stored" } else { "already stored" };
    eprintln!("{}: {fresh}, {}", file.display(), table::size(pushed["size"].as_u64().unwrap_or(0)));
    println!("{}", pushed["digest"].as_str().unwrap_or_default());
    Ok(())
}

/// `weft apply -f FILE`.
pub async fn apply(args: &ApplyArgs) -> Result<(), Failure> {
    let client = ControlClient::new(&args.remote)?;
    let name = args.file.display().to_string();
    let (text, content_type) = read_document(&args.file)?;
    let reply = client.exchange(Method::POST, "/v1/config", content_type, Bytes::from(text)).await?;
    if reply.status == StatusCode::BAD_REQUEST {
        return Err(Failure::Invalid(field_errors(&name, &reply)));
    }
    if !reply.status.is_success() {
        return Err(client.refused(&reply));
    }
    let applied = reply.json()?;
    let version = applied["version"].as_u64().unwrap_or_default();
    if applied["unchanged"].as_bool() == Some(true) {
        println!("{name}: unchanged; version {version} is current and has these resources already");
    } else {
        println!("applied {name}: version {version} ({})", applied["summary"].as_str().unwrap_or_default());
    }
    Ok(())
}

/// A document to send and its content type (`-`: standard input, whose format the control plane
/// tells by its first character).
pub fn read_document(file: &Path) -> Result<(String, Option<&'static str>), Failure> {
    let name = file.display().to_string();
    if name == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Failure::Invalid(format!("standard input: cannot read: {e}")))?;
        return Ok((text, None));
    }
    let text = std::fs::read_to_string(file).map_err(|e| Failure::Invalid(format!("{name}: cannot read: {e}")))?;
    let content_type = match weft_config::Format::of_path(file) {
        weft_config::Format::Json => "application/json",
        weft_config::Format::Yaml => "application/yaml",
    };
    Ok((text, Some(content_type)))
}

/// The control plane's errors for a document, one line each, named by file and field.
pub fn field_errors(name: &str, reply: &Reply) -> String {
    let body: Value = serde_json::from_slice(&reply.body).unwrap_or_default();
    let lines: Vec<String> = body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| match e["field"].as_str().unwrap_or_default() {
                    "" => format!("{name}: {}", e["reason"].as_str().unwrap_or_default()),
                    field => format!("{name}: {field}: {}", e["reason"].as_str().unwrap_or_default()),
                })
                .collect()
        })
        .unwrap_or_default();
    if lines.is_empty() {
        format!("{name}: {}", body["error"].as_str().unwrap_or("refused by the control plane"))
    } else {
        format!("the control plane refused {name}:\n{}", lines.join("\n"))
    }
}

/// `weft rollback VERSION`.
pub async fn rollback(args: &RollbackArgs) -> Result<(), Failure> {
    let client = ControlClient::new(&args.remote)?;
    let body = Bytes::from(json!({ "version": args.version }).to_string());
    let reply = client.call(Method::POST, "/v1/config/rollback", Some("application/json"), body).await?;
    let applied = reply.json()?;
    let version = applied["version"].as_u64().unwrap_or_default();
    if applied["unchanged"].as_bool() == Some(true) {
        println!("unchanged: version {version} is current and has the resources of version {}", args.version);
    } else {
        println!("rolled back to version {}: now current as version {version}", args.version);
    }
    Ok(())
}

/// `weft get modules|config|versions [-o json]`.
pub async fn get(args: &GetArgs) -> Result<(), Failure> {
    let client = ControlClient::new(&args.remote)?;
    let path = match args.what {
        GetWhat::Modules => "/v1/modules",
        GetWhat::Config => "/v1/config",
        GetWhat::Versions => "/v1/config/versions",
        GetWhat::Proxies => "/v1/proxies",
    };
    let answer = client.get(path).await?.json()?;
    let text = match args.output {
        Output::Json => format!("{}\n", serde_json::to_string_pretty(&answer).unwrap_or_default()),
        Output::Table => match args.what {
            GetWhat::Modules => modules_table(&answer),
            GetWhat::Config => config_table(&answer),
            GetWhat::Versions => versions_table(&answer),
            GetWhat::Proxies => proxies_table(&answer),
        },
    };
    print!("{text}");
    Ok(())
}

pub fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn list(value: &Value) -> String {
    value.as_array().map(|items| items.iter().map(text).collect::<Vec<_>>().join(", ")).unwrap_or_default()
}

fn modules_table(answer: &Value) -> String {
    let modules = answer["modules"].as_array().cloned().unwrap_or_default();
    if modules.is_empty() {
        return "no modules; push one with `weft module push FILE.wasm`\n".into();
    }
    let rows: Vec<Vec<String>> = modules
        .iter()
        .map(|m| {
            vec![
                text(&m["digest"]),
                table::size(m["size"].as_u64().unwrap_or(0)),
                text(&m["uploaded_at"]),
                list(&m["used_by"]),
            ]
        })
        .collect();
    table::render(&["DIGEST", "SIZE", "UPLOADED", "USED BY"], &rows)
}

fn proxies_table(answer: &Value) -> String {
    let proxies = answer["proxies"].as_array().cloned().unwrap_or_default();
    if proxies.is_empty() {
        return "no proxy has connected; start one with `weft proxy --control URL --node NAME`\n".into();
    }
    let rows: Vec<Vec<String>> = proxies
        .iter()
        .map(|p| {
            let labels = p["labels"].as_object().map_or_else(String::new, |labels| {
                labels.iter().map(|(k, v)| format!("{k}={}", text(v))).collect::<Vec<_>>().join(",")
            });
            let rejection = match &p["last_rejection"] {
                Value::Null => String::new(),
                refused => format!("version {}: {}", text(&refused["version"]), text(&refused["reason"])),
            };
            let identity = &p["identity"];
            let renewal = match &identity["last_renewal_error"] {
                Value::Null => String::new(),
                failed => format!("{} ({})", text(&failed["reason"]), text(&failed["at"])),
            };
            vec![
                text(&p["node"]),
                if p["connected"].as_bool() == Some(true) { "yes".into() } else { "no".into() },
                labels,
                text(&p["version"]),
                text(&identity["spiffe_id"]),
                text(&identity["expires_at"]),
                rejection,
                renewal,
            ]
        })
        .collect();
    table::render(
        &["NODE", "CONNECTED", "LABELS", "VERSION", "IDENTITY", "CERT EXPIRES", "LAST REJECTION", "RENEWAL ERROR"],
        &rows,
    )
}

fn versions_table(answer: &Value) -> String {
    let versions = answer["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        return "no config applied yet; apply one with `weft apply -f FILE`\n".into();
    }
    let rows: Vec<Vec<String>> = versions
        .iter()
        .map(|v| {
            let current = if v["current"].as_bool() == Some(true) { " *" } else { "" };
            let origin = match v["origin"]["kind"].as_str() {
                Some("rollback") => format!("rollback to {}", text(&v["origin"]["of"])),
                other => other.unwrap_or_default().to_owned(),
            };
            vec![
                format!("{}{current}", text(&v["version"])),
                text(&v["applied_at"]),
                text(&v["applied_by"]),
                origin,
                text(&v["summary"]),
            ]
        })
        .collect();
    table::render(&["VERSION", "APPLIED", "BY", "ORIGIN", "SUMMARY"], &rows) + "* current\n"
}

fn config_table(answer: &Value) -> String {
    let resources = &answer["resources"];
    if resources.is_null() {
        return "no config applied yet; apply one with `weft apply -f FILE`\n".into();
    }
    let mut rows = Vec::new();
    for listener in resources["listeners"].as_array().into_iter().flatten() {
        let mut detail = format!("{} {}", text(&listener["address"]), text(&listener["protocol"]));
        if !listener["cluster"].is_null() {
            detail += &format!(" -> {}", text(&listener["cluster"]));
        }
        if listener["filters"].as_array().is_some_and(|f| !f.is_empty()) {
            detail += &format!("; filters: {}", list(&listener["filters"]));
        }
        rows.push(vec!["listener".into(), text(&listener["name"]), detail]);
    }
    for cluster in resources["clusters"].as_array().into_iter().flatten() {
        let detail =
            format!("{} ({}, {})", list(&cluster["endpoints"]), text(&cluster["protocol"]), text(&cluster["lb"]));
        rows.push(vec!["cluster".into(), text(&cluster["name"]), detail]);
    }
    for filter in resources["filters"].as_array().into_iter().flatten() {
        rows.push(vec!["filter".into(), text(&filter["name"]), text(&filter["module"])]);
    }
    format!(
        "version {} ({}), applied {} by {}\n{}\n",
        text(&answer["version"]),
        text(&answer["summary"]),
        text(&answer["applied_at"]),
        text(&answer["applied_by"]),
        table::render(&["KIND", "NAME", "DETAIL"], &rows).trim_end()
    )
}
