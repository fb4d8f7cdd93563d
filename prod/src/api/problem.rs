//! Errors as RFC 9457 problem details: every one says what was wrong and
//! what to do.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// An HTTP error with a title and a detail a person can act on.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The HTTP status.
    pub status: StatusCode,
    /// A short, fixed summary of the kind of problem.
    pub title: &'static str,
    /// What was wrong here, and what to do.
    pub detail: String,
    /// Seconds to wait before trying again, for 429 and 503.
    pub retry_after_s: Option<u64>,
    /// The JSON path of the invalid value in the request body, where one
    /// is known (`steps[2].message.image.link`).
    pub path: Option<String>,
}

impl Problem {
    /// A problem with the given status, title and detail.
    pub fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            title,
            detail: detail.into(),
            retry_after_s: None,
            path: None,
        }
    }

    /// The same problem, naming the JSON path of what is wrong.
    pub fn at(mut self, path: Option<String>) -> Self {
        self.path = path;
        self
    }

    /// 400: the request could not be read.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Malformed request", detail)
    }

    /// 422: the request was read but its content is invalid.
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid request", detail)
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not found", detail)
    }

    /// 503: the database could not be reached; nothing was written.
    pub fn store_down(error: impl std::fmt::Display) -> Self {
        Self {
            retry_after_s: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Database unavailable",
                format!("{error}; nothing was changed, retry the request shortly"),
            )
        }
    }

    /// The problem's slug, used in its `type` URI.
    fn slug(&self) -> String {
        self.title.to_ascii_lowercase().replace(' ', "-")
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({
            "type": format!("https://oncesend.dev/problems/{}", self.slug()),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some(path) = self.path {
            body["path"] = path.into();
        }
        let mut response = (self.status, body.to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = self.retry_after_s {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}
