//! The control plane's operations, free of HTTP: push and delete modules, apply and roll back
//! config, read them back. The REST handlers call these; so will the gRPC distribution, which
//! also subscribes to [`ControlPlane::subscribe`] to learn when the current version changes.

use crate::error::ControlError;
use crate::modules::{digest_of, is_digest, ModuleValidator};
use crate::records::{now_ms, ModuleInfo, ModuleRef, Origin, VersionRecord};
use crate::resources::{Document, Resources};
use crate::store::{Committed, Deleted, NewVersion, Store, StoreError};
use crate::token::{AdminToken, TokenError, TokenOrigin};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;
use weft_config::{FieldError, Format};

/// How the control plane is set up.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where the store and the admin token live.
    pub data_dir: PathBuf,
    /// The largest module `POST /v1/modules` accepts, in bytes (413 beyond).
    pub max_module_size: u64,
    /// The mesh's trust domain, certificate lifetime and operator CA.
    pub identity: crate::identity::Settings,
}

impl Settings {
    /// The default module size limit: 32 MiB.
    pub const DEFAULT_MAX_MODULE_SIZE: u64 = 32 * 1024 * 1024;
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the admin token: {0}")]
    Token(#[from] TokenError),
    #[error("{0}")]
    Wasm(String),
    #[error("the mesh: {0}")]
    Identity(#[from] crate::identity::IdentityError),
}

/// Who made a change, for the version history.
#[derive(Clone, Debug)]
pub struct Author {
    /// The token's principal: `admin` while the admin token is the only one.
    pub by: String,
    pub client: Option<IpAddr>,
}

/// What applying (or rolling back) did.
#[derive(Debug)]
pub enum Applied {
    /// A new version, current now.
    New(VersionRecord),
    /// The resources equal the current version's: it stays current, no version is added.
    Unchanged(VersionRecord),
}

/// The state and operations of one control plane.
pub struct ControlPlane {
    settings: Settings,
    store: Store,
    token: AdminToken,
    validator: ModuleValidator,
    /// The current config version (0: none yet); changes after each commit.
    current: watch::Sender<u64>,
    /// The proxies that connected, and what they run.
    proxies: crate::distribution::Proxies,
    /// Chaos experiments, going and past.
    experiments: Arc<crate::chaos::Experiments>,
    /// The mesh's CA and the proxies' identities.
    mesh: Arc<crate::identity::Mesh>,
}

/// Who calls the proxies' gRPC API.
#[derive(Clone, Debug)]
pub enum ProxyCaller {
    /// The admin token (proxies of before the mesh, and tools): any node.
    Admin,
    /// A proxy credential: the node that joined with it, only.
    Node(String),
}

impl ProxyCaller {
    /// Whether this caller may speak for `node`.
    pub fn may_be(&self, node: &str) -> bool {
        match self {
            ProxyCaller::Admin => true,
            ProxyCaller::Node(own) => own == node,
        }
    }
}

impl ControlPlane {
    /// Opens the store in the data dir (creating it and the admin token at first start).
    /// Blocks on disk I/O and starts the Wasm engine.
    pub fn open(settings: Settings) -> Result<(Arc<ControlPlane>, TokenOrigin), OpenError> {
        let store = Store::open(&settings.data_dir)?;
        let (token, origin) = AdminToken::load_or_create(&store, &settings.data_dir)?;
        let validator = ModuleValidator::new().map_err(OpenError::Wasm)?;
        let (current, _) = watch::channel(store.current_version()?);
        let proxies = crate::distribution::Proxies::new();
        let mesh = Arc::new(crate::identity::Mesh::open(&store, &settings.identity)?);
        let experiments = Arc::new(crate::chaos::Experiments::open(store.clone())?);
        Ok((Arc::new(ControlPlane { settings, store, token, validator, current, proxies, experiments, mesh }), origin))
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The store, for readers that need more than the operations here (the distribution).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The chaos experiments.
    pub fn experiments(&self) -> &Arc<crate::chaos::Experiments> {
        &self.experiments
    }

    /// The proxies that connected since the control plane started.
    pub fn proxies(&self) -> &crate::distribution::Proxies {
        &self.proxies
    }

    /// The mesh's CA and identities.
    pub fn mesh(&self) -> &Arc<crate::identity::Mesh> {
        &self.mesh
    }

    /// Who presents `Authorization` header value `header` on the proxies' API: the admin token,
    /// or a proxy credential; `None` for anything else.
    pub fn authorize_proxy(&self, header: Option<&str>) -> Option<ProxyCaller> {
        if self.authorize(header, None).is_ok() {
            return Some(ProxyCaller::Admin);
        }
        self.mesh.authenticate(header).map(|credential| ProxyCaller::Node(credential.node))
    }

    /// The current config version, updated after every commit (apply or rollback). A watcher
    /// sees the latest value, not every step: read the version's resources from the store.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.current.subscribe()
    }

    /// Who presents `Authorization` header value `header`; refused unless it is the admin token.
    pub fn authorize(&self, header: Option<&str>, client: Option<IpAddr>) -> Result<Author, ControlError> {
        let presented = header
            .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or(ControlError::Unauthorized)?;
        if self.token.verify(presented) {
            Ok(Author { by: "admin".to_owned(), client })
        } else {
            Err(ControlError::Unauthorized)
        }
    }

    /// Checks and stores a module; `true` when it is new, `false` when these bytes were stored
    /// already (they were checked then).
    pub async fn push_module(&self, bytes: bytes::Bytes) -> Result<(ModuleInfo, bool), ControlError> {
        let limit = self.settings.max_module_size;
        if bytes.len() as u64 > limit {
            return Err(ControlError::TooLarge { limit });
        }
        let digest = digest_of(&bytes);
        let known = digest.clone();
        if let Some(info) = self.blocking(move |store| store.module_info(&known)).await? {
            return Ok((info, false));
        }
        let validator = self.validator.clone();
        let checked = bytes.clone();
        tokio::task::spawn_blocking(move || validator.check(&checked))
            .await
            .map_err(|e| ControlError::Internal(format!("module check: {e}")))?
            .map_err(ControlError::InvalidModule)?;
        let (info, created) = self.blocking(move |store| store.put_module(&digest, &bytes, now_ms())).await?;
        if created {
            tracing::info!(digest = %info.digest, size = info.size, "module stored");
        }
        Ok((info, created))
    }

    /// Every module, each with the filters of the current config that load it.
    pub async fn modules(&self) -> Result<Vec<(ModuleInfo, Vec<String>)>, ControlError> {
        let (modules, current) = self.blocking(|store| Ok((store.modules()?, store.current()?))).await?;
        let mut users: HashMap<String, Vec<String>> = HashMap::new();
        for module_ref in current.iter().flat_map(VersionRecord::module_refs) {
            users.entry(module_ref.module).or_default().push(module_ref.filter);
        }
        Ok(modules
            .into_iter()
            .map(|module| {
                let used_by = users.remove(&module.digest).unwrap_or_default();
                (module, used_by)
            })
            .collect())
    }

    /// A module's metadata and the filters of the current config that load it.
    pub async fn module_info(&self, digest: &str) -> Result<(ModuleInfo, Vec<String>), ControlError> {
        let wanted = check_digest_param(digest)?;
        let (info, current) = self.blocking(move |store| Ok((store.module_info(&wanted)?, store.current()?))).await?;
        let info = info.ok_or_else(|| no_module(digest))?;
        let used_by = current
            .iter()
            .flat_map(VersionRecord::module_refs)
            .filter(|r| r.module == info.digest)
            .map(|r| r.filter)
            .collect();
        Ok((info, used_by))
    }

    /// A module's bytes.
    pub async fn module_bytes(&self, digest: &str) -> Result<Vec<u8>, ControlError> {
        let wanted = check_digest_param(digest)?;
        self.blocking(move |store| store.module(&wanted)).await?.ok_or_else(|| no_module(digest))
    }

    /// Deletes a module, refused while the current config loads it.
    pub async fn delete_module(&self, digest: &str) -> Result<(), ControlError> {
        let wanted = check_digest_param(digest)?;
        match self.blocking(move |store| store.delete_module(&wanted)).await? {
            Deleted::Done => {
                tracing::info!(%digest, "module deleted");
                Ok(())
            }
            Deleted::NotFound => Err(no_module(digest)),
            Deleted::InUse { version, filters } => Err(ControlError::Conflict(format!(
                "module {digest} is used by filter {} of the current config (version {version}); apply a config \
                 without it first",
                filters.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// Validates a document whole and commits it as the next version; nothing changes when any
    /// part of it is wrong.
    pub async fn apply(&self, text: &str, format: Format, author: Author) -> Result<Applied, ControlError> {
        let document = Document::parse(text, format).map_err(ControlError::InvalidConfig)?;
        let refs: Vec<ModuleRef> = document.module_refs().into_iter().filter(|r| is_digest(&r.module)).collect();
        match document.validate() {
            Ok(resources) => self.commit(resources, Origin::Apply, author).await,
            Err(mut errors) => {
                // Report unknown modules with the rest, so one round trip shows every problem.
                let missing = self.blocking(move |store| store.missing_modules(&refs)).await?;
                errors.extend(missing.iter().map(unknown_module));
                Err(ControlError::InvalidConfig(errors))
            }
        }
    }

    /// Makes a copy of version `number` the new current version (history only grows).
    pub async fn rollback(&self, number: u64, author: Author) -> Result<Applied, ControlError> {
        let record = self.blocking(move |store| store.version(number)).await?.ok_or_else(|| {
            ControlError::NotFound(format!("there is no config version {number}; see GET /v1/config/versions"))
        })?;
        let resources = Resources::revalidate(&record.resources, &record.selector).map_err(|errors| {
            ControlError::Conflict(format!(
                "version {number} is not valid for this weft any more: {}",
                errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
            ))
        })?;
        self.commit(resources, Origin::Rollback { of: number }, author).await.map_err(|error| match error {
            ControlError::InvalidConfig(errors) => ControlError::Conflict(format!(
                "version {number} cannot come back: {}",
                errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
            )),
            other => other,
        })
    }

    /// The current version, if any config was applied.
    pub async fn current(&self) -> Result<Option<VersionRecord>, ControlError> {
        self.blocking(|store| store.current()).await
    }

    /// Every version, oldest first, and the current version's number.
    pub async fn versions(&self) -> Result<(Vec<VersionRecord>, u64), ControlError> {
        self.blocking(|store| Ok((store.versions()?, store.current_version()?))).await
    }

    async fn commit(&self, resources: Resources, origin: Origin, author: Author) -> Result<Applied, ControlError> {
        let new = NewVersion {
            applied_at_ms: now_ms(),
            applied_by: author.by,
            client: author.client.map(|ip| ip.to_string()),
            origin,
            digest: resources.digest,
            summary: resources.summary,
            selector: resources.selector,
            resources: resources.canonical,
        };
        match self.blocking(move |store| store.commit(new)).await? {
            Committed::Version(record) => {
                let version = record.version;
                tracing::info!(version, digest = %record.digest, summary = %record.summary, "config version committed");
                // Commits may finish out of order on different threads: the watch only moves forward.
                self.current.send_if_modified(|current| {
                    let newer = version > *current;
                    if newer {
                        *current = version;
                    }
                    newer
                });
                Ok(Applied::New(record))
            }
            Committed::Unchanged(record) => {
                tracing::info!(version = record.version, "config unchanged: equal to the current version");
                Ok(Applied::Unchanged(record))
            }
            Committed::MissingModules(missing) => {
                Err(ControlError::InvalidConfig(missing.iter().map(unknown_module).collect()))
            }
        }
    }

    /// Runs a store call on the blocking pool.
    async fn blocking<T, F>(&self, call: F) -> Result<T, ControlError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || call(&store))
            .await
            .map_err(|e| ControlError::Internal(format!("store call: {e}")))?
            .map_err(ControlError::Store)
    }
}

fn unknown_module(module_ref: &ModuleRef) -> FieldError {
    FieldError::new(
        &module_ref.field,
        format!("unknown module {}: push it first (`weft module push FILE.wasm`)", module_ref.module),
    )
}

fn check_digest_param(digest: &str) -> Result<String, ControlError> {
    if is_digest(digest) {
        Ok(digest.to_owned())
    } else {
        Err(ControlError::BadRequest(format!("{digest:?} is not a module digest: expected sha256:<64 lower-case hex>")))
    }
}

fn no_module(digest: &str) -> ControlError {
    ControlError::NotFound(format!("no module {digest}"))
}
