use super::*;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn good_yaml() -> String {
    format!(
        r#"
listeners:
  - name: public
    address: 127.0.0.1:8080
    filters: [router]
    cluster: web
clusters:
  - name: web
    endpoints: ["127.0.0.1:3000"]
filters:
  - name: router
    module: {DIGEST}
selector: {{ app: web }}
"#
    )
}

fn errors_of(text: &str, format: Format) -> Vec<String> {
    match Document::parse(text, format).and_then(Document::validate) {
        Ok(resources) => panic!("accepted: {resources:?}"),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn a_good_document_yields_canonical_resources_and_its_selector() {
    let resources = Document::parse(&good_yaml(), Format::Yaml).unwrap().validate().unwrap();
    assert_eq!(resources.selector, BTreeMap::from([("app".to_owned(), "web".to_owned())]));
    assert_eq!(resources.canonical["filters"][0]["module"], DIGEST);
    assert_eq!(resources.canonical["clusters"][0]["connect_timeout"], "1s", "defaults are filled in");
    assert!(resources.canonical.get("selector").is_none());
    assert_eq!(resources.summary, "1 listener, 1 cluster, 1 filter; proxies with app=web");
    assert!(resources.digest.starts_with("sha256:"));
}

#[test]
fn yaml_and_json_of_the_same_resources_have_the_same_digest() {
    let yaml = Document::parse(&good_yaml(), Format::Yaml).unwrap().validate().unwrap();
    let json_text = serde_json::to_string(&json!({
        "selector": { "app": "web" },
        "listeners": [{ "name": "public", "address": "127.0.0.1:8080", "filters": ["router"], "cluster": "web" }],
        "clusters": [{ "name": "web", "endpoints": ["127.0.0.1:3000"], "connect_timeout": "1000ms" }],
        "filters": [{ "name": "router", "module": DIGEST }],
    }))
    .unwrap();
    let json = Document::parse(&json_text, Format::Json).unwrap().validate().unwrap();
    assert_eq!(yaml.digest, json.digest);
    let other = Document::parse(&good_yaml().replace("app: web", "app: api"), Format::Yaml).unwrap();
    assert_ne!(other.validate().unwrap().digest, yaml.digest, "the selector is part of the digest");
}

#[test]
fn every_error_names_its_field() {
    let text = good_yaml()
        .replace("127.0.0.1:3000", "127.0.0.1:99999")
        .replace("cluster: web", "cluster: nowhere")
        .replace(DIGEST, "filters/router.wasm");
    let errors = errors_of(&text, Format::Yaml);
    assert!(errors.iter().any(|e| e.starts_with("clusters[0].endpoints[0]: invalid address")), "{errors:?}");
    assert!(errors.contains(&r#"listeners[0].cluster: unknown cluster "nowhere""#.to_owned()), "{errors:?}");
    assert!(errors.iter().any(|e| e.starts_with(r#"filters[0].module: "filters/router.wasm" is not a module digest"#)));
}

#[test]
fn a_malformed_digest_is_refused() {
    let errors = errors_of(&good_yaml().replace(DIGEST, "sha256:ABC"), Format::Yaml);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with(r#"filters[0].module: "sha256:ABC" is not a sha256 digest"#), "{errors:?}");
}

#[test]
fn unknown_fields_are_errors_with_their_path() {
    let errors =
        errors_of(&good_yaml().replace("    cluster: web", "    cluster: web\n    colour: blue"), Format::Yaml);
    assert!(errors[0].starts_with("listeners[0].colour: unknown field `colour`"), "{errors:?}");
}

#[test]
fn a_selector_must_map_names_to_strings() {
    let errors = errors_of(&good_yaml().replace("{ app: web }", "{ app: 3 }"), Format::Yaml);
    assert_eq!(errors, vec!["selector.app: must be a string, not 3"]);
    let errors = errors_of(&good_yaml().replace("{ app: web }", "[web]"), Format::Yaml);
    assert!(errors[0].starts_with("selector: must be a mapping"), "{errors:?}");
}

#[test]
fn syntax_errors_and_empty_documents_are_refused() {
    assert_eq!(errors_of("  ", Format::Yaml), vec!["the document is empty"]);
    let errors = errors_of("{ \"listeners\": [", Format::Json);
    assert!(errors[0].starts_with("not a valid document: EOF while parsing"), "{errors:?}");
    let errors = errors_of("listeners: [\n  - a: b\n   c", Format::Yaml);
    assert!(errors[0].contains("line"), "{errors:?}");
}

#[test]
fn module_refs_are_found_even_when_the_document_is_invalid() {
    let document = Document::parse(&good_yaml().replace("cluster: web", "cluster: nowhere"), Format::Yaml).unwrap();
    let refs = document.module_refs();
    assert_eq!(refs.len(), 1);
    assert_eq!((refs[0].field.as_str(), refs[0].module.as_str()), ("filters[0].module", DIGEST));
}

#[test]
fn stored_resources_validate_again_to_the_same_digest() {
    let resources = Document::parse(&good_yaml(), Format::Yaml).unwrap().validate().unwrap();
    let again = Resources::revalidate(&resources.canonical, &resources.selector).unwrap();
    assert_eq!(again.digest, resources.digest);
}

#[test]
fn the_format_follows_the_content_type_then_the_first_character() {
    assert_eq!(format_of(Some("application/json"), "a: b"), Format::Json);
    assert_eq!(format_of(Some("application/yaml"), "{}"), Format::Yaml);
    assert_eq!(format_of(None, "  {\"a\": 1}"), Format::Json);
    assert_eq!(format_of(Some("application/octet-stream"), "a: b"), Format::Yaml);
}
