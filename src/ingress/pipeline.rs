//! The one ingress pipeline every connector kind uses (SPEC §6.1 steps after parsing):
//! receipt lookup -> session -> in-flight check -> rate limit -> write job -> answer. The
//! in-flight check (`in_flight.rs`) holds a copy of an event whose first copy has not been
//! answered yet, and answers it from the first.
//!
//! A kind's module (`http.rs`, `external.rs`, and later `slack.rs`, `telegram.rs`) parses and
//! authenticates its request into a kind-neutral [`Event`]; [`accept`] does the rest (and
//! [`accept_all`] for several events that should share a commit, an external batch). Reads run
//! on the caller's thread; an event that must be written becomes one [`AcceptJob`] for the
//! group-commit writer, which writes receipt, session, bindings, assets and run together. Its
//! first pass trusts the pre-check and lets the schema refuse what another request changed
//! since (a race); the refused batch runs again with every check made inside the transaction
//! (`AcceptJob::decide`). The answer is given after the commit, through the caller's [`Done`].
//!
//! One deliberate ordering choice: an event that carries a receipt key is looked up in the
//! receipts BEFORE session resolution, so a replay is answered with its original run even when
//! routing config changed since (SPEC §6.2); for new events the order is the spec's.

use std::time::Instant;

use serde_json::{Map, Value};

use super::ratelimit::RateLimiter;
use super::{AcceptStatus, Accepted, Answer, IngressError};
use crate::model::reply::ReplyTarget;
use crate::model::run::{new_id, NewAsset, NewReceipt, NewRun, Receipt, RunInput};
use crate::model::ConnectorId;
use crate::registry::Sidecars;
use crate::sessions::{self, Resolution, SessionError, SessionRequest};
use crate::store::writer::{GroupWriter, IngressOps, WriteJob};
use crate::store::{Store, StoreError};

/// What accepting needs besides the event: reads on this thread, the writer, the limiter, the
/// live sidecar states (external `child_process` connectors check the event's `instance_id`
/// against them), the Telegram Bot API side, and the clock (given, so tests control it).
pub struct IngressCtx<'a> {
    pub ops: IngressOps<'a>,
    pub writer: &'a GroupWriter,
    pub limiter: &'a RateLimiter,
    /// Events between their receipt look-up and their answer (a copy waits for the first).
    pub in_flight: &'a std::sync::Arc<super::in_flight::InFlight>,
    pub sidecars: &'a Sidecars,
    /// The Slack Web API clients (file downloads after the rate limit).
    pub slack_api: &'a crate::net::slack_api::SlackClients,
    /// Bot API access of Telegram ingress (media downloads, callback answers).
    pub telegram: &'a std::sync::Arc<super::telegram_io::TelegramIo>,
    pub now_ms: i64,
    pub now: Instant,
}

/// The durable dedupe key of an event (SPEC §6.3), from [`super::receipt_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptKey {
    /// The stored key, `KIND:NAME:...`.
    pub key: String,
    /// Lowercase hex SHA-256 of the raw key.
    pub key_sha256: String,
}

/// A parsed, authenticated event of any kind, ready for the pipeline.
#[derive(Debug)]
pub struct Event {
    pub connector: ConnectorId,
    /// The receipt that makes the event idempotent; `None` for events without a dedupe key.
    pub receipt: Option<ReceiptKey>,
    /// Canonical-JSON fingerprint of the payload (SPEC §6.4); compared on a receipt hit.
    pub fingerprint: String,
    /// Everything session resolution needs (explicit id, binding keys, natural id, policy).
    pub session: SessionRequest,
    pub actor_id: String,
    pub input: RunInput,
    /// Inline assets to store with the run.
    pub assets: Vec<NewAsset>,
    /// Asset ids the event references; each must exist when the run is written.
    pub referenced_assets: Vec<String>,
    /// Run metadata, including the daemon-written keys of the kind.
    pub metadata: Map<String, Value>,
    pub reply_targets: Vec<ReplyTarget>,
    /// The connector's `ingress_events_per_second`.
    pub events_per_second: u32,
    /// The token bucket within the connector, when it has several (Slack: one per workspace
    /// scope and channel, SPEC §6.6); `None` is the connector's one bucket.
    pub rate_bucket: Option<String>,
}

/// Work a kind does once an event is known to be new and within its rate (SPEC §6.1 step 9:
/// outbound calls such as Telegram's `getFile` and media downloads come after the dedupe and
/// the rate limit, before anything durable is written). It may change the event (add assets,
/// attachments, metadata) or refuse it. Runs on the caller's thread.
pub trait Stage {
    fn after_rate_limit(&mut self, event: &mut Event) -> Result<(), IngressError>;
}

/// One event of [`accept_all_staged`]: the event, its optional [`Stage`], its answer callback.
pub type StagedEvent = (Event, Option<Box<dyn Stage>>, Done);

/// A closure is a [`Stage`] (Slack's file downloads).
impl<F> Stage for F
where
    F: FnMut(&mut Event) -> Result<(), IngressError>,
{
    fn after_rate_limit(&mut self, event: &mut Event) -> Result<(), IngressError> {
        self(event)
    }
}

/// Called exactly once with the answer to an event, possibly later and on another thread (after
/// the group commit that made it durable).
pub type Done = Box<dyn FnOnce(Result<Answer, IngressError>) + Send>;

/// Runs `event` through the pipeline and calls `done` with the answer: at once for refusals
/// and duplicates, after the commit for new events. The calling thread never waits for the
/// commit.
pub fn accept(ctx: &IngressCtx<'_>, event: Event, done: Done) {
    accept_staged(ctx, event, None, done);
}

/// [`accept`] with a kind's [`Stage`] run between the rate limit and the write.
pub fn accept_staged(
    ctx: &IngressCtx<'_>,
    event: Event,
    stage: Option<&mut dyn Stage>,
    done: Done,
) {
    let looked = ctx.ops.in_read_snapshot(|| look_up(ctx, &event));
    let Some(done) = enter_flight(ctx, &event, &looked, done) else {
        return;
    };
    match finish(ctx, event, stage, looked) {
        Ok(Prepared::Answer(answer)) => done(Ok(Answer::Event(answer))),
        Err(refusal) => done(Err(refusal)),
        Ok(Prepared::Job(mut job)) => {
            job.done = Some(done);
            ctx.writer.submit(job);
        }
    }
}

/// Runs several events through the pipeline in order (an external `/events/batch` request):
/// each is prepared as [`accept`] does, so rate-limit tokens go to the earlier events first,
/// and every event that must be written goes to the writer in ONE message, so the whole batch
/// shares a commit. Each `done` is called exactly once, in any order: refusals and duplicates
/// at once, new events after the commit. Two events of one batch that share an event id or a
/// new session are sorted out inside the transaction, where the later one sees the earlier.
pub fn accept_all(ctx: &IngressCtx<'_>, events: Vec<(Event, Done)>) {
    accept_all_staged(
        ctx,
        events
            .into_iter()
            .map(|(event, done)| (event, None, done))
            .collect(),
    );
}

/// [`accept_all`] with an optional [`Stage`] per event (Telegram polling batches).
pub fn accept_all_staged(ctx: &IngressCtx<'_>, events: Vec<StagedEvent>) {
    let mut jobs: Vec<Box<dyn WriteJob>> = Vec::with_capacity(events.len());
    // Every event's reads in ONE read snapshot, before any rate token or stage: a snapshot
    // keeps the connection's page cache warm across the batch (each autocommit read after a
    // commit elsewhere starts from an emptied cache).
    let looked: Vec<Looked> = ctx.ops.in_read_snapshot(|| {
        events
            .iter()
            .map(|(event, _, _)| look_up(ctx, event))
            .collect()
    });
    for ((event, mut stage, done), looked) in events.into_iter().zip(looked) {
        let Some(done) = enter_flight(ctx, &event, &looked, done) else {
            continue;
        };
        let stage = stage.as_mut().map(|s| &mut **s as &mut dyn Stage);
        match finish(ctx, event, stage, looked) {
            Ok(Prepared::Answer(answer)) => done(Ok(Answer::Event(answer))),
            Err(refusal) => done(Err(refusal)),
            Ok(Prepared::Job(mut job)) => {
                job.done = Some(done);
                jobs.push(job);
            }
        }
    }
    ctx.writer.submit_all(jobs);
}

/// Either an answer known without writing (duplicate), or the job that writes the event.
enum Prepared {
    Answer(Accepted),
    Job(Box<AcceptJob>),
}

fn unavailable(e: StoreError) -> IngressError {
    IngressError::Unavailable {
        detail: e.to_string(),
    }
}

/// After a look-up that found no receipt, before the rate token: registers the event's receipt
/// key as in flight, or (`None`) parks `done` behind a copy of the same event that is in flight
/// already; see [`super::in_flight`].
fn enter_flight(ctx: &IngressCtx<'_>, event: &Event, looked: &Looked, done: Done) -> Option<Done> {
    match (looked, &event.receipt) {
        (Looked::Resolved(..), Some(receipt)) => {
            ctx.in_flight.enter(&receipt.key, &event.fingerprint, done)
        }
        _ => Some(done),
    }
}

/// What the reads before the rate limit found: an answer already (a receipt hit, a session
/// error, an unreadable store), or how the event's session resolves.
enum Looked {
    Answered(Result<Prepared, IngressError>),
    /// The resolution, and whether every binding key is already bound to its session.
    Resolved(Resolution, bool),
}

/// The reads before the rate limit: the receipt (a hit is answered without a rate token) and the
/// session (errors are answered before the rate limit).
fn look_up(ctx: &IngressCtx<'_>, event: &Event) -> Looked {
    let connector = event.connector.to_string();
    if let Some(receipt) = &event.receipt {
        match ctx.ops.receipt(&receipt.key) {
            Err(e) => return Looked::Answered(Err(unavailable(e))),
            Ok(Some(existing)) => {
                return Looked::Answered(
                    answer_existing(
                        ctx.writer,
                        &existing,
                        &event.fingerprint,
                        &connector,
                        ctx.now_ms,
                    )
                    .map(Prepared::Answer),
                )
            }
            Ok(None) => {}
        }
    }
    // Read-only pre-check so that session errors are answered before the rate limit. An
    // existing session is trusted by the writer (sessions are never deleted); a new one is
    // resolved again inside the transaction, where another event may just have created it.
    match sessions::resolve_noting_bindings(&ctx.ops, &event.session, ctx.now_ms) {
        Ok((resolution, keys_bound)) => Looked::Resolved(resolution, keys_bound),
        Err(e) => Looked::Answered(Err(e.into())),
    }
}

/// What follows [`look_up`] and [`enter_flight`]: the rate limit, the kind's stage, the job.
fn finish(
    ctx: &IngressCtx<'_>,
    mut event: Event,
    stage: Option<&mut dyn Stage>,
    looked: Looked,
) -> Result<Prepared, IngressError> {
    let (pre_resolved, keys_bound) = match looked {
        Looked::Answered(answer) => return answer,
        Looked::Resolved(resolution, keys_bound) => (resolution, keys_bound),
    };
    let connector = event.connector.to_string();
    let bucket = match &event.rate_bucket {
        Some(within) => format!("{connector}/{within}"),
        None => connector.clone(),
    };
    ctx.limiter
        .try_take(&bucket, event.events_per_second, ctx.now)
        .map_err(|retry_after_ms| IngressError::RateLimited {
            kind: event.connector.kind,
            retry_after_ms,
        })?;
    if let Some(stage) = stage {
        stage.after_rate_limit(&mut event)?;
    }

    let job = AcceptJob {
        pre_resolved: Some((pre_resolved, keys_bound)),
        first_pass: true,
        receipt: event
            .receipt
            .map(|r| (r.key, r.key_sha256, event.fingerprint)),
        session_request: event.session,
        run: NewRun {
            run_id: new_id("run", ctx.now_ms),
            session_id: String::new(),
            connector_kind: event.connector.kind,
            connector_name: event.connector.name.to_string(),
            actor_id: event.actor_id,
            input: event.input,
            metadata: event.metadata,
            reply_targets: event.reply_targets,
            policy: Default::default(),
            now_ms: ctx.now_ms,
        },
        assets: event.assets,
        referenced_assets: event.referenced_assets,
        connector,
        outcome: None,
        done: None,
    };
    Ok(Prepared::Job(Box::new(job)))
}

/// Answers an event whose receipt exists: the original run when the payload is the same, 409
/// otherwise. Counts the hit without writing on this path.
fn answer_existing(
    writer: &GroupWriter,
    existing: &Receipt,
    fingerprint: &str,
    connector: &str,
    now_ms: i64,
) -> Result<Accepted, IngressError> {
    if existing.fingerprint == fingerprint {
        writer.note_duplicate(&existing.receipt_key, now_ms);
    }
    existing_answer(
        existing.fingerprint == fingerprint,
        existing.run_id.clone(),
        existing.session_id.clone(),
        connector,
    )
}

/// The answer for a receipt hit: a duplicate with the original run and session, or a conflict
/// naming them.
fn existing_answer(
    same_payload: bool,
    run_id: String,
    session_id: String,
    connector: &str,
) -> Result<Accepted, IngressError> {
    if same_payload {
        Ok(Accepted {
            status: AcceptStatus::Duplicate,
            run_id,
            session_id,
            connector: connector.to_string(),
        })
    } else {
        Err(IngressError::IdempotencyConflict { run_id, session_id })
    }
}

/// The accepting transaction of one event (runs on the writer thread).
struct AcceptJob {
    /// How the pre-check resolved the session, and whether it found every binding key bound
    /// to it (then no binding is written). Taken by the first pass; see [`AcceptJob::decide`].
    pre_resolved: Option<(Resolution, bool)>,
    /// True in the writer's first pass over the batch, which trusts the pre-check; false once
    /// the writer asks for the checked pass (see [`AcceptJob::decide`]).
    first_pass: bool,
    /// `(receipt_key, key_sha256, fingerprint)` when the event has a receipt key.
    receipt: Option<(String, String, String)>,
    session_request: SessionRequest,
    run: NewRun,
    assets: Vec<NewAsset>,
    referenced_assets: Vec<String>,
    connector: String,
    outcome: Option<Result<Accepted, IngressError>>,
    done: Option<Done>,
}

impl AcceptJob {
    /// Everything that may refuse the event, before anything is written: the resolution, and
    /// whether every binding key is bound to its session already.
    ///
    /// The first pass (`fast`) trusts the request thread's pre-check, which read a snapshot a
    /// moment old, and lets the schema catch what changed since: a receipt written meanwhile
    /// fails the receipt insert (primary key), a session created meanwhile fails the session
    /// insert, and a key bound elsewhere meanwhile fails the strict binding. Any such
    /// failure rolls the batch back, and the writer runs it again with a savepoint per job,
    /// where this job checks everything again inside the transaction: the receipt (a
    /// duplicate or a conflict) and the whole session resolution.
    fn decide(
        &mut self,
        ops: &IngressOps<'_>,
        fast: bool,
    ) -> Result<Option<(Resolution, bool)>, StoreError> {
        if let Some((key, _, fingerprint)) = self.receipt.as_ref().filter(|_| !fast) {
            if let Some(existing) = ops.receipt(key)? {
                // Lost a race with an identical key: answer like a duplicate (no hit counted
                // from here; the writer owns no GroupWriter handle).
                self.outcome = Some(existing_answer(
                    &existing.fingerprint == fingerprint,
                    existing.run_id,
                    existing.session_id,
                    &self.connector,
                ));
                return Ok(None);
            }
        }
        let resolved = match self.pre_resolved.take() {
            Some(pre) if fast => Ok(pre),
            _ => sessions::resolve_noting_bindings(ops, &self.session_request, self.run.now_ms),
        };
        let resolution = match resolved {
            Ok(r) => r,
            Err(SessionError::Store(e)) => return Err(e),
            Err(e) => {
                self.outcome = Some(Err(e.into()));
                return Ok(None);
            }
        };
        for asset_id in &self.referenced_assets {
            if !ops.asset_exists(asset_id)? {
                self.outcome = Some(Err(IngressError::UnknownAsset {
                    asset_id: asset_id.clone(),
                }));
                return Ok(None);
            }
        }
        Ok(Some(resolution))
    }
}

impl WriteJob for AcceptJob {
    fn apply(&mut self, store: &Store) -> Result<(), StoreError> {
        let ops = &store.ingress_ops();
        let fast = self.first_pass;
        let Some((resolution, keys_bound)) = self.decide(ops, fast)? else {
            return Ok(());
        };
        let session_id = resolution.session_id().to_string();
        self.run.policy = resolution.policy().clone();
        let new_session = matches!(resolution, Resolution::New(_));
        // A new session named after the event's natural id, which is one of its binding keys,
        // is bound to that id by its own row (`self_bound`) instead of a binding row.
        let own = self
            .session_request
            .natural_id
            .as_deref()
            .filter(|n| new_session && *n == session_id)
            .filter(|n| self.session_request.binding_keys.iter().any(|k| k == n));
        if let Resolution::New(session) = &resolution {
            ops.insert_session(session, own.is_some())?;
        }
        if !keys_bound {
            ops.bind_keys(
                &session_id,
                &self.session_request.binding_keys,
                own,
                // Trusting the pre-check: a key bound elsewhere meanwhile would have resolved
                // the event elsewhere (or made it ambiguous), so it sends the job to the
                // checked pass.
                fast,
                self.run.now_ms,
            )?;
        }
        for asset in &self.assets {
            ops.insert_asset(asset)?;
        }
        self.run.session_id = session_id.clone();
        let session_created_at_ms = match &resolution {
            Resolution::New(session) => session.now_ms,
            Resolution::Existing(session) => session.created_at_ms,
        };
        ops.insert_run(&self.run, session_created_at_ms)?;
        if let Some((key, digest, fingerprint)) = &self.receipt {
            ops.insert_receipt(&NewReceipt {
                receipt_key: key.clone(),
                connector_kind: self.run.connector_kind,
                connector_name: self.run.connector_name.clone(),
                key_sha256: digest.clone(),
                fingerprint: fingerprint.clone(),
                run_id: self.run.run_id.clone(),
                session_id: session_id.clone(),
                now_ms: self.run.now_ms,
            })?;
        }
        self.outcome = Some(Ok(Accepted {
            status: AcceptStatus::Accepted,
            run_id: self.run.run_id.clone(),
            session_id,
            connector: self.connector.clone(),
        }));
        Ok(())
    }

    fn check_everything(&mut self) {
        self.first_pass = false;
    }

    fn wakes_run_waiters(&self) -> bool {
        matches!(
            &self.outcome,
            Some(Ok(Accepted {
                status: AcceptStatus::Accepted,
                ..
            }))
        )
    }

    fn finish(mut self: Box<Self>, committed: Result<(), StoreError>) {
        let answer = match (committed, self.outcome.take()) {
            (Ok(()), Some(outcome)) => outcome,
            // Refusals decided before any write stand even if the batch failed to commit.
            (Err(_), Some(Err(refusal)))
                if !matches!(refusal, IngressError::Unavailable { .. }) =>
            {
                Err(refusal)
            }
            (Err(e), _) => Err(unavailable(e)),
            (Ok(()), None) => Err(IngressError::Unavailable {
                detail: "the accepting transaction produced no outcome".into(),
            }),
        };
        if let Some(done) = self.done.take() {
            done(answer.map(Answer::Event));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SessionPolicy;
    use crate::model::run::NewSession;
    use crate::model::ConnectorKind;
    use std::sync::mpsc;

    type Answers = mpsc::Receiver<Result<Answer, IngressError>>;

    fn request(keys: &[&str], natural: &str) -> SessionRequest {
        SessionRequest {
            explicit: None,
            binding_keys: keys.iter().map(|k| k.to_string()).collect(),
            natural_id: Some(natural.into()),
            unresolved_hint: "send binding_keys".into(),
            policy: SessionPolicy {
                create_if_missing: true,
                ..SessionPolicy::default()
            },
            created_by: "connector:slack/s".into(),
        }
    }

    /// A job as `finish` builds it after a pre-check that found no receipt and resolved
    /// the session as `pre` (`keys_bound` false).
    fn job(
        receipt: &str,
        fingerprint: &str,
        session: SessionRequest,
        pre: Resolution,
    ) -> (Box<AcceptJob>, Answers) {
        let (tx, rx) = mpsc::channel();
        let job = AcceptJob {
            pre_resolved: Some((pre, false)),
            first_pass: true,
            receipt: Some((receipt.into(), format!("sha-{receipt}"), fingerprint.into())),
            session_request: session,
            run: NewRun {
                run_id: new_id("run", 1),
                session_id: String::new(),
                connector_kind: ConnectorKind::Slack,
                connector_name: "s".into(),
                actor_id: "U1".into(),
                input: RunInput::default(),
                metadata: Map::new(),
                reply_targets: Vec::new(),
                policy: Default::default(),
                now_ms: 1,
            },
            assets: Vec::new(),
            referenced_assets: Vec::new(),
            connector: "slack/s".into(),
            outcome: None,
            done: Some(Box::new(move |answer| {
                let _ = tx.send(answer);
            })),
        };
        (Box::new(job), rx)
    }

    fn new_session(id: &str) -> Resolution {
        Resolution::New(NewSession {
            session_id: id.into(),
            created_by: "connector:slack/s".into(),
            policy: Default::default(),
            reply_targets: Vec::new(),
            metadata: Map::new(),
            now_ms: 1,
        })
    }

    fn answer(rx: &Answers) -> Result<Accepted, IngressError> {
        match rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap() {
            Ok(Answer::Event(a)) => Ok(a),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        }
    }

    fn count(store: &Store, table: &str) -> i64 {
        store
            .conn()
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn what_changed_after_the_pre_check_is_caught_by_the_checked_pass() {
        let dir = tempfile::tempdir().unwrap();
        let writer = GroupWriter::start(dir.path(), Box::new(|_| {})).unwrap();
        // Three events that each passed the pre-check against the same empty snapshot, and
        // are committed in one batch: a receipt key twice (another payload, then the same
        // one), and a new session twice.
        let thread = || request(&["slack:s:C1:1"], "slack:s:C1:1");
        let (a, a_rx) = job("k1", "f1", thread(), new_session("slack:s:C1:1"));
        let (b, b_rx) = job("k1", "f2", thread(), new_session("slack:s:C1:1"));
        let (c, c_rx) = job("k1", "f1", thread(), new_session("slack:s:C1:1"));
        let (d, d_rx) = job("k2", "f4", thread(), new_session("slack:s:C1:1"));
        writer.submit_all(vec![a, b, c, d]);
        let first = answer(&a_rx).unwrap();
        assert_eq!(first.status, AcceptStatus::Accepted);
        match answer(&b_rx) {
            Err(IngressError::IdempotencyConflict { run_id, session_id }) => {
                assert_eq!(
                    (run_id, session_id),
                    (first.run_id.clone(), first.session_id.clone())
                )
            }
            other => panic!("{other:?}"),
        }
        let dup = answer(&c_rx).unwrap();
        assert_eq!(dup.status, AcceptStatus::Duplicate);
        assert_eq!(dup.run_id, first.run_id);
        // The second new session is the first one, found inside the transaction.
        let same = answer(&d_rx).unwrap();
        assert_eq!(same.status, AcceptStatus::Accepted);
        assert_eq!(same.session_id, "slack:s:C1:1");
        writer.shutdown();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(count(&store, "runs"), 2);
        assert_eq!(count(&store, "receipts"), 2);
        assert_eq!(count(&store, "sessions"), 1);
    }

    #[test]
    fn a_natural_id_bound_by_another_event_after_the_pre_check_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let writer = GroupWriter::start(dir.path(), Box::new(|_| {})).unwrap();
        // An event of another connector binds the thread's natural id to its own new session;
        // the thread's first message, pre-checked before that, resolved a new session named
        // after the id (which gets no binding row of its own).
        let (a, a_rx) = job(
            "k1",
            "f1",
            request(&["slack:s:C9:1"], "http:h:x"),
            new_session("http:h:x"),
        );
        let (b, b_rx) = job(
            "k2",
            "f2",
            request(&["slack:s:C9:1"], "slack:s:C9:1"),
            new_session("slack:s:C9:1"),
        );
        writer.submit_all(vec![a, b]);
        assert_eq!(answer(&a_rx).unwrap().session_id, "http:h:x");
        assert_eq!(answer(&b_rx).unwrap().session_id, "http:h:x");
        writer.shutdown();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(count(&store, "sessions"), 1);
    }

    #[test]
    fn a_key_bound_elsewhere_after_the_pre_check_of_an_existing_session_is_ambiguous() {
        let dir = tempfile::tempdir().unwrap();
        let writer = GroupWriter::start(dir.path(), Box::new(|_| {})).unwrap();
        let (first, first_rx) = job(
            "k0",
            "f0",
            request(&["s-key"], "http:h:s"),
            new_session("http:h:s"),
        );
        writer.submit(first);
        answer(&first_rx).unwrap();
        let existing = {
            let store = Store::open(dir.path()).unwrap();
            let found = store.ingress_ops().session("http:h:s").unwrap().unwrap();
            found
        };
        // `K` gets bound to a new session by one event while another, pre-checked before,
        // found its other key bound to the existing session and `K` still free.
        let (a, a_rx) = job(
            "k1",
            "f1",
            request(&["K"], "http:h:k"),
            new_session("http:h:k"),
        );
        let (b, b_rx) = job(
            "k2",
            "f2",
            request(&["s-key", "K"], "http:h:other"),
            Resolution::Existing(existing),
        );
        writer.submit_all(vec![a, b]);
        assert_eq!(answer(&a_rx).unwrap().session_id, "http:h:k");
        assert!(
            matches!(answer(&b_rx), Err(IngressError::AmbiguousBinding { .. })),
            "K now names another session"
        );
        writer.shutdown();
    }

    #[test]
    fn a_key_bound_after_the_pre_check_takes_the_event_to_its_session() {
        let dir = tempfile::tempdir().unwrap();
        let writer = GroupWriter::start(dir.path(), Box::new(|_| {})).unwrap();
        // `desk` gets bound to the first event's new session; the second event's pre-check
        // saw it unbound and resolved a new session of its own.
        let (a, a_rx) = job(
            "k1",
            "f1",
            request(&["desk", "slack:s:C1:1"], "slack:s:C1:1"),
            new_session("slack:s:C1:1"),
        );
        let (b, b_rx) = job(
            "k2",
            "f2",
            request(&["desk", "slack:s:C2:1"], "slack:s:C2:1"),
            new_session("slack:s:C2:1"),
        );
        writer.submit_all(vec![a, b]);
        let first = answer(&a_rx).unwrap();
        let second = answer(&b_rx).unwrap();
        assert_eq!(first.session_id, "slack:s:C1:1");
        assert_eq!(
            second.session_id, "slack:s:C1:1",
            "desk binds it to the first session"
        );
        writer.shutdown();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(count(&store, "sessions"), 1);
        // desk, and C2's natural id bound to the session it joined (C1's own id has no row).
        assert_eq!(count(&store, "session_bindings"), 2);
    }
}
