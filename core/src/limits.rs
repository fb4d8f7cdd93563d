//! Explicit bounds on everything that can grow. Each one is checked where
//! the data enters the system, so nothing past the edge has to wonder.

/// Most bytes of one message as JSON (the message object, without the
/// envelope). Checked wherever a message enters (a flow, a rendered step,
/// a send handed to the engine's API), and asserted where the engine takes
/// one. The Cloud API's own limits keep real messages far smaller.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Most steps one flow may have.
pub const MAX_STEPS: usize = 50;
/// Most characters of one rendered message text, counted as the Cloud API
/// counts them (Unicode scalar values, not bytes).
pub const MAX_TEXT_CHARS: usize = 4096;
/// Most characters of a media caption.
pub const MAX_CAPTION_CHARS: usize = 1024;
/// Most bytes of one template's source text: room for a full message of
/// [`MAX_TEXT_CHARS`] characters of up to four bytes each.
pub const MAX_TEMPLATE_BYTES: usize = 4 * MAX_TEXT_CHARS;
/// Most variables one trigger may carry.
pub const MAX_VARS: usize = 64;
/// Most bytes of one variable's value.
pub const MAX_VAR_BYTES: usize = 1024;
/// Longest delay a step may ask for: 30 days.
pub const MAX_DELAY_MS: u64 = 30 * 24 * 60 * 60 * 1000;
/// Most runs one claim may take.
pub const MAX_CLAIM_BATCH: u32 = 1000;
/// Most bytes of a trigger idempotency key.
pub const MAX_TRIGGER_KEY_BYTES: usize = 255;
/// Most bytes of a failure reason kept with a run or a delivery.
pub const MAX_REASON_BYTES: usize = 512;

/// Cuts `reason` to at most [`MAX_REASON_BYTES`], on a character boundary.
pub fn clip_reason(reason: &str) -> String {
    if reason.len() <= MAX_REASON_BYTES {
        return reason.to_string();
    }
    let mut end = MAX_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}
/// Most sends in one `POST /v1/messages/batch`.
pub const MAX_SEND_BATCH: usize = 1000;
