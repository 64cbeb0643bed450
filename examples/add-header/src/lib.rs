//! Adds a header, named and valued in the filter's config, to every request.
//!
//! Build: `cargo build --profile filter --target wasm32-wasip1 -p weft-example-add-header`
//! Test:  `cargo test -p weft-example-add-header`

use weft_sdk::prelude::*;

#[derive(Deserialize)]
pub struct Config {
    name: String,
    value: String,
}

pub struct AddHeader {
    config: Rc<Config>,
}

impl Filter for AddHeader {
    type Config = Config;

    fn new(config: &Rc<Config>) -> Self {
        AddHeader { config: config.clone() }
    }

    fn on_request_headers(&mut self, req: &mut Request) -> Result<Action> {
        req.set_header(&self.config.name, &self.config.value)?;
        Ok(Action::Continue)
    }
}

weft_sdk::filter!(AddHeader);

#[cfg(test)]
mod tests {
    use super::AddHeader;
    use weft_sdk::testing::{TestFilter, TestRequest};
    use weft_sdk::Action;

    #[test]
    fn every_request_gets_the_header_replacing_what_the_client_sent() {
        let filter = TestFilter::<AddHeader>::new(r#"{"name": "x-team", "value": "payments"}"#).unwrap();
        let mut req = filter.request(TestRequest::get("/").header("x-team", "spoofed"));
        assert_eq!(req.send_request_headers(), Action::Continue);
        assert_eq!(req.request_header("x-team").as_deref(), Some("payments"));
    }

    #[test]
    fn a_config_without_a_value_is_refused() {
        let error = TestFilter::<AddHeader>::new(r#"{"name": "x-team"}"#).err().unwrap();
        assert!(error.to_string().contains("missing field `value`"), "{error}");
    }
}
