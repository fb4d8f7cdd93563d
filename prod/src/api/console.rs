//! The web console at `/ui`: three static files embedded in the binary.
//! They hold no data; the page reads everything through the `/v1` API with
//! the same bearer token as any client, so these routes need no guard.
//! The policy header lets the page run only its own script and talk only
//! to this origin, so text from a flow or a recipient can never run as
//! code even if a rendering slip let it into the page.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const APP_CSS: &str = include_str!("../../ui/app.css");

/// Sent with every `/ui` answer.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Where the console is for an engine listening on `addr`: an unspecified
/// address (all interfaces) is reached on loopback.
pub fn console_url(addr: std::net::SocketAddr) -> String {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    format!("http://{addr}/ui")
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Small, and a new binary may bring new ones: always ask again.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The console's routes (no state: the page is the same for everyone).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/ui",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_engine_on_every_interface_is_reached_on_loopback() {
        assert_eq!(
            console_url("0.0.0.0:8080".parse().unwrap()),
            "http://127.0.0.1:8080/ui"
        );
        assert_eq!(
            console_url("127.0.0.1:9".parse().unwrap()),
            "http://127.0.0.1:9/ui"
        );
    }

    #[test]
    fn the_page_loads_its_script_from_its_own_origin_and_nothing_inline() {
        assert!(INDEX_HTML.contains(r#"<script src="/ui/app.js" defer></script>"#));
        assert!(!INDEX_HTML.contains("<script>"), "no inline script");
        // No handler attributes (onclick="…" and the like) either.
        let handler = INDEX_HTML.split(" on").skip(1).find(|rest| {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase())
                .collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert_eq!(handler, None, "an inline handler in index.html");
        // The page builds its DOM from data with textContent, never markup.
        assert!(!APP_JS.contains("innerHTML"), "innerHTML in app.js");
        assert!(!APP_JS.contains("insertAdjacentHTML"));
        assert!(!APP_JS.contains("document.write"));
    }
}
