//! The `slack` delivery plugin (SPEC §8, §11.2, §11.3): an output becomes ordered steps — its
//! text (`content`, then each `text` part, cut at [`MAX_TEXT_CHARS`]) posted with
//! `chat.postMessage`, then each referenced asset uploaded through the external upload flow
//! (`files.getUploadURLExternal` → POST to the upload URL → `files.completeUploadExternal`).
//!
//! Per-step progress (`{"v":1,"done":N,"thread_ts"?,"completing"?}`) is saved through the
//! [`ProgressSink`] after every step, so a retry — after a failure or a crash of the daemon —
//! resumes at the first unfinished step and never re-sends a finished one. Each post carries a
//! deterministic `client_msg_id` (from the delivery id and the step), and the first post's
//! `ts` becomes the thread of later steps when the target names no `thread_ts`. Upload URLs are
//! never saved; before `files.completeUploadExternal` is called the step is marked
//! `completing`, and a retry that finds the mark (the daemon died while the outcome was
//! unknown) dead-letters `upload_outcome_unknown` instead of possibly sharing the file twice.
//! A completion that fails without an answer (timeout, closed connection) is unknown as well.
//!
//! At delivery time the target is checked again: its connector must exist and its allowlists
//! admit the channel, team and enterprise (`target_not_allowed`, terminal). The bot token is
//! the team's `team_bot_tokens` entry, else `bot_token` (`no_bot_token`, terminal).
//!
//! Errors: HTTP 429 (with `Retry-After`) and `ok:false` `ratelimited` are retryable after the
//! delay; the errors of [`TERMINAL_ERRORS`] dead-letter; every other failure is retryable.
//! Tokens never appear in a reason.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::delivery::{AttemptOutcome, ProgressSink, Transport};
use crate::model::delivery::DeliveryJob;
use crate::model::reply::{ReplyPlugin, SlackAddress, TargetAddress};
use crate::net::slack_api::{ApiError, SlackApi, SlackClients};
use crate::registry::Registry;

/// Slack errors that no retry can fix (SPEC §8).
pub const TERMINAL_ERRORS: [&str; 10] = [
    "invalid_auth",
    "not_authed",
    "account_inactive",
    "token_revoked",
    "channel_not_found",
    "not_in_channel",
    "is_archived",
    "missing_scope",
    "not_allowed_token_type",
    "ekm_access_denied",
];
/// Longest text of one message; longer text is split into several steps (Slack truncates
/// messages past 40 000 characters).
pub const MAX_TEXT_CHARS: usize = 39_000;
/// Code of a completion whose outcome is unknown (terminal).
pub const UPLOAD_OUTCOME_UNKNOWN: &str = "upload_outcome_unknown";

/// One thing to send.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Text(String),
    File(String),
}

/// The `slack` transport. See the module docs.
pub struct SlackTransport {
    registry: Option<Arc<Registry>>,
    clients: Arc<SlackClients>,
}

impl SlackTransport {
    pub fn new(registry: Option<Arc<Registry>>, clients: Arc<SlackClients>) -> SlackTransport {
        SlackTransport { registry, clients }
    }
}

impl Transport for SlackTransport {
    fn deliver(&self, job: &DeliveryJob, progress: &mut dyn ProgressSink) -> AttemptOutcome {
        let address = match parse_target(job) {
            Ok(a) => a,
            Err(outcome) => return outcome,
        };
        let Some(registry) = &self.registry else {
            return retryable(
                "connector_config_unavailable",
                format!(
                    "slack connector `{}` is unknown to this process: it was started without a \
                     connector file; pass the daemon's file, or let `serve` deliver it",
                    address.connector
                ),
                None,
            );
        };
        let set = registry.current();
        let Some(rt) = set.slack.get(&address.connector) else {
            return terminal(
                "invalid_target",
                format!(
                    "the slack reply target names connector `{}`, which is not configured",
                    address.connector
                ),
            );
        };
        if let Err(why) = rt.check_address(&address) {
            return terminal(
                "target_not_allowed",
                format!("the slack reply target is not allowed: {why}"),
            );
        }
        let Some(token) = rt.token_for(address.team_id.as_deref()) else {
            return terminal(
                "no_bot_token",
                format!(
                    "slack connector `{}` has no bot token for team `{}`; configure `bot_token` or \
                     `team_bot_tokens`",
                    address.connector,
                    address.team_id.as_deref().unwrap_or("-")
                ),
            );
        };
        let client = match self.clients.get(&rt.config.api_base_url) {
            Ok(c) => c,
            Err(e) => {
                return terminal(
                    "invalid_target",
                    format!("slack connector `{}`: {e}", address.connector),
                )
            }
        };
        Sender {
            client: &client,
            token: token.expose(),
            address: &address,
            job,
            progress,
        }
        .run()
    }
}

/// The saved progress of a delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Progress {
    done: usize,
    thread_ts: Option<String>,
    /// The step whose `files.completeUploadExternal` was called without a known outcome.
    completing: Option<usize>,
}

impl Progress {
    fn load(v: Option<&Value>) -> Progress {
        let Some(v) = v else {
            return Progress::default();
        };
        Progress {
            done: v.get("done").and_then(Value::as_u64).unwrap_or(0) as usize,
            thread_ts: v
                .get("thread_ts")
                .and_then(Value::as_str)
                .map(str::to_string),
            completing: v
                .get("completing")
                .and_then(Value::as_u64)
                .map(|n| n as usize),
        }
    }

    fn to_json(&self) -> Value {
        let mut v = json!({"v": 1, "done": self.done});
        if let Some(ts) = &self.thread_ts {
            v["thread_ts"] = json!(ts);
        }
        if let Some(step) = self.completing {
            v["completing"] = json!(step);
        }
        v
    }
}

struct Sender<'a> {
    client: &'a SlackApi,
    token: &'a str,
    address: &'a SlackAddress,
    job: &'a DeliveryJob,
    progress: &'a mut dyn ProgressSink,
}

impl Sender<'_> {
    fn run(mut self) -> AttemptOutcome {
        let steps = steps(self.job);
        let mut state = Progress::load(self.job.delivery.progress.as_ref());
        if let Some(step) = state.completing {
            return terminal(
                UPLOAD_OUTCOME_UNKNOWN,
                format!(
                    "step {} (a file upload) was being completed when the previous attempt \
                     ended; whether Slack shared the file is unknown, so it is not sent again",
                    step + 1
                ),
            );
        }
        for (idx, step) in steps.iter().enumerate().skip(state.done) {
            let thread = self
                .address
                .thread_ts
                .clone()
                .or_else(|| state.thread_ts.clone());
            match step {
                Step::Text(text) => {
                    let client_msg_id = client_msg_id(&self.job.delivery.delivery_id, idx);
                    match self.client.post_message(
                        self.token,
                        &self.address.channel_id,
                        text,
                        thread.as_deref(),
                        &client_msg_id,
                    ) {
                        Ok(posted) => {
                            if state.thread_ts.is_none() && self.address.thread_ts.is_none() {
                                state.thread_ts = Some(posted.ts);
                            }
                        }
                        Err(e) => return api_outcome(&e),
                    }
                }
                Step::File(asset_id) => {
                    if let Err(outcome) = self.upload(idx, asset_id, thread.as_deref(), &mut state)
                    {
                        return outcome;
                    }
                }
            }
            state.done = idx + 1;
            state.completing = None;
            // A step before the last is saved (waited): the next step must not start before
            // it is durable, or a crash during that step would re-send this one. The last
            // step's progress is only noted; the settlement is queued after it.
            let saved = if state.done == steps.len() {
                self.progress.note(&state.to_json())
            } else {
                self.progress.save(&state.to_json())
            };
            if let Err(why) = saved {
                return retryable(
                    "progress_not_saved",
                    format!(
                        "step {} was sent but its progress could not be saved: {why}",
                        idx + 1
                    ),
                    None,
                );
            }
        }
        AttemptOutcome::Delivered {
            http_status: Some(200),
        }
    }

    /// The upload flow of one asset; `Err` is the attempt's outcome.
    fn upload(
        &mut self,
        idx: usize,
        asset_id: &str,
        thread: Option<&str>,
        state: &mut Progress,
    ) -> Result<(), AttemptOutcome> {
        let asset = match self.progress.asset(asset_id) {
            Ok(Some(a)) => a,
            Ok(None) => {
                return Err(terminal(
                    "asset_not_found",
                    format!(
                    "the output references asset `{asset_id}`, which the state root does not hold"
                ),
                ))
            }
            Err(why) => {
                return Err(retryable(
                    "asset_unavailable",
                    format!("reading asset `{asset_id}`: {why}"),
                    None,
                ))
            }
        };
        let filename = asset
            .file_name
            .clone()
            .unwrap_or_else(|| asset_id.to_string());
        let ticket = self
            .client
            .get_upload_url(self.token, &filename, asset.data.len() as u64)
            .map_err(|e| api_outcome(&e))?;
        self.client
            .upload(&ticket, &asset.data)
            .map_err(|e| api_outcome(&e))?;
        state.completing = Some(idx);
        if let Err(why) = self.progress.save(&state.to_json()) {
            return Err(retryable(
                "progress_not_saved",
                format!("before completing the upload: {why}"),
                None,
            ));
        }
        match self.client.complete_upload(
            self.token,
            &ticket.file_id,
            &filename,
            &self.address.channel_id,
            thread,
        ) {
            Ok(()) => Ok(()),
            Err(ApiError::Request { reason, .. }) => Err(terminal(
                UPLOAD_OUTCOME_UNKNOWN,
                format!("completing the upload of step {} got no answer ({reason}); whether Slack shared the file is unknown", idx + 1),
            )),
            Err(e) => {
                // A definite answer: nothing was shared, so the step can be tried again.
                state.completing = None;
                let _ = self.progress.save(&state.to_json());
                Err(api_outcome(&e))
            }
        }
    }
}

/// The deterministic `client_msg_id` of step `idx` of a delivery: a UUID-shaped digest, the
/// same on every retry.
pub fn client_msg_id(delivery_id: &str, idx: usize) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("{delivery_id}:{idx}").as_bytes());
    let h: String = hex::encode(&d[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The steps of an output: `content`, then each part in order (text parts and assets).
fn steps(job: &DeliveryJob) -> Vec<Step> {
    let mut out = Vec::new();
    let mut push_text = |text: &str| {
        if text.trim().is_empty() {
            return;
        }
        let chars: Vec<char> = text.chars().collect();
        for chunk in chars.chunks(MAX_TEXT_CHARS) {
            out.push(Step::Text(chunk.iter().collect()));
        }
    };
    if let Some(content) = &job.content {
        push_text(content);
    }
    let mut files = Vec::new();
    for part in job.parts.iter().flatten() {
        if let Some(id) = part.get("asset_id").and_then(Value::as_str) {
            let id = id.trim().to_string();
            if !id.is_empty() && !files.contains(&id) {
                files.push(id);
            }
        } else if part.get("type").and_then(Value::as_str) == Some("text") {
            if let Some(text) = part.get("text").and_then(Value::as_str) {
                push_text(text);
            }
        }
    }
    out.extend(files.into_iter().map(Step::File));
    out
}

fn retryable(
    code: &str,
    reason: String,
    retry_after: Option<std::time::Duration>,
) -> AttemptOutcome {
    AttemptOutcome::Retryable {
        code: code.into(),
        reason,
        http_status: None,
        retry_after,
    }
}

fn terminal(code: &str, reason: String) -> AttemptOutcome {
    AttemptOutcome::Terminal {
        code: code.into(),
        reason,
        http_status: None,
    }
}

/// The outcome of a failed Web API call (see the module docs).
fn api_outcome(e: &ApiError) -> AttemptOutcome {
    let reason = e.to_string();
    match e {
        ApiError::RateLimited { retry_after, .. } => AttemptOutcome::Retryable {
            code: "slack_ratelimited".into(),
            reason,
            http_status: Some(429),
            retry_after: *retry_after,
        },
        ApiError::Slack { error, .. } if TERMINAL_ERRORS.contains(&error.as_str()) => {
            terminal(&format!("slack_{error}"), reason)
        }
        ApiError::Slack { error, .. } => retryable(&format!("slack_{error}"), reason, None),
        ApiError::Status { status, .. } => AttemptOutcome::Retryable {
            code: format!("http_status_{status}"),
            reason,
            http_status: Some(*status),
            retry_after: None,
        },
        ApiError::Request { class, .. } if !class.is_retryable() => terminal(class.code(), reason),
        ApiError::Request { class, .. } => retryable(class.code(), reason, None),
        ApiError::Invalid { .. } => retryable("invalid_response", reason, None),
        ApiError::Refused { .. } => terminal("invalid_upload_url", reason),
    }
}

fn parse_target(job: &DeliveryJob) -> Result<SlackAddress, AttemptOutcome> {
    let target = &job.delivery.target;
    if target.plugin != ReplyPlugin::Slack {
        return Err(terminal(
            "invalid_target",
            format!("it names plugin `{}`, not `slack`", target.plugin.as_str()),
        ));
    }
    match TargetAddress::parse(ReplyPlugin::Slack, &target.address) {
        Ok(TargetAddress::Slack(a)) => Ok(a),
        Ok(_) => Err(terminal(
            "invalid_target",
            "it is not a slack address".into(),
        )),
        Err(e) => Err(terminal(
            "invalid_target",
            format!("the slack reply target is invalid: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::delivery::{Delivery, DeliveryStatus};
    use crate::model::reply::ReplyTarget;

    fn job(content: Option<&str>, parts: Option<Vec<Value>>) -> DeliveryJob {
        let target = ReplyTarget {
            plugin: ReplyPlugin::Slack,
            address: r#"{"connector":"s","channel_id":"C1"}"#.into(),
        };
        DeliveryJob {
            delivery: Delivery::sample("dlv_1", target, DeliveryStatus::Pending),
            attempt: 1,
            content: content.map(str::to_string),
            parts,
            assets: Vec::new(),
        }
    }

    #[test]
    fn steps_are_text_then_files_in_order() {
        let parts = vec![
            json!({"type": "text", "text": "b"}),
            json!({"type": "asset_reference", "asset_id": "a1"}),
            json!({"type": "text", "text": "  "}),
            json!({"type": "asset_reference", "asset_id": "a1"}),
        ];
        assert_eq!(
            steps(&job(Some("a"), Some(parts))),
            [
                Step::Text("a".into()),
                Step::Text("b".into()),
                Step::File("a1".into())
            ]
        );
        let long = "x".repeat(MAX_TEXT_CHARS + 1);
        assert_eq!(steps(&job(Some(&long), None)).len(), 2);
        assert!(steps(&job(None, None)).is_empty());
    }

    #[test]
    fn client_msg_ids_are_stable_uuid_shapes() {
        let a = client_msg_id("dlv_1", 0);
        assert_eq!(a, client_msg_id("dlv_1", 0));
        assert_ne!(a, client_msg_id("dlv_1", 1));
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
    }

    #[test]
    fn progress_round_trips() {
        let p = Progress {
            done: 2,
            thread_ts: Some("1.2".into()),
            completing: Some(3),
        };
        assert_eq!(Progress::load(Some(&p.to_json())), p);
        assert_eq!(Progress::load(None), Progress::default());
    }

    #[test]
    fn errors_map_to_outcomes() {
        let slack = |error: &str| ApiError::Slack {
            method: "chat.postMessage",
            target: "https://slack.com".into(),
            error: error.into(),
        };
        for error in TERMINAL_ERRORS {
            assert!(
                matches!(api_outcome(&slack(error)), AttemptOutcome::Terminal { .. }),
                "{error}"
            );
        }
        assert!(matches!(
            api_outcome(&slack("internal_error")),
            AttemptOutcome::Retryable { .. }
        ));
        let limited = ApiError::RateLimited {
            method: "chat.postMessage",
            target: "t".into(),
            retry_after: Some(std::time::Duration::from_secs(3)),
        };
        match api_outcome(&limited) {
            AttemptOutcome::Retryable {
                retry_after, code, ..
            } => {
                assert_eq!(retry_after, Some(std::time::Duration::from_secs(3)));
                assert_eq!(code, "slack_ratelimited");
            }
            other => panic!("{other:?}"),
        }
    }
}
