"""A child_process sidecar for the supervision tests (Python 3 standard library only).

It speaks the runtime contract of SPEC 10.1 on KHEISH_EXTERNAL_CONNECTOR_BASE_URL (manifest,
health, deliver) and is steered by its configured env:

  FAKE_MODE   normal | exit (exit 3 at once) | never_ready (health stays `starting`) |
              protocol2 (the manifest says protocol_version 2)
              | flood (20000 lines on stdout, then stdout closed, then normal)
  FAKE_DUMP   path: {"pid", "grandchild_pid", "env", "credentials"} written atomically once
              the sidecar fetched its credentials through the lease route and started serving
  FAKE_TAG    echoed in the dump (the tests change it by SIGHUP)

It starts a grandchild (`sleep`) in its process group, so a test can check that stopping the
group stops everything, and exits by itself when its parent (the daemon) is gone, so a
SIGKILLed test daemon leaves nothing behind.
"""

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODE = os.environ.get("FAKE_MODE", "normal")
NAME = os.environ["KHEISH_EXTERNAL_CONNECTOR_NAME"]
BASE = urllib.parse.urlsplit(os.environ["KHEISH_EXTERNAL_CONNECTOR_BASE_URL"])
DAEMON = os.environ["KHEISH_EXTERNAL_CONNECTOR_DAEMON_BASE_URL"].rstrip("/")
SHARED = os.environ.get("KHEISH_EXTERNAL_CONNECTOR_SHARED_TOKEN")
INSTANCE = "fake-%d" % os.getpid()

if MODE == "exit":
    sys.exit(3)

PARENT = os.getppid()
GRANDCHILD = []


def orphan_watch():
    while True:
        if os.getppid() != PARENT:
            for child in GRANDCHILD:
                child.kill()
            os._exit(0)
        time.sleep(0.2)


threading.Thread(target=orphan_watch, daemon=True).start()

if MODE == "flood":
    for i in range(20000):
        sys.stdout.write("flood line %d\n" % i)
    sys.stdout.flush()
    os.close(1)


def fetch_credentials():
    token = os.environ.get("KHEISH_EXTERNAL_CONNECTOR_CREDENTIAL_TOKEN")
    keys = json.loads(os.environ.get("KHEISH_EXTERNAL_CONNECTOR_CREDENTIAL_KEYS_JSON") or "[]")
    out = {}
    for key in keys:
        url = "%s/v1/connectors/external/%s/credentials/%s" % (
            DAEMON,
            urllib.parse.quote(NAME, safe=""),
            urllib.parse.quote(key, safe=""),
        )
        request = urllib.request.Request(url, headers={"Authorization": "Bearer %s" % token})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                out[key] = {"status": response.status, "body": json.loads(response.read())}
        except urllib.error.HTTPError as exc:
            out[key] = {"status": exc.code, "body": None}
    return out


class Handler(BaseHTTPRequestHandler):
    def _json(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self):
        return not SHARED or self.headers.get("Authorization") == "Bearer %s" % SHARED

    def do_GET(self):
        if not self._authorized():
            return self._json(401, {"error": "unauthorized"})
        if self.path == "/manifest":
            return self._json(200, {
                "protocol_version": 2 if MODE == "protocol2" else 1,
                "instance_id": INSTANCE,
                "capabilities": {"attachments_in": False, "attachments_out": False, "threads": False},
            })
        if self.path == "/health":
            status = "starting" if MODE == "never_ready" else "ready"
            return self._json(200, {"protocol_version": 1, "instance_id": INSTANCE, "status": status})
        self._json(404, {"error": "not_found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if not self._authorized():
            return self._json(401, {"error": "unauthorized"})
        if self.path == "/deliver":
            return self._json(200, {"status": "committed"})
        self._json(404, {"error": "not_found"})

    def log_message(self, *_args):
        return


def main():
    grandchild = subprocess.Popen(["sleep", "300"])
    GRANDCHILD.append(grandchild)
    server = ThreadingHTTPServer((BASE.hostname, BASE.port), Handler)
    server.daemon_threads = True
    dump_path = os.environ.get("FAKE_DUMP")
    if dump_path:
        dump = {
            "pid": os.getpid(),
            "grandchild_pid": grandchild.pid,
            "tag": os.environ.get("FAKE_TAG"),
            "env": dict(os.environ),
            "credentials": fetch_credentials(),
        }
        tmp = "%s.%d.tmp" % (dump_path, os.getpid())
        with open(tmp, "w") as handle:
            json.dump(dump, handle)
        os.replace(tmp, dump_path)
    print("fake sidecar %s serving on %s" % (INSTANCE, BASE.netloc), file=sys.stderr, flush=True)
    server.serve_forever()


main()
