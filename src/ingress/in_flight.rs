//! Events in flight, by receipt key. An event whose receipt is not written yet may be sent
//! again before its first copy commits: Slack re-sends an event it got no answer for within
//! 3 s (a message whose files are still downloading), and webhook clients retry on their own
//! timeouts. Without this table the copy would pass the receipt look-up as new, take a rate
//! token (SPEC §6.6: duplicates take none; on a busy bucket the copy was refused 429), run the
//! kind's stage again (download the same files again) and only be recognised as a duplicate
//! inside the writer's transaction.
//!
//! Here, the first copy registers its receipt key after its look-up found no receipt, and a
//! later copy with the same key AND the same fingerprint waits for it instead of going on: it
//! is answered when the first is, with what a re-send after the commit would get: the first's
//! run as `duplicate` (its hit counted on the receipt) when the first was accepted, or the
//! first's refusal (a rate limit, a session error, a store failure) when it was refused. A copy
//! with another fingerprint goes on by itself: whichever commits first owns the receipt and
//! the other is answered `409` inside the transaction, as before.
//!
//! The first copy's key leaves the table when its answer is given, which for an accepted
//! event is after its commit: a copy that arrives later finds the receipt in the database. An
//! answer that is never given (a dropped job) releases the waiters with `503`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use super::pipeline::Done;
use super::{AcceptStatus, Accepted, Answer, IngressError};
use crate::store::writer::DuplicateCounter;

/// Independent parts of the table: every accepted event passes through it twice (its key goes
/// in on a request thread and out on the writer thread), so one lock would be fought over.
const SHARDS: usize = 16;

/// The receipt keys of events between their receipt look-up and their answer, with the copies
/// that wait for them. One per daemon, shared by every ingress thread.
pub struct InFlight {
    shards: [Mutex<Shard>; SHARDS],
    /// Counts the hits of the copies answered as duplicates.
    hits: DuplicateCounter,
}

type Shard = HashMap<String, Flight, BuildHasherDefault<TailHasher>>;

/// Receipt keys end with 32 hex digits of a SHA-256 (`KIND:NAME:<hex>`), so their last bytes
/// are already a good hash; hashing the whole key again showed up in profiles of the writer.
#[derive(Default)]
struct TailHasher(u64);

impl Hasher for TailHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes.iter().rev().take(16) {
            self.0 = self.0.rotate_left(5) ^ u64::from(b);
        }
    }

    fn finish(&self) -> u64 {
        // Spread the folded bits over the whole word (the table uses the top and low bits).
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("waiting", &self.waiting())
            .finish()
    }
}

struct Flight {
    fingerprint: String,
    waiters: Vec<Done>,
}

impl InFlight {
    /// An empty table whose waiting copies count their duplicate hits through `hits`.
    pub fn new(hits: DuplicateCounter) -> InFlight {
        InFlight {
            shards: std::array::from_fn(|_| Mutex::new(Shard::default())),
            hits,
        }
    }

    /// How many copies wait for their first copy's answer now (the
    /// `kheish_ingress_copies_waiting` gauge).
    pub fn waiting(&self) -> usize {
        (0..SHARDS)
            .map(|i| {
                self.lock_shard(i)
                    .values()
                    .map(|f| f.waiters.len())
                    .sum::<usize>()
            })
            .sum()
    }

    /// How many receipt keys are in flight.
    pub fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.lock_shard(i).len()).sum()
    }

    /// True when no event is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock_shard(&self, i: usize) -> MutexGuard<'_, Shard> {
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self, key: &str) -> MutexGuard<'_, Shard> {
        let mut hasher = TailHasher::default();
        hasher.write(key.as_bytes());
        // The top bits: the table inside the shard uses the low ones.
        self.lock_shard((hasher.finish() >> 60) as usize % SHARDS)
    }

    /// Called for an event whose receipt look-up found nothing, before its rate token. When
    /// a copy with the same key and fingerprint is in flight, `done` waits for it and `None` is
    /// returned: the caller drops the event. Otherwise the event goes on with the returned
    /// `Done`, which (when this call registered the key) answers the waiting copies too.
    pub fn enter(self: &Arc<Self>, key: &str, fingerprint: &str, done: Done) -> Option<Done> {
        let mut flights = self.lock(key);
        match flights.get_mut(key) {
            Some(flight) if flight.fingerprint == fingerprint => {
                flight.waiters.push(done);
                None
            }
            // Another payload under the same key: the transaction decides between them.
            Some(_) => Some(done),
            None => {
                flights.insert(
                    key.to_string(),
                    Flight {
                        fingerprint: fingerprint.to_string(),
                        waiters: Vec::new(),
                    },
                );
                drop(flights);
                let mut landing = Landing {
                    table: Arc::clone(self),
                    key: key.to_string(),
                    done: Some(done),
                };
                Some(Box::new(move |answer| landing.land(answer)))
            }
        }
    }
}

/// The first copy's answer path: answers the first, then every copy that waited for it.
struct Landing {
    table: Arc<InFlight>,
    key: String,
    /// `None` once answered.
    done: Option<Done>,
}

impl Landing {
    fn land(&mut self, answer: Result<Answer, IngressError>) {
        let waiters = self.take_waiters();
        if waiters.is_empty() {
            if let Some(done) = self.done.take() {
                done(answer);
            }
            return;
        }
        let for_waiters = copy_answer(&answer);
        if let Some(done) = self.done.take() {
            done(answer);
        }
        let now_ms = crate::model::now_ms();
        for waiter in waiters {
            if matches!(for_waiters, Ok(Answer::Event(_))) {
                self.table.hits.note(&self.key, now_ms);
            }
            waiter(for_waiters.clone());
        }
    }

    fn take_waiters(&self) -> Vec<Done> {
        self.table
            .lock(&self.key)
            .remove(&self.key)
            .map(|flight| flight.waiters)
            .unwrap_or_default()
    }
}

impl Drop for Landing {
    /// The first copy was dropped unanswered (its job was lost): release its waiters.
    fn drop(&mut self) {
        if self.done.is_some() {
            let unanswered = IngressError::Unavailable {
                detail: "the first copy of this event was never answered".into(),
            };
            for waiter in self.take_waiters() {
                waiter(Err(unanswered.clone()));
            }
        }
    }
}

/// What a waiting copy is answered when the first copy got `answer`.
fn copy_answer(answer: &Result<Answer, IngressError>) -> Result<Answer, IngressError> {
    match answer {
        Ok(Answer::Event(first)) => Ok(Answer::Event(Accepted {
            status: AcceptStatus::Duplicate,
            ..first.clone()
        })),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    type Answers = mpsc::Receiver<(&'static str, Result<Answer, IngressError>)>;

    fn recorder() -> (impl Fn(&'static str) -> Done, Answers) {
        let (tx, rx) = mpsc::channel();
        let make = move |name: &'static str| -> Done {
            let tx = tx.clone();
            Box::new(move |answer| {
                let _ = tx.send((name, answer));
            })
        };
        (make, rx)
    }

    fn table() -> Arc<InFlight> {
        Arc::new(InFlight::new(DuplicateCounter::detached()))
    }

    fn accepted() -> Result<Answer, IngressError> {
        Ok(Answer::Event(Accepted {
            status: AcceptStatus::Accepted,
            run_id: "run_1".into(),
            session_id: "s1".into(),
            connector: "slack/support".into(),
        }))
    }

    #[test]
    fn a_copy_waits_for_the_first_and_gets_its_run_as_a_duplicate() {
        let table = table();
        let (done, answers) = recorder();
        let first = table.enter("k", "f", done("first")).unwrap();
        assert!(table.enter("k", "f", done("copy-1")).is_none());
        assert!(table.enter("k", "f", done("copy-2")).is_none());
        assert!(
            answers.try_recv().is_err(),
            "nobody is answered before the first"
        );
        first(accepted());
        let got: Vec<_> = answers.try_iter().collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], ("first", accepted()));
        for (name, answer) in &got[1..] {
            let Ok(Answer::Event(a)) = answer else {
                panic!("{name}: {answer:?}")
            };
            assert_eq!(a.status, AcceptStatus::Duplicate, "{name}");
            assert_eq!(a.run_id, "run_1");
        }
        assert!(table.is_empty(), "the key left the table with the answer");
        // A later copy is not held: it goes on (and finds the receipt in the database).
        assert!(table.enter("k", "f", done("late")).is_some());
    }

    #[test]
    fn a_refused_first_copy_passes_its_refusal_on() {
        let table = table();
        let (done, answers) = recorder();
        let first = table.enter("k", "f", done("first")).unwrap();
        assert!(table.enter("k", "f", done("copy")).is_none());
        let limited = IngressError::RateLimited {
            kind: crate::model::ConnectorKind::Slack,
            retry_after_ms: 700,
        };
        first(Err(limited.clone()));
        let got: Vec<_> = answers.try_iter().collect();
        assert_eq!(
            got,
            vec![("first", Err(limited.clone())), ("copy", Err(limited))]
        );
        assert!(table.is_empty());
    }

    #[test]
    fn another_payload_under_the_same_key_is_not_held() {
        let table = table();
        let (done, answers) = recorder();
        let _first = table.enter("k", "f", done("first")).unwrap();
        let other = table.enter("k", "other", done("other")).unwrap();
        other(accepted());
        assert_eq!(answers.try_recv().unwrap().0, "other");
        // Different keys never wait for each other.
        assert!(table.enter("k2", "f", done("k2")).is_some());
    }

    #[test]
    fn waiters_of_a_first_copy_dropped_unanswered_get_503() {
        let table = table();
        let (done, answers) = recorder();
        let first = table.enter("k", "f", done("first")).unwrap();
        assert!(table.enter("k", "f", done("copy")).is_none());
        drop(first);
        let (name, answer) = answers.try_recv().unwrap();
        assert_eq!(name, "copy");
        assert!(
            matches!(answer, Err(IngressError::Unavailable { .. })),
            "{answer:?}"
        );
        assert!(table.is_empty());
    }
}
