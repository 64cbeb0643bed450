//! The Wasm modules the end-to-end tests load, each built once per test run: the test filters
//! of `tests/filters` (written against the public `proxy-wasm` crate) and weft's built-in
//! filters (`filters/`, written with weft-sdk). The `wasm32-wasip1` target is added with rustup
//! when it is missing.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Path of the built `weft_test_filters.wasm`.
pub fn test_filters() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build).clone()
}

/// Path of a built-in filter's module: `builtin("router")` is `filters/router` built to Wasm.
#[allow(dead_code)] // not every test binary loads a built-in filter
pub fn builtin(name: &str) -> PathBuf {
    sdk_module(&format!("weft-{name}"))
}

/// Path of an example filter's module: `example("auth-callout")` is `examples/auth-callout`.
#[allow(dead_code)]
pub fn example(name: &str) -> PathBuf {
    sdk_module(&format!("weft-example-{name}"))
}

fn sdk_module(package: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(build_sdk_modules);
    let wasm = dir.join(format!("{}.wasm", package.replace('-', "_")));
    assert!(wasm.exists(), "no {}", wasm.display());
    wasm
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn add_wasm_target() {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .expect("rustup is needed to build Wasm filters");
    if !String::from_utf8_lossy(&installed.stdout).contains("wasm32-wasip1") {
        let status = Command::new("rustup").args(["target", "add", "wasm32-wasip1"]).status().unwrap();
        assert!(status.success(), "rustup target add wasm32-wasip1 failed");
    }
}

/// Builds every filter written with weft-sdk (the built-in ones and the examples) in one go;
/// returns the folder of the modules. A target folder of its own, so that this build does not
/// wait on the lock of the cargo that runs the tests.
fn build_sdk_modules() -> PathBuf {
    add_wasm_target();
    let target = workspace().join("target/filters");
    let mut cargo = Command::new(env!("CARGO"));
    cargo.args(["build", "--profile", "filter", "--target", "wasm32-wasip1", "--target-dir"]).arg(&target);
    for package in SDK_MODULES {
        cargo.args(["-p", package]);
    }
    let output = cargo.current_dir(workspace()).output().expect("run cargo");
    assert!(
        output.status.success(),
        "building the built-in filters failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    target.join("wasm32-wasip1/filter")
}

/// The crates under `filters/` and `examples/`.
const SDK_MODULES: &[&str] = &[
    "weft-router",
    "weft-chaos",
    "weft-policy",
    "weft-example-add-header",
    "weft-example-ab-cookie",
    "weft-example-auth-callout",
];

fn build() -> PathBuf {
    let dir = workspace().join("tests/filters");
    add_wasm_target();
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
