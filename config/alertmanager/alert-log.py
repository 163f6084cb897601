"""The stack's stand-in webhook receiver: prints one line per alert Alertmanager sends.

Run by the alert-log service of docker-compose.yml (python:3-alpine, standard library
only); `docker compose logs -f alert-log` shows the notifications. Listens on port 5001.
"""

import json
from http.server import BaseHTTPRequestHandler, HTTPServer


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            payload = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self.send_response(400)
            self.end_headers()
            return
        for alert in payload.get("alerts", []):
            labels = alert.get("labels", {})
            annotations = alert.get("annotations", {})
            print(
                f"[{self.path.strip('/') or 'default'}] {alert.get('status', '?')}"
                f" {labels.get('alertname', '?')} {json.dumps(labels, sort_keys=True)}"
                f" -- {annotations.get('summary', '')}",
                flush=True,
            )
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    HTTPServer(("0.0.0.0", 5001), Receiver).serve_forever()
