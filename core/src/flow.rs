//! Flows and the planning of a run: a flow's templates are rendered once,
//! when the run is triggered, so a run carries its exact messages and an
//! edit to the flow never changes a run already accepted.

use crate::ids::{FlowId, RunId, TenantId};
use crate::limits::{MAX_DELAY_MS, MAX_STEPS, MAX_TRIGGER_KEY_BYTES, MAX_VARS, MAX_VAR_BYTES};
use crate::message::{Message, MessageError, MessageTemplate};
use crate::recipient::Recipient;
use crate::store::{After, NewRun, PlannedStep};
use crate::template::{Template, TemplateError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a step sends: a text (the `{"text": …}` shorthand) or any Cloud
/// API message object (`{"message": {…}}`), its strings `{{var}}` templates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepMessage {
    /// A text message.
    Text(Template),
    /// A message object.
    Message(MessageTemplate),
}

/// One step of a flow: a message and how long to wait before it. It reads
/// and writes as the JSON a flow is put with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawFlowStep", into = "RawFlowStep")]
pub struct FlowStep {
    /// The message.
    pub send: StepMessage,
    /// Delay before this step is sent, counted from the previous step (or
    /// from the trigger, for the first step; with `after`, from when the
    /// previous step reached it).
    pub delay_ms: u64,
    /// Not sent before the previous step's status reaches this.
    pub after: After,
    /// The longest it waits for `after`; then it goes anyway.
    pub after_timeout_ms: Option<u64>,
}

/// Longest a step may wait for the previous step's status: one day.
pub const MAX_AFTER_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;

/// A step as JSON, before it is checked: exactly one of `text` and
/// `message`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlowStep {
    /// The text shorthand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// A Cloud API message object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<serde_json::Value>,
    /// Delay before the step, in ms.
    #[serde(default)]
    pub delay_ms: u64,
    /// `sent` (default), `delivered` or `read`.
    #[serde(default, skip_serializing_if = "After::is_sent")]
    pub after: After,
    /// How long to wait for `after` at most, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_timeout_ms: Option<u64>,
}

/// What is wrong with one step, at a path inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    /// The path inside the step (`text`, `message.image.link`; empty for
    /// the step itself).
    pub path: String,
    /// What is wrong and what to do.
    pub problem: String,
}

impl StepError {
    fn text(e: TemplateError) -> Self {
        Self {
            path: "text".into(),
            problem: e.to_string(),
        }
    }

    fn message(e: MessageError) -> Self {
        Self {
            path: if e.path.is_empty() {
                "message".into()
            } else {
                format!("message.{}", e.path)
            },
            problem: e.problem,
        }
    }
}

impl FlowStep {
    /// A text step.
    pub fn text(text: Template, delay_ms: u64) -> Self {
        Self {
            send: StepMessage::Text(text),
            delay_ms,
            after: After::Sent,
            after_timeout_ms: None,
        }
    }

    /// Checks a step as written.
    pub fn from_raw(raw: RawFlowStep) -> Result<Self, StepError> {
        let send = match (raw.text, raw.message) {
            (Some(_), Some(_)) => {
                return Err(StepError {
                    path: String::new(),
                    problem: "a step has exactly one of \"text\" or \"message\", not both".into(),
                })
            }
            (None, None) => {
                return Err(StepError {
                    path: String::new(),
                    problem: "a step needs \"text\" (a text message) or \"message\" (a Cloud API message object)".into(),
                })
            }
            (Some(text), None) => {
                let t = Template::parse(&text).map_err(StepError::text)?;
                t.check_length().map_err(StepError::text)?;
                StepMessage::Text(t)
            }
            (None, Some(message)) => {
                StepMessage::Message(MessageTemplate::parse(message).map_err(StepError::message)?)
            }
        };
        if let Some(t) = raw.after_timeout_ms {
            if raw.after.is_sent() {
                return Err(StepError {
                    path: "after_timeout_ms".into(),
                    problem: "only a step with \"after\": \"delivered\" or \"read\" waits; drop after_timeout_ms or set after".into(),
                });
            }
            if t > MAX_AFTER_TIMEOUT_MS {
                return Err(StepError {
                    path: "after_timeout_ms".into(),
                    problem: format!("{t} is over the limit of {MAX_AFTER_TIMEOUT_MS} (one day)"),
                });
            }
        }
        Ok(Self {
            send,
            delay_ms: raw.delay_ms,
            after: raw.after,
            after_timeout_ms: raw.after_timeout_ms,
        })
    }

    /// The message type it sends: `text`, `template`, `image`, ….
    pub fn kind(&self) -> &str {
        match &self.send {
            StepMessage::Text(_) => "text",
            StepMessage::Message(m) => m.kind(),
        }
    }

    /// Renders the step's message for one trigger, checked in full.
    pub fn render(&self, vars: &BTreeMap<String, String>) -> Result<Message, StepError> {
        match &self.send {
            StepMessage::Text(t) => t.render(vars).map(Message::text).map_err(StepError::text),
            StepMessage::Message(m) => m.render(vars).map_err(StepError::message),
        }
    }
}

impl TryFrom<RawFlowStep> for FlowStep {
    type Error = String;
    fn try_from(raw: RawFlowStep) -> Result<Self, String> {
        Self::from_raw(raw).map_err(|e| format!("{}: {}", e.path, e.problem))
    }
}

impl From<FlowStep> for RawFlowStep {
    fn from(s: FlowStep) -> Self {
        let (text, message) = match s.send {
            StepMessage::Text(t) => (Some(String::from(t)), None),
            StepMessage::Message(m) => (None, Some(serde_json::Value::from(m))),
        };
        Self {
            text,
            message,
            delay_ms: s.delay_ms,
            after: s.after,
            after_timeout_ms: s.after_timeout_ms,
        }
    }
}

/// An ordered list of 1 to [`MAX_STEPS`] message steps. Built only by
/// [`Flow::new`] (or [`Flow::from_raw`]), and read from JSON through the
/// same checks, so a stored flow is always a valid one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "FlowParts")]
pub struct Flow {
    id: FlowId,
    steps: Vec<FlowStep>,
}

/// A flow as JSON, before [`Flow::new`] checks it.
#[derive(Deserialize)]
struct FlowParts {
    id: FlowId,
    steps: Vec<FlowStep>,
}

impl TryFrom<FlowParts> for Flow {
    type Error = PlanError;

    fn try_from(p: FlowParts) -> Result<Self, PlanError> {
        Flow::new(p.id, p.steps)
    }
}

/// Why a flow or a trigger was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A flow with no steps, or too many.
    #[error("a flow needs 1 to {MAX_STEPS} steps, got {0}")]
    StepCount(usize),
    /// A step delay beyond the limit.
    #[error("step {step}: delay_ms {delay_ms} is over the limit of {MAX_DELAY_MS} (30 days)")]
    Delay {
        /// The step's index.
        step: usize,
        /// The delay given.
        delay_ms: u64,
    },
    /// A step that is invalid as written, or could not be rendered.
    #[error("steps[{step}]{}: {problem}", dotted(.path))]
    Step {
        /// The step's index.
        step: usize,
        /// The JSON path inside the step.
        path: String,
        /// What went wrong.
        problem: String,
    },
    /// Too many variables, or one too long.
    #[error("vars: at most {MAX_VARS} variables of at most {MAX_VAR_BYTES} bytes each; {0}")]
    Vars(String),
    /// A trigger idempotency key that is empty or too long.
    #[error("Idempotency-Key must be 1 to {MAX_TRIGGER_KEY_BYTES} bytes")]
    TriggerKey,
}

/// `.path`, or nothing for an empty path.
fn dotted(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!(".{path}")
    }
}

impl PlanError {
    fn step(step: usize, e: StepError) -> Self {
        Self::Step {
            step,
            path: e.path,
            problem: e.problem,
        }
    }

    /// The JSON path of what is wrong, where there is one
    /// (`steps[2].message.image.link`).
    pub fn path(&self) -> Option<String> {
        match self {
            Self::Step { step, path, .. } if path.is_empty() => Some(format!("steps[{step}]")),
            Self::Step { step, path, .. } => Some(format!("steps[{step}].{path}")),
            Self::Delay { step, .. } => Some(format!("steps[{step}].delay_ms")),
            Self::StepCount(_) => Some("steps".into()),
            _ => None,
        }
    }
}

impl Flow {
    /// Checks steps as written, naming the step and path of the first
    /// thing wrong.
    pub fn from_raw(id: FlowId, steps: Vec<RawFlowStep>) -> Result<Self, PlanError> {
        if steps.is_empty() || steps.len() > MAX_STEPS {
            return Err(PlanError::StepCount(steps.len()));
        }
        let steps = steps
            .into_iter()
            .enumerate()
            .map(|(i, raw)| FlowStep::from_raw(raw).map_err(|e| PlanError::step(i, e)))
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(id, steps)
    }

    /// The flow's name.
    pub fn id(&self) -> &FlowId {
        &self.id
    }

    /// Its steps, in order.
    pub fn steps(&self) -> &[FlowStep] {
        &self.steps
    }

    /// Checks a flow's bounds.
    pub fn new(id: FlowId, steps: Vec<FlowStep>) -> Result<Self, PlanError> {
        if steps.is_empty() || steps.len() > MAX_STEPS {
            return Err(PlanError::StepCount(steps.len()));
        }
        for (step, s) in steps.iter().enumerate() {
            if s.delay_ms > MAX_DELAY_MS {
                return Err(PlanError::Delay {
                    step,
                    delay_ms: s.delay_ms,
                });
            }
            if step == 0 && !s.after.is_sent() {
                return Err(PlanError::step(
                    step,
                    StepError {
                        path: "after".into(),
                        problem: "the first step has no step before it to wait for".into(),
                    },
                ));
            }
            if let StepMessage::Text(t) = &s.send {
                t.check_length()
                    .map_err(|e| PlanError::step(step, StepError::text(e)))?;
            }
        }
        Ok(Self { id, steps })
    }
}

/// Everything a trigger carries, already validated at the edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// Whose run this is.
    pub tenant: TenantId,
    /// The recipient.
    pub to: Recipient,
    /// Template variables.
    pub vars: BTreeMap<String, String>,
    /// The caller's `Idempotency-Key`, if any.
    pub trigger_key: Option<String>,
}

/// Renders every step of `flow` for one trigger and returns the run to
/// enqueue. Fails, naming the step, if a variable is missing or a message
/// would be too long: the caller learns at trigger time, not mid-run.
pub fn plan_run(flow: &Flow, trigger: Trigger, id: RunId) -> Result<NewRun, PlanError> {
    if trigger.vars.len() > MAX_VARS {
        return Err(PlanError::Vars(format!("got {}", trigger.vars.len())));
    }
    if let Some((k, _)) = trigger.vars.iter().find(|(_, v)| v.len() > MAX_VAR_BYTES) {
        return Err(PlanError::Vars(format!("{k:?} is too long")));
    }
    if let Some(k) = &trigger.trigger_key {
        if k.is_empty() || k.len() > MAX_TRIGGER_KEY_BYTES {
            return Err(PlanError::TriggerKey);
        }
    }
    let steps = flow
        .steps
        .iter()
        .enumerate()
        .map(|(step, s)| {
            Ok(PlannedStep {
                message: s
                    .render(&trigger.vars)
                    .map_err(|e| PlanError::step(step, e))?,
                delay_ms: s.delay_ms,
                after: s.after,
                after_timeout_ms: s.after_timeout_ms,
            })
        })
        .collect::<Result<Vec<_>, PlanError>>()?;
    Ok(NewRun {
        id,
        tenant: trigger.tenant,
        flow: flow.id.clone(),
        to: trigger.to,
        steps,
        trigger_key: trigger.trigger_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(t: &str, delay_ms: u64) -> FlowStep {
        FlowStep::text(Template::parse(t).unwrap(), delay_ms)
    }

    fn trigger(vars: &[(&str, &str)]) -> Trigger {
        Trigger {
            tenant: TenantId::default_tenant(),
            to: Recipient::parse("+5511913390707").unwrap(),
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            trigger_key: None,
        }
    }

    #[test]
    fn flows_are_bounded() {
        let id = FlowId::new("f").unwrap();
        assert_eq!(
            Flow::new(id.clone(), vec![]).unwrap_err(),
            PlanError::StepCount(0)
        );
        assert!(Flow::new(id.clone(), vec![step("a", 0); 51]).is_err());
        assert!(Flow::new(id.clone(), vec![step("a", 0); 50]).is_ok());
        assert!(matches!(
            Flow::new(id, vec![step("a", MAX_DELAY_MS + 1)]),
            Err(PlanError::Delay { step: 0, .. })
        ));
    }

    #[test]
    fn a_text_too_long_for_any_message_is_refused_when_the_flow_is_put() {
        let id = FlowId::new("f").unwrap();
        let e = Flow::new(id.clone(), vec![step("ok", 0), step(&"a".repeat(5000), 0)]).unwrap_err();
        assert_eq!(e.path().as_deref(), Some("steps[1].text"));
        assert!(
            e.to_string()
                .starts_with("steps[1].text: text is 5000 characters"),
            "{e}"
        );
        assert!(Flow::new(id, vec![step(&"a".repeat(4096), 0)]).is_ok());
    }

    #[test]
    fn plan_renders_every_step_or_names_the_failing_one() {
        let flow = Flow::new(
            FlowId::new("welcome").unwrap(),
            vec![step("Hi {{name}}", 0), step("Code {{code}}", 5_000)],
        )
        .unwrap();
        let run = plan_run(
            &flow,
            trigger(&[("name", "Ana"), ("code", "42")]),
            RunId::new(1, 1),
        )
        .unwrap();
        assert_eq!(run.steps[0].message, Message::text("Hi Ana"));
        assert_eq!(run.steps[1].message.text_body(), Some("Code 42"));
        assert_eq!(run.steps[1].delay_ms, 5_000);

        let e = plan_run(&flow, trigger(&[("name", "Ana")]), RunId::new(1, 1)).unwrap_err();
        assert_eq!(
            e,
            PlanError::Step {
                step: 1,
                path: "text".into(),
                problem: TemplateError::MissingVar {
                    name: "code".into()
                }
                .to_string()
            }
        );
        assert!(e
            .to_string()
            .contains("steps[1].text: missing template var \"code\""));
    }

    #[test]
    fn flow_json_rejects_unknown_step_fields() {
        let ok: Result<FlowStep, _> = serde_json::from_str(r#"{"text":"Hi","delay_ms":5}"#);
        assert!(ok.is_ok());
        let bad: Result<FlowStep, _> = serde_json::from_str(r#"{"text":"Hi","dealy_ms":5}"#);
        assert!(bad.is_err());
    }

    fn raw(v: serde_json::Value) -> RawFlowStep {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn message_steps_are_checked_and_named_by_step_and_path() {
        let id = FlowId::new("f").unwrap();
        let ok = raw(serde_json::json!({"text": "Hi"}));
        let e = Flow::from_raw(
            id.clone(),
            vec![ok.clone(), ok.clone(), raw(serde_json::json!({"message": {"type": "image", "image": {"link": "http://x/a.png"}}}))],
        )
        .unwrap_err();
        assert_eq!(e.path().as_deref(), Some("steps[2].message.image.link"));
        assert!(
            e.to_string().starts_with(
                "steps[2].message.image.link: \"http://x/a.png\" must be an https:// URL"
            ),
            "{e}"
        );
        let both = raw(
            serde_json::json!({"text": "a", "message": {"type": "text", "text": {"body": "a"}}}),
        );
        let e = Flow::from_raw(id.clone(), vec![both]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("steps[0]: a step has exactly one of"),
            "{e}"
        );
        let neither = raw(serde_json::json!({"delay_ms": 5}));
        assert!(Flow::from_raw(id.clone(), vec![neither]).is_err());
        let e = Flow::from_raw(
            id.clone(),
            vec![raw(serde_json::json!({"message": {"type": "fax"}}))],
        )
        .unwrap_err();
        assert_eq!(e.path().as_deref(), Some("steps[0].message.type"));
    }

    #[test]
    fn too_many_raw_steps_are_refused_before_any_step_is_read() {
        // A flow past the step limit is refused for its length, even when
        // one of its steps is also wrong: no work is spent on the steps of
        // a flow that cannot be stored anyway.
        let id = FlowId::new("f").unwrap();
        let mut steps = vec![raw(serde_json::json!({"delay_ms": 5}))];
        steps.extend(vec![raw(serde_json::json!({"text": "Hi"})); MAX_STEPS]);
        assert_eq!(
            Flow::from_raw(id.clone(), steps).unwrap_err(),
            PlanError::StepCount(MAX_STEPS + 1)
        );
        assert_eq!(
            Flow::from_raw(id, vec![]).unwrap_err(),
            PlanError::StepCount(0)
        );
    }

    #[test]
    fn a_template_step_renders_and_reads_back_as_written() {
        let id = FlowId::new("f").unwrap();
        let message = serde_json::json!({"type": "template", "template": {"name": "order_ready", "language": {"code": "pt_BR"},
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "{{name}}"}]}]}});
        let written = serde_json::json!([{"text": "Hi {{name}}", "delay_ms": 0}, {"message": message, "delay_ms": 60000}]);
        let steps: Vec<RawFlowStep> = serde_json::from_value(written.clone()).unwrap();
        let flow = Flow::from_raw(id, steps).unwrap();
        assert_eq!(flow.steps[1].kind(), "template");
        assert_eq!(serde_json::to_value(&flow.steps).unwrap(), written);
        let back: Vec<FlowStep> = serde_json::from_value(written).unwrap();
        assert_eq!(back, flow.steps);
        let run = plan_run(&flow, trigger(&[("name", "Ana")]), RunId::new(1, 1)).unwrap();
        assert_eq!(run.steps[1].message.template_name(), Some("order_ready"));
        assert_eq!(
            run.steps[1].message.as_object()["template"]["components"][0]["parameters"][0]["text"],
            "Ana"
        );
        // A var that breaks a limit is caught at trigger time, with its path.
        let flow = Flow::new(
            FlowId::new("g").unwrap(),
            vec![step("ok", 0), step("{{a}}{{a}}{{a}}{{a}}{{a}}", 0)],
        )
        .unwrap();
        let long = "x".repeat(1000);
        let e = plan_run(&flow, trigger(&[("a", &long)]), RunId::new(1, 1)).unwrap_err();
        assert_eq!(e.path().as_deref(), Some("steps[1].text"));
        assert!(e.to_string().contains("5000 characters"), "{e}");
    }

    #[test]
    fn every_limit_takes_its_bound_and_refuses_one_past_it() {
        assert_eq!(MAX_AFTER_TIMEOUT_MS, 86_400_000, "one day");
        let waiting = |t: u64| {
            raw(serde_json::json!({"text": "a", "after": "delivered", "after_timeout_ms": t}))
        };
        assert!(FlowStep::from_raw(waiting(MAX_AFTER_TIMEOUT_MS)).is_ok());
        let e = FlowStep::from_raw(waiting(MAX_AFTER_TIMEOUT_MS + 1)).unwrap_err();
        assert_eq!(e.path, "after_timeout_ms");

        let id = FlowId::new("f").unwrap();
        let raws = |n: usize| vec![raw(serde_json::json!({"text": "a"})); n];
        for (n, ok) in [
            (0, false),
            (1, true),
            (MAX_STEPS, true),
            (MAX_STEPS + 1, false),
        ] {
            let got = Flow::from_raw(id.clone(), raws(n));
            assert_eq!(got.is_ok(), ok, "{n} steps: {got:?}");
            if let Err(e) = got {
                assert_eq!(e, PlanError::StepCount(n));
                assert_eq!(e.path().as_deref(), Some("steps"));
            }
        }
        let e = Flow::new(id.clone(), vec![step("a", MAX_DELAY_MS + 1)]).unwrap_err();
        assert_eq!(e.path().as_deref(), Some("steps[0].delay_ms"));
        let e = PlanError::Step {
            step: 3,
            path: String::new(),
            problem: "no message".into(),
        };
        assert_eq!(e.path().as_deref(), Some("steps[3]"));

        let flow = Flow::new(id, vec![step("{{a}}", 0)]).unwrap();
        let plan = |vars: BTreeMap<String, String>, key: Option<String>| {
            let mut t = trigger(&[]);
            t.vars = vars;
            t.trigger_key = key;
            plan_run(&flow, t, RunId::new(1, 1))
        };
        let vars = |n: usize, len: usize| -> BTreeMap<String, String> {
            (0..n)
                .map(|i| {
                    (
                        if i == 0 {
                            "a".to_string()
                        } else {
                            format!("v{i}")
                        },
                        "x".repeat(len),
                    )
                })
                .collect()
        };
        assert!(plan(vars(MAX_VARS, 1), None).is_ok());
        assert!(matches!(
            plan(vars(MAX_VARS + 1, 1), None),
            Err(PlanError::Vars(_))
        ));
        assert!(plan(vars(1, MAX_VAR_BYTES), None).is_ok());
        assert!(matches!(
            plan(vars(1, MAX_VAR_BYTES + 1), None),
            Err(PlanError::Vars(_))
        ));
        for (len, ok) in [
            (0, false),
            (1, true),
            (MAX_TRIGGER_KEY_BYTES, true),
            (MAX_TRIGGER_KEY_BYTES + 1, false),
        ] {
            let got = plan(vars(1, 1), Some("k".repeat(len)));
            assert_eq!(got.is_ok(), ok, "a key of {len} bytes: {got:?}");
            if !ok {
                assert_eq!(got.unwrap_err(), PlanError::TriggerKey);
            }
        }
    }

    #[test]
    fn a_flow_read_from_json_is_checked_like_a_new_one() {
        let flow = Flow::new(FlowId::new("f").unwrap(), vec![step("a", 0), step("b", 5)]).unwrap();
        let json = serde_json::to_value(&flow).unwrap();
        assert_eq!(serde_json::from_value::<Flow>(json.clone()).unwrap(), flow);
        let mut empty = json.clone();
        empty["steps"] = serde_json::json!([]);
        let e = serde_json::from_value::<Flow>(empty).unwrap_err();
        assert!(e.to_string().contains("1 to 50 steps"), "{e}");
        let mut late = json;
        late["steps"][1]["delay_ms"] = (MAX_DELAY_MS + 1).into();
        assert!(serde_json::from_value::<Flow>(late).is_err());
    }
}
