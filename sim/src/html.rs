//! The race, drawn: one seed's marks as a self-contained HTML page, hosts
//! as lanes and time flowing down, with a plain-words account of what
//! happened at the top. A second delivery of a run step is red; a send or
//! write the new design's guards stopped is drawn where they stopped it.
//!
//! The page is plain HTML and CSS: no script, nothing fetched. Every text
//! that came from the simulation (message bodies, ids, reports) is
//! escaped. The same marks give the same bytes.

use crate::marks::{Mark, MarkKind, CLIENT_LANE, PROVIDER_LANE};
use crate::world::Mode;
use crate::SeedResult;
use oncesend_core::{DeliveryKey, RunId};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// At most this many rows in the full timeline; a seed with more says so.
/// At about 250 bytes a row, with the close-up's, a page stays under
/// 300 KB at worst.
pub const MAX_ROWS: usize = 900;
/// At most this many rows in the close-up (a step retried hundreds of
/// times, with the guards off, would otherwise fill it).
pub const MAX_CLOSE_UP: usize = 120;
/// A pause this long between two marks gets a divider saying so.
const GAP_MS: u64 = 200;

/// What one page shows.
#[derive(Debug, Clone)]
pub struct Page<'a> {
    /// The seed.
    pub seed: u64,
    /// Which system ran.
    pub mode: Mode,
    /// What happened, in the order it happened.
    pub marks: &'a [Mark],
    /// The checker's duplicate keys and how often each reached the provider.
    pub duplicates: &'a [(DeliveryKey, u32)],
    /// The checker's report, when the seed broke an invariant.
    pub failure: Option<String>,
    /// The command that draws this page again.
    pub replay: String,
}

impl<'a> Page<'a> {
    /// The page of a seed run with marks kept.
    pub fn of(r: &'a SeedResult, mode: Mode, replay: String) -> Self {
        Self {
            seed: r.seed,
            mode,
            marks: &r.marks,
            duplicates: &r.report.duplicates,
            failure: (!r.ok()).then(|| r.report.to_string()),
            replay,
        }
    }
}

/// Escapes text for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Short names for runs ("run 4"), numbered in the order they first appear:
/// a run id is a UUID nobody can tell apart at a glance.
struct Names(BTreeMap<RunId, usize>);

impl Names {
    fn of(marks: &[&Mark]) -> Self {
        let mut names = BTreeMap::new();
        for k in marks.iter().flat_map(|m| &m.keys) {
            let next = names.len() + 1;
            names.entry(k.run).or_insert(next);
        }
        Self(names)
    }

    fn key(&self, k: &DeliveryKey) -> String {
        match self.0.get(&k.run) {
            Some(n) => format!("run {n} step {}", k.step),
            None => format!("{k}"),
        }
    }
}

/// The order lanes stand in, left to right: who triggers, who processes,
/// what the recipient got.
fn lane_rank(lane: &str) -> u8 {
    if lane == CLIENT_LANE {
        0
    } else if lane == "engine" || lane == "[Message Queue]" {
        1
    } else if lane.starts_with("worker") || lane == "[Queue Worker]" {
        2
    } else if lane == PROVIDER_LANE {
        5
    } else if lane == "db" {
        4
    } else {
        3
    }
}

/// What a lane is, under its name.
fn lane_note(lane: &str) -> &'static str {
    match lane {
        CLIENT_LANE => "triggers runs",
        "[Message Queue]" => "poller inside the old engine",
        "[Queue Worker]" => "standalone PM2 worker",
        "engine" => "API, ledger and its own worker",
        "db" => "its own faults",
        PROVIDER_LANE => "what the recipient got",
        l if l.starts_with("worker") => "standalone worker",
        _ => "",
    }
}

/// How each mark is drawn: its CSS classes and its tag.
fn look(m: &Mark, dup_keys: &BTreeSet<DeliveryKey>) -> (&'static str, &'static str) {
    match m.kind {
        MarkKind::Read => ("m read", "READ"),
        MarkKind::Claim => ("m claim", "CLAIM"),
        MarkKind::Write => ("m write", "WRITE"),
        MarkKind::Send => ("m send", "SEND"),
        MarkKind::Deliver { call } if call > 0 && m.keys.iter().any(|k| dup_keys.contains(k)) => {
            ("m deliver dup", "DUPLICATE")
        }
        MarkKind::Deliver { call } if call > 0 => ("m deliver again", "SENT AGAIN"),
        MarkKind::Deliver { .. } => ("m deliver", "DELIVERED"),
        MarkKind::Fenced => ("m fenced stop", "FENCED"),
        MarkKind::Replay => ("m replay stop", "LEDGER"),
        MarkKind::Fault => ("m fault", "FAULT"),
    }
}

fn ordinal(n: u32) -> String {
    match n {
        1 => "1st".into(),
        2 => "2nd".into(),
        3 => "3rd".into(),
        n => format!("{n}th"),
    }
}

/// Everything the page says, worked out once from the marks.
struct Story<'a> {
    marks: Vec<&'a Mark>,
    names: Names,
    lanes: Vec<&'a str>,
    dup_keys: BTreeSet<DeliveryKey>,
    /// The run step the close-up follows: the first one delivered twice,
    /// or else the first one a guard stopped.
    focus: Option<DeliveryKey>,
    /// Which lane claimed each run at each epoch: a send the engine
    /// records carries the epoch of the claim it was made for.
    claimers: BTreeMap<(RunId, u64), &'a str>,
}

impl<'a> Story<'a> {
    fn of(page: &'a Page<'a>) -> Self {
        let mut marks: Vec<&Mark> = page.marks.iter().collect();
        // Stable: marks of one millisecond keep the order they happened in.
        marks.sort_by_key(|m| m.at_ms);
        let names = Names::of(&marks);
        let mut lanes: Vec<&str> = marks.iter().map(|m| m.lane.as_str()).collect();
        lanes.sort_by_key(|l| (lane_rank(l), *l));
        lanes.dedup();
        let dup_keys: BTreeSet<DeliveryKey> = page.duplicates.iter().map(|(k, _)| *k).collect();
        let first_dup = marks.iter().find_map(|m| match m.kind {
            MarkKind::Deliver { call } if call > 0 => {
                m.keys.iter().find(|k| dup_keys.contains(k)).copied()
            }
            _ => None,
        });
        // The stop that tells the race best: another processor had taken
        // or sent the step before, and what was stopped was a send.
        let mut best_stop = None;
        for (i, m) in marks.iter().enumerate().filter(|(_, m)| m.kind.stopped()) {
            let Some(key) = m.keys.first().copied() else {
                continue;
            };
            let raced = marks[..i].iter().any(|e| {
                e.lane != m.lane
                    && e.keys.contains(&key)
                    && matches!(e.kind, MarkKind::Claim | MarkKind::Send)
            });
            let a_send = m.kind == MarkKind::Replay || m.text.starts_with("send");
            let score = 2 * u8::from(raced) + u8::from(a_send);
            if best_stop.is_none_or(|(best, _)| score > best) {
                best_stop = Some((score, key));
            }
        }
        let first_stop = best_stop.map(|(_, key)| key);
        let claimers = marks
            .iter()
            .filter(|m| m.kind == MarkKind::Claim)
            .filter_map(|m| Some(((m.keys.first()?.run, m.epoch?), m.lane.as_str())))
            .collect();
        Self {
            marks,
            names,
            lanes,
            dup_keys,
            focus: first_dup.or(first_stop),
            claimers,
        }
    }

    /// The processor a send was made for, when another host made it (the
    /// engine sends for the workers): the lane that claimed its epoch.
    fn by(&self, m: &'a Mark) -> &'a str {
        let claimer = match (m.kind, m.keys.first(), m.epoch) {
            (MarkKind::Send | MarkKind::Replay, Some(k), Some(e)) => {
                self.claimers.get(&(k.run, e)).copied()
            }
            _ => None,
        };
        claimer.unwrap_or(&m.lane)
    }

    /// Who did a mark, in words: "worker-1 (through the engine)" for a
    /// send the engine recorded for a worker.
    fn who(&self, m: &'a Mark) -> String {
        match self.by(m) {
            by if by != m.lane => format!("{by} (through the {})", m.lane),
            _ => m.lane.clone(),
        }
    }

    fn touching(&self, key: DeliveryKey) -> impl Iterator<Item = &&'a Mark> + '_ {
        self.marks.iter().filter(move |m| m.keys.contains(&key))
    }

    /// The marks of `key`, and the faults that struck while they happened:
    /// often the reason a lease lapsed.
    fn close_up(&self, key: DeliveryKey) -> Vec<&'a Mark> {
        let touching: Vec<&Mark> = self.touching(key).copied().collect();
        let (Some(first), Some(last)) = (touching.first(), touching.last()) else {
            return Vec::new();
        };
        let (from, to) = (first.at_ms, last.at_ms);
        self.marks
            .iter()
            .filter(|m| {
                m.keys.contains(&key)
                    || (m.kind == MarkKind::Fault && (from..=to).contains(&m.at_ms))
            })
            .copied()
            .collect()
    }

    fn of_kind(&self, key: DeliveryKey, kind: fn(MarkKind) -> bool) -> Vec<&'a Mark> {
        self.touching(key)
            .filter(|m| kind(m.kind))
            .copied()
            .collect()
    }

    fn deliveries(&self) -> usize {
        self.marks
            .iter()
            .filter(|m| matches!(m.kind, MarkKind::Deliver { .. }))
            .count()
    }

    /// "X at t=1 ms and Y at t=2 ms".
    fn who_when(&self, marks: &[&'a Mark]) -> String {
        let parts: Vec<String> = marks
            .iter()
            .map(|m| format!("{} at t={} ms", self.who(m), m.at_ms))
            .collect();
        match parts.as_slice() {
            [] => String::new(),
            [one] => one.clone(),
            [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
        }
    }

    /// The account at the top, in plain words (not yet escaped).
    fn verdict(&self, page: &Page) -> Vec<String> {
        let mut said = Vec::new();
        let stops: Vec<&Mark> = self
            .marks
            .iter()
            .filter(|m| m.kind.stopped())
            .copied()
            .collect();
        match self.focus {
            Some(key) if self.dup_keys.contains(&key) => {
                let name = self.names.key(&key);
                let mut took: Vec<&Mark> =
                    self.of_kind(key, |k| matches!(k, MarkKind::Read | MarkKind::Claim));
                // The first read or claim of each processor that sent it
                // (itself, or through the engine).
                let senders: BTreeSet<&str> = self
                    .of_kind(key, |k| k == MarkKind::Send)
                    .iter()
                    .map(|m| self.by(m))
                    .collect();
                let mut seen = BTreeSet::new();
                took.retain(|m| senders.contains(m.lane.as_str()) && seen.insert(m.lane.clone()));
                let delivered = self.of_kind(key, |k| matches!(k, MarkKind::Deliver { .. }));
                // A delivery's text is "to RECIPIENT: BODY".
                let text = delivered.first().map_or("", |m| m.text.as_str());
                let (to, body) = text
                    .strip_prefix("to ")
                    .and_then(|t| t.split_once(": "))
                    .unwrap_or(("the recipient", text));
                let (verb, marked) = if took.iter().all(|m| m.kind == MarkKind::Read) {
                    ("read the same pending row", "marked it processing")
                } else {
                    ("took the same step", "recorded it sent")
                };
                if took.len() > 1 {
                    said.push(format!(
                        "{} processors {verb} ({name}): {}, before {} {marked}.",
                        match took.len() {
                            2 => "Two".to_string(),
                            3 => "Three".to_string(),
                            n => n.to_string(),
                        },
                        self.who_when(&took),
                        if took.len() == 2 { "either" } else { "any" }
                    ));
                }
                let times: Vec<String> = delivered
                    .iter()
                    .map(|m| format!("t={} ms", m.at_ms))
                    .collect();
                let count = match delivered.len() {
                    2 => "twice".to_string(),
                    n => format!("{n} times"),
                };
                said.push(format!(
                    "{} sent it: {to} got \u{201c}{body}\u{201d} {count} ({}).",
                    match senders.len() {
                        1 => "One processor".to_string(),
                        2 => "Both".to_string(),
                        n => format!("All {n}"),
                    },
                    times.join(" and ")
                ));
                said.push(format!(
                    "In all, {} of the {} messages delivered in this seed were one the recipient already had ({} run steps sent more than once).",
                    self.marks
                        .iter()
                        .filter(|m| matches!(m.kind, MarkKind::Deliver { call } if call > 0))
                        .count(),
                    self.deliveries(),
                    self.dup_keys.len()
                ));
            }
            Some(key) => {
                let stop = stops
                    .iter()
                    .find(|m| m.keys.first() == Some(&key))
                    .expect("the focus of a clean seed is a stopped mark");
                let name = self.names.key(&key);
                // What came before, the last few things at most.
                let at = self
                    .marks
                    .iter()
                    .position(|m| std::ptr::eq(*m, *stop))
                    .unwrap_or(0);
                let earlier: Vec<String> = self.marks[..at]
                    .iter()
                    .filter(|m| m.keys.contains(&key))
                    .filter_map(|m| match m.kind {
                        MarkKind::Claim => {
                            Some(format!("{} claimed it at t={} ms", self.who(m), m.at_ms))
                        }
                        MarkKind::Send => {
                            Some(format!("{} sent it at t={} ms", self.who(m), m.at_ms))
                        }
                        MarkKind::Deliver { .. } => {
                            Some(format!("the recipient got it at t={} ms", m.at_ms))
                        }
                        _ => None,
                    })
                    .collect();
                let earlier = &earlier[earlier.len().saturating_sub(4)..];
                let before = match earlier {
                    [] => String::new(),
                    [one] => format!(" Before that, {one}."),
                    [rest @ .., last] => format!(" Before that, {}, and {last}.", rest.join(", ")),
                };
                said.push(match stop.kind {
                    MarkKind::Fenced => format!(
                        "At t={} ms {} came back to {name} holding a lease that had lapsed, and the store fenced it off: what it asked changed nothing.{before}",
                        stop.at_ms,
                        self.who(stop)
                    ),
                    _ => format!(
                        "At t={} ms {} asked to send {name} again, and the ledger already held that send: the engine answered what it knew and called no provider.{before}",
                        stop.at_ms,
                        self.who(stop)
                    ),
                });
                let fenced = stops.iter().filter(|m| m.kind == MarkKind::Fenced).count();
                let ledger = stops.len() - fenced;
                let mut parts = Vec::new();
                if fenced > 0 {
                    parts.push(format!("{fenced} stale write(s) or send(s) by fencing"));
                }
                if ledger > 0 {
                    parts.push(format!("{ledger} second send(s) with the ledger"));
                }
                said.push(format!(
                    "Nothing was sent twice: {} message(s) delivered, each run step once. In this seed the guards stopped {}.",
                    self.deliveries(),
                    parts.join(" and ")
                ));
            }
            None => {
                said.push(format!(
                    "Every run step was taken by one processor at a time and delivered once ({} deliveries). No processor came at a step a second time in this seed, so no guard had to act.",
                    self.deliveries()
                ));
            }
        }
        if page.mode == Mode::Fixed && !self.dup_keys.is_empty() {
            said.push("This is the new design with a guard turned off or a bug planted: see the checker's report below.".into());
        }
        said
    }
}

/// One table of marks, lanes as columns. `focus` rows are highlighted.
fn table(out: &mut String, story: &Story, rows: &[&Mark], focus: Option<DeliveryKey>) {
    let _ = write!(out, "<table class=lanes><thead><tr><th class=t>time</th>");
    for lane in &story.lanes {
        let _ = write!(
            out,
            "<th>{}<small>{}</small></th>",
            escape(lane),
            escape(lane_note(lane))
        );
    }
    out.push_str("</tr></thead><tbody>\n");
    let mut last_ms = None;
    for m in rows {
        if let Some(last) = last_ms {
            if m.at_ms >= last + GAP_MS {
                let _ = writeln!(
                    out,
                    "<tr class=gap><td colspan={}>{} ms later</td></tr>",
                    story.lanes.len() + 1,
                    m.at_ms - last
                );
            }
        }
        last_ms = Some(m.at_ms);
        let here = focus.is_some_and(|k| m.keys.contains(&k));
        let _ = write!(
            out,
            "<tr{}><td class=t>{} ms</td>",
            if here { " class=focus" } else { "" },
            m.at_ms
        );
        for lane in &story.lanes {
            if *lane == m.lane {
                out.push_str("<td>");
                mark(out, story, m);
                out.push_str("</td>");
            } else {
                out.push_str("<td></td>");
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n");
}

/// One mark: its tag, the steps it touched, what happened.
fn mark(out: &mut String, story: &Story, m: &Mark) {
    let (class, tag) = look(m, &story.dup_keys);
    let keys: Vec<String> = m.keys.iter().map(|k| story.names.key(k)).collect();
    let full: Vec<String> = m.keys.iter().map(|k| k.to_string()).collect();
    let by = story.by(m);
    let for_whom = if by != m.lane {
        format!(" for {by}")
    } else {
        String::new()
    };
    let nth = match m.kind {
        MarkKind::Deliver { call } if call > 0 => format!(" ({} time)", ordinal(call + 1)),
        _ => String::new(),
    };
    if keys.is_empty() {
        let _ = write!(
            out,
            "<div class=\"{class}\"><b>{tag}</b> <span>{}</span></div>",
            escape(&m.text)
        );
    } else {
        let _ = write!(
            out,
            "<div class=\"{class}\" data-key=\"{}\" title=\"{}\"><b>{tag}</b> {}{nth}{} <span>{}</span></div>",
            escape(&keys.join(" ")),
            escape(&full.join(" ")),
            escape(&keys.join(", ")),
            escape(&for_whom),
            escape(&m.text)
        );
    }
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 8px}h2{font-size:16px;margin:22px 0 6px}
.verdict{border-left:6px solid #888;padding:6px 12px;background:#f6f6f6;max-width:1100px}
.verdict.bad{border-color:#c00;background:#fff0f0}.verdict.good{border-color:#087;background:#effaf6}
.verdict p{margin:4px 0}
.legend{display:flex;flex-wrap:wrap;gap:6px;margin:10px 0;padding:0}
.legend li{list-style:none}
pre{background:#fff4f4;border:1px solid #e99;padding:8px;white-space:pre-wrap;max-width:1100px}
table.lanes{border-collapse:collapse;width:100%;table-layout:fixed;font-size:12px}
.lanes th{position:sticky;top:0;background:#fff;border-bottom:2px solid #444;text-align:left;padding:4px 6px}
.lanes th small{display:block;font-weight:normal;color:#666}
.lanes th.t,.lanes td.t{width:72px;color:#555;text-align:right;padding-right:8px;white-space:nowrap}
.lanes td{border-left:2px solid #ddd;padding:1px 6px;vertical-align:top}
.lanes td.t{border-left:0}
.lanes tr.focus td{background:#fff8d8}
.lanes tr.gap td{text-align:center;color:#999;font-style:italic;border-left:0;padding:3px}
.m{border-radius:4px;padding:1px 5px;border:1px solid;display:inline-block;max-width:100%;box-sizing:border-box}
.m b{font-size:10px;letter-spacing:.03em;margin-right:3px}.m span{color:#444}
.read{background:#e8f0ff;border-color:#79b}.claim{background:#f1e8ff;border-color:#97c}
.write{background:#f3f3f3;border-color:#bbb}.send{background:#fff2e0;border-color:#d93}
.deliver{background:#e6f7e6;border-color:#5a5}.again{background:#fffbe0;border-color:#cb4}
.dup{background:#d00;border-color:#900;color:#fff;font-weight:bold}.dup span{color:#fff}
.stop{background:#dff5f0;border-color:#087;border-width:2px}.stop b{color:#065}
.fault{background:#fff;border-color:#a60;border-style:dashed;color:#840}
.note{color:#555;font-size:12px}
";

/// Each kind of mark as the legend explains it: class, tag, words.
const LEGEND: [(&str, &str, &str); 10] = [
    ("m read", "READ", "rows read to send"),
    ("m claim", "CLAIM", "lease taken, epoch bumped"),
    ("m write", "WRITE", "a write that went through"),
    ("m send", "SEND", "handed to the provider"),
    ("m deliver", "DELIVERED", "the recipient got it"),
    ("m deliver dup", "DUPLICATE", "the recipient got it again"),
    (
        "m deliver again",
        "SENT AGAIN",
        "after the provider said it failed",
    ),
    ("m fenced stop", "FENCED", "stale lease: refused"),
    ("m replay stop", "LEDGER", "already sent: not sent again"),
    ("m fault", "FAULT", "injected by the simulation"),
];

/// The page, as bytes to write to a file.
pub fn render(page: &Page) -> String {
    let story = Story::of(page);
    let mut out = String::with_capacity(64 * 1024 + story.marks.len().min(MAX_ROWS) * 300);
    let (system, title) = match page.mode {
        Mode::Legacy => (
            "the old system",
            "two processors polling one table of pending rows",
        ),
        Mode::Fixed => ("oncesend", "fenced claims and an idempotency ledger"),
    };
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>The race, seed {}: {}</title><style>{STYLE}</style></head><body>\n",
        page.seed,
        escape(system)
    );
    let _ = writeln!(
        out,
        "<h1>Seed {}: {} ({})</h1>",
        page.seed,
        escape(system),
        escape(title)
    );
    let bad = !story.dup_keys.is_empty() || page.failure.is_some();
    let class = if bad {
        "bad"
    } else if story.focus.is_some() {
        "good"
    } else {
        ""
    };
    let _ = write!(out, "<div class=\"verdict {class}\">");
    for line in story.verdict(page) {
        let _ = write!(out, "<p>{}</p>", escape(&line));
    }
    out.push_str("</div>\n");
    // The legend names only what this page shows.
    let shown: BTreeSet<&str> = story
        .marks
        .iter()
        .map(|m| look(m, &story.dup_keys).0)
        .collect();
    out.push_str("<ul class=legend>");
    for (class, tag, words) in LEGEND {
        if shown.contains(class) {
            let _ = write!(
                out,
                "<li><span class=\"{class}\"><b>{tag}</b> {words}</span></li>"
            );
        }
    }
    out.push_str("</ul>\n<p class=note>Time is simulated, in ms since the simulation began, and flows down; each host is a column. Hover a mark for its full run id.</p>\n");
    if let Some(key) = story.focus {
        let rows = story.close_up(key);
        let _ = writeln!(
            out,
            "<h2>Up close: every mark of {}</h2>",
            escape(&story.names.key(&key))
        );
        table(
            &mut out,
            &story,
            &rows[..rows.len().min(MAX_CLOSE_UP)],
            None,
        );
        if rows.len() > MAX_CLOSE_UP {
            let _ = writeln!(
                out,
                "<p class=note>The close-up stops at the first {MAX_CLOSE_UP} of {} marks of this step.</p>",
                rows.len()
            );
        }
    }
    if let Some(report) = &page.failure {
        let _ = writeln!(
            out,
            "<h2>The checker's report: this seed broke an invariant</h2><pre>{}</pre>",
            escape(report)
        );
    }
    let shown = story.marks.len().min(MAX_ROWS);
    let _ = writeln!(
        out,
        "<h2>Everything, in order ({} marks{})</h2>",
        story.marks.len(),
        if story.focus.is_some() {
            "; the close-up's rows are yellow"
        } else {
            ""
        }
    );
    table(&mut out, &story, &story.marks[..shown], story.focus);
    if shown < story.marks.len() {
        let _ = writeln!(
            out,
            "<p class=note>The page stops at the first {shown} of {} marks to stay small; the close-up above shows the step that matters.</p>",
            story.marks.len()
        );
    }
    out.push_str("<details class=note><summary>Run ids (the checker's report names runs by these)</summary><ul>");
    let mut runs: Vec<(&usize, &RunId)> = story.names.0.iter().map(|(r, n)| (n, r)).collect();
    runs.sort();
    for (n, run) in runs {
        let _ = write!(out, "<li>run {n}: {}</li>", escape(&run.to_string()));
    }
    out.push_str("</ul></details>\n");
    let _ = writeln!(
        out,
        "<p class=note>Draw this page again: <code>{}</code></p>\n</body></html>",
        escape(&page.replay)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64, step: u32) -> DeliveryKey {
        DeliveryKey {
            run: RunId::new(1_767_225_600_000 + n, n),
            step,
        }
    }

    fn m(at_ms: u64, lane: &str, kind: MarkKind, keys: Vec<DeliveryKey>, text: &str) -> Mark {
        Mark {
            at_ms,
            lane: lane.into(),
            epoch: None,
            kind,
            keys,
            text: text.into(),
        }
    }

    fn page<'a>(mode: Mode, marks: &'a [Mark], dups: &'a [(DeliveryKey, u32)]) -> Page<'a> {
        Page {
            seed: 7,
            mode,
            marks,
            duplicates: dups,
            failure: None,
            replay: "oncesend-sim --seed 7".into(),
        }
    }

    /// The old race by hand: two processors read run 1's step 0 before
    /// either marks it, and both send it.
    fn race() -> Vec<Mark> {
        let (a, b) = (key(1, 0), key(2, 0));
        vec![
            m(0, "client", MarkKind::Write, vec![a], "webhook"),
            m(10, "[Message Queue]", MarkKind::Read, vec![a, b], "read 2"),
            m(12, "[Queue Worker]", MarkKind::Read, vec![a], "read 1"),
            m(13, "[Message Queue]", MarkKind::Send, vec![a], "sends"),
            m(14, "[Queue Worker]", MarkKind::Send, vec![a], "sends"),
            m(
                15,
                PROVIDER_LANE,
                MarkKind::Deliver { call: 0 },
                vec![a],
                "to +551: <script>alert(1)</script>",
            ),
            m(
                16,
                PROVIDER_LANE,
                MarkKind::Deliver { call: 1 },
                vec![a],
                "to +551: hi",
            ),
            m(
                900,
                PROVIDER_LANE,
                MarkKind::Deliver { call: 0 },
                vec![b],
                "to +552: hi",
            ),
        ]
    }

    #[test]
    fn a_second_delivery_the_checker_counts_is_red_and_told_in_words() {
        let marks = race();
        let dups = [(key(1, 0), 2)];
        let html = render(&page(Mode::Legacy, &marks, &dups));
        // Once in the close-up, once in the full timeline, once in the legend.
        assert_eq!(html.matches("class=\"m deliver dup\"").count(), 3, "{html}");
        assert!(html.contains("data-key=\"run 1 step 0\""), "{html}");
        assert!(html.contains(
            "Two processors read the same pending row (run 1 step 0): [Message Queue] at t=10 ms and [Queue Worker] at t=12 ms, before either marked it processing."
        ), "{html}");
        assert!(html.contains("Both sent it: +551 got \u{201c}&lt;script&gt;alert(1)&lt;/script&gt;\u{201d} twice (t=15 ms and t=16 ms)."), "{html}");
        // Lanes stand client, processors, provider; a long pause is marked.
        let client = html.find("<th>client").expect("client lane");
        let queue = html.find("<th>[Message Queue]").expect("queue lane");
        let provider = html.find("<th>WhatsApp").expect("provider lane");
        assert!(client < queue && queue < provider);
        assert!(html.contains("884 ms later"), "{html}");
    }

    #[test]
    fn a_duplicate_sent_through_the_engine_is_told_by_the_workers_that_sent_it() {
        // The new design with both guards off: two workers claim one step
        // and the engine sends it for each.
        let a = key(1, 0);
        let at = |epoch: u64, mark: Mark| Mark {
            epoch: Some(epoch),
            ..mark
        };
        let marks = vec![
            at(1, m(5, "worker-1", MarkKind::Claim, vec![a], "epoch 1")),
            at(2, m(6, "worker-2", MarkKind::Claim, vec![a], "epoch 2")),
            at(1, m(7, "engine", MarkKind::Send, vec![a], "sending")),
            at(2, m(8, "engine", MarkKind::Send, vec![a], "sending")),
            m(
                9,
                PROVIDER_LANE,
                MarkKind::Deliver { call: 0 },
                vec![a],
                "to +551: hi",
            ),
            m(
                10,
                PROVIDER_LANE,
                MarkKind::Deliver { call: 1 },
                vec![a],
                "to +551: hi",
            ),
        ];
        let dups = [(a, 2)];
        let html = render(&page(Mode::Fixed, &marks, &dups));
        assert!(
            html.contains(
                "Two processors took the same step (run 1 step 0): worker-1 at t=5 ms and worker-2 at t=6 ms, before either recorded it sent."
            ),
            "{html}"
        );
        assert!(html.contains("Both sent it: +551 got"), "{html}");
        assert!(
            html.contains("a guard turned off or a bug planted"),
            "{html}"
        );
    }

    #[test]
    fn a_second_delivery_the_checker_allows_is_not_a_duplicate() {
        let marks = race();
        let html = render(&page(Mode::Fixed, &marks, &[]));
        assert_eq!(html.matches("class=\"m deliver dup\"").count(), 0, "{html}");
        assert!(html.contains("class=\"m deliver again\""));
    }

    #[test]
    fn a_stopped_send_is_the_close_up_of_a_clean_seed() {
        let a = key(1, 0);
        let at = |epoch: u64, mark: Mark| Mark {
            epoch: Some(epoch),
            ..mark
        };
        let marks = vec![
            at(1, m(5, "worker-0", MarkKind::Claim, vec![a], "epoch 1")),
            at(1, m(6, "engine", MarkKind::Send, vec![a], "sending")),
            m(
                7,
                PROVIDER_LANE,
                MarkKind::Deliver { call: 0 },
                vec![a],
                "to +551: hi",
            ),
            at(2, m(2_500, "worker-1", MarkKind::Claim, vec![a], "epoch 2")),
            at(
                2,
                m(2_501, "engine", MarkKind::Replay, vec![a], "held sent"),
            ),
            m(
                2_600,
                "worker-0",
                MarkKind::Fenced,
                vec![a],
                "write refused",
            ),
            // Why worker-0's lease lapsed, and a fault after it all.
            m(1_000, "worker-0", MarkKind::Fault, vec![], "paused"),
            m(3_000, "db", MarkKind::Fault, vec![], "clock off"),
        ];
        let html = render(&page(Mode::Fixed, &marks, &[]));
        assert!(html.contains("<div class=\"verdict good\">"), "{html}");
        assert!(
            html.contains(
                "At t=2501 ms worker-1 (through the engine) asked to send run 1 step 0 again, and the ledger already held that send"
            ),
            "{html}"
        );
        assert!(
            html.contains(
                "Before that, worker-0 claimed it at t=5 ms, worker-0 (through the engine) sent it at t=6 ms, the recipient got it at t=7 ms, and worker-1 claimed it at t=2500 ms."
            ),
            "{html}"
        );
        assert!(
            html.contains(
                "stopped 1 stale write(s) or send(s) by fencing and 1 second send(s) with the ledger"
            ),
            "{html}"
        );
        assert_eq!(html.matches("class=\"m replay stop\"").count(), 3);
        // The close-up shows the fault that struck between the step's
        // marks, not the one after them: legend, close-up, timeline twice.
        assert_eq!(html.matches("class=\"m fault\"").count(), 4, "{html}");
        assert!(!html.contains("class=\"m deliver dup\" data-key"));
    }

    #[test]
    fn text_from_the_simulation_is_shown_as_text() {
        let marks = race();
        let mut p = page(Mode::Legacy, &marks, &[]);
        p.failure = Some("duplicates=1 <b>".into());
        let html = render(&p);
        assert!(!html.contains("<script"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("duplicates=1 &lt;b&gt;"));
        assert_eq!(escape("a\"b'c&"), "a&quot;b&#39;c&amp;");
    }

    #[test]
    fn a_seed_with_too_many_marks_says_where_the_page_stops() {
        let a = key(1, 0);
        let marks: Vec<Mark> = (0..MAX_ROWS as u64 + 5)
            .map(|t| m(t, "engine", MarkKind::Write, vec![a], "w"))
            .collect();
        let html = render(&page(Mode::Fixed, &marks, &[]));
        assert!(html.contains(&format!(
            "stops at the first {MAX_ROWS} of {} marks",
            MAX_ROWS + 5
        )));
        assert_eq!(html.matches("<tr><td class=t>").count(), MAX_ROWS);
    }
}
