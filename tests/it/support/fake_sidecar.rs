//! A fake external-connector sidecar on `127.0.0.1:0` speaking the runtime contract of SPEC
//! §10.1: `GET /manifest` and `GET /health` answer from settable state (instance id,
//! capabilities, health status, or any raw answer), and `POST /deliver` answers from a script
//! (`{"status":"committed"}` by default). Every request is recorded with its headers and body.
//!
//! Built on [`Receiver`] (raw sockets, so a script can hang, close, redirect or send a huge
//! body, and nothing sleeps); [`FakeSidecar::receiver`] gives its full control.

#![allow(dead_code)]

use std::time::Duration;

use serde_json::{json, Value};

use super::receiver::{Answer, Receiver, Recorded};

/// The paths of the runtime contract.
pub const MANIFEST: &str = "/manifest";
pub const HEALTH: &str = "/health";
pub const DELIVER: &str = "/deliver";

/// See the module docs.
pub struct FakeSidecar {
    pub receiver: Receiver,
}

/// A 200 JSON answer with `body`.
pub fn json_answer(status: u16, body: &Value) -> Answer {
    Answer::Full {
        status,
        headers: Vec::new(),
        body: body.to_string().into_bytes(),
    }
}

/// `200 {"status":"committed"}`.
pub fn committed() -> Answer {
    json_answer(200, &json!({"status": "committed"}))
}

/// `status` with `{"status":"retryable_error","detail"}`.
pub fn retryable(status: u16, detail: &str) -> Answer {
    json_answer(
        status,
        &json!({"status": "retryable_error", "detail": detail}),
    )
}

/// `status` with `{"status":"terminal_error","detail"}`.
pub fn terminal(status: u16, detail: &str) -> Answer {
    json_answer(
        status,
        &json!({"status": "terminal_error", "detail": detail}),
    )
}

impl FakeSidecar {
    /// A ready sidecar with instance id `fake-1` that takes attachments and threads, and
    /// commits every delivery.
    pub fn start() -> FakeSidecar {
        let sidecar = FakeSidecar {
            receiver: Receiver::start(),
        };
        sidecar.set_manifest(
            "fake-1",
            json!({"attachments_in": true, "attachments_out": true, "threads": true}),
        );
        sidecar.set_health("fake-1", "ready");
        sidecar.receiver.set_default(committed());
        sidecar
    }

    /// `http://127.0.0.1:PORT`: the connector's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.receiver.addr)
    }

    /// `GET /manifest` answers protocol 1 with `instance_id` and `capabilities` from now on.
    pub fn set_manifest(&self, instance_id: &str, capabilities: Value) -> &FakeSidecar {
        self.set_manifest_answer(json_answer(
            200,
            &json!({
                "protocol_version": 1,
                "instance_id": instance_id,
                "capabilities": capabilities,
            }),
        ))
    }

    /// `GET /manifest` answers `answer` from now on (errors, garbage, other versions).
    pub fn set_manifest_answer(&self, answer: Answer) -> &FakeSidecar {
        self.receiver.fixed(MANIFEST, answer);
        self
    }

    /// `GET /health` answers protocol 1 with `instance_id` and `status` from now on.
    pub fn set_health(&self, instance_id: &str, status: &str) -> &FakeSidecar {
        self.receiver.fixed(
            HEALTH,
            json_answer(
                200,
                &json!({"protocol_version": 1, "instance_id": instance_id, "status": status}),
            ),
        );
        self
    }

    /// The next `/deliver` requests get `answers`, in order, then the default.
    pub fn script_deliver(&self, answers: impl IntoIterator<Item = Answer>) -> &FakeSidecar {
        self.receiver.script(answers);
        self
    }

    /// The `/deliver` answer once the script is used up (initially [`committed`]).
    pub fn set_deliver_default(&self, answer: Answer) -> &FakeSidecar {
        self.receiver.set_default(answer);
        self
    }

    /// Every `/deliver` request so far.
    pub fn deliveries(&self) -> Vec<Recorded> {
        self.receiver.requests_to(DELIVER)
    }

    /// How many times the manifest was fetched.
    pub fn manifest_fetches(&self) -> usize {
        self.receiver.requests_to(MANIFEST).len()
    }

    /// Every manifest request so far.
    pub fn manifest_requests(&self) -> Vec<Recorded> {
        self.receiver.requests_to(MANIFEST)
    }

    /// Waits for at least `n` `/deliver` requests.
    pub fn wait_deliveries(&self, n: usize, deadline: Duration) -> Vec<Recorded> {
        self.receiver.wait_for_path(DELIVER, n, deadline)
    }
}
