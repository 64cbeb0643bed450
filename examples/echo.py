"""An upstream for the examples that answers each request with the headers it received, so you
can see what a filter changed. Usage: python3 examples/echo.py PORT [NAME]"""
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
NAME = sys.argv[2] if len(sys.argv) > 2 else f"upstream :{PORT}"


class Echo(BaseHTTPRequestHandler):
    def do_GET(self):
        lines = [f"{NAME} got {self.command} {self.path}"] + [f"{k}: {v}" for k, v in self.headers.items()]
        body = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET


HTTPServer(("127.0.0.1", PORT), Echo).serve_forever()
