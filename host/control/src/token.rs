//! The admin token: 32 random bytes from the OS, hex-encoded, made at first start and written to
//! `DATA_DIR/admin-token` (mode 0600). The store keeps only its sha256; a presented token is
//! hashed and compared in constant time, so neither the comparison's timing nor the store's
//! contents give the token away.

use crate::store::{Store, StoreError};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq;

/// The token file's name inside the data dir.
pub const FILE_NAME: &str = "admin-token";

/// Why the admin token could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the OS random source failed")]
    Random,
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks presented tokens against the admin token.
#[derive(Clone)]
pub struct AdminToken {
    hash: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// Where the admin token came from at this start.
#[derive(Debug)]
pub enum TokenOrigin {
    /// Made now (first start): `token` is to be shown to the operator once, and never logged.
    Created { path: PathBuf, token: String },
    /// Made at an earlier start; its file is `path` (the operator may have moved it away).
    Existing { path: PathBuf },
}

impl AdminToken {
    /// The store's token, or a new one made, written to `dir` and recorded in the store.
    pub fn load_or_create(store: &Store, dir: &Path) -> Result<(AdminToken, TokenOrigin), TokenError> {
        let path = dir.join(FILE_NAME);
        if let Some(hash) = store.token_hash()? {
            return Ok((AdminToken { hash }, TokenOrigin::Existing { path }));
        }
        // The file is written before the store records the hash: a start that died in between
        // left a token file nobody can use yet, and this start adopts it.
        let token = match std::fs::read_to_string(&path) {
            Ok(text) if is_well_formed(text.trim()) => text.trim().to_owned(),
            _ => {
                let token = random_token()?;
                write_private(&path, &token).map_err(|source| TokenError::Io { path: path.clone(), source })?;
                token
            }
        };
        let hash = sha256(&token);
        store.set_token_hash(&hash)?;
        Ok((AdminToken { hash }, TokenOrigin::Created { path, token }))
    }

    /// Whether `presented` is the admin token, in time independent of where they differ.
    pub fn verify(&self, presented: &str) -> bool {
        sha256(presented).ct_eq(&self.hash).into()
    }
}

fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

fn is_well_formed(token: &str) -> bool {
    token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

fn random_token() -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes).map_err(|_| TokenError::Random)?;
    Ok(hex::encode(bytes))
}

/// Writes `token` with mode 0600 from the start (never readable by others, not even briefly),
/// to a temporary file renamed into place, synced, so a crash leaves the old file or the new one.
fn write_private(path: &Path, token: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary)?;
    file.write_all(format!("{token}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TempDir;

    #[test]
    fn the_first_start_makes_a_private_token_and_later_starts_keep_it() {
        let dir = TempDir::new("token");
        let store = Store::open(dir.path()).unwrap();
        let (token, origin) = AdminToken::load_or_create(&store, dir.path()).unwrap();
        let TokenOrigin::Created { path, token: text } = origin else { panic!("not created: {origin:?}") };
        assert!(is_well_formed(&text));
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), text);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(token.verify(&text));
        assert!(!token.verify(&text[1..]));
        assert!(!token.verify(""));

        let (again, origin) = AdminToken::load_or_create(&store, dir.path()).unwrap();
        assert!(matches!(origin, TokenOrigin::Existing { .. }));
        assert!(again.verify(&text));
    }

    #[test]
    fn a_token_file_whose_hash_never_reached_the_store_is_adopted() {
        let dir = TempDir::new("adopt");
        let written = "ab".repeat(32);
        write_private(&dir.join(FILE_NAME), &written).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (token, origin) = AdminToken::load_or_create(&store, dir.path()).unwrap();
        assert!(matches!(origin, TokenOrigin::Created { token, .. } if token == written));
        assert!(token.verify(&written));
    }

    #[test]
    fn tokens_differ_between_data_dirs() {
        let (a, b) = (TempDir::new("a"), TempDir::new("b"));
        let token = |dir: &TempDir| match AdminToken::load_or_create(&Store::open(dir.path()).unwrap(), dir.path()) {
            Ok((_, TokenOrigin::Created { token, .. })) => token,
            other => panic!("{other:?}"),
        };
        assert_ne!(token(&a), token(&b));
    }
}
