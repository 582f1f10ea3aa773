#!/usr/bin/env python3
"""A minimal but real external-connector sidecar for kheishctl (Python 3 standard library).

Run by `kheishctl serve` as a `child_process` connector (see examples/sidecar.toml and the
README section "An external sidecar"). It speaks the sidecar protocol (docs/sidecar-supervision.md,
SPEC §10):

  daemon -> sidecar (on KHEISH_EXTERNAL_CONNECTOR_BASE_URL, bearer = the shared token)
    GET  /manifest   {"protocol_version":1,"instance_id","capabilities":{...}}
    GET  /health     {"protocol_version":1,"instance_id","status":"ready|draining",...}
    POST /deliver    a reply of the daemon: printed, appended to SIDECAR_DELIVERIES_FILE,
                     deduplicated by delivery_id, answered {"status":"committed"}

  sidecar -> daemon (on KHEISH_EXTERNAL_CONNECTOR_DAEMON_BASE_URL)
    POST /v1/connectors/external/{name}/events        an inbound event (protocol 2, falling
                                                      back to 1 on "unsupported protocol_version")
    GET  /v1/connectors/external/{name}/credentials/K the credential slots, fetched once at start
                                                      with the lease token

  operator -> sidecar (the stand-in for a chat platform)
    POST /inject     {"text": "...", "thread": "t1"?, "event_id": "..."?} with the shared token:
                     turns the text into an event for the daemon and answers the daemon's reply

The daemon sets KHEISH_EXTERNAL_CONNECTOR_NAME, _BASE_URL, _DAEMON_BASE_URL, _SHARED_TOKEN and,
with credential slots, _CREDENTIAL_TOKEN and _CREDENTIAL_KEYS_JSON. SIGTERM makes it report
`draining`, finish the requests in flight and exit.
"""

import hmac
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = os.environ["KHEISH_EXTERNAL_CONNECTOR_NAME"]
BASE_URL = urllib.parse.urlsplit(os.environ["KHEISH_EXTERNAL_CONNECTOR_BASE_URL"])
DAEMON = os.environ.get("KHEISH_EXTERNAL_CONNECTOR_DAEMON_BASE_URL", "").rstrip("/")
SHARED_TOKEN = os.environ.get("KHEISH_EXTERNAL_CONNECTOR_SHARED_TOKEN")
INSTANCE_ID = os.environ.get("KHEISH_EXTERNAL_CONNECTOR_INSTANCE_ID") or "demo-" + uuid.uuid4().hex[:12]
DELIVERIES_FILE = os.environ.get("SIDECAR_DELIVERIES_FILE", "").strip()
MAX_BODY = 2 * 1024 * 1024

STATE = {"status": "starting", "detail": None}
SEEN_DELIVERIES = set()
LOCK = threading.Lock()


def log(message):
    # stdout and stderr go to the daemon log, one line each, prefixed with the connector name.
    print(message, flush=True)


def call_daemon(method, path, body=None, token=None):
    """(status, decoded JSON or None) of a request to the daemon."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(DAEMON + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, None


def fetch_credentials():
    """The declared credential slots, through the lease route (never from the environment)."""
    keys = json.loads(os.environ.get("KHEISH_EXTERNAL_CONNECTOR_CREDENTIAL_KEYS_JSON") or "[]")
    token = os.environ.get("KHEISH_EXTERNAL_CONNECTOR_CREDENTIAL_TOKEN")
    values = {}
    for key in keys:
        path = "/v1/connectors/external/%s/credentials/%s" % (
            urllib.parse.quote(NAME, safe=""),
            urllib.parse.quote(key, safe=""),
        )
        status, body = call_daemon("GET", path, token=token)
        if status != 200 or not isinstance(body, dict) or not body.get("value"):
            raise SystemExit("credential %s: the daemon answered HTTP %s" % (key, status))
        values[key] = body["value"]
        # Never print a credential value; its length is enough to show it arrived.
        log("fetched credential %s (%d characters, lease %s)" % (key, len(body["value"]), body.get("lease_id")))
    return values


def submit_event(text, thread, event_id):
    event = {
        "instance_id": INSTANCE_ID,
        "event_id": event_id,
        "fingerprint": None,
        "occurred_at_ms": int(time.time() * 1000),
        "actor_id": "demo-user",
        "source_kind": "demo",
        "intent": None,
        "relation": None,
        "thread": {"path": ["demo", thread]},
        "routing_key": None,
        "content": text,
        "input_items": None,
        "attachments": None,
        # Opaque to the daemon: handed back unchanged on every reply to this event.
        "reply_route": json.dumps({"thread": thread}, separators=(",", ":")),
        "metadata": None,
    }
    path = "/v1/connectors/external/%s/events" % urllib.parse.quote(NAME, safe="")
    answer = None
    for version in (2, 1):
        status, answer = call_daemon("POST", path, dict(event, protocol_version=version), SHARED_TOKEN)
        reason = (answer or {}).get("reason") or ""
        if not (status == 200 and answer.get("status") == "rejected" and "unsupported protocol_version" in reason):
            return status, answer
    return status, answer


def record_delivery(payload, idempotency_key):
    delivery_id = payload.get("delivery_id")
    with LOCK:
        if delivery_id in SEEN_DELIVERIES:
            return False
        SEEN_DELIVERIES.add(delivery_id)
        if DELIVERIES_FILE:
            with open(DELIVERIES_FILE, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({
                    "delivery_id": delivery_id,
                    "idempotency_key": idempotency_key,
                    "attempt": payload.get("attempt"),
                    "reply_route": payload.get("reply_route"),
                    "conversation": payload.get("conversation"),
                    "content": payload.get("content"),
                }) + "\n")
    return True


class Handler(BaseHTTPRequestHandler):
    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authorized(self):
        if not SHARED_TOKEN:
            return True
        return hmac.compare_digest(self.headers.get("Authorization", ""), "Bearer " + SHARED_TOKEN)

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > MAX_BODY:
            raise ValueError("body too large")
        return json.loads(self.rfile.read(length) or b"{}")

    def do_GET(self):
        if not self.authorized():
            return self.reply(401, {"error": "unauthorized"})
        if self.path == "/manifest":
            return self.reply(200, {
                "protocol_version": 1,
                "instance_id": INSTANCE_ID,
                "capabilities": {"attachments_in": False, "attachments_out": False, "threads": True},
            })
        if self.path == "/health":
            health = {"protocol_version": 1, "instance_id": INSTANCE_ID, "status": STATE["status"]}
            if STATE["detail"]:
                health["detail"] = STATE["detail"]
            return self.reply(200, health)
        self.reply(404, {"error": "not_found"})

    def do_POST(self):
        if not self.authorized():
            return self.reply(401, {"error": "unauthorized"})
        try:
            payload = self.body()
        except ValueError as exc:
            return self.reply(400, {"error": str(exc)})
        if self.path == "/deliver":
            if STATE["status"] == "draining":
                return self.reply(200, {"status": "retryable_error", "detail": "draining"})
            if record_delivery(payload, self.headers.get("Idempotency-Key")):
                log("delivered %s: %s" % (payload.get("delivery_id"), payload.get("content")))
            else:
                log("repeat of %s ignored" % payload.get("delivery_id"))
            return self.reply(200, {"status": "committed"})
        if self.path == "/inject":
            text = payload.get("text")
            if not isinstance(text, str) or not text.strip():
                return self.reply(400, {"error": "`text` must be a non-empty string"})
            thread = str(payload.get("thread") or "t1")
            event_id = str(payload.get("event_id") or "demo-" + uuid.uuid4().hex)
            status, answer = submit_event(text, thread, event_id)
            log("event %s: daemon answered HTTP %s %s" % (event_id, status, (answer or {}).get("status")))
            return self.reply(200 if status < 400 else 502, answer or {"error": "HTTP %s" % status})
        self.reply(404, {"error": "not_found"})

    def log_message(self, *_args):
        return


def main():
    credentials = fetch_credentials()
    server = ThreadingHTTPServer((BASE_URL.hostname, BASE_URL.port), Handler)
    server.daemon_threads = True

    def stop(signum, _frame):
        STATE["status"], STATE["detail"] = "draining", "received signal %d" % signum
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    STATE["status"] = "ready"
    log("sidecar %s (instance %s) serving on %s with %d credential(s)" % (
        NAME, INSTANCE_ID, BASE_URL.netloc, len(credentials)))
    server.serve_forever()
    server.server_close()
    log("sidecar %s stopped" % NAME)


if __name__ == "__main__":
    sys.exit(main())
