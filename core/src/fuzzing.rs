//! Bodies of the fuzz targets that exercise the core, one function per
//! target, each taking the fuzzer's raw bytes.
//!
//! They live here rather than in `fuzz/` so that `cargo test` replays every
//! seed and every past crash (`fuzz/corpus/<target>/`) without libFuzzer,
//! and so they are compiled, linted and kept in step with the code they
//! exercise. A broken invariant is a panic: that is what libFuzzer reports.

use crate::limits::MAX_TEXT_CHARS;
use crate::store::{DeliveryRecord, DeliveryState, RunStatus, RunView};
use crate::{
    DeliveryKey, DeliveryOutcome, FlowId, MemStore, NewRun, PlannedStep, ReceiptStatus, Recipient,
    RunId, StoreOp, StoreReply, Template, TemplateError, TenantId, WorkerId,
};
use std::collections::{BTreeMap, BTreeSet};

/// Most ops one `store_ops` input is decoded into; keeps one execution short.
const MAX_OPS: usize = 256;

/// Reads the fuzzer's bytes as a stream of small numbers; past the end it
/// reads zeros, so every input decodes to something.
pub struct ByteReader<'a> {
    data: &'a [u8],
}

impl<'a> ByteReader<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte, or 0.
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    /// The next two bytes, big-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    /// The next byte's low bit.
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// A number in `0..n` (`n` > 0) from the next byte.
    pub fn below(&mut self, n: u8) -> u8 {
        self.u8() % n
    }

    /// The next `n` bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Whatever is left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }
}

/// The test's own record of the world, built only from replies (as in
/// `core/tests/model.rs`, which holds the same invariants under proptest).
#[derive(Default)]
struct Book {
    runs: Vec<RunId>,
    conv: BTreeMap<RunId, u8>,
    /// Highest epoch granted per run.
    epoch: BTreeMap<RunId, u64>,
    /// The lease the test believes is live: its end.
    live_until: BTreeMap<RunId, u64>,
    /// Last cursor seen per run.
    cursor: BTreeMap<RunId, u32>,
    /// Last view of each run that had finished.
    terminal: BTreeMap<RunId, RunView>,
    /// Keys the provider is known to have.
    sent: BTreeSet<DeliveryKey>,
    /// The sender's pause, if any: `Some(true)` for a temporary one (a
    /// probe may go), `Some(false)` for one that waits for a person.
    paused: Option<bool>,
    /// Keys an operator asked to send again.
    retried: BTreeSet<DeliveryKey>,
}

fn get_run(store: &mut MemStore, run: RunId) -> RunView {
    match store.apply(StoreOp::GetRun { run }) {
        StoreReply::Run(v) => v,
        other => panic!("GetRun {run} answered {other:?}"),
    }
}

fn recipient(conv: u8) -> Recipient {
    Recipient::parse(&format!("+55119133900{conv:02}")).expect("a valid number")
}

fn delivery(view: &RunView, step: u32) -> Option<&DeliveryRecord> {
    view.deliveries.get(step as usize).and_then(Option::as_ref)
}

/// `store_ops`: an op sequence decoded from `data`, applied to a fresh
/// [`MemStore`], with DESIGN.md's invariants checked after every op: at
/// most one live lease per run and per conversation, epochs only grow, the
/// cursor never moves back, a finished run never changes, and a delivery
/// the provider has is never begun again nor made sendable again.
pub fn store_ops(data: &[u8]) {
    let mut r = ByteReader::new(data);
    let mut store = MemStore::new();
    let mut book = Book::default();
    let mut now: u64 = 1_000;
    let tenant = TenantId::default_tenant();
    for i in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let tag = r.below(15);
        let pick = |book: &Book, b: u8| -> Option<RunId> {
            (!book.runs.is_empty()).then(|| book.runs[b as usize % book.runs.len()])
        };
        // A holder's epoch, or (stale) one before it, or (forged) one after.
        let epoch_for = |book: &Book, id: RunId, how: u8| -> u64 {
            let e = book.epoch.get(&id).copied().unwrap_or(0);
            match how % 8 {
                0 => e.saturating_sub(1),
                1 => e + 1,
                _ => e,
            }
        };
        match tag {
            0 => now += r.below(64) as u64,
            1 => {
                let conv = r.below(4);
                let steps = r.below(5); // 0 steps is refused by the flow layer, not the store
                let delay_ms = r.below(40) as u64;
                let key = r.u8();
                let id = RunId::new(now, i as u64);
                let run = NewRun {
                    id,
                    tenant: tenant.clone(),
                    flow: FlowId::new("f").expect("valid"),
                    to: recipient(conv),
                    steps: (0..steps.max(1))
                        .map(|s| PlannedStep {
                            message: crate::Message::text(format!("m{s}")),
                            delay_ms: if s == 0 { delay_ms } else { delay_ms / 2 },
                            after: match (s, delay_ms % 3) {
                                (0, _) | (_, 0) => crate::store::After::Sent,
                                (_, 1) => crate::store::After::Delivered,
                                _ => crate::store::After::Read,
                            },
                            after_timeout_ms: Some(delay_ms),
                        })
                        .collect(),
                    trigger_key: (key < 16).then(|| format!("k{}", key % 4)),
                };
                match store.apply(StoreOp::Enqueue { run, now_ms: now }) {
                    StoreReply::Enqueued { run, created: true } => {
                        assert_eq!(run, id);
                        book.runs.push(id);
                        book.conv.insert(id, conv);
                    }
                    StoreReply::Enqueued {
                        run,
                        created: false,
                    } => {
                        assert!(key < 16, "only a repeated trigger key dedupes");
                        assert!(book.runs.contains(&run), "dedupe named an unknown run");
                    }
                    other => panic!("enqueue answered {other:?}"),
                }
            }
            2 => {
                let owner = WorkerId::new(format!("w{}", r.below(3))).expect("valid");
                let max = r.below(5) as u32;
                let lease_ms = 1 + r.below(60) as u64;
                let StoreReply::Claimed(claimed) = store.apply(StoreOp::Claim {
                    owner,
                    max,
                    lease_ms,
                    now_ms: now,
                }) else {
                    panic!("claim did not answer Claimed");
                };
                assert!(claimed.len() as u32 <= max, "claimed more than asked");
                assert!(
                    claimed.is_empty() || book.paused != Some(false),
                    "claimed runs of a paused sender"
                );
                let mut convs = BTreeSet::new();
                for c in &claimed {
                    let before = book.epoch.get(&c.id).copied().unwrap_or(0);
                    assert!(c.epoch > before, "epoch {} after {before}", c.epoch);
                    if let Some(until) = book.live_until.get(&c.id) {
                        assert!(*until <= now, "{} claimed while leased", c.id);
                    }
                    assert!(!book.terminal.contains_key(&c.id), "a finished run claimed");
                    assert!(c.cursor >= book.cursor.get(&c.id).copied().unwrap_or(0));
                    let conv = book.conv[&c.id];
                    assert!(
                        convs.insert(conv),
                        "two runs of one conversation in a claim"
                    );
                    let seq = book.runs.iter().position(|x| *x == c.id);
                    for (other_seq, other) in book.runs.iter().enumerate() {
                        if *other == c.id || book.conv[other] != conv {
                            continue;
                        }
                        if Some(other_seq) < seq {
                            assert!(
                                book.terminal.contains_key(other),
                                "{} claimed before earlier {other} finished",
                                c.id
                            );
                        }
                        if let Some(until) = book.live_until.get(other) {
                            assert!(*until <= now, "two live leases in one conversation");
                        }
                    }
                    book.epoch.insert(c.id, c.epoch);
                    book.live_until.insert(c.id, c.lease_until_ms);
                }
            }
            3 => {
                let Some(id) = pick(&book, r.u8()) else {
                    continue;
                };
                let epoch = epoch_for(&book, id, r.u8());
                let lease_ms = 1 + r.below(60) as u64;
                match store.apply(StoreOp::Heartbeat {
                    run: id,
                    epoch,
                    lease_ms,
                    now_ms: now,
                }) {
                    StoreReply::Heartbeated { until_ms } => {
                        assert_eq!(Some(&epoch), book.epoch.get(&id), "stale heartbeat");
                        assert!(until_ms >= now + lease_ms);
                        book.live_until.insert(id, until_ms);
                    }
                    StoreReply::Fenced => {}
                    other => panic!("heartbeat answered {other:?}"),
                }
            }
            4 => {
                let Some(id) = pick(&book, r.u8()) else {
                    continue;
                };
                let epoch = epoch_for(&book, id, r.u8());
                let skew = r.below(4) as i64 - 1;
                let delay_ms = r.bool().then(|| r.below(40) as u64);
                let cur = get_run(&mut store, id).cursor;
                let step = (cur as i64 + skew).max(0) as u32;
                match store.apply(StoreOp::Advance {
                    run: id,
                    epoch,
                    step,
                    delay_ms,
                    now_ms: now,
                }) {
                    StoreReply::Advanced { cursor, released } => {
                        assert_eq!(Some(&epoch), book.epoch.get(&id), "stale advance");
                        assert_eq!(cursor, step + 1);
                        assert!(released || delay_ms.is_none());
                        if released {
                            book.live_until.remove(&id);
                        }
                    }
                    StoreReply::Fenced | StoreReply::Conflict { .. } => {}
                    other => panic!("advance answered {other:?}"),
                }
            }
            5 => {
                let Some(id) = pick(&book, r.u8()) else {
                    continue;
                };
                let epoch = epoch_for(&book, id, r.u8());
                let v = get_run(&mut store, id);
                let step = (v.steps.len() as u32 - 1).saturating_sub(r.below(2) as u32);
                match store.apply(StoreOp::Complete {
                    run: id,
                    epoch,
                    step,
                    now_ms: now,
                }) {
                    StoreReply::Completed => {
                        assert_eq!(Some(&epoch), book.epoch.get(&id), "stale completion");
                        assert!(v.cursor == step || v.status == RunStatus::Completed);
                        book.live_until.remove(&id);
                    }
                    StoreReply::Fenced | StoreReply::Conflict { .. } => {}
                    other => panic!("complete answered {other:?}"),
                }
            }
            6 => {
                let Some(id) = pick(&book, r.u8()) else {
                    continue;
                };
                let epoch = epoch_for(&book, id, r.u8());
                let retry_ms = r.bool().then(|| r.below(40) as u64);
                match store.apply(StoreOp::Fail {
                    run: id,
                    epoch,
                    reason: "boom".into(),
                    retry_after_ms: retry_ms,
                    now_ms: now,
                }) {
                    StoreReply::Failed { dead } => {
                        assert_eq!(Some(&epoch), book.epoch.get(&id), "stale failure");
                        assert_eq!(dead, retry_ms.is_none());
                        book.live_until.remove(&id);
                    }
                    StoreReply::Fenced => {}
                    other => panic!("fail answered {other:?}"),
                }
            }
            7 => {
                let Some(id) = pick(&book, r.u8()) else {
                    continue;
                };
                let epoch = epoch_for(&book, id, r.u8());
                let after_ms = r.below(20) as u64;
                match store.apply(StoreOp::Release {
                    run: id,
                    epoch,
                    after_ms,
                    now_ms: now,
                }) {
                    StoreReply::Released => {
                        assert_eq!(Some(&epoch), book.epoch.get(&id), "stale release");
                        book.live_until.remove(&id);
                    }
                    StoreReply::Fenced => {}
                    other => panic!("release answered {other:?}"),
                }
            }
            8 => {
                let Some(id) = pick(&book, r.u8()) else {
                    continue;
                };
                match store.apply(StoreOp::Cancel {
                    run: id,
                    now_ms: now,
                }) {
                    StoreReply::Cancelled => {
                        assert!(!book.terminal.contains_key(&id), "a finished run cancelled");
                        book.live_until.remove(&id);
                    }
                    StoreReply::Conflict { .. } => {
                        assert!(book.terminal.contains_key(&id), "cancel refused a live run")
                    }
                    other => panic!("cancel answered {other:?}"),
                }
            }
            9 => {
                let Some(id) = pick(&book, r.u8()) else {
                    continue;
                };
                let epoch = epoch_for(&book, id, r.u8());
                let v = get_run(&mut store, id);
                let step = v.cursor.saturating_sub(r.below(2) as u32);
                let key = DeliveryKey { run: id, step };
                let before = delivery(&v, step).map(|d| d.state.clone());
                let send_timeout_ms = r.below(40) as u64;
                match store.apply(StoreOp::BeginDelivery {
                    key,
                    epoch,
                    send_timeout_ms,
                    now_ms: now,
                }) {
                    StoreReply::Begun { probe, .. } => {
                        assert_ne!(book.paused, Some(false), "{key} begun for a paused sender");
                        assert_eq!(
                            probe,
                            book.paused.is_some(),
                            "{key}: a probe is the paused sender's only send"
                        );
                        assert_eq!(Some(&epoch), book.epoch.get(&id), "stale epoch began");
                        assert!(
                            !book.sent.contains(&key) || book.retried.contains(&key),
                            "{key} begun after it was sent"
                        );
                        assert!(
                            matches!(
                                before,
                                None | Some(DeliveryState::Failed { retryable: true })
                            ),
                            "{key} begun again from {before:?}"
                        );
                        let until = book.live_until.get(&id).copied().unwrap_or(0);
                        assert!(until >= now + send_timeout_ms, "began past the lease");
                    }
                    StoreReply::AlreadySent { .. } => {
                        assert!(before.is_some_and(|s| s.is_sent()));
                    }
                    StoreReply::SenderPaused { .. } => {
                        assert!(book.paused.is_some(), "{key} held for a pause never set")
                    }
                    StoreReply::InProgress
                    | StoreReply::DeliveryUnknown
                    | StoreReply::DeliveryFailed { .. }
                    | StoreReply::Fenced
                    | StoreReply::NotFound => {}
                    other => panic!("begin answered {other:?}"),
                }
            }
            10 => {
                let Some(id) = pick(&book, r.u8()) else {
                    continue;
                };
                let step = r.below(5) as u32;
                let key = DeliveryKey { run: id, step };
                let outcome = match r.below(4) {
                    0 | 1 => DeliveryOutcome::Sent {
                        provider_message_id: format!("wamid.{i}"),
                    },
                    2 => DeliveryOutcome::Failed {
                        retryable: r.bool(),
                        reason: "no".into(),
                        retry_after_ms: None,
                    },
                    _ => DeliveryOutcome::Unknown {
                        reason: "lost".into(),
                    },
                };
                let op = if r.bool() {
                    StoreOp::ResolveUnknown {
                        key,
                        sent: matches!(outcome, DeliveryOutcome::Sent { .. }),
                        by: "operator".into(),
                        now_ms: now,
                    }
                } else {
                    StoreOp::FinishDelivery {
                        key,
                        outcome,
                        now_ms: now,
                    }
                };
                match store.apply(op) {
                    StoreReply::RunIs { status } => {
                        if !status.is_terminal() {
                            book.terminal.remove(&id);
                        }
                    }
                    StoreReply::Finished(_)
                    | StoreReply::Conflict { .. }
                    | StoreReply::NotFound => {}
                    other => panic!("finish answered {other:?}"),
                }
            }
            13 => {
                let Some(id) = pick(&book, r.u8()) else {
                    continue;
                };
                let epoch = epoch_for(&book, id, r.u8());
                let v = get_run(&mut store, id);
                let wait_ms = r.bool().then(|| r.below(40) as u64);
                match store.apply(StoreOp::AwaitOutcome {
                    run: id,
                    epoch,
                    step: v.cursor,
                    wait_ms,
                    reason: "lost".into(),
                    now_ms: now,
                }) {
                    StoreReply::RunIs { status } => {
                        assert_eq!(Some(&epoch), book.epoch.get(&id), "stale await");
                        assert_ne!(status, RunStatus::Leased, "a waiting run holds no lease");
                        book.live_until.remove(&id);
                    }
                    StoreReply::Fenced | StoreReply::Conflict { .. } => {}
                    other => panic!("await answered {other:?}"),
                }
            }
            14 => {
                let Some(id) = pick(&book, r.u8()) else {
                    continue;
                };
                let v = get_run(&mut store, id);
                match store.apply(StoreOp::RetryRun {
                    run: id,
                    by: "operator".into(),
                    now_ms: now,
                }) {
                    StoreReply::RunIs { status } => {
                        assert_eq!(v.status, RunStatus::Failed, "retried a run not failed");
                        assert!(!status.is_terminal() || status == RunStatus::Completed);
                        book.terminal.remove(&id);
                        book.retried.insert(DeliveryKey {
                            run: id,
                            step: v.cursor,
                        });
                    }
                    StoreReply::Conflict { .. } => {}
                    other => panic!("retry answered {other:?}"),
                }
            }
            12 => {
                if r.bool() {
                    let temporary = r.bool();
                    let reply = store.apply(StoreOp::PauseSender {
                        tenant: tenant.clone(),
                        reason: "refused".into(),
                        code: Some(if temporary { 368 } else { 190 }),
                        temporary,
                        settings: None,
                        now_ms: now,
                    });
                    match reply {
                        StoreReply::Paused { newly } => {
                            assert_eq!(newly, book.paused.is_none());
                            // A pause that waits for a person stays one.
                            let was_temporary = book.paused.unwrap_or(true);
                            book.paused = Some(temporary && was_temporary);
                        }
                        other => panic!("pause answered {other:?}"),
                    }
                } else {
                    match store.apply(StoreOp::ResumeSender {
                        tenant: tenant.clone(),
                    }) {
                        StoreReply::Resumed { was_paused } => {
                            assert_eq!(was_paused, book.paused.is_some());
                            book.paused = None;
                        }
                        other => panic!("resume answered {other:?}"),
                    }
                }
            }
            _ => {
                let Some(id) = pick(&book, r.u8()) else {
                    continue;
                };
                let key = DeliveryKey {
                    run: id,
                    step: r.below(5) as u32,
                };
                let status = match r.below(4) {
                    0 => ReceiptStatus::Sent,
                    1 => ReceiptStatus::Delivered,
                    2 => ReceiptStatus::Read,
                    _ => ReceiptStatus::Failed,
                };
                match store.apply(StoreOp::RecordReceipt {
                    key,
                    status,
                    provider_message_id: r.bool().then(|| format!("wamid.{i}")),
                    reason: None,
                    resend: r.bool(),
                    now_ms: now,
                }) {
                    StoreReply::ReceiptRecorded { .. } | StoreReply::NotFound => {}
                    other => panic!("receipt answered {other:?}"),
                }
            }
        }
        check_book(&mut store, &mut book, now);
    }
}

/// Reads every run back and holds it to what was seen before.
fn check_book(store: &mut MemStore, book: &mut Book, now: u64) {
    let mut leased_in_conv: BTreeMap<u8, u32> = BTreeMap::new();
    for id in book.runs.clone() {
        let v = get_run(store, id);
        let last = book.cursor.get(&id).copied().unwrap_or(0);
        assert!(
            v.cursor >= last,
            "cursor of {id} moved back from {last} to {}",
            v.cursor
        );
        assert!(v.cursor as usize <= v.steps.len());
        assert_eq!(
            v.epoch,
            book.epoch.get(&id).copied().unwrap_or(0),
            "epoch of {id} changed without a claim"
        );
        if let Some(before) = book.terminal.get(&id) {
            assert_eq!(
                (before.status, before.cursor, &before.reason, before.epoch),
                (v.status, v.cursor, &v.reason, v.epoch),
                "finished run {id} changed"
            );
        }
        match v.status {
            RunStatus::Leased => {
                let lease = v.lease.clone().expect("a leased run has a lease");
                assert_eq!(lease.epoch, v.epoch);
                if lease.until_ms > now {
                    *leased_in_conv.entry(book.conv[&id]).or_default() += 1;
                }
            }
            RunStatus::Completed => assert_eq!(v.cursor as usize, v.steps.len()),
            RunStatus::Failed => assert!(v.reason.is_some(), "failed without a reason"),
            _ => assert!(v.lease.is_none(), "a lease on a {:?} run", v.status),
        }
        for d in v.deliveries.iter().flatten() {
            if book.sent.contains(&d.key) {
                // A provider that had the message may still report that it
                // failed to deliver it; never may it become sendable again.
                assert!(
                    d.state.is_sent()
                        || d.state == DeliveryState::Failed { retryable: false }
                        || book.retried.contains(&d.key),
                    "{} moved back to {:?}",
                    d.key,
                    d.state
                );
            } else if d.state.is_sent() {
                book.sent.insert(d.key);
            }
        }
        book.cursor.insert(id, v.cursor);
        if v.status.is_terminal() {
            book.terminal.insert(id, v);
        }
    }
    assert!(
        leased_in_conv.values().all(|n| *n <= 1),
        "two live leases in one conversation"
    );
}

/// `template`: the text before the first NUL byte is parsed as a template;
/// the NUL-separated pieces after it are the values of its variables, in
/// order of first use. Parsing never panics; a template that parses comes
/// back the same from its source and from JSON; rendering with every
/// variable present fails only when the text is over
/// [`MAX_TEXT_CHARS`] characters; rendering with one missing names it.
pub fn template(data: &[u8]) {
    let mut parts = data.split(|b| *b == 0);
    let source = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let Ok(t) = Template::parse(&source) else {
        return;
    };
    assert_eq!(t.source(), source);
    assert_eq!(Template::parse(t.source()).as_ref(), Ok(&t));
    let json = serde_json::to_string(&t).expect("a template serializes");
    assert_eq!(
        serde_json::from_str::<Template>(&json).ok().as_ref(),
        Some(&t)
    );

    let names = t.vars();
    for n in &names {
        assert!(!n.is_empty() && n.len() <= 64, "bad name {n:?}");
        assert!(n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    }
    let mut values: BTreeMap<String, String> = names
        .iter()
        .map(|n| {
            let v = parts.next().unwrap_or_default();
            (n.to_string(), String::from_utf8_lossy(v).into_owned())
        })
        .collect();
    match t.render(&values) {
        Ok(text) => {
            assert!(text.chars().count() <= MAX_TEXT_CHARS);
            // Values go in as they are, never expanded again.
            let empty: BTreeMap<String, String> = names
                .iter()
                .map(|n| (n.to_string(), String::new()))
                .collect();
            let literal = t.render(&empty).expect("shorter text renders too");
            assert!(text.len() >= literal.len());
        }
        Err(TemplateError::TextTooLong { len }) => assert!(len > MAX_TEXT_CHARS),
        Err(e) => panic!("rendering with every var present failed: {e}"),
    }
    if let Some(first) = names.first() {
        let first = first.to_string();
        values.remove(&first);
        match t.render(&values) {
            Err(TemplateError::MissingVar { name }) => {
                assert!(names.contains(&name.as_str()));
            }
            Err(TemplateError::TextTooLong { .. }) => {}
            other => panic!("rendering without {first:?} gave {other:?}"),
        }
    }
}
