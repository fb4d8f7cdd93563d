//! The WhatsApp Cloud API's error table: what each documented `error.code`
//! means for the step, the recipient and the sender.
//!
//! Meta asks integrators to decide on `code` and `error_data.details`, not on
//! the HTTP status or the deprecated subcode, so the code decides first and
//! the status only speaks when there is no code. The provider in `prod/`
//! parses the answer into a [`CloudApiError`]; everything after that is
//! decided here, by [`CloudApiError::outcome`].

use crate::send::DeliveryOutcome;
use serde::{Deserialize, Serialize};

/// What a Cloud API error means, class by class (DESIGN.md, *Provider errors*).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// A transient fault: retry with backoff, honouring `Retry-After`.
    Retry,
    /// Meta asks for a much later retry (131049, 132069): hours, not seconds.
    RetryLater,
    /// The pair rate to one recipient (131056): back off that recipient only.
    RecipientBackoff,
    /// This message can never go as it is: the step fails, and its run.
    FailStep,
    /// The sender itself cannot send (token, permission, payment, block):
    /// every message of the tenant would fail the same way.
    PauseSender,
    /// The template is paused or disabled (132015, 132016).
    PauseTemplate,
}

/// Codes after which trying the same request again soon may work.
pub const RETRY_CODES: [i64; 9] = [1, 2, 4, 80007, 130429, 131000, 131016, 131057, 133004];
/// Codes after which Meta asks for a retry hours later.
pub const RETRY_LATER_CODES: [i64; 2] = [131049, 132069];
/// The per-recipient pair rate limit.
pub const RECIPIENT_BACKOFF_CODE: i64 = 131056;
/// Codes that fail the step for good (besides any other 4xx).
pub const FAIL_STEP_CODES: [i64; 19] = [
    33, 100, 130472, 130497, 131008, 131009, 131021, 131026, 131047, 131050, 131051, 131052,
    131053, 132000, 132001, 132005, 132007, 132012, 131005,
];
/// Codes that stop the whole sender (besides the permission range 200–299).
pub const PAUSE_SENDER_CODES: [i64; 11] = [
    0, 190, 3, 10, 368, 131031, 131037, 131042, 131045, 131048, 133010,
];
/// Codes that stop the template.
pub const PAUSE_TEMPLATE_CODES: [i64; 2] = [132015, 132016];

/// The least wait after a "retry later" code: one hour.
pub const RETRY_LATER_MIN_MS: u64 = 60 * 60 * 1000;
/// The least wait after a pair-rate error: the documented pair rate is one
/// message every 6 s to one recipient.
pub const RECIPIENT_BACKOFF_MIN_MS: u64 = 6_000;
/// Sender-level codes that may end by themselves (a temporary block, a
/// spam rate limit): the pause probes again after a growing wait. The
/// others (token, permission, payment, account) wait for a person.
pub const TEMPORARY_PAUSE_CODES: [i64; 2] = [368, 131048];
/// The longest `Retry-After` honoured; a longer one is capped, not ignored.
pub const MAX_RETRY_AFTER_MS: u64 = 15 * 60 * 1000;
/// The longest wait after a "retry later" code: the waits double from
/// [`RETRY_LATER_MIN_MS`] with each attempt up to a day.
pub const RETRY_LATER_MAX_MS: u64 = 24 * 60 * 60 * 1000;

/// How the reason of every Cloud API failure begins (see
/// [`CloudApiError::reason`]), so its code can be read back from a stored
/// reason.
const REASON_PREFIX: &str = "Cloud API error ";

/// The Cloud API error code a failure reason names, if it names one: the
/// code kept in the ledger's `last_error`, shown per step by the run API.
pub fn code_in_reason(reason: &str) -> Option<i64> {
    let rest = reason.strip_prefix(REASON_PREFIX)?;
    let end = rest
        .char_indices()
        .find(|(i, c)| !(c.is_ascii_digit() || (*i == 0 && *c == '-')))
        .map_or(rest.len(), |(i, _)| i);
    rest[..end].parse().ok()
}

/// The wait before trying a "retry later" failure (131049, 132069) again,
/// after its attempt number `attempt` (from 1) failed: an hour, doubling
/// with each attempt, up to a day.
pub fn retry_later_wait_ms(attempt: u32) -> u64 {
    RETRY_LATER_MIN_MS
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(16))
        .min(RETRY_LATER_MAX_MS)
}

/// Classifies a Cloud API error by its JSON `error.code`; with no code, by
/// the HTTP status (5xx and 429 are transient, any other status fails the
/// step). A code the table does not list is read by its status the same way.
pub fn classify_cloud_api(http_status: u16, code: Option<i64>) -> ErrorClass {
    if let Some(code) = code {
        if RETRY_CODES.contains(&code) {
            return ErrorClass::Retry;
        }
        if RETRY_LATER_CODES.contains(&code) {
            return ErrorClass::RetryLater;
        }
        if code == RECIPIENT_BACKOFF_CODE {
            return ErrorClass::RecipientBackoff;
        }
        if FAIL_STEP_CODES.contains(&code) {
            return ErrorClass::FailStep;
        }
        if PAUSE_SENDER_CODES.contains(&code) || (200..=299).contains(&code) {
            return ErrorClass::PauseSender;
        }
        if PAUSE_TEMPLATE_CODES.contains(&code) {
            return ErrorClass::PauseTemplate;
        }
    }
    if http_status >= 500 || http_status == 429 {
        ErrorClass::Retry
    } else {
        ErrorClass::FailStep
    }
}

/// What a step's failure tells a person who reads the run, for the codes
/// whose fix is not obvious from Meta's message.
fn advice(code: i64) -> Option<&'static str> {
    Some(match code {
        131047 => {
            "the recipient is outside the 24-hour customer-service window: use a template step"
        }
        131050 => "the recipient stopped marketing messages",
        131026 => "the recipient cannot receive this message (not on WhatsApp, or an old client)",
        0 | 190 => "the access token is invalid or expired: put a new one in the tenant's settings",
        3 | 10 | 200..=299 => "the token lacks permission (whatsapp_business_messaging)",
        131042 => "the business account has a payment problem",
        368 | 131031 | 131048 => "the sender is blocked or restricted by Meta",
        132015 | 132016 => "the template is paused or disabled",
        _ => return None,
    })
}

/// How a call to the Cloud API ended, as the provider saw it on the wire:
/// the whole reading of it is here, next to the error table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudApiExchange<'a> {
    /// An answer came: its HTTP status, `Retry-After` (ms) and body.
    Answered {
        /// The HTTP status.
        http_status: u16,
        /// The `Retry-After` header, in ms.
        retry_after_ms: Option<u64>,
        /// The body, any bytes.
        body: &'a [u8],
    },
    /// No connection was made: nothing left this machine.
    NotConnected(&'a str),
    /// The exchange broke after the request was written: it may have arrived.
    Broke(&'a str),
}

impl CloudApiExchange<'_> {
    /// What became of the message. A 2xx with `messages[0].id` is sent;
    /// a 2xx without one may well go out, so it is unknown; any other answer
    /// is a refusal the error table reads; a connection never made may be
    /// tried again; a broken exchange is unknown and never resent blindly.
    pub fn outcome(&self) -> DeliveryOutcome {
        match *self {
            CloudApiExchange::Answered {
                http_status,
                retry_after_ms,
                body,
            } if (200..300).contains(&http_status) => {
                let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
                let id = json
                    .as_ref()
                    .and_then(|j| j.pointer("/messages/0/id"))
                    .and_then(|v| v.as_str())
                    .filter(|id| !id.is_empty());
                let _ = retry_after_ms;
                match id {
                    Some(id) => DeliveryOutcome::Sent {
                        provider_message_id: id.to_string(),
                    },
                    None => DeliveryOutcome::Unknown {
                        reason: format!(
                            "the Cloud API answered HTTP {http_status} without messages[0].id"
                        ),
                    },
                }
            }
            CloudApiExchange::Answered {
                http_status,
                retry_after_ms,
                body,
            } => CloudApiError::parse(http_status, retry_after_ms, body).outcome(),
            CloudApiExchange::NotConnected(why) => DeliveryOutcome::Failed {
                retryable: true,
                reason: format!("cannot connect to the Cloud API: {why}"),
                retry_after_ms: None,
            },
            CloudApiExchange::Broke(why) => DeliveryOutcome::Unknown {
                reason: format!("Cloud API exchange broke after the request was sent: {why}"),
            },
        }
    }
}

/// A Cloud API error answer, parsed by the provider and kept with the
/// failure: `{"error":{"message","type","code","error_data":{"details"},"fbtrace_id"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CloudApiError {
    /// The HTTP status of the answer (a status webhook has none: 0).
    pub http_status: u16,
    /// `error.code`.
    pub code: Option<i64>,
    /// `error.message` (or a status webhook's `title`).
    pub message: String,
    /// `error.error_data.details`.
    pub details: Option<String>,
    /// `error.fbtrace_id`, what Meta support asks for.
    pub fbtrace_id: Option<String>,
    /// The `Retry-After` header, in ms, if there was one.
    pub retry_after_ms: Option<u64>,
}

impl CloudApiError {
    /// Reads an error body (any bytes: a body that is not the Graph API's
    /// error object keeps its first 200 bytes as the message).
    pub fn parse(http_status: u16, retry_after_ms: Option<u64>, body: &[u8]) -> Self {
        let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let error = json.as_ref().and_then(|j| j.get("error"));
        let text = |key: &str| {
            error
                .and_then(|e| e.pointer(key))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let code = error.and_then(|e| e.get("code")).and_then(|c| c.as_i64());
        let message = match (error, text("/message")) {
            (_, Some(m)) => m,
            (Some(_), None) => String::new(),
            (None, None) => {
                let end = body.len().min(200);
                String::from_utf8_lossy(&body[..end]).into_owned()
            }
        };
        Self {
            http_status,
            code,
            message,
            details: text("/error_data/details"),
            fbtrace_id: text("/fbtrace_id"),
            retry_after_ms,
        }
    }

    /// Its class in the table.
    pub fn class(&self) -> ErrorClass {
        classify_cloud_api(self.http_status, self.code)
    }

    /// The reason kept on the run: code, Meta's message and details, the
    /// trace id, and what to do where the table knows.
    pub fn reason(&self) -> String {
        let mut out = match self.code {
            Some(code) => format!("{REASON_PREFIX}{code}"),
            None => "Cloud API error".to_string(),
        };
        if self.http_status != 0 {
            out.push_str(&format!(" (HTTP {})", self.http_status));
        }
        if !self.message.is_empty() {
            out.push_str(&format!(": {}", self.message));
        }
        if let Some(d) = &self.details {
            out.push_str(&format!("; details: {d}"));
        }
        if let Some(t) = &self.fbtrace_id {
            out.push_str(&format!("; fbtrace_id {t}"));
        }
        if let Some(a) = self.code.and_then(advice) {
            out.push_str(&format!(" ({a})"));
        }
        out
    }

    /// The delivery outcome the table decides. Every error answer is a
    /// known refusal: the message did not go out.
    pub fn outcome(&self) -> DeliveryOutcome {
        let asked = self.retry_after_ms.map(|ms| ms.min(MAX_RETRY_AFTER_MS));
        let (retryable, retry_after_ms) = match self.class() {
            ErrorClass::Retry => (true, asked),
            ErrorClass::RetryLater => (true, Some(asked.unwrap_or(0).max(RETRY_LATER_MIN_MS))),
            ErrorClass::RecipientBackoff => {
                (true, Some(asked.unwrap_or(0).max(RECIPIENT_BACKOFF_MIN_MS)))
            }
            // Nothing went out, and nothing of this sender will until it
            // is resumed: the engine pauses the tenant.
            ErrorClass::PauseSender | ErrorClass::PauseTemplate => {
                return DeliveryOutcome::SenderBlocked {
                    reason: self.reason(),
                    code: self.code,
                    temporary: self
                        .code
                        .is_some_and(|c| TEMPORARY_PAUSE_CODES.contains(&c)),
                }
            }
            ErrorClass::FailStep => (false, None),
        };
        DeliveryOutcome::Failed {
            retryable,
            reason: self.reason(),
            retry_after_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_code_has_its_class() {
        use ErrorClass::*;
        let table: &[(&[i64], ErrorClass)] = &[
            (&RETRY_CODES, Retry),
            (&RETRY_LATER_CODES, RetryLater),
            (&[RECIPIENT_BACKOFF_CODE], RecipientBackoff),
            (&FAIL_STEP_CODES, FailStep),
            (&PAUSE_SENDER_CODES, PauseSender),
            (&[200, 250, 299], PauseSender),
            (&PAUSE_TEMPLATE_CODES, PauseTemplate),
        ];
        for (codes, class) in table {
            for &code in *codes {
                // The code decides, whatever the status says.
                for status in [400, 401, 403, 404, 429, 500, 503] {
                    assert_eq!(
                        classify_cloud_api(status, Some(code)),
                        *class,
                        "code {code} under HTTP {status}"
                    );
                }
            }
        }
        // No code is listed twice.
        let mut all: Vec<i64> = table.iter().flat_map(|(c, _)| c.iter().copied()).collect();
        all.sort_unstable();
        let n = all.len();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn without_a_known_code_the_status_decides() {
        assert_eq!(classify_cloud_api(503, None), ErrorClass::Retry);
        assert_eq!(classify_cloud_api(500, Some(999_999)), ErrorClass::Retry);
        assert_eq!(classify_cloud_api(429, None), ErrorClass::Retry);
        assert_eq!(classify_cloud_api(404, None), ErrorClass::FailStep);
        assert_eq!(classify_cloud_api(400, Some(999_999)), ErrorClass::FailStep);
        // 199 and 300 sit outside the permission range.
        assert_eq!(classify_cloud_api(400, Some(199)), ErrorClass::FailStep);
        assert_eq!(classify_cloud_api(400, Some(300)), ErrorClass::FailStep);
    }

    fn answer(code: i64) -> Vec<u8> {
        format!(
            r#"{{"error":{{"message":"(#{code}) something","type":"OAuthException","code":{code},
            "error_data":{{"messaging_product":"whatsapp","details":"what Meta says"}},"fbtrace_id":"A4O5a8RAgePwbcGSu"}}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn the_failure_keeps_code_details_and_trace_id() {
        let e = CloudApiError::parse(400, None, &answer(131047));
        assert_eq!(e.code, Some(131047));
        assert_eq!(e.details.as_deref(), Some("what Meta says"));
        assert_eq!(e.fbtrace_id.as_deref(), Some("A4O5a8RAgePwbcGSu"));
        let DeliveryOutcome::Failed {
            retryable, reason, ..
        } = e.outcome()
        else {
            panic!("an error answer is a failure");
        };
        assert!(!retryable);
        for part in [
            "131047",
            "HTTP 400",
            "what Meta says",
            "fbtrace_id A4O5a8RAgePwbcGSu",
            "24-hour",
            "use a template step",
        ] {
            assert!(reason.contains(part), "{part:?} missing from {reason:?}");
        }
    }

    #[test]
    fn waits_follow_the_class() {
        let wait = |code: i64, retry_after_ms: Option<u64>| match CloudApiError::parse(
            400,
            retry_after_ms,
            &answer(code),
        )
        .outcome()
        {
            DeliveryOutcome::Failed {
                retryable: true,
                retry_after_ms,
                ..
            } => retry_after_ms,
            other => panic!("code {code}: {other:?}"),
        };
        // 130429 honours Retry-After, capped.
        assert_eq!(wait(130429, Some(7_000)), Some(7_000));
        assert_eq!(wait(130429, Some(u64::MAX)), Some(MAX_RETRY_AFTER_MS));
        assert_eq!(wait(131000, None), None);
        // 131049: hours later.
        assert_eq!(wait(131049, None), Some(RETRY_LATER_MIN_MS));
        // 131056: at least the pair rate's gap.
        assert_eq!(wait(131056, None), Some(RECIPIENT_BACKOFF_MIN_MS));
        assert_eq!(wait(131056, Some(30_000)), Some(30_000));
    }

    #[test]
    fn the_code_is_read_back_from_the_reason_it_wrote() {
        for code in [0, 190, 131047, 130429] {
            let e = CloudApiError::parse(400, None, &answer(code));
            assert_eq!(code_in_reason(&e.reason()), Some(code));
        }
        assert_eq!(code_in_reason("Cloud API error (HTTP 500): oops"), None);
        assert_eq!(
            code_in_reason("cannot connect to the Cloud API: refused"),
            None
        );
        assert_eq!(code_in_reason("Cloud API error 99999999999999999999"), None);
    }

    #[test]
    fn retry_later_waits_double_from_an_hour_to_a_day() {
        assert_eq!(retry_later_wait_ms(1), RETRY_LATER_MIN_MS);
        assert_eq!(retry_later_wait_ms(2), 2 * RETRY_LATER_MIN_MS);
        assert_eq!(retry_later_wait_ms(4), 8 * RETRY_LATER_MIN_MS);
        assert_eq!(retry_later_wait_ms(6), RETRY_LATER_MAX_MS);
        assert_eq!(retry_later_wait_ms(u32::MAX), RETRY_LATER_MAX_MS);
        assert_eq!(retry_later_wait_ms(0), RETRY_LATER_MIN_MS);
    }

    #[test]
    fn a_sender_level_error_blocks_the_sender_instead_of_failing_the_step() {
        for (code, temporary) in [
            (190, false),
            (0, false),
            (10, false),
            (250, false),
            (131042, false),
            (368, true),
            (131048, true),
            (132015, false),
        ] {
            let body = format!(r#"{{"error":{{"message":"m","code":{code}}}}}"#);
            match CloudApiError::parse(400, None, body.as_bytes()).outcome() {
                DeliveryOutcome::SenderBlocked {
                    code: Some(c),
                    temporary: t,
                    reason,
                } => {
                    assert_eq!((c, t), (code, temporary), "{reason}");
                    assert!(reason.contains(&code.to_string()), "{reason}");
                }
                other => panic!("code {code}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_body_that_is_not_the_error_object_is_kept_short() {
        let body = vec![b'x'; 1000];
        let e = CloudApiError::parse(502, None, &body);
        assert_eq!(e.code, None);
        assert_eq!(e.message.len(), 200);
        assert_eq!(e.class(), ErrorClass::Retry);
        assert!(e.reason().starts_with("Cloud API error (HTTP 502): xxx"));
    }
}
