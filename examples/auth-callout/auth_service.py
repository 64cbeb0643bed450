"""A toy auth service for the auth-callout example: GET /check answers 200 with x-user: alice
for `authorization: Bearer good`, and 403 for anything else. Listens on 127.0.0.1:4000."""
from http.server import BaseHTTPRequestHandler, HTTPServer


class Check(BaseHTTPRequestHandler):
    def do_GET(self):
        allowed = self.headers.get("authorization") == "Bearer good"
        self.send_response(200 if allowed else 403)
        if allowed:
            self.send_header("x-user", "alice")
        self.send_header("content-length", "0")
        self.end_headers()


HTTPServer(("127.0.0.1", 4000), Check).serve_forever()
