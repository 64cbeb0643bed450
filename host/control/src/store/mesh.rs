//! The mesh's tables in the store: the certificate authorities (`mesh`, key `ca`), the join
//! tokens and the proxy credentials, each a JSON record by key. The identity module owns what
//! the records mean; here they are bytes, read and changed in transactions.

use super::{Store, StoreError};
use redb::{ReadableTable, TableDefinition};

const MESH: TableDefinition<&str, &[u8]> = TableDefinition::new("mesh");
const JOIN_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("join_tokens");
const CREDENTIALS: TableDefinition<&str, &[u8]> = TableDefinition::new("proxy_credentials");

/// One of the mesh's tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeshTable {
    /// The certificate authorities and the rotation (key `ca`).
    Authorities,
    /// Join tokens by id (each holds only its secret's sha256).
    JoinTokens,
    /// Proxy credentials by id (each holds only its secret's sha256).
    Credentials,
}

impl MeshTable {
    fn definition(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            MeshTable::Authorities => MESH,
            MeshTable::JoinTokens => JOIN_TOKENS,
            MeshTable::Credentials => CREDENTIALS,
        }
    }
}

/// What [`Store::mesh_update`] does to a record.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Keep,
    Put(Vec<u8>),
    Delete,
}

impl Store {
    /// Creates the mesh's tables (part of opening the store).
    pub(super) fn initialize_mesh(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
        for table in [MeshTable::Authorities, MeshTable::JoinTokens, MeshTable::Credentials] {
            tx.open_table(table.definition())?;
        }
        Ok(())
    }

    /// A record, by key.
    pub fn mesh_get(&self, table: MeshTable, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(table.definition())?;
        Ok(table.get(key)?.map(|v| v.value().to_vec()))
    }

    /// Every record of a table, by key.
    pub fn mesh_list(&self, table: MeshTable) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(table.definition())?;
        let mut records = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            records.push((key.value().to_owned(), value.value().to_vec()));
        }
        Ok(records)
    }

    /// Reads a record and changes it as `decide` says, in one write transaction (so two
    /// proxies cannot both spend the last use of a join token). `decide` also returns what the
    /// caller wants to know; nothing is written for [`Change::Keep`].
    pub fn mesh_update<T>(
        &self,
        table: MeshTable,
        key: &str,
        decide: impl FnOnce(Option<&[u8]>) -> (Change, T),
    ) -> Result<T, StoreError> {
        let tx = self.db.begin_write()?;
        let (change, outcome) = {
            let mut table = tx.open_table(table.definition())?;
            let current = table.get(key)?.map(|v| v.value().to_vec());
            let (change, outcome) = decide(current.as_deref());
            match &change {
                Change::Keep => {}
                Change::Put(bytes) => {
                    table.insert(key, bytes.as_slice())?;
                }
                Change::Delete => {
                    table.remove(key)?;
                }
            }
            (change, outcome)
        };
        if change != Change::Keep {
            tx.commit()?;
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    #[test]
    fn records_are_changed_in_one_transaction_and_survive_a_reopen() {
        let dir = TempDir::new("mesh-store");
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.mesh_get(MeshTable::JoinTokens, "a").unwrap(), None);
        let seen =
            store.mesh_update(MeshTable::JoinTokens, "a", |current| (Change::Put(b"1".to_vec()), current.is_some()));
        assert!(!seen.unwrap());
        let kept = store.mesh_update(MeshTable::JoinTokens, "a", |current| (Change::Keep, current.map(<[u8]>::to_vec)));
        assert_eq!(kept.unwrap().as_deref(), Some(b"1".as_slice()));
        store.mesh_update(MeshTable::Credentials, "c", |_| (Change::Put(b"2".to_vec()), ())).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.mesh_list(MeshTable::JoinTokens).unwrap(), vec![("a".to_owned(), b"1".to_vec())]);
        store.mesh_update(MeshTable::JoinTokens, "a", |_| (Change::Delete, ())).unwrap();
        assert!(store.mesh_list(MeshTable::JoinTokens).unwrap().is_empty());
        assert_eq!(store.mesh_get(MeshTable::Credentials, "c").unwrap().as_deref(), Some(b"2".as_slice()));
    }
}
