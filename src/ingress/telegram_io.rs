//! The Bot API side of Telegram ingress (SPEC §9): one Bot API client per connector and the
//! queue of `answerCallbackQuery` calls, served by one background thread. Shared by the webhook
//! and the pollers; the pipeline's context carries it, so it depends on nothing of ingress.

use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};

use crate::net::telegram_api::{ApiStats, BotApi, BotApis};
use crate::registry::TelegramRuntime;

/// One queued `answerCallbackQuery`: the bot's client and the callback query id.
type CallbackAnswer = (Arc<BotApi>, String);

/// The Bot API side of Telegram ingress: clients per connector and the queue of callback
/// answers. One per daemon; the poller and the webhook share it.
#[derive(Debug)]
pub struct TelegramIo {
    apis: BotApis,
    stats: Arc<ApiStats>,
    /// The callback-answer queue; its thread starts with the first answer.
    answers: Mutex<Option<Sender<CallbackAnswer>>>,
}

impl TelegramIo {
    pub fn new(stats: Arc<ApiStats>) -> TelegramIo {
        TelegramIo {
            apis: BotApis::new(Arc::clone(&stats)),
            stats,
            answers: Mutex::new(None),
        }
    }

    /// The Bot API call counters (for `/metrics`).
    pub fn stats(&self) -> &Arc<ApiStats> {
        &self.stats
    }

    /// The client of `rt`, when it has a bot token.
    pub fn api(&self, rt: &TelegramRuntime) -> Result<Arc<BotApi>, String> {
        let token = rt.bot_token.as_ref().ok_or_else(|| {
            format!(
                "telegram connector `{}` has no bot token; configure `bot_token`",
                rt.id.name
            )
        })?;
        self.apis.get(
            rt.id.name.as_str(),
            &rt.config.api_base_url,
            token.current().expose(),
        )
    }

    /// Queues `answerCallbackQuery`; never blocks (it runs on the writer thread, after the
    /// commit). Failures are counted in the Bot API metrics; the answer only stops the
    /// client's progress indicator.
    pub(super) fn answer_callback(&self, api: Arc<BotApi>, callback_query_id: String) {
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        if answers.is_none() {
            let (tx, rx) = mpsc::channel::<CallbackAnswer>();
            let spawned = std::thread::Builder::new()
                .name("telegram-callbacks".into())
                .spawn(move || {
                    while let Ok((api, id)) = rx.recv() {
                        // Counted by the client; nothing else to do with a failure.
                        let _ = api.answer_callback_query(&id);
                    }
                });
            if spawned.is_err() {
                return;
            }
            *answers = Some(tx);
        }
        if let Some(tx) = answers.as_ref() {
            let _ = tx.send((api, callback_query_id));
        }
    }
}
