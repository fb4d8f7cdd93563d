//! What the simulation records: the event trace (hashed to prove
//! determinism), the provider's calls (the history the checker reads), and
//! the switches the fault schedule flips while the simulation runs.

use crate::marks::Marks;
use oncesend::clock::TokioClock;
use oncesend::engine::EngineHandle;
use oncesend::store::group::GroupStats;
use oncesend::worker::BatchedHttpEngineClient;
use oncesend_core::check::{BegunSend, OptOut, PauseWindow, ProviderCall};
use oncesend_core::rng::SplitMix64;
use oncesend_core::{DeliveryKey, Recipient, TenantId};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// The simulated wall clock's value at the start of every simulation.
pub const BASE_MS: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

/// Simulated milliseconds since the simulation began.
pub fn sim_ms() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64)
}

#[derive(Default)]
struct Inner {
    trace: Vec<String>,
    calls: Vec<ProviderCall>,
    in_provider: BTreeSet<DeliveryKey>,
    /// How many calls the provider took for each key.
    calls_per_key: BTreeMap<DeliveryKey, u32>,
    begins: BTreeSet<DeliveryKey>,
    /// Keys between the engine's `BeginDelivery` and its `FinishDelivery`:
    /// the sends whose provider-call timer runs on the engine's clock.
    engine_sending: BTreeSet<DeliveryKey>,
    ambiguous: BTreeMap<DeliveryKey, &'static str>,
    db_skew_ms: i64,
    lose_replies: bool,
    sender_blocked: Option<i64>,
    begun: Vec<BegunSend>,
    pauses: Vec<PauseWindow>,
    refusals: u64,
    db_ops: u64,
    paused_until_ms: BTreeMap<String, u64>,
    fired: BTreeSet<&'static str>,
    restarts: BTreeMap<String, u64>,
    /// Status callbacks the provider owes, by when they are due.
    statuses: Vec<OwedStatus>,
    status_rng: Option<SplitMix64>,
    said_failed: Vec<ProviderCall>,
    receipt_settled: u64,
    unknown_timeouts: u64,
    provider_slow_ms: Option<u64>,
    db_delay_ms: Option<u64>,
    inbound: Vec<OwedInbound>,
    opt_outs: Vec<OptOut>,
    engines: Vec<EngineHandle>,
    engine_clock: Option<TokioClock>,
    groups: Vec<Box<dyn Fn() -> GroupStats + Send>>,
    senders: Vec<BatchedHttpEngineClient>,
    provider_refused: BTreeMap<i64, u64>,
    /// Tenant lookups: whose, when begun, when ended (if yet), and whether
    /// they were slow or failed.
    lookups: Vec<(TenantId, u64, Option<u64>, bool)>,
}

/// Puts `key` in `set` or takes it out.
fn mark(set: &mut BTreeSet<DeliveryKey>, key: DeliveryKey, member: bool) {
    if member {
        set.insert(key);
    } else {
        set.remove(&key);
    }
}

/// An inbound message a recipient will send the business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwedInbound {
    /// When it is due, in simulated ms.
    pub due_ms: u64,
    /// The business number it is sent to.
    pub phone_number_id: &'static str,
    /// Who sends it.
    pub from: Recipient,
    /// What it says.
    pub text: &'static str,
}

/// What the production parts did in one simulation, from their own
/// counters: proof the simulation exercised them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Exercised {
    /// `POST /v1/messages/batch` requests carrying more than one send.
    pub send_batches: u64,
    /// Store transactions shared by more than one write (group commit).
    pub group_commits: u64,
    /// Sends the engine held back for pacing.
    pub paced: u64,
    /// Provider calls past the engine's send timeout.
    pub timed_out: u64,
    /// Their answers, recorded late.
    pub late_replies: u64,
    /// Sender pauses the store recorded.
    pub pauses: u64,
    /// Recipients who opted out.
    pub opt_outs: u64,
    /// Sends the provider refused for its throughput or pair rate.
    pub rate_refusals: u64,
    /// Lease rescues the store recorded (run events).
    pub rescues: u64,
    /// Holders' writes the store refused by the fence (run events).
    pub fenced: u64,
    /// Sends the ledger answered instead of sending again (run events).
    pub replays: u64,
}

impl std::ops::AddAssign for Exercised {
    fn add_assign(&mut self, o: Self) {
        self.send_batches += o.send_batches;
        self.group_commits += o.group_commits;
        self.paced += o.paced;
        self.timed_out += o.timed_out;
        self.late_replies += o.late_replies;
        self.pauses += o.pauses;
        self.opt_outs += o.opt_outs;
        self.rate_refusals += o.rate_refusals;
        self.rescues += o.rescues;
        self.fenced += o.fenced;
        self.replays += o.replays;
    }
}

/// State shared by every host of one simulation and its driver, and
/// where the race page's marks go when one was asked for.
#[derive(Clone, Default)]
pub struct Shared(Arc<Mutex<Inner>>, Marks);

/// One status callback the simulated provider owes the engine's webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwedStatus {
    /// When it is due, in simulated ms.
    pub due_ms: u64,
    /// The delivery it names.
    pub key: DeliveryKey,
    /// Which of the key's calls it is about (its message id says so).
    pub call: u32,
    /// `sent`, `delivered`, `read` or `failed`.
    pub status: &'static str,
    /// For `failed`: the Cloud API error code.
    pub code: Option<i64>,
}

/// How long after a send a status may come, in simulated ms; a few come
/// only after the worker's unknown timeout.
const STATUS_DELAY_MS: u64 = 300;
/// When a late status comes: after this, plus up to as much again.
pub const LATE_STATUS_MS: u64 = 3_500;

impl Shared {
    /// A record that also keeps the race page's marks.
    pub fn with_marks() -> Self {
        Self(Arc::default(), Marks::recording())
    }

    /// Where marks go (nowhere, unless this record was made to keep them).
    pub fn marks(&self) -> &Marks {
        &self.1
    }

    /// Seeds the provider's status plans.
    pub fn seed_statuses(&self, seed: u64) {
        self.with(|s| s.status_rng = Some(SplitMix64::new(seed ^ 0x5747_4154_5553)));
    }

    /// The provider took `key`: plans the status callbacks it will send,
    /// as the Cloud API does, late, twice, out of order, or not at all.
    pub fn owe_statuses(&self, key: DeliveryKey, call: u32) {
        let now = sim_ms();
        self.with(|s| {
            let Some(rng) = s.status_rng.as_mut() else {
                return;
            };
            let mut roll = |n: u64| rng.next_u64() % n;
            let fate = roll(100);
            let late = roll(100) < 6;
            let plan: &[&'static str] = match fate {
                // Never a word about it.
                0..=5 => &[],
                // It could not be delivered: worth another try.
                6..=9 => &["failed"],
                10..=39 => &["sent", "delivered"],
                40..=79 => &["sent", "delivered", "read"],
                // `read` without `delivered`.
                _ => &["read"],
            };
            let mut owed = Vec::new();
            for status in plan {
                let mut due = now + 1 + roll(STATUS_DELAY_MS);
                if late {
                    due = now + LATE_STATUS_MS + roll(LATE_STATUS_MS);
                }
                let copies = if roll(100) < 10 { 2 } else { 1 };
                for c in 0..copies {
                    owed.push(OwedStatus {
                        due_ms: due + c * roll(200),
                        key,
                        call,
                        status,
                        code: (*status == "failed").then_some(131000),
                    });
                }
            }
            s.statuses.extend(owed);
        });
    }

    /// The statuses due by `now_ms`, oldest first, taken off the list.
    pub fn take_due_statuses(&self, now_ms: u64) -> Vec<OwedStatus> {
        self.with(|s| {
            let (due, later): (Vec<_>, Vec<_>) =
                s.statuses.drain(..).partition(|o| o.due_ms <= now_ms);
            s.statuses = later;
            let mut due = due;
            due.sort_by_key(|o| (o.due_ms, o.key, o.call, o.status));
            due
        })
    }

    /// Statuses that could not be posted go back on the list, due later.
    pub fn owe_again(&self, owed: Vec<OwedStatus>, due_ms: u64) {
        self.with(|s| {
            s.statuses
                .extend(owed.into_iter().map(|o| OwedStatus { due_ms, ..o }))
        });
    }

    /// Whether any status is still owed.
    pub fn statuses_owed(&self) -> bool {
        self.with(|s| !s.statuses.is_empty())
    }

    /// The provider is telling the engine that `key` failed.
    pub fn note_said_failed(&self, key: DeliveryKey) {
        let at_ms = sim_ms();
        self.with(|s| s.said_failed.push(ProviderCall { key, at_ms }));
    }

    /// Every `failed` the provider said, for the checker.
    pub fn said_failed(&self) -> Vec<ProviderCall> {
        self.with(|s| s.said_failed.clone())
    }

    /// A run waiting on an unknown step was moved on by a status.
    pub fn note_receipt_settled(&self) {
        self.with(|s| s.receipt_settled += 1);
    }

    /// A run failed because no status came within the unknown timeout.
    pub fn note_unknown_timeout(&self) {
        self.with(|s| s.unknown_timeouts += 1);
    }

    /// Runs settled by statuses, and runs failed by the unknown timeout.
    pub fn wait_outcomes(&self) -> (u64, u64) {
        self.with(|s| (s.receipt_settled, s.unknown_timeouts))
    }

    /// Makes the provider answer this much later (`None`: at once).
    pub fn set_provider_slow_ms(&self, ms: Option<u64>) {
        self.with(|s| s.provider_slow_ms = ms);
    }

    /// How much later the provider answers now.
    pub fn provider_slow_ms(&self) -> Option<u64> {
        self.with(|s| s.provider_slow_ms)
    }

    /// Makes the db answer this much later (`None`: at once).
    pub fn set_db_delay_ms(&self, ms: Option<u64>) {
        self.with(|s| s.db_delay_ms = ms);
    }

    /// How much later the db answers now.
    pub fn db_delay_ms(&self) -> Option<u64> {
        self.with(|s| s.db_delay_ms)
    }

    /// Plans an inbound message.
    pub fn owe_inbound(&self, inbound: OwedInbound) {
        self.with(|s| s.inbound.push(inbound));
    }

    /// The inbound messages due by `now_ms`, taken off the list.
    pub fn take_due_inbound(&self, now_ms: u64) -> Vec<OwedInbound> {
        self.with(|s| {
            let (due, later): (Vec<_>, Vec<_>) =
                s.inbound.drain(..).partition(|o| o.due_ms <= now_ms);
            s.inbound = later;
            due
        })
    }

    /// Inbound messages that could not be posted go back, due later.
    pub fn owe_inbound_again(&self, owed: Vec<OwedInbound>, due_ms: u64) {
        self.with(|s| {
            s.inbound
                .extend(owed.into_iter().map(|o| OwedInbound { due_ms, ..o }))
        });
    }

    /// The store recorded an opt-out, at `at_ms` in its op order.
    pub fn note_opt_out(&self, tenant: TenantId, to: Recipient, at_ms: u64) {
        self.with(|s| s.opt_outs.push(OptOut { tenant, to, at_ms }));
    }

    /// Every opt-out recorded, for the checker.
    pub fn opt_outs(&self) -> Vec<OptOut> {
        self.with(|s| s.opt_outs.clone())
    }

    /// An engine started: its counters are read at the end, and its clock
    /// is the one clock faults step.
    pub fn engine_started(&self, engine: EngineHandle, clock: TokioClock) {
        self.with(|s| {
            s.engines.push(engine);
            s.engine_clock = Some(clock);
        });
    }

    /// Steps the running engine's clock.
    pub fn step_engine_clock(&self, by_ms: i64) {
        if let Some(c) = self.with(|s| s.engine_clock.clone()) {
            c.step(by_ms);
        }
        if by_ms > 0 {
            // A step forward makes a provider call in flight look overdue:
            // the engine gives up on it at once, and its outcome is unknown.
            self.with(|s| {
                for k in &s.engine_sending {
                    s.ambiguous.entry(*k).or_insert("clock_jump");
                }
            });
        }
    }

    /// The engine asked the db to record `sending` for `key` (`true`), or
    /// to record its outcome (`false`).
    pub fn engine_sending(&self, key: DeliveryKey, sending: bool) {
        self.with(|s| mark(&mut s.engine_sending, key, sending));
    }

    /// A group commit started: its counters are read at the end.
    pub fn group_started(&self, stats: impl Fn() -> GroupStats + Send + 'static) {
        self.with(|s| s.groups.push(Box::new(stats)));
    }

    /// A worker's batched engine client started.
    pub fn sender_started(&self, client: BatchedHttpEngineClient) {
        self.with(|s| s.senders.push(client));
    }

    /// A read of `tenant`'s settings (the engine's provider lookup) began;
    /// the number to end it with.
    pub fn lookup_began(&self, tenant: TenantId) -> usize {
        let now = sim_ms();
        self.with(|s| {
            s.lookups.push((tenant, now, None, false));
            s.lookups.len() - 1
        })
    }

    /// The lookup ended: `slow` if it took long or failed.
    pub fn lookup_ended(&self, n: usize, slow: bool) {
        let now = sim_ms();
        self.with(|s| {
            if let Some(l) = s.lookups.get_mut(n) {
                l.2 = Some(now);
                l.3 = slow;
            }
        });
    }

    /// Whether a lookup of `tenant`'s settings was slow (or is still under
    /// way after `slow_ms`) within `[from_ms, until_ms]`: a provider call
    /// that waited for it may have run out of time before anything went out.
    pub fn slow_lookup_during(
        &self,
        tenant: &TenantId,
        from_ms: u64,
        until_ms: u64,
        slow_ms: u64,
    ) -> bool {
        self.with(|s| {
            s.lookups.iter().any(|(t, a, b, slow)| {
                t == tenant
                    && match b {
                        None => *a + slow_ms <= until_ms,
                        Some(b) => *slow && *a <= until_ms && from_ms <= *b,
                    }
            })
        })
    }

    /// The provider refused a send with `code` for its rate.
    pub fn note_rate_refusal(&self, code: i64) {
        self.with(|s| *s.provider_refused.entry(code).or_default() += 1);
    }

    /// The simulation is over: what the production parts did, summed over
    /// every restart, and this record lets go of them. They hold this
    /// record in turn (the engine and the group commits through their db
    /// client), so keeping them would keep the whole seed's world alive:
    /// about 130 KB a seed, which slowed a long run down by a sixth.
    pub fn daemons_stopped(&self) -> Exercised {
        let exercised = self.exercised();
        let parts = self.with(|s| {
            (
                std::mem::take(&mut s.engines),
                s.engine_clock.take(),
                std::mem::take(&mut s.groups),
                std::mem::take(&mut s.senders),
            )
        });
        // Dropped outside the lock: a part's drop may reach this record.
        drop(parts);
        exercised
    }

    /// How many handles to this record exist (this one included).
    pub fn handles(&self) -> usize {
        Arc::strong_count(&self.0)
    }

    /// What the production parts did, summed over every restart.
    fn exercised(&self) -> Exercised {
        self.with(|s| {
            let mut e = Exercised {
                pauses: s.pauses.len() as u64,
                opt_outs: s.opt_outs.len() as u64,
                rate_refusals: s.provider_refused.values().sum(),
                ..Exercised::default()
            };
            for engine in &s.engines {
                let st = engine.stats();
                e.paced += st.paced;
                e.timed_out += st.timed_out;
                e.late_replies += st.late_replies;
            }
            for g in &s.groups {
                e.group_commits += g().shared;
            }
            for c in &s.senders {
                e.send_batches += c.posts().1;
            }
            e
        })
    }

    /// Tenants whose pause is open while the provider takes them again:
    /// what an operator who fixed the cause resumes.
    pub fn resumable(&self) -> Vec<TenantId> {
        self.with(|s| {
            if s.sender_blocked.is_some() {
                return Vec::new();
            }
            let open: BTreeSet<TenantId> = s
                .pauses
                .iter()
                .filter(|p| p.until_ms.is_none())
                .map(|p| p.tenant.clone())
                .collect();
            open.into_iter().collect()
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.0.lock().expect("shared lock"))
    }

    /// Appends a line to the trace, stamped with simulated time.
    pub fn log(&self, line: impl AsRef<str>) {
        let at = sim_ms();
        self.with(|s| s.trace.push(format!("{at:>7}ms {}", line.as_ref())));
    }

    /// Appends a line stamped with a time the driver supplies.
    pub fn log_at(&self, at_ms: u64, line: impl AsRef<str>) {
        self.with(|s| s.trace.push(format!("{at_ms:>7}ms {}", line.as_ref())));
    }

    /// The trace so far.
    pub fn trace(&self) -> Vec<String> {
        self.with(|s| s.trace.clone())
    }

    /// Records a message reaching the provider.
    /// Answers which call for `key` this is (0 for the first): the
    /// provider gives each call it takes its own message id.
    pub fn provider_called(&self, key: DeliveryKey) -> u32 {
        let at_ms = sim_ms();
        self.with(|s| {
            s.calls.push(ProviderCall { key, at_ms });
            s.in_provider.insert(key);
            let n = s.calls_per_key.entry(key).or_insert(0);
            *n += 1;
            *n - 1
        })
    }

    /// How many calls for `key` the provider has taken.
    pub fn calls_of(&self, key: DeliveryKey) -> u32 {
        self.with(|s| s.calls_per_key.get(&key).copied().unwrap_or(0))
    }

    /// The provider's reply for `key` left it.
    pub fn provider_replied(&self, key: DeliveryKey) {
        self.with(|s| s.in_provider.remove(&key));
    }

    /// Every provider call so far, in order.
    pub fn calls(&self) -> Vec<ProviderCall> {
        self.with(|s| s.calls.clone())
    }

    /// A key's outcome became unknowable for a reason the simulation
    /// caused; an `unknown` for it is then allowed.
    pub fn note_ambiguous(&self, key: DeliveryKey, why: &'static str) {
        self.with(|s| {
            s.ambiguous.entry(key).or_insert(why);
        });
    }

    /// A `BeginDelivery` for `key` is on its way to the db (`true`) or
    /// has come back (`false`).
    pub fn begin_in_flight(&self, key: DeliveryKey, in_flight: bool) {
        self.with(|s| mark(&mut s.begins, key, in_flight));
    }

    /// Calls under way in the provider, and `sending` rows on their way to
    /// the db, when the engine crashed: their outcome is lost with it.
    pub fn engine_crashed(&self) {
        self.with(|s| {
            let mut keys: Vec<DeliveryKey> =
                std::mem::take(&mut s.in_provider).into_iter().collect();
            keys.extend(std::mem::take(&mut s.begins));
            s.engine_sending.clear();
            for k in keys {
                s.ambiguous.entry(k).or_insert("engine_crash");
            }
        });
    }

    /// Keys whose unknown outcome the simulation explains.
    pub fn ambiguous(&self) -> BTreeMap<DeliveryKey, &'static str> {
        self.with(|s| s.ambiguous.clone())
    }

    /// The db host's clock.
    pub fn db_now_ms(&self) -> u64 {
        let skew = self.with(|s| s.db_skew_ms);
        (BASE_MS + sim_ms()).saturating_add_signed(skew)
    }

    /// Sets the db clock's skew.
    pub fn set_db_skew_ms(&self, skew_ms: i64) {
        self.with(|s| s.db_skew_ms = skew_ms);
    }

    /// Turns the provider's reply loss on or off.
    pub fn set_lose_replies(&self, on: bool) {
        self.with(|s| s.lose_replies = on);
    }

    /// Whether the provider loses replies now.
    pub fn lose_replies(&self) -> bool {
        self.with(|s| s.lose_replies)
    }

    /// Makes the provider refuse the sender itself with `code` (`None`:
    /// accept again).
    pub fn set_sender_blocked(&self, code: Option<i64>) {
        self.with(|s| s.sender_blocked = code);
    }

    /// The code the provider refuses the sender with now, if any; counts
    /// the refusal.
    pub fn refuse_sender(&self) -> Option<i64> {
        self.with(|s| {
            if s.sender_blocked.is_some() {
                s.refusals += 1;
            }
            s.sender_blocked
        })
    }

    /// How many requests the provider refused for the sender.
    pub fn refusals(&self) -> u64 {
        self.with(|s| s.refusals)
    }

    /// Numbers the db host's ops in the order it applies them.
    pub fn next_db_op(&self) -> u64 {
        self.with(|s| {
            s.db_ops += 1;
            s.db_ops
        })
    }

    /// The store let a send begin, at `at_ms` in its clock.
    pub fn note_begun(&self, key: DeliveryKey, at_ms: u64, probe: bool) {
        self.with(|s| s.begun.push(BegunSend { key, at_ms, probe }));
    }

    /// The store recorded a pause of `tenant`.
    pub fn note_paused(&self, tenant: TenantId, at_ms: u64, reason: String) {
        self.with(|s| {
            s.pauses.push(PauseWindow {
                tenant,
                from_ms: at_ms,
                until_ms: None,
                reason,
            })
        });
    }

    /// The store ended `tenant`'s pause.
    pub fn note_resumed(&self, tenant: &TenantId, at_ms: u64) {
        self.with(|s| {
            for p in s.pauses.iter_mut().filter(|p| p.tenant == *tenant) {
                p.until_ms.get_or_insert(at_ms);
            }
        });
    }

    /// Sends begun and pauses recorded, for the checker.
    pub fn begun_and_pauses(&self) -> (Vec<BegunSend>, Vec<PauseWindow>) {
        self.with(|s| (s.begun.clone(), s.pauses.clone()))
    }

    /// Pauses `host` until `until_ms` (simulated).
    pub fn pause(&self, host: &str, until_ms: u64) {
        self.with(|s| {
            s.paused_until_ms.insert(host.to_string(), until_ms);
        });
    }

    /// Until when `host` is paused, if it is.
    pub fn paused_until(&self, host: &str) -> Option<u64> {
        let now = sim_ms();
        self.with(|s| s.paused_until_ms.get(host).copied().filter(|t| *t > now))
    }

    /// Notes that a fault of this kind had an effect.
    pub fn fired(&self, kind: &'static str) {
        self.with(|s| {
            s.fired.insert(kind);
        });
    }

    /// Fault kinds that had an effect.
    pub fn fired_kinds(&self) -> BTreeSet<&'static str> {
        self.with(|s| s.fired.clone())
    }

    /// Counts a (re)start of `host`, returning how many came before.
    pub fn started(&self, host: &str) -> u64 {
        self.with(|s| {
            let n = s.restarts.entry(host.to_string()).or_default();
            *n += 1;
            *n - 1
        })
    }
}
