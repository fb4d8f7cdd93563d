//! The WhatsApp Cloud API provider.
//!
//! One `POST {base}/{version}/{phone_number_id}/messages` per delivery, with
//! the idempotency key as `biz_opaque_callback_data` so status webhooks can
//! name the delivery they are about. This module only parses the answer;
//! what a failure means (retry, wait, give up) is the core's error table:
//! [`CloudApiError::outcome`].

use super::Provider;
use crate::net::{Connector, HttpClient, HttpError, HttpUrl, MaybeTls, Network, Tcp, TlsTrust};
use hyper::{HeaderMap, Method, StatusCode};
use oncesend_core::{CloudApiExchange, CloudApiSettings, DeliveryOutcome, OutboundMessage};
use std::time::Duration;

/// Sends through one Cloud API phone number.
pub struct CloudApiProvider<C: Connector = <Tcp as Network>::Connector> {
    http: HttpClient<MaybeTls<C>>,
    path: String,
}

impl<C: Connector> Clone for CloudApiProvider<C> {
    fn clone(&self) -> Self {
        Self {
            http: self.http.clone(),
            path: self.path.clone(),
        }
    }
}

impl CloudApiProvider {
    /// A client for `settings` over TCP, trusting `trust`'s roots over
    /// `https`. `timeout` bounds each exchange.
    pub fn new(
        settings: &CloudApiSettings,
        timeout: Duration,
        trust: &TlsTrust,
    ) -> Result<Self, crate::net::NetError> {
        Self::over(&Tcp, settings, timeout, trust)
    }
}

impl<C: Connector> CloudApiProvider<C> {
    /// A client for `settings` over `network`. `timeout` bounds each
    /// exchange; the engine keeps its own send timeout (shorter), and a
    /// call past it is `unknown` whatever the exchange does later.
    pub fn over<N: Network<Connector = C>>(
        network: &N,
        settings: &CloudApiSettings,
        timeout: Duration,
        trust: &TlsTrust,
    ) -> Result<Self, crate::net::NetError> {
        let url = HttpUrl::parse(&settings.base_url)?;
        if !url.tls && !url.is_loopback() {
            tracing::warn!(
                base_url = %settings.base_url,
                phone_number_id = %settings.phone_number_id,
                "the Cloud API URL is plain http off this machine: the access token and every message cross the network unencrypted; use https://"
            );
        }
        let connector = MaybeTls::for_url(network.connector(&url.addr), &url, trust)?;
        let http = HttpClient::new(
            connector,
            &url.authority,
            Some(settings.token.clone()),
            timeout,
        );
        Ok(Self {
            http,
            path: format!(
                "{}/{}/{}/messages",
                url.path, settings.version, settings.phone_number_id
            ),
        })
    }

    /// The request body for `message`: the Cloud API's, exactly.
    pub fn body(message: &OutboundMessage) -> serde_json::Value {
        message.body()
    }
}

/// `Retry-After` in seconds (the only form the Graph API uses), as ms.
fn retry_after_ms(headers: &HeaderMap) -> Option<u64> {
    let secs: u64 = headers
        .get(hyper::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(secs.saturating_mul(1000))
}

/// What a Cloud API answer means: the core reads it.
pub fn outcome(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> DeliveryOutcome {
    CloudApiExchange::Answered {
        http_status: status.as_u16(),
        retry_after_ms: retry_after_ms(headers),
        body,
    }
    .outcome()
}

impl<C: Connector> Provider for CloudApiProvider<C> {
    async fn send(&self, message: OutboundMessage) -> DeliveryOutcome {
        let body = serde_json::to_vec(&Self::body(&message)).expect("json serializes");
        match self
            .http
            .request(Method::POST, &self.path, &[], Some(body))
            .await
        {
            Ok((status, headers, bytes)) => outcome(status, &headers, &bytes),
            Err(HttpError::Connect(e)) => CloudApiExchange::NotConnected(&e.to_string()).outcome(),
            Err(HttpError::Exchange(e)) => CloudApiExchange::Broke(&e).outcome(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: i64) -> Vec<u8> {
        format!(r#"{{"error":{{"message":"m","type":"OAuthException","code":{code}}}}}"#)
            .into_bytes()
    }

    /// An answer (status, `Retry-After`, body) and the failure it must give.
    type Case<'a> = (StatusCode, Option<&'a str>, &'a [u8], (bool, Option<u64>));

    /// `(retryable, retry_after_ms)` of an answer the core reads as a failure.
    fn failed(status: StatusCode, retry_after: Option<&str>, body: &[u8]) -> (bool, Option<u64>) {
        let mut headers = HeaderMap::new();
        if let Some(v) = retry_after {
            headers.insert(hyper::header::RETRY_AFTER, v.parse().unwrap());
        }
        match outcome(status, &headers, body) {
            DeliveryOutcome::Failed {
                retryable,
                retry_after_ms,
                ..
            } => (retryable, retry_after_ms),
            other => panic!("{status} {:?}: {other:?}", String::from_utf8_lossy(body)),
        }
    }

    #[test]
    fn answers_are_classified_by_the_core() {
        let none = HeaderMap::new();
        assert_eq!(
            outcome(
                StatusCode::OK,
                &none,
                br#"{"messaging_product":"whatsapp","messages":[{"id":"wamid.A"}]}"#,
            ),
            DeliveryOutcome::Sent {
                provider_message_id: "wamid.A".into()
            }
        );
        // Accepted without an id: it may well go out.
        assert!(matches!(
            outcome(StatusCode::OK, &none, b"{}"),
            DeliveryOutcome::Unknown { .. }
        ));
        let cases: &[Case] = &[
            // Throughput: Retry-After honoured, and a long one capped, not ignored.
            (
                StatusCode::BAD_REQUEST,
                Some("7"),
                &err(130429),
                (true, Some(7_000)),
            ),
            (
                StatusCode::TOO_MANY_REQUESTS,
                Some("86400"),
                &err(130429),
                (true, Some(900_000)),
            ),
            // Pair rate: at least the 6 s gap.
            (
                StatusCode::BAD_REQUEST,
                None,
                &err(131056),
                (true, Some(6_000)),
            ),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
                b"oops",
                (true, None),
            ),
            (StatusCode::BAD_REQUEST, None, &err(131026), (false, None)),
        ];
        for (status, retry_after, body, want) in cases {
            assert_eq!(
                failed(*status, *retry_after, body),
                *want,
                "{status} {retry_after:?}"
            );
        }
        // An expired token does not fail the step: it blocks the sender.
        assert!(matches!(
            outcome(StatusCode::UNAUTHORIZED, &none, &err(190)),
            DeliveryOutcome::SenderBlocked {
                code: Some(190),
                temporary: false,
                ..
            }
        ));
    }
}
