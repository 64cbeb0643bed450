//! A/B testing by cookie: a client whose `ab` cookie says `b` goes to the `b` cluster; a client
//! without the cookie is assigned a side at random (by `share_b`, in percent), told with a
//! `set-cookie` on the response, and stays there.
//!
//! Build: `cargo build --profile filter --target wasm32-wasip1 -p weft-example-ab-cookie`
//! Test:  `cargo test -p weft-example-ab-cookie`

use weft_sdk::prelude::*;

#[derive(Deserialize)]
pub struct Config {
    a: String,
    b: String,
    /// Percent of new clients sent to `b`.
    share_b: u64,
}

pub struct AbCookie {
    config: Rc<Config>,
    /// The side given to a client that had none, to tell it in the response.
    assigned: Option<&'static str>,
}

impl Filter for AbCookie {
    type Config = Config;

    fn prepare(config: &mut Config) -> Result<()> {
        if config.share_b > 100 {
            return Err(Error::Config(format!("share_b: {} is more than 100 percent", config.share_b)));
        }
        Ok(())
    }

    fn new(config: &Rc<Config>) -> Self {
        AbCookie { config: config.clone(), assigned: None }
    }

    fn on_request_headers(&mut self, req: &mut Request) -> Result<Action> {
        let cookies = req.header("cookie")?.unwrap_or_default();
        let side = match cookies.split(';').find_map(|c| c.trim().strip_prefix("ab=")) {
            Some("b") => "b",
            Some(_) => "a",
            None => {
                let side = if weft_sdk::random() % 100 < self.config.share_b { "b" } else { "a" };
                self.assigned = Some(side);
                side
            }
        };
        req.route_to(if side == "b" { &self.config.b } else { &self.config.a })?;
        Ok(Action::Continue)
    }

    fn on_response_headers(&mut self, resp: &mut Response) -> Result<Action> {
        if let Some(side) = self.assigned {
            resp.add_header("set-cookie", &format!("ab={side}; Path=/; Max-Age=2592000"))?;
        }
        Ok(Action::Continue)
    }
}

weft_sdk::filter!(AbCookie);

#[cfg(test)]
mod tests {
    use super::AbCookie;
    use weft_sdk::testing::{TestFilter, TestRequest, TestResponse};

    fn filter(share_b: u64) -> TestFilter<AbCookie> {
        TestFilter::new(&format!(r#"{{"a": "web-a", "b": "web-b", "share_b": {share_b}}}"#)).unwrap()
    }

    #[test]
    fn a_client_with_a_cookie_keeps_its_side() {
        let filter = filter(50);
        for (cookie, cluster) in [("ab=b", "web-b"), ("theme=dark; ab=a", "web-a")] {
            let mut req = filter.request(TestRequest::get("/").header("cookie", cookie));
            req.send_request_headers();
            assert_eq!(req.upstream_cluster().as_deref(), Some(cluster));
            req.send_response_headers(TestResponse::new(200));
            assert_eq!(req.response_header("set-cookie"), None, "already has a side");
        }
    }

    #[test]
    fn a_new_client_is_assigned_a_side_and_told_so() {
        let filter = filter(100);
        let mut req = filter.request(TestRequest::get("/"));
        req.send_request_headers();
        assert_eq!(req.upstream_cluster().as_deref(), Some("web-b"));
        req.send_response_headers(TestResponse::new(200));
        assert!(req.response_header("set-cookie").unwrap().starts_with("ab=b;"));
    }

    #[test]
    fn new_clients_split_by_the_share() {
        let filter = filter(20);
        let to_b = (0..1000)
            .filter(|_| {
                let mut req = filter.request(TestRequest::get("/"));
                req.send_request_headers();
                req.upstream_cluster().as_deref() == Some("web-b")
            })
            .count();
        assert!((130..=270).contains(&to_b), "{to_b} of 1000 to b at 20%");
    }

    #[test]
    fn a_share_over_100_is_refused() {
        assert!(TestFilter::<AbCookie>::new(r#"{"a": "x", "b": "y", "share_b": 101}"#).is_err());
    }
}
