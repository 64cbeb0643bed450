//! Asks an auth service about each request before letting it through: the request's
//! `authorization` header goes to `GET /check` on the configured cluster; a 200 lets the request
//! go on (with the user the service names in `x-user`), anything else is answered 401, and an
//! unreachable service 503.
//!
//! Build: `cargo build --profile filter --target wasm32-wasip1 -p weft-example-auth-callout`
//! Test:  `cargo test -p weft-example-auth-callout`

use weft_sdk::prelude::*;

#[derive(Deserialize)]
pub struct Config {
    /// The cluster of the auth service.
    cluster: String,
    /// How long to wait for it (default 1s).
    #[serde(default = "one_second")]
    timeout: weft_sdk::units::Duration,
}

fn one_second() -> weft_sdk::units::Duration {
    weft_sdk::units::Duration(Duration::from_secs(1))
}

pub struct AuthCallout {
    config: Rc<Config>,
}

impl Filter for AuthCallout {
    type Config = Config;

    fn new(config: &Rc<Config>) -> Self {
        AuthCallout { config: config.clone() }
    }

    fn on_request_headers(&mut self, req: &mut Request) -> Result<Action> {
        let Some(credentials) = req.header("authorization")? else {
            return req.respond(LocalResponse::new(401).header("www-authenticate", "Bearer").body("sign in first\n"));
        };
        let check = HttpCall::get("/check").header("authorization", &credentials).timeout(self.config.timeout.get());
        req.http_call(&self.config.cluster, check)?;
        Ok(Action::Pause)
    }

    fn on_call_response(&mut self, req: &mut Request, _call: CallId, answer: CallResponse) -> Result<Action> {
        match answer.status() {
            Some(200) => {
                let user = answer.header("x-user").unwrap_or("unknown").to_owned();
                req.set_header("x-user", &user)?;
                req.remove_header("authorization")?;
                Ok(Action::Continue)
            }
            Some(_) => req.respond(LocalResponse::new(401).header("www-authenticate", "Bearer").body("not allowed\n")),
            None => req.respond(LocalResponse::new(503).body("auth service unavailable\n")),
        }
    }
}

weft_sdk::filter!(AuthCallout);

#[cfg(test)]
mod tests {
    use super::AuthCallout;
    use weft_sdk::testing::{TestFilter, TestRequest, TestResponse};
    use weft_sdk::{Action, Direction};

    fn filter() -> TestFilter<AuthCallout> {
        TestFilter::new(r#"{"cluster": "auth", "timeout": "250ms"}"#).unwrap()
    }

    #[test]
    fn an_allowed_request_goes_on_as_the_user_the_service_named() {
        let filter = filter();
        let mut req = filter.request(TestRequest::get("/orders").header("authorization", "Bearer abc"));
        assert_eq!(req.send_request_headers(), Action::Pause);
        let check = req.callouts().remove(0);
        assert_eq!((check.cluster.as_str(), check.header(":path")), ("auth", Some("/check")));
        assert_eq!(check.header("authorization"), Some("Bearer abc"));
        req.reply(check.id, TestResponse::new(200).header("x-user", "alice"));
        assert!(req.resumed(Direction::Request));
        assert_eq!(req.request_header("x-user").as_deref(), Some("alice"));
        assert_eq!(req.request_header("authorization"), None, "credentials stay at the edge");
    }

    #[test]
    fn a_refused_or_unanswered_check_answers_the_client() {
        let filter = filter();
        let mut req = filter.request(TestRequest::get("/").header("authorization", "Bearer stolen"));
        req.send_request_headers();
        let check = req.callouts().remove(0);
        req.reply(check.id, TestResponse::new(403));
        assert_eq!(req.local_response().map(|r| r.status), Some(401));
        drop(req);

        let mut req = filter.request(TestRequest::get("/").header("authorization", "Bearer abc"));
        req.send_request_headers();
        let check = req.callouts().remove(0);
        req.fail_call(check.id);
        assert_eq!(req.local_response().map(|r| r.status), Some(503));
    }

    #[test]
    fn a_request_without_credentials_never_reaches_the_service() {
        let filter = filter();
        let mut req = filter.request(TestRequest::get("/"));
        assert_eq!(req.send_request_headers(), Action::Pause);
        assert!(req.callouts().is_empty());
        assert_eq!(req.local_response().map(|r| r.status), Some(401));
    }
}
