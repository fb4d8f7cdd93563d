//! Cloud API message objects: as a flow stores them (every string value a
//! `{{var}}` template), as a run carries them (rendered), and the envelope
//! a provider sends around them.
//!
//! A message is the object the Cloud API's `POST /{version}/{phone}/messages`
//! takes, less the envelope oncesend adds: `{"type": "image", "image": {…}}`.
//! It is checked against the Cloud API's documented limits twice: when the
//! flow is put (each string counted by its literal text, since variables
//! are not known yet) and when a run is triggered (the rendered strings
//! themselves). Every error names the JSON path of what is wrong.

use crate::ids::DeliveryKey;
use crate::limits::{MAX_CAPTION_CHARS, MAX_MESSAGE_BYTES, MAX_TEXT_CHARS};
use crate::recipient::Recipient;
use crate::template::Template;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// The message types a step may send.
pub const MESSAGE_TYPES: &[&str] = &[
    "text",
    "template",
    "image",
    "video",
    "audio",
    "document",
    "sticker",
    "location",
    "contacts",
    "interactive",
];

/// The envelope fields oncesend adds itself.
const ENVELOPE: &[&str] = &[
    "messaging_product",
    "recipient_type",
    "to",
    "biz_opaque_callback_data",
];

/// What is wrong with a message, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct MessageError {
    /// The JSON path inside the message, such as
    /// `interactive.action.buttons[3]` (empty for the message itself).
    pub path: String,
    /// What is wrong there and what to do.
    pub problem: String,
}

fn err<T>(path: &str, problem: impl Into<String>) -> Result<T, MessageError> {
    Err(MessageError {
        path: path.to_string(),
        problem: problem.into(),
    })
}

/// A rendered message, ready for the envelope: a JSON object with a `type`
/// and the object of that type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Value", into = "Value")]
pub struct Message(Map<String, Value>);

impl Message {
    /// A text message.
    pub fn text(body: impl Into<String>) -> Self {
        let mut text = Map::new();
        text.insert("body".into(), Value::String(body.into()));
        let mut m = Map::new();
        m.insert("type".into(), Value::String("text".into()));
        m.insert("text".into(), Value::Object(text));
        Self(m)
    }

    /// Checks `v` fully, as a rendered message.
    pub fn checked(v: Value) -> Result<Self, MessageError> {
        let m = Self::try_from(v)?;
        Check { rendered: true }.message(&m.0)?;
        Ok(m)
    }

    /// Its type: `text`, `template`, `image`, ….
    pub fn kind(&self) -> &str {
        self.0.get("type").and_then(Value::as_str).unwrap_or("")
    }

    /// A text message's body.
    pub fn text_body(&self) -> Option<&str> {
        self.0.get("text")?.get("body")?.as_str()
    }

    /// A template message's template name.
    pub fn template_name(&self) -> Option<&str> {
        self.0.get("template")?.get("name")?.as_str()
    }

    /// Its size as JSON, in bytes (the message object, as a provider
    /// request would carry it, without the envelope).
    pub fn encoded_len(&self) -> usize {
        encoded_len(&self.0)
    }

    /// Refuses a message larger than [`MAX_MESSAGE_BYTES`] as JSON.
    pub fn check_size(&self) -> Result<(), MessageError> {
        check_size(&self.0)
    }

    /// The message object.
    pub fn as_object(&self) -> &Map<String, Value> {
        &self.0
    }

    /// The exact Cloud API request body: the envelope around the message.
    pub fn envelope(&self, to: &Recipient, key: &DeliveryKey) -> Value {
        let mut body = self.0.clone();
        body.insert("messaging_product".into(), "whatsapp".into());
        body.insert("recipient_type".into(), "individual".into());
        body.insert("to".into(), to.as_str().into());
        body.insert("biz_opaque_callback_data".into(), key.to_string().into());
        Value::Object(body)
    }
}

impl TryFrom<Value> for Message {
    type Error = MessageError;
    /// The shape every message has (an object whose `type` names an object
    /// it holds); the limits are [`Message::checked`]'s.
    fn try_from(v: Value) -> Result<Self, MessageError> {
        let Value::Object(m) = v else {
            return err("", "a message must be a JSON object");
        };
        let kind = match m.get("type") {
            Some(Value::String(k)) => k.clone(),
            Some(_) => return err("type", "must be a string"),
            None => {
                return err(
                    "type",
                    format!("missing; one of {}", MESSAGE_TYPES.join(", ")),
                )
            }
        };
        if !MESSAGE_TYPES.contains(&kind.as_str()) {
            return err(
                "type",
                format!(
                    "unknown message type {kind:?}; one of {}",
                    MESSAGE_TYPES.join(", ")
                ),
            );
        }
        if !m.contains_key(&kind) {
            return err(
                &kind,
                format!("missing: a {kind:?} message needs its {kind:?} object"),
            );
        }
        Ok(Self(m))
    }
}

impl From<Message> for Value {
    fn from(m: Message) -> Value {
        Value::Object(m.0)
    }
}

/// A message as a flow stores it: every string value may hold `{{var}}`
/// placeholders, filled in when a run is triggered. It serializes as the
/// JSON it was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Value", into = "Value")]
pub struct MessageTemplate {
    source: Message,
}

impl MessageTemplate {
    /// Parses every string as a template and checks the message against
    /// the limits its literal text can already break.
    pub fn parse(v: Value) -> Result<Self, MessageError> {
        let source = Message::try_from(v)?;
        walk_strings(
            &Value::Object(source.0.clone()),
            &mut String::new(),
            &mut |path, s| {
                Template::parse(s).map(|_| ()).map_err(|e| MessageError {
                    path: path.to_string(),
                    problem: e.to_string(),
                })
            },
        )?;
        Check { rendered: false }.message(&source.0)?;
        Ok(Self { source })
    }

    /// Its type.
    pub fn kind(&self) -> &str {
        self.source.kind()
    }

    /// A template message's template name, as written.
    pub fn template_name(&self) -> Option<&str> {
        self.source.template_name()
    }

    /// The message as given.
    pub fn source(&self) -> &Message {
        &self.source
    }

    /// Fills in every string and checks the result in full: a variable can
    /// make a text too long or a link not https.
    pub fn render(&self, vars: &BTreeMap<String, String>) -> Result<Message, MessageError> {
        let rendered = render_value(
            &Value::Object(self.source.0.clone()),
            vars,
            &mut String::new(),
        )?;
        Message::checked(rendered)
    }
}

impl TryFrom<Value> for MessageTemplate {
    type Error = MessageError;
    fn try_from(v: Value) -> Result<Self, MessageError> {
        Self::parse(v)
    }
}

impl From<MessageTemplate> for Value {
    fn from(m: MessageTemplate) -> Value {
        m.source.into()
    }
}

fn push_key(path: &mut String, key: &str) -> usize {
    let len = path.len();
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
    len
}

fn push_index(path: &mut String, i: usize) -> usize {
    let len = path.len();
    path.push_str(&format!("[{i}]"));
    len
}

fn walk_strings(
    v: &Value,
    path: &mut String,
    f: &mut impl FnMut(&str, &str) -> Result<(), MessageError>,
) -> Result<(), MessageError> {
    match v {
        Value::String(s) => f(path, s),
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let len = push_index(path, i);
                walk_strings(x, path, f)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Object(o) => {
            for (k, x) in o {
                let len = push_key(path, k);
                walk_strings(x, path, f)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn render_value(
    v: &Value,
    vars: &BTreeMap<String, String>,
    path: &mut String,
) -> Result<Value, MessageError> {
    Ok(match v {
        Value::String(s) => {
            let t = Template::parse(s).map_err(|e| MessageError {
                path: path.clone(),
                problem: e.to_string(),
            })?;
            Value::String(t.render_unbounded(vars).map_err(|e| MessageError {
                path: path.clone(),
                problem: e.to_string(),
            })?)
        }
        Value::Array(a) => {
            let mut out = Vec::with_capacity(a.len());
            for (i, x) in a.iter().enumerate() {
                let len = push_index(path, i);
                out.push(render_value(x, vars, path)?);
                path.truncate(len);
            }
            Value::Array(out)
        }
        Value::Object(o) => {
            let mut out = Map::new();
            for (k, x) in o {
                let len = push_key(path, k);
                out.insert(k.clone(), render_value(x, vars, path)?);
                path.truncate(len);
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

/// The limits, checked on a stored message (`rendered: false`: a string's
/// length is its literal text, and a string with a variable in it may
/// still become anything) or a rendered one.
/// Bytes `m` takes as JSON, counted without building the text.
fn encoded_len(m: &Map<String, Value>) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, m).expect("a JSON map always serializes");
    count.0
}

fn check_size(m: &Map<String, Value>) -> Result<(), MessageError> {
    let len = encoded_len(m);
    if len > MAX_MESSAGE_BYTES {
        return err(
            "",
            format!("the message is {len} bytes as JSON; at most {MAX_MESSAGE_BYTES}"),
        );
    }
    Ok(())
}

struct Check {
    rendered: bool,
}

/// A JSON object and where it is.
struct At<'a> {
    obj: &'a Map<String, Value>,
    path: String,
}

impl<'a> At<'a> {
    fn sub(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Refuses keys outside `allowed`.
    fn only(&self, allowed: &[&str]) -> Result<(), MessageError> {
        for k in self.obj.keys() {
            if !allowed.contains(&k.as_str()) {
                return err(
                    &self.sub(k),
                    format!("unknown field; expected one of {}", allowed.join(", ")),
                );
            }
        }
        Ok(())
    }

    fn object(&self, key: &str) -> Result<Option<At<'a>>, MessageError> {
        match self.obj.get(key) {
            None => Ok(None),
            Some(Value::Object(o)) => Ok(Some(At {
                obj: o,
                path: self.sub(key),
            })),
            Some(_) => err(&self.sub(key), "must be an object"),
        }
    }

    fn need_object(&self, key: &str) -> Result<At<'a>, MessageError> {
        self.object(key)?
            .map_or_else(|| err(&self.sub(key), "missing (an object)"), Ok)
    }

    fn array(&self, key: &str) -> Result<Option<&'a Vec<Value>>, MessageError> {
        match self.obj.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(_) => err(&self.sub(key), "must be an array"),
        }
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>, MessageError> {
        match self.obj.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => err(&self.sub(key), "must be a string"),
        }
    }

    fn need_string(&self, key: &str) -> Result<&'a str, MessageError> {
        self.string(key)?
            .map_or_else(|| err(&self.sub(key), "missing (a string)"), Ok)
    }
}

fn objects<'a>(items: &'a [Value], path: &str) -> Result<Vec<At<'a>>, MessageError> {
    items
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::Object(o) => Ok(At {
                obj: o,
                path: format!("{path}[{i}]"),
            }),
            _ => err(&format!("{path}[{i}]"), "must be an object"),
        })
        .collect()
}

/// Media types and the fields each takes besides `id` / `link`.
const MEDIA: &[(&str, &[&str])] = &[
    ("image", &["caption"]),
    ("video", &["caption"]),
    ("audio", &[]),
    ("document", &["caption", "filename"]),
    ("sticker", &[]),
];

const REPLY_BUTTON_TITLE_CHARS: usize = 20;
const REPLY_BUTTON_ID_CHARS: usize = 256;
const MAX_REPLY_BUTTONS: usize = 3;
const INTERACTIVE_BODY_CHARS: usize = 1024;
const HEADER_FOOTER_CHARS: usize = 60;
const LIST_BUTTON_CHARS: usize = 20;
const MAX_SECTIONS: usize = 10;
const MAX_ROWS: usize = 10;
const SECTION_TITLE_CHARS: usize = 24;
const ROW_ID_CHARS: usize = 200;
const ROW_TITLE_CHARS: usize = 24;
const ROW_DESCRIPTION_CHARS: usize = 72;
const CTA_DISPLAY_CHARS: usize = 20;
const TEMPLATE_NAME_CHARS: usize = 512;
const PARAMETER_NAME_CHARS: usize = 20;

impl Check {
    /// The characters `s` is known to have: all of them once rendered, the
    /// literal text around its variables before.
    fn chars(&self, s: &str) -> usize {
        if self.rendered {
            s.chars().count()
        } else {
            Template::parse(s).map_or(0, |t| t.literal_chars())
        }
    }

    /// Whether `s` is final: rendered, or written without variables.
    fn fixed(&self, s: &str) -> bool {
        self.rendered || !s.contains("{{")
    }

    fn max_chars(&self, s: &str, max: usize, path: &str) -> Result<(), MessageError> {
        let n = self.chars(s);
        if n > max {
            return err(path, format!("{n} characters; at most {max}"));
        }
        Ok(())
    }

    /// A required string of 1 to `max` characters.
    fn text(&self, at: &At, key: &str, max: usize) -> Result<(), MessageError> {
        let s = at.need_string(key)?;
        self.nonempty(s, &at.sub(key))?;
        self.max_chars(s, max, &at.sub(key))
    }

    fn opt_text(&self, at: &At, key: &str, max: usize) -> Result<(), MessageError> {
        if let Some(s) = at.string(key)? {
            self.nonempty(s, &at.sub(key))?;
            self.max_chars(s, max, &at.sub(key))?;
        }
        Ok(())
    }

    fn nonempty(&self, s: &str, path: &str) -> Result<(), MessageError> {
        if self.fixed(s) && s.trim().is_empty() {
            return err(path, "must not be empty");
        }
        Ok(())
    }

    fn https(&self, s: &str, path: &str) -> Result<(), MessageError> {
        const SCHEME: &str = "https://";
        let ok = if self.fixed(s) {
            s.len() > SCHEME.len()
                && s.get(..SCHEME.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(SCHEME))
        } else {
            // Before rendering only the text ahead of the first variable
            // is known; it must not already rule https out.
            let known = s.split("{{").next().unwrap_or("").to_ascii_lowercase();
            if known.len() >= SCHEME.len() {
                known.starts_with(SCHEME)
            } else {
                SCHEME.starts_with(&known)
            }
        };
        if !ok {
            return err(
                path,
                format!("{s:?} must be an https:// URL the Cloud API can fetch"),
            );
        }
        Ok(())
    }

    fn message(&self, m: &Map<String, Value>) -> Result<(), MessageError> {
        check_size(m)?;
        let top = At {
            obj: m,
            path: String::new(),
        };
        let kind = top.need_string("type")?;
        for k in m.keys() {
            if ENVELOPE.contains(&k.as_str()) {
                return err(k, "oncesend adds the envelope itself (messaging_product, recipient_type, to, biz_opaque_callback_data); leave it out");
            }
        }
        top.only(&["type", kind])?;
        match kind {
            "text" => self.text_object(&top.need_object("text")?),
            "template" => self.template(&top.need_object("template")?),
            "location" => self.location(&top.need_object("location")?),
            "contacts" => self.contacts(&top),
            "interactive" => self.interactive(&top.need_object("interactive")?),
            media => self.media(&top.need_object(media)?, media),
        }
    }

    fn text_object(&self, at: &At) -> Result<(), MessageError> {
        at.only(&["body", "preview_url"])?;
        self.text(at, "body", MAX_TEXT_CHARS)?;
        match at.obj.get("preview_url") {
            None | Some(Value::Bool(_)) => Ok(()),
            Some(_) => err(&at.sub("preview_url"), "must be true or false"),
        }
    }

    fn media(&self, at: &At, kind: &str) -> Result<(), MessageError> {
        let extra = MEDIA
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(&[][..], |(_, e)| *e);
        let mut allowed = vec!["id", "link"];
        allowed.extend_from_slice(extra);
        at.only(&allowed)?;
        match (at.string("id")?, at.string("link")?) {
            (Some(id), None) => self.nonempty(id, &at.sub("id"))?,
            (None, Some(link)) => self.https(link, &at.sub("link"))?,
            (Some(_), Some(_)) => {
                return err(
                    &at.path,
                    "give exactly one of \"id\" (an uploaded media id) or \"link\", not both",
                )
            }
            (None, None) => {
                return err(
                    &at.path,
                    "needs \"id\" (an uploaded media id) or \"link\" (an https URL)",
                )
            }
        }
        self.opt_text(at, "caption", MAX_CAPTION_CHARS)?;
        self.opt_text(at, "filename", 240)
    }

    fn location(&self, at: &At) -> Result<(), MessageError> {
        at.only(&["latitude", "longitude", "name", "address"])?;
        for (key, limit) in [("latitude", 90.0), ("longitude", 180.0)] {
            let path = at.sub(key);
            let value = match at.obj.get(key) {
                None => return err(&path, "missing (a number)"),
                Some(Value::Number(n)) => n.as_f64(),
                Some(Value::String(s)) if !self.fixed(s) => continue,
                Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
                Some(_) => None,
            };
            match value {
                Some(v) if v.abs() <= limit => {}
                _ => return err(&path, format!("must be a number from -{limit} to {limit}")),
            }
        }
        self.opt_text(at, "name", 1000)?;
        self.opt_text(at, "address", 1000)
    }

    fn contacts(&self, top: &At) -> Result<(), MessageError> {
        let contacts = top.array("contacts")?.ok_or_else(|| MessageError {
            path: "contacts".into(),
            problem: "missing (an array of contacts)".into(),
        })?;
        if contacts.is_empty() {
            return err("contacts", "needs at least one contact");
        }
        for c in objects(contacts, "contacts")? {
            let name = c.need_object("name")?;
            self.text(&name, "formatted_name", 1000)?;
        }
        Ok(())
    }

    fn template(&self, at: &At) -> Result<(), MessageError> {
        at.only(&["name", "language", "components"])?;
        self.text(at, "name", TEMPLATE_NAME_CHARS)?;
        let language = at.need_object("language")?;
        language.only(&["code", "policy"])?;
        self.text(&language, "code", 20)?;
        if let Some(p) = language.string("policy")? {
            if p != "deterministic" {
                return err(
                    &language.sub("policy"),
                    "must be \"deterministic\" (or left out)",
                );
            }
        }
        let Some(components) = at.array("components")? else {
            return Ok(());
        };
        let mut naming: Option<(bool, String)> = None;
        for c in objects(components, &at.sub("components"))? {
            let kind = c.need_string("type")?;
            match kind {
                "header" | "body" => {}
                "button" => {
                    c.need_string("sub_type")?;
                    match c.obj.get("index") {
                        Some(Value::String(_)) | Some(Value::Number(_)) => {}
                        Some(_) => return err(&c.sub("index"), "must be the button's position, such as \"0\""),
                        None => return err(&c.sub("index"), "missing: the button's position, such as \"0\""),
                    }
                }
                "carousel" | "limited_time_offer" => {}
                other => {
                    return err(
                        &c.sub("type"),
                        format!("unknown component type {other:?}; one of header, body, button, carousel, limited_time_offer"),
                    )
                }
            }
            let Some(params) = c.array("parameters")? else {
                continue;
            };
            for p in objects(params, &c.sub("parameters"))? {
                let ptype = p.need_string("type")?;
                match ptype {
                    "text" => {
                        let text = p.need_string("text")?;
                        let max = if kind == "header" {
                            HEADER_FOOTER_CHARS
                        } else {
                            MAX_TEXT_CHARS
                        };
                        self.max_chars(text, max, &p.sub("text"))?;
                    }
                    "image" | "video" | "document" => self.media(&p.need_object(ptype)?, ptype)?,
                    _ => {}
                }
                if kind == "header" || kind == "body" {
                    let named = match p.string("parameter_name")? {
                        Some(n) => {
                            let ok = !n.is_empty()
                                && n.chars().count() <= PARAMETER_NAME_CHARS
                                && n.bytes().all(|b| {
                                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'
                                });
                            if !ok {
                                return err(
                                    &p.sub("parameter_name"),
                                    format!("1 to {PARAMETER_NAME_CHARS} lowercase letters, digits or '_'"),
                                );
                            }
                            true
                        }
                        None => false,
                    };
                    match &naming {
                        None => naming = Some((named, p.path.clone())),
                        Some((first, first_path)) if *first != named => {
                            return err(
                                &p.path,
                                format!("header and body parameters must all be named (parameter_name) or all positional; {first_path} is {}", if *first { "named" } else { "positional" }),
                            )
                        }
                        Some(_) => {}
                    }
                }
            }
        }
        Ok(())
    }

    fn interactive(&self, at: &At) -> Result<(), MessageError> {
        at.only(&["type", "header", "body", "footer", "action"])?;
        let kind = at.need_string("type")?;
        if !matches!(kind, "button" | "list" | "cta_url") {
            return err(
                &at.sub("type"),
                format!("unsupported interactive type {kind:?}; one of button, list, cta_url"),
            );
        }
        let body = at.need_object("body")?;
        body.only(&["text"])?;
        self.text(&body, "text", INTERACTIVE_BODY_CHARS)?;
        if let Some(footer) = at.object("footer")? {
            footer.only(&["text"])?;
            self.text(&footer, "text", HEADER_FOOTER_CHARS)?;
        }
        if let Some(header) = at.object("header")? {
            let htype = header.need_string("type")?;
            match htype {
                "text" => {
                    header.only(&["type", "text"])?;
                    self.text(&header, "text", HEADER_FOOTER_CHARS)?;
                }
                "image" | "video" | "document" if kind != "list" => {
                    header.only(&["type", htype])?;
                    self.media(&header.need_object(htype)?, htype)?;
                }
                other => {
                    let allowed = if kind == "list" {
                        "text"
                    } else {
                        "text, image, video or document"
                    };
                    return err(
                        &header.sub("type"),
                        format!("a {kind} message's header is {allowed}, not {other:?}"),
                    );
                }
            }
        }
        let action = at.need_object("action")?;
        match kind {
            "button" => self.reply_buttons(&action),
            "list" => self.list(&action),
            _ => self.cta_url(&action),
        }
    }

    fn reply_buttons(&self, action: &At) -> Result<(), MessageError> {
        action.only(&["buttons"])?;
        let path = action.sub("buttons");
        let buttons = action.array("buttons")?.ok_or_else(|| MessageError {
            path: path.clone(),
            problem: "missing: 1 to 3 reply buttons".into(),
        })?;
        if buttons.is_empty() || buttons.len() > MAX_REPLY_BUTTONS {
            return err(
                &path,
                format!(
                    "{} reply buttons; at least 1 and at most {MAX_REPLY_BUTTONS}",
                    buttons.len()
                ),
            );
        }
        let mut ids = BTreeSet::new();
        for b in objects(buttons, &path)? {
            b.only(&["type", "reply"])?;
            if b.need_string("type")? != "reply" {
                return err(&b.sub("type"), "must be \"reply\"");
            }
            let reply = b.need_object("reply")?;
            reply.only(&["id", "title"])?;
            self.text(&reply, "id", REPLY_BUTTON_ID_CHARS)?;
            self.text(&reply, "title", REPLY_BUTTON_TITLE_CHARS)?;
            let id = reply.need_string("id")?;
            if self.fixed(id) && !ids.insert(id) {
                return err(
                    &reply.sub("id"),
                    format!("{id:?} is used by another button; ids must be unique"),
                );
            }
        }
        Ok(())
    }

    fn list(&self, action: &At) -> Result<(), MessageError> {
        action.only(&["button", "sections"])?;
        self.text(action, "button", LIST_BUTTON_CHARS)?;
        let path = action.sub("sections");
        let sections = action.array("sections")?.ok_or_else(|| MessageError {
            path: path.clone(),
            problem: "missing: 1 to 10 sections".into(),
        })?;
        if sections.is_empty() || sections.len() > MAX_SECTIONS {
            return err(
                &path,
                format!(
                    "{} sections; at least 1 and at most {MAX_SECTIONS}",
                    sections.len()
                ),
            );
        }
        let mut rows_total = 0;
        let mut ids = BTreeSet::new();
        for s in objects(sections, &path)? {
            s.only(&["title", "rows"])?;
            if sections.len() > 1 {
                self.text(&s, "title", SECTION_TITLE_CHARS)?;
            } else {
                self.opt_text(&s, "title", SECTION_TITLE_CHARS)?;
            }
            let rows_path = s.sub("rows");
            let rows = s.array("rows")?.ok_or_else(|| MessageError {
                path: rows_path.clone(),
                problem: "missing: at least one row".into(),
            })?;
            if rows.is_empty() {
                return err(&rows_path, "needs at least one row");
            }
            rows_total += rows.len();
            if rows_total > MAX_ROWS {
                return err(
                    &path,
                    format!("{rows_total} rows or more in all; a list may have at most {MAX_ROWS}"),
                );
            }
            for r in objects(rows, &rows_path)? {
                r.only(&["id", "title", "description"])?;
                self.text(&r, "id", ROW_ID_CHARS)?;
                self.text(&r, "title", ROW_TITLE_CHARS)?;
                self.opt_text(&r, "description", ROW_DESCRIPTION_CHARS)?;
                let id = r.need_string("id")?;
                if self.fixed(id) && !ids.insert(id) {
                    return err(
                        &r.sub("id"),
                        format!("{id:?} is used by another row; ids must be unique"),
                    );
                }
            }
        }
        Ok(())
    }

    fn cta_url(&self, action: &At) -> Result<(), MessageError> {
        action.only(&["name", "parameters"])?;
        if action.need_string("name")? != "cta_url" {
            return err(&action.sub("name"), "must be \"cta_url\"");
        }
        let params = action.need_object("parameters")?;
        params.only(&["display_text", "url"])?;
        self.text(&params, "display_text", CTA_DISPLAY_CHARS)?;
        self.https(params.need_string("url")?, &params.sub("url"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_message_over_the_size_bound_is_refused_whatever_its_kind() {
        let max = crate::limits::MAX_MESSAGE_BYTES;
        let param = serde_json::json!({"type": "text", "text": "p".repeat(1000)});
        let template = |n: usize| {
            serde_json::json!({
                "type": "template",
                "template": {
                    "name": "order_update",
                    "language": {"code": "en"},
                    "components": [{"type": "body", "parameters": vec![param.clone(); n]}],
                },
            })
        };
        let e = Message::checked(template(70)).unwrap_err();
        assert_eq!(e.path, "");
        assert!(
            e.problem.contains(&format!("bytes as JSON; at most {max}")),
            "{e}"
        );
        let small = Message::try_from(template(2)).unwrap();
        assert!(small.encoded_len() < 2_200, "{}", small.encoded_len());
        assert!(small.check_size().is_ok());
        assert_eq!(
            small.encoded_len(),
            serde_json::to_vec(small.as_object()).unwrap().len()
        );
        // A template of a flow is held to the same bound.
        assert!(MessageTemplate::parse(template(70)).is_err());
    }

    use super::*;
    use serde_json::json;

    fn stored(v: Value) -> Result<MessageTemplate, String> {
        MessageTemplate::parse(v).map_err(|e| e.to_string())
    }

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn buttons(n: usize) -> Value {
        let b: Vec<Value> = (0..n)
            .map(|i| json!({"type": "reply", "reply": {"id": format!("b{i}"), "title": format!("Option {i}")}}))
            .collect();
        json!({"type": "interactive", "interactive": {"type": "button", "body": {"text": "Pick one"}, "action": {"buttons": b}}})
    }

    /// One valid message of every kind.
    pub(crate) fn every_kind() -> Vec<Value> {
        vec![
            json!({"type": "text", "text": {"body": "Hi {{name}}", "preview_url": true}}),
            json!({"type": "template", "template": {"name": "order_ready", "language": {"code": "pt_BR"}, "components": [
                {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://example.com/a.png"}}]},
                {"type": "body", "parameters": [{"type": "text", "text": "{{name}}"}, {"type": "currency", "currency": {"fallback_value": "$1", "code": "USD", "amount_1000": 1000}}]},
                {"type": "button", "sub_type": "quick_reply", "index": "0", "parameters": [{"type": "payload", "payload": "yes"}]},
            ]}}),
            json!({"type": "template", "template": {"name": "named", "language": {"code": "en_US", "policy": "deterministic"}, "components": [
                {"type": "body", "parameters": [{"type": "text", "parameter_name": "first_name", "text": "{{name}}"}]},
            ]}}),
            json!({"type": "image", "image": {"link": "https://example.com/{{img}}.png", "caption": "For {{name}}"}}),
            json!({"type": "video", "video": {"id": "1234"}}),
            json!({"type": "audio", "audio": {"link": "https://example.com/a.ogg"}}),
            json!({"type": "document", "document": {"id": "42", "filename": "invoice.pdf", "caption": "Invoice"}}),
            json!({"type": "sticker", "sticker": {"id": "99"}}),
            json!({"type": "location", "location": {"latitude": -23.56, "longitude": -46.63, "name": "Shop", "address": "Av. Paulista"}}),
            json!({"type": "contacts", "contacts": [{"name": {"formatted_name": "Ana Lima", "first_name": "Ana"}, "phones": [{"phone": "+5511913390707"}]}]}),
            buttons(3),
            json!({"type": "interactive", "interactive": {"type": "list", "header": {"type": "text", "text": "Menu"}, "body": {"text": "Choose"}, "footer": {"text": "Thanks"}, "action": {"button": "See options", "sections": [
                {"title": "A", "rows": [{"id": "a1", "title": "One", "description": "First"}]},
                {"title": "B", "rows": [{"id": "b1", "title": "Two"}]},
            ]}}}),
            json!({"type": "interactive", "interactive": {"type": "cta_url", "header": {"type": "image", "image": {"link": "https://example.com/h.png"}}, "body": {"text": "Track it"}, "action": {"name": "cta_url", "parameters": {"display_text": "Track", "url": "https://example.com/t/{{code}}"}}}}),
        ]
    }

    #[test]
    fn every_kind_is_accepted_and_rendered_in_every_string() {
        let v = vars(&[("name", "Ana"), ("img", "cat"), ("code", "42")]);
        for m in every_kind() {
            let t = stored(m.clone()).unwrap_or_else(|e| panic!("{m}: {e}"));
            let r = t.render(&v).unwrap_or_else(|e| panic!("{m}: {e}"));
            assert_eq!(r.kind(), m["type"]);
            let out = Value::from(r.clone()).to_string();
            assert!(!out.contains("{{"), "{out}");
            // It serializes back exactly as given.
            assert_eq!(Value::from(t), m);
        }
        let img = stored(every_kind()[3].clone()).unwrap().render(&v).unwrap();
        assert_eq!(
            img.as_object()["image"]["link"],
            "https://example.com/cat.png"
        );
        assert_eq!(img.as_object()["image"]["caption"], "For Ana");
        let tpl = stored(every_kind()[1].clone()).unwrap();
        assert_eq!(tpl.template_name(), Some("order_ready"));
        let r = tpl.render(&v).unwrap();
        assert_eq!(
            r.as_object()["template"]["components"][1]["parameters"][0]["text"],
            "Ana"
        );
        // Numbers are kept as numbers.
        assert_eq!(
            r.as_object()["template"]["components"][1]["parameters"][1]["currency"]["amount_1000"],
            1000
        );
    }

    #[test]
    fn the_envelope_is_the_cloud_apis() {
        let key: DeliveryKey = "0190f3a2-0000-7000-8000-000000000001:2".parse().unwrap();
        let to = Recipient::parse("+5511913390707").unwrap();
        let body = Message::text("Hi").envelope(&to, &key);
        assert_eq!(
            body,
            json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": "+5511913390707",
                   "type": "text", "text": {"body": "Hi"}, "biz_opaque_callback_data": key.to_string()})
        );
    }

    #[test]
    fn a_missing_var_names_its_path() {
        let t = stored(every_kind()[1].clone()).unwrap();
        let e = t.render(&BTreeMap::new()).unwrap_err();
        assert_eq!(e.path, "template.components[1].parameters[0].text");
        assert!(e.problem.contains("missing template var \"name\""), "{e}");
    }

    #[test]
    fn bad_messages_are_refused_with_their_path() {
        let cases: Vec<(Value, &str)> = vec![
            (json!({"type": "fax", "fax": {}}), "type: unknown message type \"fax\""),
            (json!({"type": "image"}), "image: missing"),
            (json!("hello"), ": a message must be a JSON object"),
            (json!({"type": "text", "text": {"body": "a", "bold": true}}), "text.bold: unknown field"),
            (json!({"type": "text", "text": {"body": "a".repeat(4097)}}), "text.body: 4097 characters; at most 4096"),
            (json!({"type": "text", "text": {"body": ""}}), "text.body: must not be empty"),
            (json!({"type": "text", "to": "+1", "text": {"body": "a"}}), "to: oncesend adds the envelope"),
            (json!({"type": "template", "template": {"name": "x"}}), "template.language: missing"),
            (json!({"type": "template", "template": {"name": "x", "language": {}}}), "template.language.code: missing"),
            (json!({"type": "template", "template": {"language": {"code": "en"}}}), "template.name: missing"),
            (json!({"type": "template", "template": {"name": "x", "language": {"code": "en"}, "components": [
                {"type": "body", "parameters": [{"type": "text", "text": "a", "parameter_name": "n"}, {"type": "text", "text": "b"}]}]}}),
             "template.components[0].parameters[1]: header and body parameters must all be named"),
            (json!({"type": "template", "template": {"name": "x", "language": {"code": "en"}, "components": [
                {"type": "button", "sub_type": "url", "parameters": []}]}}), "template.components[0].index: missing"),
            (json!({"type": "image", "image": {"link": "http://example.com/a.png"}}), "image.link: \"http://example.com/a.png\" must be an https:// URL"),
            (json!({"type": "image", "image": {"id": "1", "link": "https://example.com/a.png"}}), "image: give exactly one of \"id\""),
            (json!({"type": "image", "image": {}}), "image: needs \"id\""),
            (json!({"type": "audio", "audio": {"id": "1", "caption": "no"}}), "audio.caption: unknown field"),
            (json!({"type": "video", "video": {"id": "1", "caption": "é".repeat(1025)}}), "video.caption: 1025 characters; at most 1024"),
            (json!({"type": "location", "location": {"latitude": 91, "longitude": 0}}), "location.latitude: must be a number from -90 to 90"),
            (json!({"type": "contacts", "contacts": []}), "contacts: needs at least one contact"),
            (buttons(4), "interactive.action.buttons: 4 reply buttons; at least 1 and at most 3"),
            (buttons(0), "interactive.action.buttons: 0 reply buttons"),
            (json!({"type": "interactive", "interactive": {"type": "button", "body": {"text": "x"}, "action": {"buttons": [
                {"type": "reply", "reply": {"id": "a", "title": "A"}}, {"type": "reply", "reply": {"id": "a", "title": "B"}}]}}}),
             "interactive.action.buttons[1].reply.id: \"a\" is used by another button"),
            (json!({"type": "interactive", "interactive": {"type": "button", "body": {"text": "x"}, "action": {"buttons": [
                {"type": "reply", "reply": {"id": "a", "title": "A title that is too long"}}]}}}),
             "interactive.action.buttons[0].reply.title: 24 characters; at most 20"),
            (json!({"type": "interactive", "interactive": {"type": "list", "body": {"text": "x"}, "action": {"button": "b", "sections": [
                {"title": "A", "rows": (0..6).map(|i| json!({"id": format!("a{i}"), "title": "t"})).collect::<Vec<_>>()},
                {"title": "B", "rows": (0..5).map(|i| json!({"id": format!("b{i}"), "title": "t"})).collect::<Vec<_>>()}]}}}),
             "interactive.action.sections: 11 rows or more in all; a list may have at most 10"),
            (json!({"type": "interactive", "interactive": {"type": "list", "body": {"text": "x"}, "action": {"button": "b", "sections": []}}}),
             "interactive.action.sections: 0 sections"),
            (json!({"type": "interactive", "interactive": {"type": "list", "body": {"text": "x"}, "action": {"button": "b", "sections": [
                {"rows": [{"id": "a", "title": "t"}]}, {"title": "B", "rows": [{"id": "b", "title": "t"}]}]}}}),
             "interactive.action.sections[0].title: missing"),
            (json!({"type": "interactive", "interactive": {"type": "flow", "body": {"text": "x"}, "action": {}}}),
             "interactive.type: unsupported interactive type \"flow\""),
            (json!({"type": "interactive", "interactive": {"type": "cta_url", "body": {"text": "x"}, "action": {"name": "cta_url", "parameters": {"display_text": "Go", "url": "ftp://x"}}}}),
             "interactive.action.parameters.url: \"ftp://x\" must be an https:// URL"),
            (json!({"type": "interactive", "interactive": {"type": "button", "action": {"buttons": []}}}), "interactive.body: missing"),
            (json!({"type": "text", "text": {"body": "{{name"}}), "text.body: template has '{{' at byte 0"),
        ];
        for (m, want) in cases {
            let got = stored(m.clone()).unwrap_err();
            assert!(got.starts_with(want), "{m}\n got: {got}\nwant: {want}");
        }
    }

    #[test]
    fn rendering_rechecks_what_vars_can_break() {
        // A link that is only a variable is checked once filled in.
        let t = stored(json!({"type": "image", "image": {"link": "{{url}}"}})).unwrap();
        assert!(t
            .render(&vars(&[("url", "https://example.com/a.png")]))
            .is_ok());
        let e = t
            .render(&vars(&[("url", "http://example.com/a.png")]))
            .unwrap_err();
        assert_eq!(e.path, "image.link");
        // A variable can make a text too long, counted in characters.
        let t = stored(json!({"type": "text", "text": {"body": "{{a}}"}})).unwrap();
        assert!(t.render(&vars(&[("a", &"é".repeat(4096))])).is_ok());
        let e = t.render(&vars(&[("a", &"é".repeat(4097))])).unwrap_err();
        assert_eq!(e.to_string(), "text.body: 4097 characters; at most 4096");
        // Or make two button ids equal.
        let t = stored(json!({"type": "interactive", "interactive": {"type": "button", "body": {"text": "x"}, "action": {"buttons": [
            {"type": "reply", "reply": {"id": "{{a}}", "title": "A"}}, {"type": "reply", "reply": {"id": "{{b}}", "title": "B"}}]}}})).unwrap();
        assert!(t.render(&vars(&[("a", "1"), ("b", "2")])).is_ok());
        assert!(t.render(&vars(&[("a", "1"), ("b", "1")])).is_err());
        // A link whose literal start is already wrong is refused when stored.
        assert!(
            stored(json!({"type": "image", "image": {"link": "http://{{host}}/a.png"}})).is_err()
        );
        assert!(
            stored(json!({"type": "image", "image": {"link": "https://{{host}}/a.png"}})).is_ok()
        );
        assert!(stored(json!({"type": "image", "image": {"link": "ht{{x}}"}})).is_ok());
    }

    #[test]
    fn a_rendered_message_keeps_only_its_shape_when_read_back() {
        // Reading a message back (from the store or a worker) checks its
        // shape, not the limits of the day it was rendered.
        let m: Message =
            serde_json::from_value(json!({"type": "text", "text": {"body": "hi"}})).unwrap();
        assert_eq!(m.text_body(), Some("hi"));
        assert!(serde_json::from_value::<Message>(json!({"type": "text"})).is_err());
        assert!(serde_json::from_value::<Message>(json!([1])).is_err());
    }
}
