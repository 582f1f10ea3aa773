//! Telegram long polling (SPEC §9.2): one `getUpdates` loop per polling connector, kept in step
//! with the connector set by a manager thread (as `sidecars` does: reconciled after every
//! registry swap; a connector whose API base, bot token or timeout changed is restarted, a
//! removed one stopped, a new one started).
//!
//! One loop: read the connector's saved next offset from the state root; call `getUpdates`
//! (`offset`, `timeout = polling_timeout_seconds`, the client's budget that plus 10 s,
//! `allowed_updates`) on a helper thread, so a stop is honoured at once instead of after the
//! long poll; sort the batch by `update_id`, drop repeats and ids below the offset; run the
//! batch through Telegram ingress (one group commit); then walk the answers in order:
//!
//! - accepted, duplicate or skipped: done;
//! - rate-limited or a state root that cannot commit: transient — the offset stops at that
//!   update, the loop waits (the limiter's delay, or a backoff) and submits it again with the
//!   rest (updates after it that were accepted come back as duplicates, never as second runs);
//! - any other refusal (a chat outside `allowed_chat_ids`, a malformed update, a session
//!   policy): the update can never succeed — it is logged, counted in
//!   `kheish_telegram_poll_skipped_updates_total` and skipped.
//!
//! The next offset is saved after each batch, before the next `getUpdates` (which is what
//! confirms the batch to Telegram), so a restart neither loses nor repeats updates. Failed
//! `getUpdates` calls back off (0.5 s doubling to 30 s); a flood wait (429,
//! `parameters.retry_after`, `Retry-After`) is honoured, capped at one hour. Messages name the
//! endpoint as `/bot<redacted>/getUpdates`; the token never appears.

use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::config::TelegramMode;
use crate::ingress::pipeline::{Done, IngressCtx};
use crate::ingress::telegram::accept_updates;
use crate::ingress::{Answer, IngressError};
use crate::metrics::Sample;
use crate::model::now_ms;
use crate::net::telegram_api::ApiError;
use crate::registry::{ConnectorSet, TelegramRuntime};
use crate::server::App;
use crate::store::Store;

/// The longest flood wait honoured (SPEC §9.2).
pub const MAX_FLOOD_WAIT: Duration = Duration::from_secs(3600);
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Per-connector poll figures for `/metrics`.
#[derive(Debug, Default)]
struct Stats {
    /// Unix seconds of the newest processed update's message, by connector.
    newest: Mutex<BTreeMap<String, i64>>,
    /// Updates skipped as never able to succeed, by connector.
    skipped: Mutex<BTreeMap<String, u64>>,
}

/// Messages to the manager.
enum Control {
    Reconcile,
    Shutdown,
}

/// Messages to one poller.
enum Msg {
    Stop,
    Fetched(Result<Vec<Value>, ApiError>),
}

/// A cloneable handle asking the pollers to follow the connector set in force.
#[derive(Clone)]
pub struct Reconcile(Sender<Control>);

impl Reconcile {
    pub fn request(&self) {
        let _ = self.0.send(Control::Reconcile);
    }
}

/// The running pollers; [`Pollers::shutdown`] stops them and joins.
pub struct Pollers {
    control: Sender<Control>,
    thread: JoinHandle<()>,
}

/// What a poller is started from; a change restarts it.
#[derive(Clone, PartialEq, Eq)]
struct Spec {
    api_base_url: String,
    token: String,
    timeout: u32,
}

fn desired(set: &ConnectorSet) -> BTreeMap<String, Spec> {
    set.telegram
        .iter()
        .filter(|(_, rt)| rt.config.ingress_mode == TelegramMode::Polling)
        .filter_map(|(name, rt)| {
            Some((
                name.clone(),
                Spec {
                    api_base_url: rt.config.api_base_url.clone(),
                    token: rt.bot_token.as_ref()?.current().expose().to_string(),
                    timeout: rt.config.polling_timeout_seconds,
                },
            ))
        })
        .collect()
}

struct Worker {
    spec: Spec,
    tx: Sender<Msg>,
    thread: JoinHandle<()>,
}

impl Pollers {
    /// Starts the manager, which starts one poller per polling connector, and registers the
    /// poll metrics.
    pub fn spawn(app: Arc<App>) -> std::io::Result<Pollers> {
        let stats = Arc::new(Stats::default());
        register_metrics(&app, Arc::clone(&stats));
        let (control, inbox) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("pollers".into())
            .spawn(move || manage(&app, &stats, &inbox))?;
        Ok(Pollers { control, thread })
    }

    pub fn reconciler(&self) -> Reconcile {
        Reconcile(self.control.clone())
    }

    pub fn shutdown(self) {
        let _ = self.control.send(Control::Shutdown);
        let _ = self.thread.join();
    }
}

fn manage(app: &Arc<App>, stats: &Arc<Stats>, control: &Receiver<Control>) {
    let mut workers: BTreeMap<String, Worker> = BTreeMap::new();
    let reconcile = |workers: &mut BTreeMap<String, Worker>| {
        let want = desired(&app.connectors());
        let stale: Vec<String> = workers
            .iter()
            .filter(|(name, w)| want.get(*name) != Some(&w.spec))
            .map(|(name, _)| name.clone())
            .collect();
        let stopping: Vec<Worker> = stale.iter().filter_map(|n| workers.remove(n)).collect();
        stop_all(stopping);
        for name in &stale {
            app.out.info(&if want.contains_key(name) {
                format!("telegram poller `{name}`: configuration changed; restarting it")
            } else {
                format!("telegram poller `{name}`: stopped (connector removed or not polling)")
            });
        }
        for (name, spec) in want {
            if workers.contains_key(&name) {
                continue;
            }
            let (tx, rx) = mpsc::channel();
            let ctx = (Arc::clone(app), Arc::clone(stats), tx.clone());
            let worker_name = name.clone();
            match std::thread::Builder::new()
                .name(format!("poller-{name}"))
                .spawn(move || poll(&ctx.0, &ctx.1, &worker_name, &rx, &ctx.2))
            {
                Ok(thread) => {
                    app.out.info(&format!("telegram poller `{name}`: started"));
                    workers.insert(name, Worker { spec, tx, thread });
                }
                Err(e) => app.out.error(&format!(
                    "telegram poller `{name}`: cannot start its thread: {e}"
                )),
            }
        }
    };
    reconcile(&mut workers);
    while let Ok(Control::Reconcile) = control.recv() {
        let mut shutdown = false;
        while let Ok(next) = control.try_recv() {
            shutdown |= matches!(next, Control::Shutdown);
        }
        if shutdown {
            break;
        }
        reconcile(&mut workers);
    }
    stop_all(std::mem::take(&mut workers).into_values().collect());
}

fn stop_all(workers: Vec<Worker>) {
    for w in &workers {
        let _ = w.tx.send(Msg::Stop);
    }
    for w in workers {
        let _ = w.thread.join();
    }
}

/// Waits `delay` unless told to stop; true when stopped.
fn wait_or_stop(rx: &Receiver<Msg>, delay: Duration) -> bool {
    let end = Instant::now() + delay;
    loop {
        let now = Instant::now();
        if now >= end {
            return false;
        }
        match rx.recv_timeout(end - now) {
            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return true,
            // A late answer of a fetch abandoned earlier: ignored.
            Ok(Msg::Fetched(_)) => {}
            Err(RecvTimeoutError::Timeout) => return false,
        }
    }
}

/// The current runtime of `name`, when it is still a polling connector.
fn runtime(app: &App, name: &str) -> Option<Arc<TelegramRuntime>> {
    app.connectors()
        .telegram
        .get(name)
        .filter(|rt| rt.config.ingress_mode == TelegramMode::Polling)
        .cloned()
}

fn poll(app: &Arc<App>, stats: &Stats, name: &str, rx: &Receiver<Msg>, tx: &Sender<Msg>) {
    let label = format!("telegram poller `{name}`");
    let mut backoff = BACKOFF_START;
    let store = loop {
        match Store::open(&app.state_root) {
            Ok(store) => break store,
            Err(e) => {
                app.out
                    .error(&format!("{label}: cannot open the state root: {e}"));
                if wait_or_stop(rx, backoff) {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    };
    let mut offset = loop {
        match store.poll_offset(name) {
            Ok(offset) => break offset,
            Err(e) => {
                app.out
                    .error(&format!("{label}: cannot read its offset: {e}"));
                if wait_or_stop(rx, backoff) {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    };
    backoff = BACKOFF_START;
    // The offset after the last committed batch, not yet written to the state root: it is
    // written while the next `getUpdates` is in flight (one commit overlapped with the network
    // call), or when the loop ends. Safe either way: a batch is committed before the fetch that
    // confirms it to Telegram, and a lost write only means a batch fetched again, which its
    // receipts answer.
    let mut unsaved: Option<i64> = None;
    let flush = |unsaved: &mut Option<i64>| {
        if let Some(next) = unsaved.take() {
            if let Err(e) = store.save_poll_offset(name, next, now_ms()) {
                app.out.error(&format!(
                    "{label}: cannot save its offset: {e}; the batch may be fetched again"
                ));
            }
        }
    };
    loop {
        let Some(rt) = runtime(app, name) else {
            flush(&mut unsaved);
            return;
        };
        let api = match app.telegram.api(&rt) {
            Ok(api) => api,
            Err(why) => {
                app.out.error(&format!("{label}: {why}"));
                return;
            }
        };
        let timeout = rt.config.polling_timeout_seconds;
        let fetch_tx = tx.clone();
        let fetch_offset = offset;
        let spawned = std::thread::Builder::new()
            .name(format!("poller-{name}-fetch"))
            .spawn(move || {
                let _ = fetch_tx.send(Msg::Fetched(api.get_updates(fetch_offset, timeout)));
            });
        if let Err(e) = spawned {
            app.out
                .error(&format!("{label}: cannot start a fetch: {e}"));
            if wait_or_stop(rx, backoff) {
                return;
            }
            continue;
        }
        flush(&mut unsaved);
        // Each fetch is awaited before the next starts, so the answer received is this one.
        let fetched = match rx.recv() {
            Ok(Msg::Fetched(result)) => result,
            Ok(Msg::Stop) | Err(_) => return,
        };
        let updates = match fetched {
            Ok(updates) => updates,
            Err(e) => {
                let wait = if e.is_flood_wait() {
                    e.retry_after().unwrap_or(backoff).min(MAX_FLOOD_WAIT)
                } else {
                    let b = backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    b
                };
                app.out.warn(&format!(
                    "{label}: {e}; retrying in {} ms",
                    wait.as_millis()
                ));
                if wait_or_stop(rx, wait) {
                    return;
                }
                continue;
            }
        };
        backoff = BACKOFF_START;
        let batch = order(updates, offset);
        if batch.is_empty() {
            continue;
        }
        match process(app, stats, &store, &rt, name, batch, rx) {
            Some(next) => {
                if Some(next) != offset {
                    unsaved = Some(next);
                    offset = Some(next);
                }
            }
            None => {
                flush(&mut unsaved);
                return;
            }
        }
    }
}

/// The batch sorted by `update_id`, each id once, without ids below `offset`. Updates without
/// an integer `update_id` are kept at the end (ingress refuses them, and they are skipped).
fn order(updates: Vec<Value>, offset: Option<i64>) -> Vec<Value> {
    let mut with_id: Vec<(i64, Value)> = Vec::new();
    let mut without: Vec<Value> = Vec::new();
    for u in updates {
        match u.get("update_id").and_then(Value::as_i64) {
            Some(id) if offset.is_some_and(|o| id < o) => {}
            Some(id) => with_id.push((id, u)),
            None => without.push(u),
        }
    }
    with_id.sort_by_key(|(id, _)| *id);
    with_id.dedup_by_key(|(id, _)| *id);
    with_id.into_iter().map(|(_, u)| u).chain(without).collect()
}

/// Unix seconds of the update's message (`edit_date` for edits), for the poll lag.
fn update_date(update: &Value) -> Option<i64> {
    let message = update
        .get("message")
        .or_else(|| update.get("edited_message"))
        .or_else(|| update.get("callback_query").and_then(|c| c.get("message")))?;
    message
        .get("edit_date")
        .or_else(|| message.get("date"))
        .and_then(Value::as_i64)
}

/// Runs one batch through ingress until every update is done or skipped; returns the next
/// offset, or `None` when told to stop.
fn process(
    app: &Arc<App>,
    stats: &Stats,
    store: &Store,
    rt: &Arc<TelegramRuntime>,
    name: &str,
    batch: Vec<Value>,
    rx: &Receiver<Msg>,
) -> Option<i64> {
    let label = format!("telegram poller `{name}`");
    let mut pending = batch;
    let mut backoff = BACKOFF_START;
    let mut next: Option<i64> = None;
    loop {
        let (tx, answers) = mpsc::channel::<(usize, Result<Answer, IngressError>)>();
        let items: Vec<(Value, Done)> = pending
            .iter()
            .enumerate()
            .map(|(idx, u)| {
                let tx = tx.clone();
                let done: Done = Box::new(move |answer| {
                    let _ = tx.send((idx, answer));
                });
                (u.clone(), done)
            })
            .collect();
        drop(tx);
        let ctx = IngressCtx {
            ops: store.ingress_ops(),
            writer: &app.writer,
            limiter: &app.limiter,
            in_flight: &app.in_flight,
            sidecars: &app.sidecars,
            slack_api: &app.slack_api,
            telegram: &app.telegram,
            now_ms: now_ms(),
            now: Instant::now(),
        };
        accept_updates(&ctx, rt, items);
        let mut results: Vec<Option<Result<Answer, IngressError>>> =
            (0..pending.len()).map(|_| None).collect();
        for (idx, answer) in answers.iter() {
            results[idx] = Some(answer);
        }
        let mut retry: Option<(usize, Duration)> = None;
        for (idx, (update, result)) in pending.iter().zip(results).enumerate() {
            let id = update.get("update_id").and_then(Value::as_i64);
            let answer = result.unwrap_or_else(|| {
                Err(IngressError::Unavailable {
                    detail: "the writer gave no answer".into(),
                })
            });
            crate::server::ingress::count(app, &rt.id, &answer);
            match &answer {
                Ok(_) => {
                    if let Some(date) = update_date(update) {
                        let mut newest = stats.newest.lock().unwrap_or_else(|p| p.into_inner());
                        let slot = newest.entry(name.to_string()).or_insert(date);
                        *slot = (*slot).max(date);
                    }
                }
                Err(IngressError::RateLimited { retry_after_ms, .. }) => {
                    retry = Some((idx, Duration::from_millis(*retry_after_ms)));
                    break;
                }
                Err(IngressError::Unavailable { detail }) => {
                    app.out
                        .warn(&format!("{label}: update {id:?} not stored yet: {detail}"));
                    retry = Some((idx, backoff));
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    break;
                }
                Err(refusal) => {
                    app.out.warn(&format!(
                        "{label}: update {} can never be accepted and is skipped: {refusal}",
                        id.map_or_else(|| "without update_id".to_string(), |i| i.to_string())
                    ));
                    *stats
                        .skipped
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(name.to_string())
                        .or_default() += 1;
                }
            }
            if let Some(id) = id {
                next = Some(next.map_or(id + 1, |n: i64| n.max(id + 1)));
            }
        }
        let Some((idx, wait)) = retry else {
            return next.or_else(|| store.poll_offset(name).ok().flatten());
        };
        // Save what is done so far, then retry from the update that must come again.
        if let Some(n) = next {
            let _ = store.save_poll_offset(name, n, now_ms());
        }
        if wait_or_stop(rx, wait) {
            return None;
        }
        pending = pending.split_off(idx);
    }
}

fn register_metrics(app: &App, stats: Arc<Stats>) {
    app.metrics.add_collector(Box::new(move |out: &mut Vec<Sample>| {
        let now_s = now_ms().div_euclid(1000);
        for (name, date) in stats.newest.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            out.push(
                Sample::gauge(
                    "kheish_telegram_poll_lag_seconds",
                    "Age of the newest update a Telegram poller processed (now minus its message date).",
                    (now_s - date).max(0) as f64,
                )
                .label("connector", format!("telegram/{name}")),
            );
        }
        for (name, n) in stats.skipped.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            out.push(
                Sample::counter(
                    "kheish_telegram_poll_skipped_updates_total",
                    "Polled Telegram updates that could never be accepted and were skipped.",
                    *n as f64,
                )
                .label("connector", format!("telegram/{name}")),
            );
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ids(v: &[Value]) -> Vec<Option<i64>> {
        v.iter().map(|u| u["update_id"].as_i64()).collect()
    }

    #[test]
    fn batches_are_sorted_deduplicated_and_cut_at_the_offset() {
        let batch = vec![
            json!({"update_id": 5}),
            json!({"update_id": 3}),
            json!({"update_id": 4}),
            json!({"update_id": 4}),
            json!({"update_id": 1}),
            json!({"x": 1}),
        ];
        assert_eq!(
            ids(&order(batch, Some(2))),
            [Some(3), Some(4), Some(5), None]
        );
        assert!(order(vec![json!({"update_id": 1})], Some(5)).is_empty());
    }

    #[test]
    fn dates_come_from_the_message() {
        assert_eq!(update_date(&json!({"message": {"date": 5}})), Some(5));
        assert_eq!(
            update_date(&json!({"edited_message": {"date": 5, "edit_date": 9}})),
            Some(9)
        );
        assert_eq!(
            update_date(&json!({"callback_query": {"message": {"date": 3}}})),
            Some(3)
        );
        assert_eq!(update_date(&json!({"poll": {}})), None);
    }
}
