//! The test filters of `tests/filters` (written against the public `proxy-wasm` crate), built to
//! `wasm32-wasip1` once per test run. The target is added with rustup when it is missing.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Path of the built `weft_test_filters.wasm`.
pub fn test_filters() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build).clone()
}

fn build() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/filters");
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .expect("rustup is needed to build Wasm filters");
    if !String::from_utf8_lossy(&installed.stdout).contains("wasm32-wasip1") {
        let status = Command::new("rustup").args(["target", "add", "wasm32-wasip1"]).status().unwrap();
        assert!(status.success(), "rustup target add wasm32-wasip1 failed");
    }
    // A lock of its own: the filters are their own workspace with their own target folder, so
    // this build does not wait on the cargo that runs the tests.
    let output = Command::new(env!("CARGO"))
        .args(["build", "--release", "--target", "wasm32-wasip1", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .output()
        .expect("run cargo");
    assert!(output.status.success(), "building the test filters failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let wasm = dir.join("target/wasm32-wasip1/release/weft_test_filters.wasm");
    assert!(wasm.exists(), "no {}", wasm.display());
    wasm
}
