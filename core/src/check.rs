//! The history checker: holds a recorded history to the invariants of
//! DESIGN.md and names every offending key. The simulation and the
//! process-level tests both use it, so "no duplicates" means the same
//! thing everywhere.

use crate::ids::{DeliveryKey, RunId, TenantId};
use crate::recipient::Recipient;
use crate::store::{RunEvent, RunEventKind, RunStatus};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A trigger the system accepted (answered 201 or 200).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// The run it made.
    pub run: RunId,
    /// Whose.
    pub tenant: TenantId,
    /// To whom; with the tenant, the conversation.
    pub to: Recipient,
    /// How many steps the run has.
    pub steps: u32,
}

/// One message that reached the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderCall {
    /// Its idempotency key.
    pub key: DeliveryKey,
    /// When, in the recorder's clock.
    pub at_ms: u64,
}

/// A send the store let begin (`BeginDelivery` answered `Begun`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BegunSend {
    /// Its idempotency key.
    pub key: DeliveryKey,
    /// When, in the store's clock (any clock that orders the store's ops
    /// will do, such as their sequence numbers).
    pub at_ms: u64,
    /// Whether it was a paused sender's half-open probe.
    pub probe: bool,
}

/// A stretch of time in which a tenant's sender was paused, in the
/// clock of [`BegunSend::at_ms`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseWindow {
    /// Whose sender.
    pub tenant: TenantId,
    /// When the pause was recorded.
    pub from_ms: u64,
    /// When it ended (`None`: still paused at the end).
    pub until_ms: Option<u64>,
    /// Why, as recorded: no run may fail with it.
    pub reason: String,
}

/// How a run ended, read from the store after the fact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalRun {
    /// Its status.
    pub status: RunStatus,
    /// Its cursor.
    pub cursor: u32,
    /// The failure reason, if any.
    pub reason: Option<String>,
    /// Steps whose delivery is `unknown` in the ledger.
    pub unknown_steps: Vec<u32>,
}

/// A history: what was accepted, what reached the provider, in order, and
/// how every run ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Accepted triggers, in the order they were accepted.
    pub accepted: Vec<Accepted>,
    /// Provider calls, in the order the provider saw them.
    pub calls: Vec<ProviderCall>,
    /// Each run's final state.
    pub finals: BTreeMap<RunId, FinalRun>,
    /// Sends the store let begin (empty when the recorder cannot see them).
    pub begun: Vec<BegunSend>,
    /// Sender pauses, as the store recorded them.
    pub pauses: Vec<PauseWindow>,
    /// Each time the provider (a `failed` status about the key's latest
    /// call; a repeat about an earlier call excuses nothing) or an
    /// operator (a step resolved or retried as not sent) said a key did
    /// not go out, in the
    /// clock of [`ProviderCall::at_ms`]: the one thing that lets a key
    /// reach the provider again.
    pub said_failed: Vec<ProviderCall>,
    /// What the recorder saw that can leave a key's outcome unknown (a
    /// provider reply lost, an engine crash mid-call, a ledger write that
    /// got no answer), by key; `None` when the recorder cannot see such
    /// things, and then unknown keys are not judged.
    pub causes: Option<Vec<(DeliveryKey, String)>>,
    /// Recipients who opted out, in the clock of [`BegunSend::at_ms`]:
    /// nothing of their tenant may begin for them afterwards.
    pub opt_outs: Vec<OptOut>,
    /// When the faults ended and when every run had finished, for the
    /// liveness judgement; `None` when the recorder does not judge it.
    pub liveness: Option<Liveness>,
    /// The events the store kept for each run (runs with none left out).
    #[serde(default)]
    pub events: BTreeMap<RunId, Vec<RunEvent>>,
}

/// A recipient's opt-out, as the store recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptOut {
    /// Whose recipient.
    pub tenant: TenantId,
    /// Who.
    pub to: Recipient,
    /// When the store recorded it.
    pub at_ms: u64,
}

/// The times liveness is judged by, in one clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Liveness {
    /// When the last fault healed.
    pub healed_at_ms: u64,
    /// When every run had finished (`None`: some never did).
    pub finished_at_ms: Option<u64>,
    /// How long after the last heal every run must have finished.
    pub bound_ms: u64,
}

/// A run that did not end as it must.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lost {
    /// The run.
    pub run: RunId,
    /// What is wrong with it.
    pub why: String,
}

/// Everything the checker found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Keys that reached the provider more than once, with the count.
    pub duplicates: Vec<(DeliveryKey, u32)>,
    /// Keys that reached the provider before an earlier step of their run.
    pub out_of_order: Vec<DeliveryKey>,
    /// Keys of an earlier run that reached the provider after a later run
    /// of the same conversation had begun.
    pub interleaved: Vec<DeliveryKey>,
    /// Runs that were lost or ended wrongly.
    pub lost: Vec<Lost>,
    /// Keys sent for runs that were never accepted.
    pub phantom: Vec<DeliveryKey>,
    /// Keys whose send began while their tenant's sender was paused
    /// (other than as its one probe).
    pub paused_sends: Vec<DeliveryKey>,
    /// Keys whose outcome is unknown (allowed, but reported).
    pub unknown: Vec<DeliveryKey>,
    /// Unknown keys with no cause in the history, or sent more than once.
    pub unexplained_unknown: Vec<DeliveryKey>,
    /// Keys whose send began after their recipient opted out.
    pub after_opt_out: Vec<DeliveryKey>,
    /// Why liveness failed, if it did.
    pub liveness: Option<String>,
    /// Time from the last fault healing to every run finishing.
    pub settle_ms: Option<u64>,
    /// Provider calls seen.
    pub deliveries: u64,
    /// Run events that contradict the history or each other.
    #[serde(default)]
    pub bad_events: Vec<(RunId, String)>,
}

impl Report {
    /// True when no invariant is broken. Unknown keys are allowed.
    pub fn is_clean(&self) -> bool {
        self.duplicates.is_empty()
            && self.out_of_order.is_empty()
            && self.interleaved.is_empty()
            && self.lost.is_empty()
            && self.phantom.is_empty()
            && self.paused_sends.is_empty()
            && self.unexplained_unknown.is_empty()
            && self.after_opt_out.is_empty()
            && self.liveness.is_none()
            && self.bad_events.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "deliveries={} duplicates={} out_of_order={} interleaved={} lost={} phantom={} paused_sends={} unknown={}",
            self.deliveries,
            self.duplicates.len(),
            self.out_of_order.len(),
            self.interleaved.len(),
            self.lost.len(),
            self.phantom.len(),
            self.paused_sends.len(),
            self.unknown.len()
        )?;
        const SHOW: usize = 3;
        for (k, n) in self.duplicates.iter().take(SHOW) {
            write!(f, "\n  duplicate: {k} sent {n} times")?;
        }
        for k in self.out_of_order.iter().take(SHOW) {
            write!(f, "\n  out of order: {k}")?;
        }
        for k in self.interleaved.iter().take(SHOW) {
            write!(f, "\n  interleaved: {k}")?;
        }
        for l in self.lost.iter().take(SHOW) {
            write!(f, "\n  lost: run {}: {}", l.run, l.why)?;
        }
        for k in self.phantom.iter().take(SHOW) {
            write!(f, "\n  phantom: {k}")?;
        }
        for k in self.paused_sends.iter().take(SHOW) {
            write!(f, "\n  sent while its sender was paused: {k}")?;
        }
        for k in self.unexplained_unknown.iter().take(SHOW) {
            write!(f, "\n  unknown with no cause: {k}")?;
        }
        for k in self.after_opt_out.iter().take(SHOW) {
            write!(f, "\n  sent after the recipient opted out: {k}")?;
        }
        if let Some(why) = &self.liveness {
            write!(f, "\n  liveness: {why}")?;
        }
        for (run, why) in self.bad_events.iter().take(SHOW) {
            write!(f, "\n  run event: {run}: {why}")?;
        }
        Ok(())
    }
}

/// Checks a history against invariants 1 to 3 of DESIGN.md, and the
/// paused-sender part of 5.
pub fn check(history: &History) -> Report {
    let mut report = Report {
        deliveries: history.calls.len() as u64,
        ..Report::default()
    };
    let by_run: BTreeMap<RunId, (usize, &Accepted)> = history
        .accepted
        .iter()
        .enumerate()
        .map(|(i, a)| (a.run, (i, a)))
        .collect();

    // 1. No key reaches the provider more than once, unless between two
    // of its calls the provider or an operator said it did not go out.
    let mut reached: std::collections::BTreeSet<DeliveryKey> = Default::default();
    let mut last_call: BTreeMap<DeliveryKey, u64> = BTreeMap::new();
    let mut unexcused: BTreeMap<DeliveryKey, u32> = BTreeMap::new();
    for c in &history.calls {
        reached.insert(c.key);
        if let Some(prev) = last_call.insert(c.key, c.at_ms) {
            let excused = history
                .said_failed
                .iter()
                .any(|f| f.key == c.key && prev <= f.at_ms && f.at_ms <= c.at_ms);
            if !excused {
                *unexcused.entry(c.key).or_insert(1) += 1;
            }
        }
    }
    report.duplicates = unexcused.into_iter().collect();

    // 2. Steps in order within a run; runs of a conversation not interleaved.
    let mut next_step: BTreeMap<RunId, u32> = BTreeMap::new();
    let mut current: BTreeMap<(&TenantId, &Recipient), usize> = BTreeMap::new();
    for c in &history.calls {
        let Some((order, accepted)) = by_run.get(&c.key.run) else {
            report.phantom.push(c.key);
            continue;
        };
        let next = next_step.entry(c.key.run).or_default();
        if c.key.step > *next {
            report.out_of_order.push(c.key);
        }
        *next = (*next).max(c.key.step + 1);
        let conv = current
            .entry((&accepted.tenant, &accepted.to))
            .or_insert(*order);
        if *order < *conv {
            report.interleaved.push(c.key);
        }
        *conv = (*conv).max(*order);
    }

    // 5. Nothing begins for a paused sender, but its one probe at a time.
    for b in &history.begun {
        let Some((_, accepted)) = by_run.get(&b.key.run) else {
            continue;
        };
        let paused = history.pauses.iter().any(|p| {
            p.tenant == accepted.tenant
                && p.from_ms <= b.at_ms
                && p.until_ms.is_none_or(|until| b.at_ms < until)
        });
        if paused && !b.probe {
            report.paused_sends.push(b.key);
        }
    }

    // 3. Nothing lost: every accepted run ended, and ended honestly.
    for a in &history.accepted {
        let lost = |why: String| Lost { run: a.run, why };
        let Some(fin) = history.finals.get(&a.run) else {
            report.lost.push(lost("no final state recorded".into()));
            continue;
        };
        for step in &fin.unknown_steps {
            report.unknown.push(DeliveryKey {
                run: a.run,
                step: *step,
            });
        }
        match fin.status {
            RunStatus::Pending | RunStatus::Leased | RunStatus::Waiting => report.lost.push(lost(
                format!("still {} at step {}", fin.status.as_str(), fin.cursor),
            )),
            RunStatus::Completed => {
                if let Some(step) = (0..a.steps).find(|s| {
                    !reached.contains(&DeliveryKey {
                        run: a.run,
                        step: *s,
                    })
                }) {
                    report.lost.push(lost(format!(
                        "completed, but step {step} never reached the provider"
                    )));
                }
            }
            RunStatus::Failed => {
                match fin.reason.as_deref() {
                    None | Some("") => report.lost.push(lost("failed without a reason".into())),
                    // A paused sender's runs wait; they never fail for it.
                    Some(reason) => {
                        if let Some(p) = history.pauses.iter().find(|p| {
                            p.tenant == a.tenant
                                && !p.reason.is_empty()
                                && reason.contains(&p.reason)
                        }) {
                            report
                                .lost
                                .push(lost(format!("failed for its paused sender ({})", p.reason)));
                        }
                    }
                }
            }
            RunStatus::Cancelled => {}
        }
    }

    // 4. An unknown outcome has a cause the history shows, and a key sent
    // more than once is never excused as unknown.
    if let Some(causes) = &history.causes {
        let caused: std::collections::BTreeSet<DeliveryKey> =
            causes.iter().map(|(k, _)| *k).collect();
        report.unexplained_unknown = report
            .unknown
            .iter()
            .filter(|k| !caused.contains(k) || report.duplicates.iter().any(|(d, _)| d == *k))
            .copied()
            .collect();
    }

    // 6. Nothing begins for a recipient after they opted out.
    for b in &history.begun {
        let Some((_, accepted)) = by_run.get(&b.key.run) else {
            continue;
        };
        if history
            .opt_outs
            .iter()
            .any(|o| o.tenant == accepted.tenant && o.to == accepted.to && o.at_ms < b.at_ms)
        {
            report.after_opt_out.push(b.key);
        }
    }

    // 7. Liveness: every run finished within the bound after the faults.
    if let Some(l) = history.liveness {
        report.settle_ms = l.finished_at_ms.map(|d| d.saturating_sub(l.healed_at_ms));
        report.liveness = match report.settle_ms {
            None => Some("runs still unfinished at the end".to_string()),
            Some(s) if s > l.bound_ms => Some(format!(
                "runs took {s} ms to finish after the last fault healed; the bound is {} ms",
                l.bound_ms
            )),
            Some(_) => None,
        };
    }

    // 8. The store's account of each run agrees with itself and with the
    // provider: a rescue takes over the epoch it names, after the lease it
    // ended had lapsed; a fenced write named an older epoch than the run's;
    // a send the ledger answered as sent had reached the provider.
    for (run, events) in &history.events {
        let steps = by_run.get(run).map_or(0, |(_, a)| a.steps);
        // Events are in the store's order; their times are the ops' own
        // stamps, which a queued write may carry from before an earlier
        // one, so times are not judged.
        let mut last_rescue = 0;
        for e in events {
            let mut bad = |why: String| report.bad_events.push((*run, why));
            if e.step >= steps {
                bad(format!("{} at step {} of {steps}", e.kind.as_str(), e.step));
            }
            match &e.kind {
                RunEventKind::Rescued {
                    from,
                    from_epoch,
                    lease_until_ms,
                    epoch,
                    ..
                } => {
                    if *epoch != from_epoch + 1 || *epoch <= last_rescue {
                        bad(format!("rescue to epoch {epoch} from epoch {from_epoch}"));
                    }
                    if *lease_until_ms > e.at_ms {
                        bad(format!(
                            "claimed at {} from {from}, whose lease ran to {lease_until_ms}",
                            e.at_ms
                        ));
                    }
                    last_rescue = *epoch;
                }
                RunEventKind::Fenced {
                    op,
                    epoch,
                    run_epoch,
                } => {
                    if epoch > run_epoch {
                        bad(format!(
                            "{op} fenced at epoch {epoch}, past the run's {run_epoch}"
                        ));
                    }
                }
                RunEventKind::Replayed { ledger, .. } => {
                    let key = DeliveryKey {
                        run: *run,
                        step: e.step,
                    };
                    let sent = matches!(ledger.as_str(), "sent" | "delivered" | "read");
                    if sent && !reached.contains(&key) {
                        bad(format!(
                            "{key} answered as {ledger}, never reached the provider"
                        ));
                    }
                }
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(n: u64) -> RunId {
        RunId::new(n, n)
    }

    fn key(r: u64, step: u32) -> DeliveryKey {
        DeliveryKey { run: run(r), step }
    }

    fn accepted(r: u64, to: &str, steps: u32) -> Accepted {
        Accepted {
            run: run(r),
            tenant: TenantId::default_tenant(),
            to: Recipient::parse(to).unwrap(),
            steps,
        }
    }

    fn completed(steps: u32) -> FinalRun {
        FinalRun {
            status: RunStatus::Completed,
            cursor: steps,
            reason: None,
            unknown_steps: vec![],
        }
    }

    /// Two conversations, runs 1 and 2 to one number, run 3 to another.
    fn clean() -> History {
        let calls = [
            key(1, 0),
            key(3, 0),
            key(1, 1),
            key(2, 0),
            key(3, 1),
            key(2, 1),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, key)| ProviderCall {
            key,
            at_ms: i as u64,
        })
        .collect();
        History {
            accepted: vec![
                accepted(1, "+5511913390707", 2),
                accepted(2, "+5511913390707", 2),
                accepted(3, "+4915112345678", 2),
            ],
            calls,
            finals: [
                (run(1), completed(2)),
                (run(2), completed(2)),
                (run(3), completed(2)),
            ]
            .into_iter()
            .collect(),
            ..History::default()
        }
    }

    #[test]
    fn a_clean_history_passes() {
        let r = check(&clean());
        assert!(r.is_clean(), "{r}");
        assert_eq!(r.deliveries, 6);
    }

    fn event(at_ms: u64, step: u32, kind: RunEventKind) -> RunEvent {
        RunEvent { at_ms, step, kind }
    }

    fn worker(name: &str) -> crate::WorkerId {
        crate::WorkerId::new(name).unwrap()
    }

    #[test]
    fn run_events_that_agree_with_the_history_pass() {
        let mut h = clean();
        h.events.insert(
            run(1),
            vec![
                event(
                    10,
                    0,
                    RunEventKind::Rescued {
                        from: worker("w-1"),
                        from_epoch: 1,
                        lease_until_ms: 9,
                        by: worker("w-2"),
                        epoch: 2,
                    },
                ),
                event(
                    11,
                    0,
                    RunEventKind::Replayed {
                        epoch: 2,
                        ledger: "sent".into(),
                    },
                ),
                event(
                    12,
                    0,
                    RunEventKind::Fenced {
                        op: "advance".into(),
                        epoch: 1,
                        run_epoch: 2,
                    },
                ),
            ],
        );
        let r = check(&h);
        assert!(r.is_clean(), "{r}");
    }

    #[test]
    fn run_events_that_contradict_the_history_are_named() {
        let mut h = clean();
        h.events.insert(
            run(2),
            vec![
                // Taken from a holder whose lease was still live.
                event(
                    20,
                    0,
                    RunEventKind::Rescued {
                        from: worker("w-1"),
                        from_epoch: 1,
                        lease_until_ms: 25,
                        by: worker("w-2"),
                        epoch: 2,
                    },
                ),
                // A write fenced under an epoch never granted.
                event(
                    21,
                    1,
                    RunEventKind::Fenced {
                        op: "complete".into(),
                        epoch: 7,
                        run_epoch: 2,
                    },
                ),
            ],
        );
        // The ledger answered "sent" for a key the provider never saw.
        h.calls.retain(|c| c.key != key(3, 1));
        h.finals.insert(run(3), completed(2));
        h.events.insert(
            run(3),
            vec![event(
                30,
                1,
                RunEventKind::Replayed {
                    epoch: 1,
                    ledger: "sent".into(),
                },
            )],
        );
        let r = check(&h);
        let whys: Vec<String> = r
            .bad_events
            .iter()
            .map(|(run, why)| format!("{run}: {why}"))
            .collect();
        assert_eq!(whys.len(), 3, "{whys:?}");
        assert!(whys[0].contains("whose lease ran to 25"), "{whys:?}");
        assert!(whys[1].contains("past the run's 2"), "{whys:?}");
        assert!(whys[2].contains("never reached the provider"), "{whys:?}");
        assert!(!r.is_clean());
        assert!(r.to_string().contains("run event:"), "{r}");
    }

    #[test]
    fn a_duplicate_is_named() {
        let mut h = clean();
        h.calls.insert(
            2,
            ProviderCall {
                key: key(1, 0),
                at_ms: 2,
            },
        );
        let r = check(&h);
        assert_eq!(r.duplicates, vec![(key(1, 0), 2)]);
        assert!(!r.is_clean());
        assert!(r
            .to_string()
            .contains(&format!("duplicate: {} sent 2 times", key(1, 0))));
    }

    #[test]
    fn a_key_sent_again_after_the_provider_said_failed_is_no_duplicate() {
        let mut h = clean();
        // Key (1, 0) was called at 0; sent again at 2.
        h.calls.insert(
            2,
            ProviderCall {
                key: key(1, 0),
                at_ms: 2,
            },
        );
        // A `failed` said before the first call excuses nothing.
        h.said_failed.push(ProviderCall {
            key: key(1, 0),
            at_ms: 0,
        });
        h.calls[0].at_ms = 1;
        assert_eq!(check(&h).duplicates, vec![(key(1, 0), 2)]);
        // Said between the two calls, it does; a third call needs another.
        h.said_failed[0].at_ms = 1;
        assert!(check(&h).is_clean());
        h.calls.push(ProviderCall {
            key: key(1, 0),
            at_ms: 9,
        });
        assert_eq!(check(&h).duplicates, vec![(key(1, 0), 2)]);
    }

    #[test]
    fn a_reordering_is_named() {
        let mut h = clean();
        // Run 3's steps swapped.
        h.calls.swap(1, 4);
        let r = check(&h);
        assert_eq!(r.out_of_order, vec![key(3, 1)]);
        assert!(r.duplicates.is_empty());
    }

    #[test]
    fn an_interleaving_is_named() {
        let mut h = clean();
        // Run 2 (later) starts before run 1 (earlier) finishes.
        h.calls.swap(2, 3);
        let r = check(&h);
        assert_eq!(r.interleaved, vec![key(1, 1)]);
        assert!(r.out_of_order.is_empty());
    }

    #[test]
    fn a_loss_is_named() {
        let mut h = clean();
        // Run 3 says completed, but its second step never went out.
        h.calls.retain(|c| c.key != key(3, 1));
        let r = check(&h);
        assert_eq!(r.lost.len(), 1);
        assert_eq!(r.lost[0].run, run(3));
        assert!(r.lost[0].why.contains("step 1 never reached"), "{r}");

        // A run with no final state, and one still pending, are lost too.
        let mut h = clean();
        h.finals.remove(&run(2));
        h.finals.get_mut(&run(1)).unwrap().status = RunStatus::Pending;
        let r = check(&h);
        let lost: Vec<RunId> = r.lost.iter().map(|l| l.run).collect();
        assert_eq!(lost, vec![run(1), run(2)]);
    }

    #[test]
    fn failures_need_reasons_and_unknowns_are_reported_not_failed() {
        let mut h = clean();
        h.calls.retain(|c| c.key != key(3, 1));
        h.finals.insert(
            run(3),
            FinalRun {
                status: RunStatus::Failed,
                cursor: 1,
                reason: Some("step 1: delivery unknown: timeout".into()),
                unknown_steps: vec![1],
            },
        );
        let r = check(&h);
        assert!(r.is_clean(), "{r}");
        assert_eq!(r.unknown, vec![key(3, 1)]);

        h.finals.get_mut(&run(3)).unwrap().reason = None;
        let r = check(&h);
        assert_eq!(r.lost[0].why, "failed without a reason");
    }

    #[test]
    fn a_send_begun_while_its_sender_was_paused_is_named() {
        let mut h = clean();
        let begun = |r, step, at_ms, probe| BegunSend {
            key: key(r, step),
            at_ms,
            probe,
        };
        h.pauses.push(PauseWindow {
            tenant: TenantId::default_tenant(),
            from_ms: 10,
            until_ms: Some(20),
            reason: "Cloud API error 190: token expired".into(),
        });
        // Before, at the end of, and as the probe of the pause: fine.
        h.begun = vec![
            begun(1, 0, 9, false),
            begun(1, 1, 20, false),
            begun(2, 0, 15, true),
        ];
        let r = check(&h);
        assert!(r.is_clean(), "{r}");
        h.begun.push(begun(2, 1, 10, false));
        let r = check(&h);
        assert_eq!(r.paused_sends, vec![key(2, 1)]);
        assert!(
            r.to_string().contains("sent while its sender was paused"),
            "{r}"
        );

        // A run that failed for the pause is lost.
        let mut h = clean();
        h.pauses.push(PauseWindow {
            tenant: TenantId::default_tenant(),
            from_ms: 0,
            until_ms: None,
            reason: "Cloud API error 190: token expired".into(),
        });
        h.finals.insert(
            run(3),
            FinalRun {
                status: RunStatus::Failed,
                cursor: 0,
                reason: Some("step 0: Cloud API error 190: token expired".into()),
                unknown_steps: vec![],
            },
        );
        let r = check(&h);
        assert_eq!(r.lost.len(), 1, "{r}");
        assert!(r.lost[0].why.contains("paused sender"), "{r}");

        // Not another tenant's pause, nor a pause without a reason (every
        // reason contains the empty one).
        for (tenant, reason) in [
            ("acme", "Cloud API error 190: token expired"),
            ("default", ""),
        ] {
            h.pauses[0].tenant = TenantId::new(tenant).unwrap();
            h.pauses[0].reason = reason.into();
            let r = check(&h);
            assert!(r.is_clean(), "{tenant} {reason:?}: {r}");
        }
    }

    #[test]
    fn a_call_for_a_run_never_accepted_is_phantom() {
        let mut h = clean();
        h.calls.push(ProviderCall {
            key: key(9, 0),
            at_ms: 99,
        });
        let r = check(&h);
        assert_eq!(r.phantom, vec![key(9, 0)]);
        assert!(!r.is_clean());
    }

    #[test]
    fn an_unknown_needs_a_cause_once_the_recorder_sees_causes() {
        let mut h = clean();
        let mut fin = completed(2);
        fin.unknown_steps = vec![1];
        h.finals.insert(run(3), fin);
        // A recorder that sees no causes: unknown is reported, not judged.
        let r = check(&h);
        assert_eq!(r.unknown, vec![key(3, 1)]);
        assert!(r.is_clean(), "{r}");
        // One that sees causes, but none for this key.
        h.causes = Some(vec![(key(1, 0), "lost_reply".into())]);
        let r = check(&h);
        assert_eq!(r.unexplained_unknown, vec![key(3, 1)]);
        assert!(!r.is_clean());
        assert!(r.to_string().contains("unknown with no cause: "), "{r}");
        // With its cause.
        h.causes = Some(vec![(key(3, 1), "lost_reply".into())]);
        assert!(check(&h).is_clean());
        // A cause never excuses a second send.
        h.calls.push(ProviderCall {
            key: key(3, 1),
            at_ms: 50,
        });
        let r = check(&h);
        assert_eq!(r.unexplained_unknown, vec![key(3, 1)]);
    }

    #[test]
    fn nothing_may_begin_for_a_recipient_after_they_opted_out() {
        let mut h = clean();
        h.begun = (0..2)
            .map(|step| BegunSend {
                key: key(2, step),
                at_ms: 10 + step as u64 * 10,
                probe: false,
            })
            .collect();
        let other_tenant = OptOut {
            tenant: TenantId::new("acme").unwrap(),
            to: Recipient::parse("+5511913390707").unwrap(),
            at_ms: 0,
        };
        h.opt_outs = vec![other_tenant];
        assert!(check(&h).is_clean(), "another tenant's opt-out");
        h.opt_outs.push(OptOut {
            tenant: TenantId::default_tenant(),
            to: Recipient::parse("+5511913390707").unwrap(),
            at_ms: 15,
        });
        let r = check(&h);
        assert_eq!(r.after_opt_out, vec![key(2, 1)], "step 0 began before");
        assert!(!r.is_clean());
        // In the same millisecond, which came first is unknowable: allowed.
        h.opt_outs.last_mut().unwrap().at_ms = 20;
        assert!(check(&h).is_clean(), "{}", check(&h));
    }

    #[test]
    fn every_run_must_finish_within_the_bound_after_the_last_heal() {
        let mut h = clean();
        let judge = |h: &mut History, finished: Option<u64>| {
            h.liveness = Some(Liveness {
                healed_at_ms: 1_000,
                finished_at_ms: finished,
                bound_ms: 500,
            });
            check(h)
        };
        let r = judge(&mut h, Some(1_500));
        assert_eq!((r.liveness.clone(), r.settle_ms), (None, Some(500)));
        let r = judge(&mut h, Some(1_501));
        assert!(r.liveness.as_deref().unwrap().contains("501 ms"), "{r}");
        assert!(!r.is_clean());
        let r = judge(&mut h, None);
        assert!(r.liveness.is_some() && r.settle_ms.is_none());
        // Finishing before the last heal settles at once.
        assert_eq!(judge(&mut h, Some(10)).settle_ms, Some(0));
    }
}
