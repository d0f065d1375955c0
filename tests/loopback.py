"""A real OpenAI-compatible chat-completions server on 127.0.0.1, for tests of the reflection backend.

Stdlib `http.server` in a daemon thread; the real openai client talks to it over loopback. Tests import
it as `from loopback import Endpoint` (pytest puts tests/, the folder of the rootdir conftest, on
sys.path).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPLY = "Here is the new instruction:\n```\nAdd the two numbers and end with the final number.\n```"


class Endpoint:
    """A minimal OpenAI chat-completions server: records requests; `mode` switches failures on.

    `reply` is the assistant text of a successful response: a string, or a callable taking the
    request number (1, 2, ...) so that successive proposals can differ. `port` 0 picks a free port;
    a given port lets a test bring a server back up where a closed one was.
    """

    def __init__(self, reply=REPLY, port: int = 0):
        self.mode = "ok"
        self.reply = reply
        self.requests: list[dict] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                endpoint.requests.append(
                    {
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": json.loads(body),
                    }
                )
                mode = endpoint.mode
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "not found"}})
                if mode == "500":
                    return self._send(500, {"error": {"message": "boom"}}, {"retry-after-ms": "10"})
                if mode == "echo_key":  # like a hosted API that quotes the rejected key back
                    auth = self.headers.get("Authorization", "")
                    return self._send(401, {"error": {"message": f"Incorrect API key provided: {auth}"}})
                if mode == "badjson":
                    return self._send(200, b"{not json")
                if mode == "empty":
                    return self._send(200, {"id": "x", "object": "chat.completion", "choices": []})
                reply = endpoint.reply
                content = reply(len(endpoint.requests)) if callable(reply) else reply
                payload = {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": endpoint.requests[-1]["body"]["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop",
                        }
                    ],
                }
                if mode != "nousage":
                    payload["usage"] = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
                return self._send(200, payload)

            def _send(self, status, payload, headers=None):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
