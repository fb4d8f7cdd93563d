//! Flows and the planning of a run: a flow's templates are rendered once,
//! when the run is triggered, so a run carries its exact messages and an
//! edit to the flow never changes a run already accepted.

use crate::ids::{FlowId, RunId, TenantId};
use crate::limits::{MAX_DELAY_MS, MAX_STEPS, MAX_TRIGGER_KEY_BYTES, MAX_VARS, MAX_VAR_BYTES};
use crate::recipient::Recipient;
use crate::store::{NewRun, PlannedStep};
use crate::template::{Template, TemplateError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One step of a flow: a message template and how long to wait before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowStep {
    /// The message, with `{{var}}` placeholders.
    pub text: Template,
    /// Delay before this step is sent, counted from the previous step (or
    /// from the trigger, for the first step).
    #[serde(default)]
    pub delay_ms: u64,
}

/// An ordered list of 1 to [`MAX_STEPS`] message steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// The flow's name.
    pub id: FlowId,
    /// Its steps, in order.
    pub steps: Vec<FlowStep>,
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
    /// A step that could not be rendered.
    #[error("step {step}: {source}")]
    Render {
        /// The step's index.
        step: usize,
        /// What went wrong.
        source: TemplateError,
    },
    /// Too many variables, or one too long.
    #[error("vars: at most {MAX_VARS} variables of at most {MAX_VAR_BYTES} bytes each; {0}")]
    Vars(String),
    /// A trigger idempotency key that is empty or too long.
    #[error("Idempotency-Key must be 1 to {MAX_TRIGGER_KEY_BYTES} bytes")]
    TriggerKey,
}

impl Flow {
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
            s.text
                .check_length()
                .map_err(|source| PlanError::Render { step, source })?;
        }
        Ok(Self { id, steps })
    }
}

/// Everything a trigger carries, already validated at the edge.
#[derive(Debug, Clone)]
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
                text: s
                    .text
                    .render(&trigger.vars)
                    .map_err(|source| PlanError::Render { step, source })?,
                delay_ms: s.delay_ms,
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
        FlowStep {
            text: Template::parse(t).unwrap(),
            delay_ms,
        }
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
        assert_eq!(
            e,
            PlanError::Render {
                step: 1,
                source: TemplateError::TextTooLong { len: 5000 }
            }
        );
        assert!(e.to_string().starts_with("step 1: text is 5000 characters"));
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
        assert_eq!(run.steps[0].text, "Hi Ana");
        assert_eq!(run.steps[1].text, "Code 42");
        assert_eq!(run.steps[1].delay_ms, 5_000);

        let e = plan_run(&flow, trigger(&[("name", "Ana")]), RunId::new(1, 1)).unwrap_err();
        assert_eq!(
            e,
            PlanError::Render {
                step: 1,
                source: TemplateError::MissingVar {
                    name: "code".into()
                }
            }
        );
        assert!(e
            .to_string()
            .contains("step 1: missing template var \"code\""));
    }

    #[test]
    fn flow_json_rejects_unknown_step_fields() {
        let ok: Result<FlowStep, _> = serde_json::from_str(r#"{"text":"Hi","delay_ms":5}"#);
        assert!(ok.is_ok());
        let bad: Result<FlowStep, _> = serde_json::from_str(r#"{"text":"Hi","dealy_ms":5}"#);
        assert!(bad.is_err());
    }
}
