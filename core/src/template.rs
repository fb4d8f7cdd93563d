//! `{{var}}` templates: parsed once when a flow is stored, rendered for each
//! run when it is triggered.

use crate::limits::{MAX_TEMPLATE_BYTES, MAX_TEXT_CHARS};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Why a template could not be parsed or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `{{` with no `}}` after it.
    #[error("template has '{{{{' at byte {at} with no closing '}}}}'")]
    Unclosed {
        /// Byte offset of the opening braces.
        at: usize,
    },
    /// A variable name that is empty or holds other than `[A-Za-z0-9_]`.
    #[error("template variable {name:?} must be 1 to 64 letters, digits or '_'")]
    BadName {
        /// The name as written.
        name: String,
    },
    /// The template's source is too long.
    #[error("template is {len} bytes; the limit is {MAX_TEMPLATE_BYTES}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// Rendering needed a variable the trigger did not supply.
    #[error("missing template var {name:?}: add it to \"vars\" in the trigger")]
    MissingVar {
        /// The variable's name.
        name: String,
    },
    /// The rendered text is longer than a message may be.
    #[error("text is {len} characters; a message may be at most {MAX_TEXT_CHARS}")]
    TextTooLong {
        /// Its length in characters.
        len: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(String),
}

/// A parsed template. It serializes as its source text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Template {
    source: String,
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses `Hi {{name}}`-style text. Variable names may be padded with
    /// spaces inside the braces.
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(TemplateError::TooLong { len: source.len() });
        }
        let mut pieces = Vec::new();
        let mut rest = source;
        let mut offset = 0;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let close = after
                .find("}}")
                .ok_or(TemplateError::Unclosed { at: offset + open })?;
            let name = after[..close].trim();
            let valid = !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(TemplateError::BadName {
                    name: after[..close].to_string(),
                });
            }
            pieces.push(Piece::Var(name.to_string()));
            let consumed = open + 2 + close + 2;
            offset += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Self {
            source: source.to_string(),
            pieces,
        })
    }

    /// The source text, as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The names of the variables the template uses, in order of first use.
    pub fn vars(&self) -> Vec<&str> {
        let mut seen: Vec<&str> = Vec::new();
        for p in &self.pieces {
            if let Piece::Var(v) = p {
                if !seen.contains(&v.as_str()) {
                    seen.push(v);
                }
            }
        }
        seen
    }

    /// Fills in the variables. Values are inserted as they are: a value
    /// holding `{{x}}` is not expanded again.
    pub fn render(&self, vars: &BTreeMap<String, String>) -> Result<String, TemplateError> {
        let mut out = String::new();
        let mut chars = 0;
        for p in &self.pieces {
            let piece = match p {
                Piece::Text(t) => t,
                Piece::Var(v) => match vars.get(v) {
                    Some(value) => value,
                    None => return Err(TemplateError::MissingVar { name: v.clone() }),
                },
            };
            out.push_str(piece);
            chars += piece.chars().count();
            if chars > MAX_TEXT_CHARS {
                return Err(TemplateError::TextTooLong { len: chars });
            }
        }
        Ok(out)
    }

    /// Fills in the variables with no bound on the result's length, for a
    /// field whose own limit is checked afterwards.
    pub fn render_unbounded(
        &self,
        vars: &BTreeMap<String, String>,
    ) -> Result<String, TemplateError> {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(v) => match vars.get(v) {
                    Some(value) => out.push_str(value),
                    None => return Err(TemplateError::MissingVar { name: v.clone() }),
                },
            }
        }
        Ok(out)
    }

    /// The characters of the literal text, around the variables: the
    /// least the rendered text can have.
    pub fn literal_chars(&self) -> usize {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.chars().count(),
                Piece::Var(_) => 0,
            })
            .sum()
    }

    /// Checks what is known before any variable is filled in: the literal
    /// text alone must fit in a message, so a flow that could never send is
    /// refused when it is put, not when a run is triggered.
    pub fn check_length(&self) -> Result<(), TemplateError> {
        let chars = self.literal_chars();
        if chars > MAX_TEXT_CHARS {
            return Err(TemplateError::TextTooLong { len: chars });
        }
        Ok(())
    }
}

impl TryFrom<String> for Template {
    type Error = TemplateError;
    fn try_from(s: String) -> Result<Self, TemplateError> {
        Self::parse(&s)
    }
}

impl From<Template> for String {
    fn from(t: Template) -> String {
        t.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn renders_vars_and_keeps_text() {
        let t = Template::parse("Hi {{name}}, your code is {{ code }}. Bye {{name}}").unwrap();
        assert_eq!(t.vars(), vec!["name", "code"]);
        let out = t
            .render(&vars(&[("name", "Ana"), ("code", "{{x}}")]))
            .unwrap();
        assert_eq!(out, "Hi Ana, your code is {{x}}. Bye Ana");
    }

    #[test]
    fn missing_var_is_named() {
        let t = Template::parse("Hi {{name}}").unwrap();
        let e = t.render(&BTreeMap::new()).unwrap_err();
        assert_eq!(
            e,
            TemplateError::MissingVar {
                name: "name".into()
            }
        );
        assert!(e.to_string().contains("\"name\""));
    }

    #[test]
    fn no_piece_is_empty_text() {
        let t = Template::parse("{{a}}{{b}}").unwrap();
        assert_eq!(t.render(&vars(&[("a", "1"), ("b", "2")])).unwrap(), "12");
        // A variable at the very start, two in a row, one at the end: the
        // parsed pieces hold no empty text to walk over at every render.
        for source in ["{{a}}", "{{a}}{{b}}", "x{{a}}", "{{a}}x{{b}}"] {
            let t = Template::parse(source).unwrap();
            assert!(
                t.pieces
                    .iter()
                    .all(|p| !matches!(p, Piece::Text(s) if s.is_empty())),
                "{source}: {:?}",
                t.pieces
            );
        }
    }

    #[test]
    fn malformed_templates_are_refused() {
        assert_eq!(
            Template::parse("ok {{name").unwrap_err(),
            TemplateError::Unclosed { at: 3 }
        );
        assert!(matches!(
            Template::parse("{{}}").unwrap_err(),
            TemplateError::BadName { .. }
        ));
        assert!(matches!(
            Template::parse("{{a-b}}").unwrap_err(),
            TemplateError::BadName { .. }
        ));
    }

    #[test]
    fn lengths_are_characters_not_bytes() {
        // 4096 two-byte characters are 8192 bytes and still one message.
        let wide = "é".repeat(MAX_TEXT_CHARS);
        let t = Template::parse(&wide).unwrap();
        assert_eq!(t.check_length(), Ok(()));
        assert_eq!(t.render(&BTreeMap::new()).unwrap(), wide);
        let t = Template::parse(&"a".repeat(MAX_TEXT_CHARS + 1)).unwrap();
        assert_eq!(
            t.check_length(),
            Err(TemplateError::TextTooLong {
                len: MAX_TEXT_CHARS + 1
            })
        );
        // Variables count once rendered, not before.
        let t = Template::parse(&format!("{}{{{{v}}}}", "a".repeat(MAX_TEXT_CHARS))).unwrap();
        assert_eq!(t.check_length(), Ok(()));
        assert!(t.render(&vars(&[("v", "")])).is_ok());
        assert_eq!(
            t.render(&vars(&[("v", "ü")])),
            Err(TemplateError::TextTooLong {
                len: MAX_TEXT_CHARS + 1
            })
        );
    }

    #[test]
    fn rendered_text_is_bounded() {
        let t = Template::parse("{{a}}{{a}}").unwrap();
        let big = "x".repeat(3000);
        assert!(matches!(
            t.render(&vars(&[("a", &big)])),
            Err(TemplateError::TextTooLong { .. })
        ));
    }
}
