"""Drives weft's Toxiproxy API with the real `toxiproxy-python` client, against a TCP echo
service: run by tests/toxiproxy.rs as `python3 toxiproxy_python.py API_PORT ECHO_ADDRESS`.
Every socket has a timeout; any failure exits non-zero with the reason."""

import socket
import sys
import time

from toxiproxy import Toxiproxy

LATENCY_MS = 2000

api_port, echo = int(sys.argv[1]), sys.argv[2]
server = Toxiproxy()
server.update_api_consumer("127.0.0.1", api_port)
assert server.running(), "the API does not answer"
print("version:", server.version())

proxy = server.create(upstream=echo, name="python_echo")
host, port = proxy.listen.rsplit(":", 1)
assert int(port) != 0, "listen reports the port bound: %s" % proxy.listen
assert "python_echo" in server.proxies()


def exchange(payload=b"ping from python"):
    with socket.create_connection((host, int(port)), timeout=15) as conn:
        start = time.monotonic()
        conn.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = conn.recv(4096)
            if not chunk:
                raise EOFError("closed after %r" % got)
            got += chunk
        assert got == payload, got
        return time.monotonic() - start


took = exchange()
print("plain echo in %.3fs" % took)
assert took < LATENCY_MS / 1000 * 0.75, "plain echo took %.3fs" % took

proxy.add_toxic(type="latency", attributes={"latency": LATENCY_MS})
assert set(proxy.toxics()) == {"latency_downstream"}, proxy.toxics()
took = exchange()
print("echo with latency in %.3fs" % took)
assert took >= LATENCY_MS / 1000, "the latency toxic delays the answer: %.3fs" % took

proxy.destroy_toxic("latency_downstream")
proxy.add_toxic(type="reset_peer", name="reset", attributes={"timeout": 0})
try:
    exchange()
    raise AssertionError("the connection was not reset")
except ConnectionResetError as error:
    print("reset_peer:", error)

assert server.reset()
assert proxy.toxics() == {}, proxy.toxics()
took = exchange()
print("after reset, plain echo in %.3fs" % took)
assert took < LATENCY_MS / 1000 * 0.75

assert proxy.destroy()
assert "python_echo" not in server.proxies()
print("python client: ok")
