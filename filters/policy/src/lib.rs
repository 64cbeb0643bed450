//! (being written)
use weft_sdk::prelude::*;

pub struct Placeholder;

impl Filter for Placeholder {
    type Config = serde_json::Value;
    fn new(_config: &Rc<serde_json::Value>) -> Self {
        Placeholder
    }
}

weft_sdk::filter!(Placeholder);
