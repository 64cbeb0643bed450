//! The mesh commands: `weft token create|list|revoke` (join tokens) and `weft mesh status|rotate`
//! (the CA and its root rotation), and the mesh flags of `weft control`.

use crate::cli::{Output, RemoteArgs};
use crate::client::ControlClient;
use crate::table;
use crate::Failure;
use bytes::Bytes;
use clap::{Args, Subcommand};
use http::Method;
use serde_json::{json, Value};
use std::path::PathBuf;
use weft_config::Duration;

/// The mesh flags of `weft control`.
#[derive(Args)]
pub struct ControlMeshArgs {
    /// The mesh's trust domain, in every SPIFFE ID it issues (spiffe://DOMAIN/ns/N/sa/S). Set at
    /// the first start; it cannot change later [default: weft.local].
    #[arg(long, value_name = "DOMAIN")]
    pub trust_domain: Option<String>,
    /// How long a proxy's certificate is valid; proxies renew at about half of it.
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    pub cert_ttl: Duration,
    /// The operator's CA for the first start, instead of a root made by weft: a PEM file with the
    /// CA certificate first, then any certificates above it up to the root (the root is what
    /// proxies trust; an intermediate under your root works). With --ca-key.
    #[arg(long, value_name = "FILE", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The private key of --ca-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
}

impl ControlMeshArgs {
    /// The control plane's mesh settings; files are read here, so a bad path is a usage error.
    pub fn settings(&self) -> Result<weft_control::identity::Settings, Failure> {
        if self.cert_ttl.get() < std::time::Duration::from_secs(1) {
            return Err(Failure::Invalid("--cert-ttl: must be at least 1s".into()));
        }
        let ca = match (&self.ca_cert, &self.ca_key) {
            (Some(cert), Some(key)) => Some((read(cert, "--ca-cert")?, read(key, "--ca-key")?)),
            _ => None,
        };
        Ok(weft_control::identity::Settings {
            trust_domain: self.trust_domain.clone(),
            cert_ttl: self.cert_ttl.get(),
            ca,
        })
    }
}

fn read(path: &std::path::Path, flag: &str) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| Failure::Invalid(format!("{flag} {}: cannot read: {e}", path.display())))
}

#[derive(Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make a join token: a new proxy joins the mesh with it (`weft proxy --join-token`) and gets
    /// the identity spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/SERVICE. Prints the token alone on
    /// stdout (it is shown once: the control plane keeps only its hash).
    ///
    /// A token is for one identity, valid for --ttl and for --uses joins; a join spends a use
    /// only when it succeeds. After joining, a proxy authenticates with its own credential, so
    /// the token can expire without harm.
    Create {
        /// The service of the identity.
        #[arg(long, value_name = "NAME")]
        service: String,
        /// The namespace of the identity.
        #[arg(long, value_name = "NAME", default_value = "default")]
        namespace: String,
        /// How long the token can be used (at most 720h).
        #[arg(long, value_name = "DURATION", default_value = "1h")]
        ttl: Duration,
        /// How many proxies may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Output format: the token alone (table), or the whole answer (json).
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// The join tokens that can still be used (their ids, identities, uses left; not the secrets).
    List {
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Revoke a join token by id (proxies that joined with it keep their identity).
    Revoke {
        /// The token's id (see `weft token list`).
        id: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

#[derive(Args)]
pub struct MeshArgs {
    #[command(subcommand)]
    pub command: MeshCommand,
}

#[derive(Subcommand)]
pub enum MeshCommand {
    /// The mesh: trust domain, certificate lifetime, the roots and any rotation under way.
    Status {
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Rotate the mesh's root without a failed request.
    ///
    /// `start` adds a new root to the trust bundle every proxy gets; once every proxy following
    /// the control plane holds it, the new root signs and proxies are asked to renew. `finish`
    /// removes the old root, once no following proxy needs it any more; without it, the old root
    /// leaves by itself when its last certificate could have expired (--cert-ttl after the switch).
    Rotate {
        #[command(subcommand)]
        step: RotateStep,
    },
}

#[derive(Subcommand)]
pub enum RotateStep {
    /// Start: a new root beside the old one (made by weft, or your CA with --ca-cert/--ca-key).
    Start {
        /// A CA of yours for the new root (PEM: the CA certificate, then those above it up to
        /// the root); with --ca-key.
        #[arg(long, value_name = "FILE", requires = "ca_key")]
        ca_cert: Option<PathBuf>,
        /// The private key of --ca-cert (PEM).
        #[arg(long, value_name = "FILE", requires = "ca_cert")]
        ca_key: Option<PathBuf>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Finish: the old root leaves the trust bundle. Refused while a proxy still needs it.
    Finish {
        /// Finish even so: proxies still holding a certificate of the old root are refused by
        /// their peers until they renew.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

/// `weft token …`.
pub async fn token(args: &TokenArgs) -> Result<(), Failure> {
    match &args.command {
        TokenCommand::Create { service, namespace, ttl, uses, output, remote } => {
            let client = ControlClient::new(remote)?;
            let body = json!({ "service": service, "namespace": namespace, "ttl": ttl.to_string(), "uses": uses });
            let made = post(&client, "/v1/tokens", body).await?;
            match output {
                Output::Json => print_json(&made),
                Output::Table => {
                    eprintln!(
                        "join token {} for {}: {} use(s), until {}",
                        text(&made["id"]),
                        text(&made["spiffe_id"]),
                        text(&made["uses"]),
                        text(&made["expires_at"])
                    );
                    println!("{}", text(&made["token"]));
                }
            }
            Ok(())
        }
        TokenCommand::List { output, remote } => {
            let answer = ControlClient::new(remote)?.get("/v1/tokens").await?.json()?;
            if let Output::Json = output {
                print_json(&answer);
                return Ok(());
            }
            let tokens = answer["tokens"].as_array().cloned().unwrap_or_default();
            if tokens.is_empty() {
                println!("no join tokens; make one with `weft token create --service NAME`");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = tokens
                .iter()
                .map(|t| vec![text(&t["id"]), text(&t["spiffe_id"]), text(&t["uses_left"]), text(&t["expires_at"])])
                .collect();
            print!("{}", table::render(&["ID", "IDENTITY", "USES LEFT", "EXPIRES"], &rows));
            Ok(())
        }
        TokenCommand::Revoke { id, remote } => {
            let client = ControlClient::new(remote)?;
            client.call(Method::DELETE, &format!("/v1/tokens/{id}"), None, Bytes::new()).await?;
            println!("join token {id} revoked");
            Ok(())
        }
    }
}

/// `weft mesh …`.
pub async fn mesh(args: &MeshArgs) -> Result<(), Failure> {
    match &args.command {
        MeshCommand::Status { output, remote } => {
            let answer = ControlClient::new(remote)?.get("/v1/mesh").await?.json()?;
            match output {
                Output::Json => print_json(&answer),
                Output::Table => print!("{}", status_table(&answer)),
            }
            Ok(())
        }
        MeshCommand::Rotate { step: RotateStep::Start { ca_cert, ca_key, remote } } => {
            let client = ControlClient::new(remote)?;
            let body = match (ca_cert, ca_key) {
                (Some(cert), Some(key)) => json!({ "cert": read(cert, "--ca-cert")?, "key": read(key, "--ca-key")? }),
                _ => json!({}),
            };
            let answer = post(&client, "/v1/mesh/rotation", body).await?;
            print!("root rotation started\n{}", status_table(&answer));
            Ok(())
        }
        MeshCommand::Rotate { step: RotateStep::Finish { force, remote } } => {
            let client = ControlClient::new(remote)?;
            let answer = post(&client, "/v1/mesh/rotation/finish", json!({ "force": force })).await?;
            print!("root rotation finished\n{}", status_table(&answer));
            Ok(())
        }
    }
}

async fn post(client: &ControlClient, path: &str, body: Value) -> Result<Value, Failure> {
    client.call(Method::POST, path, Some("application/json"), Bytes::from(body.to_string())).await?.json()
}

fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn status_table(mesh: &Value) -> String {
    let mut out = format!(
        "trust domain {}, certificates valid {}s, trust bundle {}\n",
        text(&mesh["trust_domain"]),
        text(&mesh["cert_ttl_seconds"]),
        short(&text(&mesh["trust_bundle"]["digest"]))
    );
    let rows: Vec<Vec<String>> = mesh["authorities"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let role = match a["retire_at"].as_str() {
                Some(at) => format!("{} (until {at})", text(&a["role"])),
                None => text(&a["role"]),
            };
            vec![short(&text(&a["id"])), role, text(&a["root"]), text(&a["root_expires_at"])]
        })
        .collect();
    out += &table::render(&["AUTHORITY", "ROLE", "ROOT", "ROOT EXPIRES"], &rows);
    let rotation = &mesh["rotation"];
    if !rotation.is_null() {
        out += &format!("rotation: {}, started {}", text(&rotation["phase"]), text(&rotation["started_at"]));
        let waiting = names(&rotation["waiting_for_bundle"]);
        let holders = names(&rotation["old_root_holders"]);
        if !waiting.is_empty() {
            out += &format!("; waiting for the new bundle at: {waiting}");
        }
        if !holders.is_empty() {
            out += &format!("; still on the old root: {holders}");
        }
        out.push('\n');
    }
    out
}

fn names(value: &Value) -> String {
    value.as_array().map(|a| a.iter().map(text).collect::<Vec<_>>().join(", ")).unwrap_or_default()
}

/// `sha256:` and the first 12 hex digits.
pub fn short(digest: &str) -> String {
    digest.get(..19).unwrap_or(digest).to_owned()
}
