use super::*;
use crate::test_support::TempDir;
use serde_json::json;

fn new_version(resources: Value) -> NewVersion {
    NewVersion {
        applied_at_ms: 1_000,
        applied_by: "admin".into(),
        client: Some("127.0.0.1".into()),
        origin: Origin::Apply,
        // Distinct resources, distinct digests, as the real digest makes them.
        digest: resources.to_string(),
        summary: "test".into(),
        selector: BTreeMap::new(),
        resources,
    }
}

fn using(digest: &str) -> Value {
    json!({ "listeners": [], "clusters": [], "filters": [ { "name": "router", "module": digest } ] })
}

fn committed(outcome: Committed) -> VersionRecord {
    match outcome {
        Committed::Version(record) => record,
        other => panic!("not committed: {other:?}"),
    }
}

#[test]
fn a_new_store_is_empty() {
    let dir = TempDir::new("empty");
    let store = Store::open(&dir.join("data")).unwrap();
    assert_eq!(store.current_version().unwrap(), 0);
    assert!(store.current().unwrap().is_none());
    assert!(store.modules().unwrap().is_empty());
    assert!(store.token_hash().unwrap().is_none());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("data")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "the data dir is private");
}

#[test]
fn modules_are_stored_once_by_digest() {
    let dir = TempDir::new("modules");
    let store = Store::open(dir.path()).unwrap();
    let (first, created) = store.put_module("sha256:aa", b"bytes", 10).unwrap();
    assert!(created);
    assert_eq!(first, ModuleInfo { digest: "sha256:aa".into(), size: 5, uploaded_at_ms: 10 });
    let (again, created) = store.put_module("sha256:aa", b"bytes", 20).unwrap();
    assert!(!created);
    assert_eq!(again.uploaded_at_ms, 10, "the first upload's time stays");
    assert_eq!(store.module("sha256:aa").unwrap().unwrap(), b"bytes");
    assert_eq!(store.modules().unwrap().len(), 1);
    assert!(store.module("sha256:bb").unwrap().is_none());
}

#[test]
fn versions_are_numbered_and_the_last_is_current() {
    let dir = TempDir::new("versions");
    let store = Store::open(dir.path()).unwrap();
    store.put_module("sha256:aa", b"a", 1).unwrap();
    let first = committed(store.commit(new_version(using("sha256:aa"))).unwrap());
    let second = committed(store.commit(new_version(json!({ "listeners": [] }))).unwrap());
    assert_eq!((first.version, second.version), (1, 2));
    assert_eq!(store.current_version().unwrap(), 2);
    assert_eq!(store.current().unwrap().unwrap(), second);
    assert_eq!(store.version(1).unwrap().unwrap(), first);
    assert!(store.version(3).unwrap().is_none());
    assert_eq!(store.versions().unwrap().iter().map(|v| v.version).collect::<Vec<_>>(), vec![1, 2]);
}

#[test]
fn the_same_resources_again_add_no_version() {
    let dir = TempDir::new("unchanged");
    let store = Store::open(dir.path()).unwrap();
    let first = committed(store.commit(new_version(json!({ "listeners": [] }))).unwrap());
    match store.commit(new_version(json!({ "listeners": [] }))).unwrap() {
        Committed::Unchanged(current) => assert_eq!(current, first),
        other => panic!("not unchanged: {other:?}"),
    }
    assert_eq!(store.versions().unwrap().len(), 1);
    // Equal to an older version but not to the current one: a new version.
    committed(store.commit(new_version(json!({}))).unwrap());
    assert_eq!(committed(store.commit(new_version(json!({ "listeners": [] }))).unwrap()).version, 3);
}

#[test]
fn a_version_loading_an_unknown_module_is_refused_and_changes_nothing() {
    let dir = TempDir::new("missing");
    let store = Store::open(dir.path()).unwrap();
    match store.commit(new_version(using("sha256:ff"))).unwrap() {
        Committed::MissingModules(missing) => {
            assert_eq!(missing.len(), 1);
            assert_eq!(missing[0].field, "filters[0].module");
        }
        other => panic!("not refused: {other:?}"),
    }
    assert_eq!(store.current_version().unwrap(), 0);
    assert!(store.versions().unwrap().is_empty());
}

#[test]
fn a_module_the_current_config_uses_cannot_be_deleted() {
    let dir = TempDir::new("delete");
    let store = Store::open(dir.path()).unwrap();
    store.put_module("sha256:aa", b"a", 1).unwrap();
    committed(store.commit(new_version(using("sha256:aa"))).unwrap());
    assert_eq!(
        store.delete_module("sha256:aa").unwrap(),
        Deleted::InUse { version: 1, filters: vec!["router".into()] }
    );
    assert!(store.module("sha256:aa").unwrap().is_some());
    // Once the current config no longer uses it, it goes (older versions may still name it).
    committed(store.commit(new_version(json!({}))).unwrap());
    assert_eq!(store.delete_module("sha256:aa").unwrap(), Deleted::Done);
    assert_eq!(store.delete_module("sha256:aa").unwrap(), Deleted::NotFound);
    assert!(store.module("sha256:aa").unwrap().is_none());
    assert!(store.module_info("sha256:aa").unwrap().is_none());
}

#[test]
fn everything_survives_reopening() {
    let dir = TempDir::new("reopen");
    {
        let store = Store::open(dir.path()).unwrap();
        store.put_module("sha256:aa", b"module", 7).unwrap();
        store.set_token_hash(&[9; 32]).unwrap();
        committed(store.commit(new_version(using("sha256:aa"))).unwrap());
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.module("sha256:aa").unwrap().unwrap(), b"module");
    assert_eq!(store.token_hash().unwrap(), Some([9; 32]));
    assert_eq!(store.current_version().unwrap(), 1);
    assert_eq!(store.current().unwrap().unwrap().resources, using("sha256:aa"));
}

#[test]
fn a_second_control_plane_on_the_same_data_dir_is_refused() {
    let dir = TempDir::new("twice");
    let _first = Store::open(dir.path()).unwrap();
    let second = Store::open(dir.path());
    assert!(matches!(second, Err(StoreError::InUse { .. })), "{:?}", second.err());
}
