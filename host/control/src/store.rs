//! The control plane's state in one redb file, `DATA_DIR/control.redb`: modules by digest,
//! config versions, the current-version pointer and the admin token's hash.
//!
//! Every change is one write transaction, committed with an fsync before it is acknowledged, so
//! nothing a client was told about is lost on `kill -9` or power loss. Write transactions are
//! serialized by redb, which is what makes "delete a module unless the current config uses it"
//! and "commit a config whose modules all exist" free of races.
//!
//! Tables:
//! - `modules`: digest → module bytes
//! - `module_info`: digest → (size, uploaded at, Unix ms)
//! - `config_versions`: number → [`VersionRecord`] as JSON
//! - `meta`: `format` (u64), `current_version` (u64), `admin_token_sha256` (32 bytes)
//! - `mesh`, `join_tokens`, `proxy_credentials`: the mesh's CA and identities ([`mesh`])
//! - `experiments`: number → a chaos experiment's record as JSON ([`experiments`])
//!
//! A refusal returns before `commit`: dropping a write transaction uncommitted aborts it.
//! Calls block on disk I/O: async callers run them on the blocking pool.

use crate::records::{ModuleInfo, ModuleRef, Origin, VersionRecord};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MODULES: TableDefinition<&str, &[u8]> = TableDefinition::new("modules");
const MODULE_INFO: TableDefinition<&str, (u64, u64)> = TableDefinition::new("module_info");
const VERSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("config_versions");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// The layout this code reads and writes; a newer one is refused rather than misread.
const FORMAT: u64 = 1;
const FORMAT_KEY: &str = "format";
const CURRENT_KEY: &str = "current_version";
const TOKEN_KEY: &str = "admin_token_sha256";

/// The store's file inside the data dir.
pub const FILE_NAME: &str = "control.redb";

/// Why the store cannot do what was asked (as opposed to a refusal, which is a normal outcome).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: another weft control is using this data dir", path.display())]
    InUse { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// Boxed: redb's error is large, and results of store calls are everywhere.
    #[error("the store: {0}")]
    Db(Box<redb::Error>),
    #[error("the store holds an unreadable record: {0}")]
    Corrupt(String),
    #[error("the data dir was written by a newer weft (store format {0}; this weft reads {FORMAT})")]
    NewerFormat(u64),
}

// redb has an error type per operation; all of them are "the store failed" here.
macro_rules! from_redb {
    ($($ty:ty),*) => {$(
        impl From<$ty> for StoreError {
            fn from(error: $ty) -> Self {
                StoreError::Db(Box::new(error.into()))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// A config version about to be committed; the store gives it its number.
#[derive(Clone, Debug)]
pub struct NewVersion {
    pub applied_at_ms: u64,
    pub applied_by: String,
    pub client: Option<String>,
    pub origin: Origin,
    pub digest: String,
    pub summary: String,
    pub selector: BTreeMap<String, String>,
    pub resources: Value,
}

/// What committing a version did.
#[derive(Debug)]
pub enum Committed {
    /// It is the current version now.
    Version(VersionRecord),
    /// The current version has these very resources and selector (the same digest): it stays
    /// current, and no version is added.
    Unchanged(VersionRecord),
    /// Refused: these module references name no stored module. Nothing changed.
    MissingModules(Vec<ModuleRef>),
}

/// What deleting a module did.
#[derive(Debug, PartialEq, Eq)]
pub enum Deleted {
    Done,
    NotFound,
    /// Refused: the current config's filters (named) load it. Nothing changed.
    InUse {
        version: u64,
        filters: Vec<String>,
    },
}

/// A handle on the store; clones share the one open database.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

impl Store {
    /// Opens (or creates) the store in `dir`, creating the folder (mode 0700) when missing.
    /// After a crash, redb checks and repairs the file before this returns.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        create_private_dir(dir)?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|error| match error {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse { path: path.clone() },
            other => other.into(),
        })?;
        let store = Store { db: Arc::new(db) };
        store.initialize()?;
        Ok(store)
    }

    /// Creates the tables and stamps the format on first use; refuses a newer format.
    fn initialize(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            tx.open_table(MODULES)?;
            tx.open_table(MODULE_INFO)?;
            tx.open_table(VERSIONS)?;
            Store::initialize_mesh(&tx)?;
            let mut meta = tx.open_table(META)?;
            let format = meta.get(FORMAT_KEY)?.map(|v| decode_u64(v.value())).transpose()?;
            match format {
                Some(found) if found > FORMAT => return Err(StoreError::NewerFormat(found)),
                Some(_) => {}
                None => {
                    meta.insert(FORMAT_KEY, FORMAT.to_le_bytes().as_slice())?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The sha256 of the admin token, once one was made.
    pub fn token_hash(&self) -> Result<Option<[u8; 32]>, StoreError> {
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META)?;
        let Some(value) = meta.get(TOKEN_KEY)? else {
            return Ok(None);
        };
        let hash = value.value().try_into().map_err(|_| StoreError::Corrupt("the admin token hash".into()))?;
        Ok(Some(hash))
    }

    /// Records the admin token's sha256.
    pub fn set_token_hash(&self, hash: &[u8; 32]) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(META)?.insert(TOKEN_KEY, hash.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// Stores a module under its digest; `false` when it was already there (then nothing changes,
    /// and the info returned is the first upload's).
    pub fn put_module(&self, digest: &str, bytes: &[u8], now_ms: u64) -> Result<(ModuleInfo, bool), StoreError> {
        let tx = self.db.begin_write()?;
        let outcome = {
            let mut info = tx.open_table(MODULE_INFO)?;
            let existing = info.get(digest)?.map(|v| v.value());
            match existing {
                Some((size, uploaded_at_ms)) => (ModuleInfo { digest: digest.to_owned(), size, uploaded_at_ms }, false),
                None => {
                    let size = bytes.len() as u64;
                    tx.open_table(MODULES)?.insert(digest, bytes)?;
                    info.insert(digest, (size, now_ms))?;
                    (ModuleInfo { digest: digest.to_owned(), size, uploaded_at_ms: now_ms }, true)
                }
            }
        };
        if outcome.1 {
            tx.commit()?;
        }
        Ok(outcome)
    }

    /// A module's bytes.
    pub fn module(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(MODULES)?;
        Ok(table.get(digest)?.map(|v| v.value().to_vec()))
    }

    /// A module's metadata.
    pub fn module_info(&self, digest: &str) -> Result<Option<ModuleInfo>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(MODULE_INFO)?;
        Ok(table.get(digest)?.map(|v| {
            let (size, uploaded_at_ms) = v.value();
            ModuleInfo { digest: digest.to_owned(), size, uploaded_at_ms }
        }))
    }

    /// Every stored module, by digest.
    pub fn modules(&self) -> Result<Vec<ModuleInfo>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(MODULE_INFO)?;
        let mut modules = Vec::new();
        for entry in table.iter()? {
            let (digest, info) = entry?;
            let (size, uploaded_at_ms) = info.value();
            modules.push(ModuleInfo { digest: digest.value().to_owned(), size, uploaded_at_ms });
        }
        Ok(modules)
    }

    /// Deletes a module unless the current config loads it.
    pub fn delete_module(&self, digest: &str) -> Result<Deleted, StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut info = tx.open_table(MODULE_INFO)?;
            if info.get(digest)?.is_none() {
                return Ok(Deleted::NotFound);
            }
            let meta = tx.open_table(META)?;
            let versions = tx.open_table(VERSIONS)?;
            if let Some(current) = current_record(&meta, &versions)? {
                let filters: Vec<String> =
                    current.module_refs().into_iter().filter(|r| r.module == digest).map(|r| r.filter).collect();
                if !filters.is_empty() {
                    return Ok(Deleted::InUse { version: current.version, filters });
                }
            }
            info.remove(digest)?;
            tx.open_table(MODULES)?.remove(digest)?;
        }
        tx.commit()?;
        Ok(Deleted::Done)
    }

    /// Which of `refs` name no stored module (a read-only check; [`Store::commit`] checks again).
    pub fn missing_modules(&self, refs: &[ModuleRef]) -> Result<Vec<ModuleRef>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(MODULE_INFO)?;
        let mut missing = Vec::new();
        for module_ref in refs {
            if table.get(module_ref.module.as_str())?.is_none() {
                missing.push(module_ref.clone());
            }
        }
        Ok(missing)
    }

    /// Commits `new` as the next version and makes it current, if every module it loads is
    /// stored (checked in the same transaction, so a module cannot be deleted in between) and it
    /// differs from the current version.
    pub fn commit(&self, new: NewVersion) -> Result<Committed, StoreError> {
        let tx = self.db.begin_write()?;
        let record = {
            let info = tx.open_table(MODULE_INFO)?;
            let mut versions = tx.open_table(VERSIONS)?;
            let mut meta = tx.open_table(META)?;
            let mut missing = Vec::new();
            let mut seen = HashSet::new();
            for module_ref in crate::records::module_refs(&new.resources) {
                if info.get(module_ref.module.as_str())?.is_none() && seen.insert(module_ref.field.clone()) {
                    missing.push(module_ref);
                }
            }
            if !missing.is_empty() {
                return Ok(Committed::MissingModules(missing));
            }
            if let Some(current) = current_record(&meta, &versions)? {
                if current.digest == new.digest {
                    return Ok(Committed::Unchanged(current));
                }
            }
            let number = versions.last()?.map_or(0, |(k, _)| k.value()) + 1;
            let record = VersionRecord {
                version: number,
                applied_at_ms: new.applied_at_ms,
                applied_by: new.applied_by,
                client: new.client,
                origin: new.origin,
                digest: new.digest,
                summary: new.summary,
                selector: new.selector,
                resources: new.resources,
            };
            let encoded = serde_json::to_vec(&record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            versions.insert(number, encoded.as_slice())?;
            meta.insert(CURRENT_KEY, number.to_le_bytes().as_slice())?;
            record
        };
        tx.commit()?;
        Ok(Committed::Version(record))
    }

    /// The current version's number; 0 before any config was applied.
    pub fn current_version(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META)?;
        let current = meta.get(CURRENT_KEY)?.map(|v| decode_u64(v.value())).transpose()?;
        Ok(current.unwrap_or(0))
    }

    /// The current version, if any config was applied.
    pub fn current(&self) -> Result<Option<VersionRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        current_record(&tx.open_table(META)?, &tx.open_table(VERSIONS)?)
    }

    /// Version `number`, if it exists.
    pub fn version(&self, number: u64) -> Result<Option<VersionRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let versions = tx.open_table(VERSIONS)?;
        versions.get(number)?.map(|v| decode_record(v.value())).transpose()
    }

    /// Every version, oldest first.
    pub fn versions(&self) -> Result<Vec<VersionRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let versions = tx.open_table(VERSIONS)?;
        let mut records = Vec::with_capacity(versions.len()? as usize);
        for entry in versions.iter()? {
            records.push(decode_record(entry?.1.value())?);
        }
        Ok(records)
    }
}

fn current_record(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    versions: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<Option<VersionRecord>, StoreError> {
    let Some(current) = meta.get(CURRENT_KEY)?.map(|v| decode_u64(v.value())).transpose()? else {
        return Ok(None);
    };
    let record = versions.get(current)?.ok_or_else(|| StoreError::Corrupt(format!("current version {current}")))?;
    decode_record(record.value()).map(Some)
}

fn decode_u64(bytes: &[u8]) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt("a number in meta".into()))?;
    Ok(u64::from_le_bytes(array))
}

fn decode_record(bytes: &[u8]) -> Result<VersionRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("a config version: {e}")))
}

/// The data dir holds the admin token and every module: readable by its owner alone.
fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    let io = |source| StoreError::Io { path: dir.to_owned(), source };
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)
}

mod experiments;
pub mod mesh;

#[cfg(test)]
mod tests;
