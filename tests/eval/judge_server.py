"""A small OpenAI-compatible chat-completions server on 127.0.0.1 for judge tests (stdlib
only). Its verdicts depend only on the request's content, so parallel calls stay
deterministic: single grading gives "[[4]]" with a reference answer, "[[6]]" for two turns,
otherwise "[[8]]"; pairwise gives the verdict for the side whose answer contains "GOOD" ("[[C]]"
for both or neither); no verdict at all when the prompt contains `malformed_marker`. Every request is recorded."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JudgeServer:
    def __init__(self, malformed_marker: str | None = None):
        self.requests: list[dict] = []
        self.malformed_marker = malformed_marker
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                text = "\n".join(m["content"] for m in body["messages"])
                if server.malformed_marker and server.malformed_marker in text:
                    verdict = "I would rather not give a number."
                elif "Start of Assistant B" in text:  # pairwise: the side whose answer says GOOD wins
                    side_a, side_b = text.split("Start of Assistant A", 1)[1].split("Start of Assistant B", 1)
                    a_good, b_good = "GOOD" in side_a, "GOOD" in side_b
                    verdict = "[[A]]" if a_good and not b_good else "[[B]]" if b_good and not a_good else "[[C]]"
                elif "Reference Answer" in text:
                    verdict = "Compared with the reference: Rating: [[4]]"
                elif "Conversation with User" in text:
                    verdict = "Both turns considered. Rating: [[6]]"
                else:
                    verdict = "A fine answer. Rating: [[8]]"
                reply = {"id": "judge-1", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": verdict}}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
