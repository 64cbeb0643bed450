//! Module checks on upload: content addresses, and "compiles and is a Proxy-Wasm module" by the
//! same code a proxy loads modules with, so a module the control plane accepts is one a proxy
//! of the same weft can load.

use sha2::{Digest, Sha256};
use std::sync::Arc;
use weft_wasm::module::FilterModule;
use weft_wasm::WasmEngine;

/// Compiles modules to check them; cheap to clone.
#[derive(Clone)]
pub struct ModuleValidator {
    engine: Arc<WasmEngine>,
}

impl ModuleValidator {
    /// Starts the Wasm engine (the compiler the checks use).
    pub fn new() -> Result<ModuleValidator, String> {
        Ok(ModuleValidator { engine: WasmEngine::new()? })
    }

    /// `Ok` when `bytes` compile and form a Proxy-Wasm module; else why not. CPU-bound (it
    /// compiles): async callers run it on the blocking pool.
    pub fn check(&self, bytes: &[u8]) -> Result<(), String> {
        FilterModule::compile(&self.engine, bytes, None).map(drop)
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Whether `text` is a digest as [`digest_of`] writes them: `sha256:` and 64 lower-case hex digits.
pub fn is_digest(text: &str) -> bool {
    text.strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_sha256_in_lower_case_hex() {
        let digest = digest_of(b"");
        assert_eq!(digest, "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert!(is_digest(&digest));
        assert!(!is_digest(&digest.to_uppercase()));
        assert!(!is_digest("sha256:e3b0"));
        assert!(!is_digest("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
    }

    #[test]
    fn files_that_are_not_proxy_wasm_modules_are_refused_with_the_reason() {
        let validator = ModuleValidator::new().unwrap();
        let reason = validator.check(b"hello").unwrap_err();
        assert!(reason.starts_with("not a WebAssembly module"), "{reason}");
        // A valid WebAssembly module (the empty one) that is no Proxy-Wasm filter.
        let reason = validator.check(b"\0asm\x01\0\0\0").unwrap_err();
        assert!(reason.starts_with("not a Proxy-Wasm module"), "{reason}");
    }
}
