//! Chaos experiments in the store: table `experiments`, number → the experiment's record as JSON
//! (`exp-7` is number 7). Each change to an experiment is one committed write, like the rest.

use super::{Store, StoreError};
use redb::{ReadableTable, TableDefinition};
use serde_json::Value;

const EXPERIMENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("experiments");

impl Store {
    /// Creates the experiments table when this store has none yet (stores made before it).
    pub fn prepare_experiments(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        tx.open_table(EXPERIMENTS)?;
        tx.commit()?;
        Ok(())
    }

    /// The number the next experiment gets.
    pub fn next_experiment_number(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(EXPERIMENTS)?;
        let last = table.last()?.map_or(0, |(k, _)| k.value());
        Ok(last + 1)
    }

    /// Writes experiment `number`'s record (created or updated).
    pub fn put_experiment(&self, number: u64, record: &Value) -> Result<(), StoreError> {
        let encoded = serde_json::to_vec(record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let tx = self.db.begin_write()?;
        tx.open_table(EXPERIMENTS)?.insert(number, encoded.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// Every experiment's record, oldest first.
    pub fn experiments(&self) -> Result<Vec<Value>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(EXPERIMENTS)?;
        let mut records = Vec::new();
        for entry in table.iter()? {
            let (number, bytes) = entry?;
            let record = serde_json::from_slice(bytes.value())
                .map_err(|e| StoreError::Corrupt(format!("experiment {}: {e}", number.value())))?;
            records.push(record);
        }
        Ok(records)
    }
}
