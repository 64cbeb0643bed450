//! What a mesh proxy keeps in `DATA/identity/`, so that it restarts with its identity while
//! the control plane is away: its private key and the proxy credential (mode 0600, readable by
//! the proxy's user alone), its certificate, the trust bundle, and who it is.

use anyhow::{anyhow, Context};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Who the kept identity is for; a proxy started as someone else joins again.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Whoami {
    pub node: String,
    pub spiffe_id: String,
}

/// Everything kept.
#[derive(Clone, Debug)]
pub struct Kept {
    pub whoami: Whoami,
    pub credential: String,
    pub key_pem: String,
    pub chain_pem: String,
    pub bundle_pem: String,
}

/// The identity folder of a data dir.
pub struct Files(PathBuf);

impl Files {
    pub fn new(data: &Path) -> Files {
        Files(data.join("identity"))
    }

    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// What is kept, if a whole identity is (a start that died halfway through a first join
    /// left none).
    pub fn load(&self) -> anyhow::Result<Option<Kept>> {
        let whoami = match std::fs::read_to_string(self.0.join("whoami.json")) {
            Ok(text) => serde_json::from_str(&text).with_context(|| format!("{}/whoami.json", self.0.display()))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error).with_context(|| format!("cannot read {}/whoami.json", self.0.display())),
        };
        let read = |name: &str| {
            std::fs::read_to_string(self.0.join(name))
                .with_context(|| format!("cannot read {}/{name}", self.0.display()))
        };
        Ok(Some(Kept {
            whoami,
            credential: read("credential")?.trim().to_owned(),
            key_pem: read("key.pem")?,
            chain_pem: read("cert.pem")?,
            bundle_pem: read("bundle.pem")?,
        }))
    }

    /// Keeps a new certificate and its key (the key first: a crash in between leaves a key that
    /// fits no kept certificate, which the next start notices and renews).
    pub fn save_certificate(&self, key_pem: &str, chain_pem: &str) -> anyhow::Result<()> {
        write(&self.0.join("key.pem"), key_pem, true)?;
        write(&self.0.join("cert.pem"), chain_pem, false)
    }

    pub fn save_bundle(&self, bundle_pem: &str) -> anyhow::Result<()> {
        write(&self.0.join("bundle.pem"), bundle_pem, false)
    }

    /// Keeps a whole new identity (after a join); `whoami.json` last, so it is there only when
    /// the rest is.
    pub fn save(&self, kept: &Kept) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(self.0.join("whoami.json"));
        write(&self.0.join("credential"), &kept.credential, true)?;
        self.save_certificate(&kept.key_pem, &kept.chain_pem)?;
        self.save_bundle(&kept.bundle_pem)?;
        let whoami = serde_json::to_string_pretty(&kept.whoami).map_err(|e| anyhow!("{e}"))?;
        write(&self.0.join("whoami.json"), &whoami, false)
    }
}

/// Writes a file whole or not at all; `private` ones are mode 0600 from the start.
fn write(path: &Path, text: &str, private: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().ok_or_else(|| anyhow!("{}: no folder", path.display()))?;
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let temporary = path.with_extension("partial");
    let _ = std::fs::remove_file(&temporary);
    let mode = if private { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_is_kept_whole_with_its_secrets_private() {
        let dir = std::env::temp_dir().join(format!("weft-identity-files-{}", std::process::id()));
        let files = Files::new(&dir);
        assert!(files.load().unwrap().is_none());
        let kept = Kept {
            whoami: Whoami { node: "edge-1".into(), spiffe_id: "spiffe://weft.local/ns/default/sa/frontend".into() },
            credential: "wpc.x.y".into(),
            key_pem: "KEY".into(),
            chain_pem: "CERT".into(),
            bundle_pem: "ROOTS".into(),
        };
        files.save(&kept).unwrap();
        let loaded = files.load().unwrap().unwrap();
        assert_eq!(
            (loaded.whoami, loaded.credential, loaded.chain_pem),
            (kept.whoami, kept.credential, kept.chain_pem)
        );
        use std::os::unix::fs::PermissionsExt;
        for secret in ["key.pem", "credential"] {
            let mode = std::fs::metadata(files.dir().join(secret)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{secret}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
