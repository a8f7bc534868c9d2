"""A receiver for notifyq's callbacks that checks each signature with the Standard Webhooks library
(`pip install standardwebhooks`), as an app in any language would with its own.

    CALLBACK_SECRET=whsec_... python examples/receiver/receiver.py 8000

Answer 2xx when the work is done (or safely queued on your side); the `webhook-id` header is the job
id, the same on every retry: use it to do the work once.
"""

import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

verifier = Webhook(os.environ["CALLBACK_SECRET"])


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        try:
            verifier.verify(body, dict(self.headers.items()), json_parse=False)
        except WebhookVerificationError:
            self.send_response(401)
            self.end_headers()
            return
        print(f"job {self.headers['webhook-id']}: {body.decode()}", flush=True)
        self.send_response(204)
        self.end_headers()


if __name__ == "__main__":
    HTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 8000), Receiver).serve_forever()
