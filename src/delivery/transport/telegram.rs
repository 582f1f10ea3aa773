//! The `telegram` delivery plugin (SPEC §9.3, §11.2, §11.3): an output becomes a sequence of
//! Bot API calls to the target's chat — its text split into chunks of at most
//! [`MAX_CHUNK_CHARS`] Unicode scalar values (`sendMessage`), then each referenced asset
//! uploaded as multipart (`sendPhoto` for images, `sendAudio` for audio, `sendDocument` for the
//! rest). Steps are numbered in a deterministic order (the output's `content`, then its `parts`
//! in order) and the number of finished steps is saved through the [`ProgressSink`] after each
//! one, so a retry — after a failure, or a crash of the daemon — resumes after the last sent
//! step and never sends one twice.
//!
//! At delivery time the target is checked again: its connector must be a Telegram connector
//! of the live registry with a bot token, and its chat must pass `allowed_chat_ids` (terminal
//! `invalid_target` / `chat_not_allowed` otherwise). Answers: a flood wait (429,
//! `parameters.retry_after` or `Retry-After`) is retryable after that delay (the retry policy
//! caps it at an hour); 401, 403 and the descriptions "chat not found", "bot was blocked",
//! "message thread not found", "message is too long", "group chat was upgraded to a supergroup
//! chat" and "not enough rights" are terminal; everything else
//! (5xx, garbage, a redirect, a timeout, other 4xx) is retryable.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::delivery::{AttemptOutcome, ProgressSink, Transport};
use crate::model::delivery::DeliveryJob;
use crate::model::reply::{ReplyPlugin, TargetAddress, TelegramAddress};
use crate::net::telegram_api::{ApiError, ApiStats, BotApis, Destination, MediaMethod, Upload};
use crate::registry::{check_telegram_chat, Registry};

/// Longest text of one `sendMessage`, in Unicode scalar values (the Bot API's limit).
pub const MAX_CHUNK_CHARS: usize = 4096;
/// Code of an attempt made without any connector configuration (retryable).
pub const CONFIG_UNAVAILABLE: &str = "connector_config_unavailable";

/// Descriptions of `ok:false` answers that no retry can fix (matched case-insensitively: the
/// Bot API distinguishes these errors only by their description).
const TERMINAL_DESCRIPTIONS: [&str; 6] = [
    "chat not found",
    "bot was blocked",
    "message thread not found",
    "message is too long",
    // The chat id now names a chat that no longer takes messages; the new id is in the error.
    "group chat was upgraded to a supergroup chat",
    // The bot may not post in the chat until an administrator changes its rights.
    "not enough rights",
];

/// The `telegram` transport. See the module docs.
pub struct TelegramTransport {
    registry: Option<Arc<Registry>>,
    apis: BotApis,
}

impl TelegramTransport {
    pub fn new(registry: Option<Arc<Registry>>, stats: Arc<ApiStats>) -> TelegramTransport {
        TelegramTransport {
            registry,
            apis: BotApis::new(stats),
        }
    }
}

/// One Bot API call of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Text(String),
    Asset(String),
}

/// Splits `text` into chunks of at most [`MAX_CHUNK_CHARS`] Unicode scalar values.
pub fn chunks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut n = 0;
    for c in text.chars() {
        if n == MAX_CHUNK_CHARS {
            out.push(std::mem::take(&mut current));
            n = 0;
        }
        current.push(c);
        n += 1;
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The steps of an output: `content` chunks, then per part its text chunks or its asset.
fn steps(job: &DeliveryJob) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::new();
    // A chunk of whitespace alone (the end of a text just over the limit, such as 4096
    // characters and a newline) is not sent: the Bot API trims message text and refuses an
    // empty one (`400 Bad Request: message text is empty`).
    let mut text = |t: &str| {
        out.extend(
            chunks(t)
                .into_iter()
                .filter(|c| !c.trim().is_empty())
                .map(Step::Text),
        );
    };
    if let Some(content) = &job.content {
        text(content);
    }
    let mut steps = out;
    for part in job.parts.iter().flatten() {
        if let Some(id) = part.get("asset_id").and_then(Value::as_str) {
            if !id.trim().is_empty() {
                steps.push(Step::Asset(id.trim().to_string()));
            }
        } else if let Some(t) = part.get("text").and_then(Value::as_str) {
            if !t.trim().is_empty() {
                steps.extend(chunks(t).into_iter().map(Step::Text));
            }
        }
    }
    steps
}

fn terminal(code: &str, reason: String) -> AttemptOutcome {
    AttemptOutcome::Terminal {
        code: code.into(),
        reason,
        http_status: None,
    }
}

/// How a failed Bot API call ends the attempt (see the module docs).
pub fn outcome_of(err: &ApiError) -> AttemptOutcome {
    let reason = err.to_string();
    let http_status = err.status();
    let code = err.code();
    match err {
        ApiError::Transport { class, .. } if !class.is_retryable() => AttemptOutcome::Terminal {
            code,
            reason,
            http_status,
        },
        e if e.is_flood_wait() => AttemptOutcome::Retryable {
            code,
            reason,
            http_status,
            retry_after: e.retry_after(),
        },
        ApiError::Rejected {
            error_code,
            status,
            description,
            ..
        } => {
            let lower = description.to_ascii_lowercase();
            let fatal = matches!(error_code, 401 | 403)
                || matches!(status, 401 | 403)
                || TERMINAL_DESCRIPTIONS.iter().any(|d| lower.contains(d));
            if fatal {
                AttemptOutcome::Terminal {
                    code,
                    reason,
                    http_status,
                }
            } else {
                AttemptOutcome::Retryable {
                    code,
                    reason,
                    http_status,
                    retry_after: None,
                }
            }
        }
        _ => AttemptOutcome::Retryable {
            code,
            reason,
            http_status,
            retry_after: None,
        },
    }
}

/// Steps already sent, from the saved progress (`{"steps_done": N, ...}`).
fn steps_done(job: &DeliveryJob) -> usize {
    job.delivery
        .progress
        .as_ref()
        .and_then(|p| p.get("steps_done"))
        .and_then(Value::as_u64)
        .map_or(0, |n| n as usize)
}

impl TelegramTransport {
    fn attempt(
        &self,
        job: &DeliveryJob,
        address: &TelegramAddress,
        progress: &mut dyn ProgressSink,
    ) -> AttemptOutcome {
        let Some(registry) = &self.registry else {
            return AttemptOutcome::Retryable {
                code: CONFIG_UNAVAILABLE.into(),
                reason: format!(
                    "telegram connector `{}` is unknown to this process: it was started without \
                     a connector file; pass the daemon's file, or let `serve` deliver it",
                    address.connector
                ),
                http_status: None,
                retry_after: None,
            };
        };
        let set = registry.current();
        let Some(rt) = set.telegram.get(&address.connector) else {
            return terminal(
                "invalid_target",
                format!(
                    "the target names telegram connector `{}`, which is not configured (removed \
                     or renamed since the output was queued)",
                    address.connector
                ),
            );
        };
        if let Err(why) = check_telegram_chat(rt, &address.chat_id) {
            return terminal("chat_not_allowed", why);
        }
        let Some(token) = &rt.bot_token else {
            return terminal(
                "bot_token_missing",
                format!(
                    "telegram connector `{}` has no bot token; configure `bot_token`",
                    address.connector
                ),
            );
        };
        let api = match self.apis.get(
            &address.connector,
            &rt.config.api_base_url,
            token.current().expose(),
        ) {
            Ok(api) => api,
            Err(why) => return terminal("invalid_target", why),
        };
        let steps = steps(job);
        if steps.is_empty() {
            return terminal(
                "nothing_to_send",
                "the output has no text and references no asset".into(),
            );
        }
        let to = Destination {
            chat_id: address.chat_id.clone(),
            message_thread_id: address.message_thread_id,
            reply_to_message_id: address.reply_to_message_id,
        };
        let mut message_ids: Vec<Value> = job
            .delivery
            .progress
            .as_ref()
            .and_then(|p| p.get("message_ids"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (idx, step) in steps.iter().enumerate().skip(steps_done(job)) {
            let sent = match step {
                Step::Text(text) => api.send_message(&to, text),
                Step::Asset(asset_id) => {
                    let asset = match progress.asset(asset_id) {
                        Ok(Some(asset)) => asset,
                        Ok(None) => {
                            return terminal(
                                "asset_not_found",
                                format!(
                                    "the output references asset `{asset_id}`, which the state \
                                     root does not hold"
                                ),
                            )
                        }
                        Err(why) => {
                            return AttemptOutcome::Retryable {
                                code: "asset_unreadable".into(),
                                reason: why,
                                http_status: None,
                                retry_after: None,
                            }
                        }
                    };
                    let file_name = asset.file_name.clone().unwrap_or_else(|| asset_id.clone());
                    api.send_media(
                        &to,
                        Upload {
                            method: MediaMethod::for_media_type(&asset.media_type),
                            file_name: &file_name,
                            media_type: &asset.media_type,
                            data: &asset.data,
                        },
                    )
                }
            };
            match sent {
                Ok(id) => message_ids.push(id.map_or(Value::Null, Value::from)),
                Err(e) => return outcome_of(&e),
            }
            let saved = json!({
                "steps_done": idx + 1,
                "steps": steps.len(),
                "message_ids": message_ids,
            });
            // Waited before the next chunk (a crash while sending it must not re-send this
            // one); the last chunk's progress is only noted, its settlement queued after it.
            let written = if idx + 1 == steps.len() {
                progress.note(&saved)
            } else {
                progress.save(&saved)
            };
            if let Err(why) = written {
                return AttemptOutcome::Retryable {
                    code: "progress_not_saved".into(),
                    reason: format!(
                        "step {} of {} was sent but its progress could not be saved: {why}",
                        idx + 1,
                        steps.len()
                    ),
                    http_status: None,
                    retry_after: None,
                };
            }
        }
        AttemptOutcome::Delivered {
            http_status: Some(200),
        }
    }
}

impl Transport for TelegramTransport {
    fn deliver(&self, job: &DeliveryJob, progress: &mut dyn ProgressSink) -> AttemptOutcome {
        let target = &job.delivery.target;
        let address = match target.parsed() {
            Ok(TargetAddress::Telegram(a)) if target.plugin == ReplyPlugin::Telegram => a,
            Ok(_) | Err(_) => {
                return terminal(
                    "invalid_target",
                    "the target is not a valid telegram address".into(),
                )
            }
        };
        self.attempt(job, &address, progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::FailureClass;
    use std::time::Duration;

    #[test]
    fn text_is_chunked_by_scalar_values() {
        let text = format!("{}ééé", "a".repeat(4096));
        let got = chunks(&text);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].chars().count(), 4096);
        assert_eq!(got[1], "ééé");
        assert_eq!(chunks(&"é".repeat(4096)).len(), 1);
        assert_eq!(chunks(&"é".repeat(8193)).len(), 3);
        assert!(chunks("").is_empty());
    }

    #[test]
    fn a_chunk_of_whitespace_alone_is_not_a_step() {
        let job = |content: String| DeliveryJob {
            delivery: crate::model::delivery::Delivery::sample(
                "dlv_1",
                crate::model::reply::ReplyTarget {
                    plugin: ReplyPlugin::Telegram,
                    address: r#"{"connector":"t","chat_id":5}"#.into(),
                },
                crate::model::delivery::DeliveryStatus::Pending,
            ),
            attempt: 1,
            content: Some(content),
            parts: None,
            assets: Vec::new(),
        };
        let texts = |content: String| -> Vec<usize> {
            steps(&job(content))
                .into_iter()
                .map(|s| match s {
                    Step::Text(t) => t.chars().count(),
                    Step::Asset(_) => 0,
                })
                .collect()
        };
        assert_eq!(texts(format!("{}\n", "x".repeat(4096))), [4096]);
        assert_eq!(texts(format!("{}   \n ", "x".repeat(4096))), [4096]);
        assert_eq!(
            texts(format!("{}{}y", "x".repeat(4096), " ".repeat(4096))),
            [4096, 1]
        );
        assert!(texts("  \n".into()).is_empty());
    }

    fn rejected(status: u16, description: &str, retry_after: Option<u64>) -> ApiError {
        ApiError::Rejected {
            endpoint: "e".into(),
            status,
            error_code: i64::from(status),
            description: description.into(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    fn is_terminal(e: ApiError) -> bool {
        matches!(outcome_of(&e), AttemptOutcome::Terminal { .. })
    }

    #[test]
    fn answers_are_classified() {
        match outcome_of(&rejected(429, "Too Many Requests: retry after 7", Some(7))) {
            AttemptOutcome::Retryable { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(7)))
            }
            other => panic!("{other:?}"),
        }
        assert!(is_terminal(rejected(401, "Unauthorized", None)));
        assert!(is_terminal(rejected(
            403,
            "Forbidden: bot was blocked by the user",
            None
        )));
        for d in [
            "Bad Request: chat not found",
            "Bad Request: message thread not found",
            "Bad Request: message is too long",
            "Bad Request: group chat was upgraded to a supergroup chat",
            "Bad Request: not enough rights to send text messages to the chat",
        ] {
            assert!(is_terminal(rejected(400, d, None)), "{d}");
        }
        assert!(!is_terminal(rejected(
            400,
            "Bad Request: something else",
            None
        )));
        assert!(!is_terminal(rejected(500, "Internal Server Error", None)));
        assert!(!is_terminal(ApiError::Invalid {
            endpoint: "e".into(),
            status: 302,
            detail: "redirect".into()
        }));
        assert!(!is_terminal(ApiError::Transport {
            endpoint: "e".into(),
            class: FailureClass::Timeout,
            reason: "slow".into()
        }));
        assert!(is_terminal(ApiError::Transport {
            endpoint: "e".into(),
            class: FailureClass::BlockedPrivateAddress,
            reason: "private".into()
        }));
    }
}
