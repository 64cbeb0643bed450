//! `weft chaos run|list|show|abort`: chaos experiments on a control plane. `run` follows an
//! experiment as it happens and prints its report at the end; Ctrl-C aborts it.

use crate::cli::{ChaosCommand, Output, RemoteArgs};
use crate::client::ControlClient;
use crate::remote_cmd::{field_errors, read_document, text};
use crate::table;
use crate::Failure;
use anyhow::anyhow;
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// How often `weft chaos run` asks how the experiment is going.
const POLL: Duration = Duration::from_secs(1);

pub async fn run(command: ChaosCommand) -> Result<(), Failure> {
    match command {
        ChaosCommand::Run { file, detach, output, remote } => start(&file, detach, output, &remote).await,
        ChaosCommand::List { output, remote } => {
            let answer = ControlClient::new(&remote)?.get("/v1/experiments").await?.json()?;
            print(output, &answer, list_table);
            Ok(())
        }
        ChaosCommand::Show { id, output, remote } => {
            let answer = ControlClient::new(&remote)?.get(&format!("/v1/experiments/{id}")).await?.json()?;
            print(output, &answer, report);
            Ok(())
        }
        ChaosCommand::Abort { id, all, remote } => {
            let client = ControlClient::new(&remote)?;
            if all {
                let answer = client.call(Method::POST, "/v1/experiments/abort", None, Bytes::new()).await?.json()?;
                let aborted: Vec<String> = answer["aborted"].as_array().into_iter().flatten().map(text).collect();
                if aborted.is_empty() {
                    println!("no experiment was going");
                } else {
                    println!("aborted {}: their faults are out", aborted.join(", "));
                }
                return Ok(());
            }
            let id = id.unwrap_or_default();
            let answer =
                client.call(Method::POST, &format!("/v1/experiments/{id}/abort"), None, Bytes::new()).await?.json()?;
            println!("{id}: {}", ending(&answer));
            Ok(())
        }
    }
}

fn print(output: Output, answer: &Value, table: fn(&Value) -> String) {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(answer).unwrap_or_default()),
        Output::Table => print!("{}", table(answer)),
    }
}

/// `weft chaos run FILE`: starts it, then (unless detached) prints what happens until it ends.
async fn start(file: &Path, detach: bool, output: Output, remote: &RemoteArgs) -> Result<(), Failure> {
    let client = ControlClient::new(remote)?;
    let name = file.display().to_string();
    let (document, content_type) = read_document(file)?;
    let reply = client.exchange(Method::POST, "/v1/experiments", content_type, Bytes::from(document)).await?;
    if reply.status == StatusCode::BAD_REQUEST {
        return Err(Failure::Invalid(field_errors(&name, &reply)));
    }
    if !reply.status.is_success() {
        return Err(client.refused(&reply));
    }
    let experiment = reply.json()?;
    let id = text(&experiment["id"]);
    if experiment["status"] == "scheduled" {
        eprintln!(
            "{id}: scheduled on {:?}; next run at {}",
            text(&experiment["schedule"]),
            text(&experiment["next_run_at"])
        );
        println!("{id}");
        return Ok(());
    }
    eprintln!(
        "{id}: started on {} of {} matching proxies ({}); faults in {} for {}",
        experiment["proxies"].as_array().map_or(0, Vec::len),
        text(&experiment["matched_proxies"]),
        list(&experiment["proxies"]),
        text(&experiment["spec"]["observe"]),
        text(&experiment["spec"]["duration"]),
    );
    if detach {
        println!("{id}");
        return Ok(());
    }
    eprintln!("following it; Ctrl-C aborts it (its faults are taken out at once)");
    let mut shown = 0;
    let mut interrupt = std::pin::pin!(tokio::signal::ctrl_c());
    let last = loop {
        let current = client.get(&format!("/v1/experiments/{id}")).await?.json()?;
        shown = print_new_events(&current, shown);
        if current["status"] == "ended" {
            break current;
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = &mut interrupt => {
                eprintln!("interrupted: aborting {id}");
                let aborted = client.call(Method::POST, &format!("/v1/experiments/{id}/abort"), None, Bytes::new()).await?.json()?;
                print_new_events(&aborted, shown);
                break aborted;
            }
        }
    };
    print(output, &last, report);
    match last["ended"]["reason"].as_str() {
        Some("completed") => Ok(()),
        _ => Err(Failure::Runtime(anyhow!("{id} ended early: {}", ending(&last)))),
    }
}

/// Prints the timeline events after the first `shown`, with the guard's latest reading; returns
/// how many are shown now.
fn print_new_events(experiment: &Value, shown: usize) -> usize {
    let events = experiment["timeline"].as_array().cloned().unwrap_or_default();
    for event in events.iter().skip(shown) {
        eprintln!("  {}", event_line(event));
    }
    if experiment["status"] == "injecting" {
        if let Some(reading) = experiment["readings"].as_array().and_then(|r| r.last()) {
            eprintln!("  {}  guard reading    {}", clock(&reading["at"]), reading_line(reading));
        }
    }
    events.len()
}

fn event_line(event: &Value) -> String {
    let mut line = format!("{}  {:<17}", clock(&event["at"]), text(&event["event"]).replace('_', " "));
    if !event["proxy"].is_null() {
        line.push_str(&format!("{}: ", text(&event["proxy"])));
    }
    line.push_str(&text(&event["detail"]));
    line.trim_end().to_owned()
}

fn reading_line(reading: &Value) -> String {
    let p99 = if reading["p99_ms"].is_null() { "-".to_owned() } else { format!("{}ms", text(&reading["p99_ms"])) };
    format!("{} requests, error rate {}%, p99 {p99}", text(&reading["requests"]), text(&reading["error_percent"]))
}

/// `10:04:05.123` of an RFC 3339 time.
fn clock(at: &Value) -> String {
    let at = text(at);
    at.get(11..23).map_or(at.clone(), str::to_owned)
}

fn list(value: &Value) -> String {
    value.as_array().map(|items| items.iter().map(text).collect::<Vec<_>>().join(", ")).unwrap_or_default()
}

fn ending(experiment: &Value) -> String {
    match &experiment["ended"] {
        Value::Null => text(&experiment["status"]),
        ended if text(&ended["detail"]).is_empty() => format!("ended ({})", text(&ended["reason"])),
        ended => format!("ended ({}: {})", text(&ended["reason"]), text(&ended["detail"])),
    }
}

fn list_table(answer: &Value) -> String {
    let experiments = answer["experiments"].as_array().cloned().unwrap_or_default();
    if experiments.is_empty() {
        return "no experiments; start one with `weft chaos run FILE`\n".into();
    }
    let rows: Vec<Vec<String>> = experiments
        .iter()
        .map(|e| {
            let status = match (&e["status"], &e["ended"]) {
                (_, Value::Null) if e["status"] == "scheduled" => {
                    format!("scheduled, next {}", text(&e["next_run_at"]))
                }
                (status, Value::Null) => text(status),
                (_, ended) => format!("ended: {}", text(&ended["reason"])),
            };
            vec![text(&e["id"]), text(&e["name"]), status, list(&e["proxies"]), text(&e["created_at"])]
        })
        .collect();
    table::render(&["ID", "NAME", "STATUS", "PROXIES", "CREATED"], &rows)
}

/// The readable report of one experiment.
fn report(e: &Value) -> String {
    let spec = &e["spec"];
    let mut out = format!("{} {}: {}\n", text(&e["id"]), text(&e["name"]), ending(e));
    let target = &spec["target"];
    let mut aimed = vec![match target["selector"].as_object() {
        Some(selector) if !selector.is_empty() => {
            format!(
                "proxies {}",
                selector.iter().map(|(k, v)| format!("{k}={}", text(v))).collect::<Vec<_>>().join(",")
            )
        }
        _ => "every proxy".to_owned(),
    }];
    for field in ["listener", "path", "path_prefix", "source_principal"] {
        if !target[field].is_null() {
            aimed.push(format!("{} {}", field.replace('_', " "), text(&target[field])));
        }
    }
    if target["methods"].as_array().is_some_and(|m| !m.is_empty()) {
        aimed.push(format!("methods {}", list(&target["methods"])));
    }
    out += &format!("target    {}\n", aimed.join("; "));
    if e["status"] == "scheduled" || !e["schedule"].is_null() {
        out += &format!("schedule  {} (UTC); runs: {}\n", text(&spec["schedule"]), list(&e["runs"]));
    } else {
        out += &format!(
            "proxies   {} of {} matching: {}\n",
            e["proxies"].as_array().map_or(0, Vec::len),
            text(&e["matched_proxies"]),
            list(&e["proxies"])
        );
    }
    let faults: Vec<String> = spec["faults"].as_array().into_iter().flatten().map(describe_fault).collect();
    out += &format!(
        "faults    {} for {}, watched {} before and after\n",
        faults.join("; "),
        text(&spec["duration"]),
        text(&spec["observe"])
    );
    if let Some(guard) = spec["guard"].as_object() {
        let mut limits = Vec::new();
        if let Some(max) = guard.get("max_error_percent").filter(|v| !v.is_null()) {
            limits.push(format!("error rate > {}%", text(max)));
        }
        if let Some(max) = guard.get("max_p99").filter(|v| !v.is_null()) {
            limits.push(format!("p99 > {}", text(max)));
        }
        out += &format!(
            "guard     {} over {}, from {} requests\n",
            limits.join(" or "),
            text(&spec["guard"]["window"]),
            text(&spec["guard"]["min_requests"])
        );
    }
    out += "timeline\n";
    for event in e["timeline"].as_array().into_iter().flatten() {
        out += &format!("  {}\n", event_line(event));
    }
    let results = &e["results"];
    if results.is_object() {
        let rows: Vec<Vec<String>> = ["before", "during", "after"]
            .iter()
            .map(|phase| {
                let p = &results[*phase];
                let ms = |v: &Value| if v.is_null() { "-".to_owned() } else { format!("{}ms", text(v)) };
                vec![
                    phase.to_string(),
                    text(&p["requests"]),
                    text(&p["errors"]),
                    format!("{}%", text(&p["error_percent"])),
                    ms(&p["p50_ms"]),
                    ms(&p["p99_ms"]),
                ]
            })
            .collect();
        out += "results (the targeted traffic, all proxies)\n";
        out += &indent(&table::render(&["PHASE", "REQUESTS", "ERRORS", "ERROR RATE", "P50", "P99"], &rows));
        let rows: Vec<Vec<String>> = results["proxies"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let fields = ["requests", "errors", "delays", "aborts", "throttles"];
                let mut row = vec![text(&p["proxy"])];
                row.extend(fields.iter().map(|f| text(&p[*f])));
                row.push(clock(&p["applied_at"]));
                row.push(clock(&p["removed_at"]));
                row.push(text(&p["refused"]));
                row
            })
            .collect();
        if !rows.is_empty() {
            out += "per proxy\n";
            out += &indent(&table::render(
                &["PROXY", "REQUESTS", "ERRORS", "DELAYS", "ABORTS", "THROTTLES", "APPLIED", "REMOVED", "REFUSED"],
                &rows,
            ));
        }
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

fn describe_fault(fault: &Value) -> String {
    let Some((kind, body)) = fault.as_object().and_then(|o| o.iter().next()) else { return text(fault) };
    let share = |field: &str| body.get(field).map_or("100%".to_owned(), |p| format!("{}%", text(p)));
    match kind.as_str() {
        "delay" => format!("delay {} {}", text(&body["fixed"]), share("percentage")),
        "abort" => format!("abort {} {}", text(&body["status"]), share("percentage")),
        "grpc_abort" => format!("gRPC abort {} {}", text(&body["status"]), share("percentage")),
        "throttle" => format!("throttle {} KiB/s {}", text(&body["kib_per_second"]), share("percentage")),
        "toxic" => format!("toxic {} {}", text(&body["type"]), text(&body["stream"])),
        other => other.to_owned(),
    }
}
