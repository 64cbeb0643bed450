//! weft's control plane: it stores filter modules (content-addressed, checked on upload) and
//! config versions (validated whole, numbered, with history and rollback) in an embedded
//! crash-safe store, and serves them over a REST API guarded by an admin token.
//!
//! [`ControlPlane`] holds the state and the operations; [`api`] is the REST layer over it;
//! [`server::serve`] is the port, where the gRPC [`distribution`] to proxies sits beside REST;
//! it learns of new versions from [`ControlPlane::subscribe`]. [`identity`] is the mesh's
//! certificate authority: join tokens, workload certificates, root rotation.

// The OpenAPI document is one `json!` literal, deeper than the default limit.
#![recursion_limit = "256"]

pub mod api;
pub mod chaos;
pub mod distribution;
mod error;
pub mod identity;
pub mod modules;
pub mod openapi;
mod plane;
pub mod records;
pub mod resources;
pub mod server;
pub mod store;
pub mod token;

pub use error::ControlError;
pub use plane::{Applied, Author, ControlPlane, OpenError, ProxyCaller, Settings};
pub use records::{ModuleInfo, VersionRecord};
pub use store::Store;
pub use token::TokenOrigin;

#[cfg(test)]
mod test_support {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A folder removed when dropped.
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(label: &str) -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "weft-control-{label}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }

        pub fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
