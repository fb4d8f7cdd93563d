//! The Cloud API client's HTTPS: real TLS handshakes with certificates made
//! at test time. A server the client cannot verify is a retryable "cannot
//! connect" failure with nothing sent, never a fallback to plain HTTP.

use crate::common::*;
use hyper::Method;
use oncesend::net::{
    Connector, HttpClient, HttpError, NetError, TcpConnector, TlsConnector, TlsTrust,
};
use oncesend::provider::CloudApiProvider;
use oncesend::provider::Provider;
use oncesend_core::{
    CloudApiSettings, DeliveryKey, DeliveryOutcome, OutboundMessage, Recipient, RunId, TenantId,
};
use std::time::Duration;

fn settings(mock: &MockCloudApi) -> CloudApiSettings {
    CloudApiSettings {
        base_url: mock.url(),
        version: VERSION.into(),
        phone_number_id: PHONE_NUMBER_ID.into(),
        token: CLOUD_TOKEN.into(),
    }
}

fn message(step: u32) -> OutboundMessage {
    OutboundMessage {
        key: DeliveryKey {
            run: RunId::new(1_700_000_000_000, 7),
            step,
        },
        tenant: TenantId::default_tenant(),
        to: Recipient::parse("+5511999990000").unwrap(),
        message: oncesend_core::Message::text(format!("step {step}")),
    }
}

fn trusting(mock: &MockCloudApi) -> TlsTrust {
    TlsTrust::load(Some(mock.ca_file().as_ref())).unwrap()
}

#[tokio::test]
async fn a_server_signed_by_the_ca_file_gets_the_request_over_tls() {
    let mock = MockCloudApi::start(|_, _| Fault::Accept).await;
    let provider =
        CloudApiProvider::new(&settings(&mock), Duration::from_secs(5), &trusting(&mock)).unwrap();
    for step in 0..3 {
        let outcome = provider.send(message(step)).await;
        assert!(
            matches!(outcome, DeliveryOutcome::Sent { .. }),
            "{outcome:?}"
        );
    }
    let calls = mock.calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert_eq!(calls[2].text, "step 2");
    assert!(mock.shape_errors().is_empty(), "{:?}", mock.shape_errors());
    assert!(mock.tls_failures().is_empty(), "{:?}", mock.tls_failures());
}

#[tokio::test]
async fn an_unknown_issuer_is_a_retryable_connect_failure_and_nothing_is_sent() {
    let mock = MockCloudApi::start(|_, _| Fault::Accept).await;
    // The web roots alone do not know the test CA.
    let provider = CloudApiProvider::new(
        &settings(&mock),
        Duration::from_secs(5),
        &TlsTrust::web_roots(),
    )
    .unwrap();
    match provider.send(message(0)).await {
        DeliveryOutcome::Failed {
            retryable: true,
            reason,
            retry_after_ms: None,
        } => {
            assert!(reason.starts_with("cannot connect"), "{reason}");
            assert!(
                reason.contains("TLS handshake with 127.0.0.1 failed"),
                "{reason}"
            );
            assert!(reason.contains("UnknownIssuer"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(mock.calls().is_empty(), "{:?}", mock.calls());
    // The mock saw the client give up on its certificate.
    eventually(
        "the mock to see the refused handshake",
        Duration::from_secs(5),
        || async { !mock.tls_failures().is_empty() },
    )
    .await;
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let mock = MockCloudApi::start(|_, _| Fault::Accept).await;
    let tls = TlsConnector::new(
        TcpConnector::new(mock.addr.to_string()),
        "graph.facebook.com",
        &trusting(&mock),
    )
    .unwrap();
    let err = tls.connect().await.map(|_| ()).unwrap_err().to_string();
    assert!(
        err.contains("TLS handshake with graph.facebook.com failed"),
        "{err}"
    );
    assert!(
        err.contains("not valid for name \"graph.facebook.com\""),
        "{err}"
    );
    // Through the client it is a connect failure: the request never left.
    let http = HttpClient::new(tls, "graph.facebook.com", None, Duration::from_secs(5));
    let err = http
        .request(
            Method::POST,
            "/v21.0/1234/messages",
            &[],
            Some(b"{}".to_vec()),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, HttpError::Connect(_)), "{err:?}");
    assert!(mock.calls().is_empty());
}

#[tokio::test]
async fn a_plain_http_server_behind_an_https_url_is_never_spoken_to_in_plain_text() {
    // A server that answers anything with plain HTTP.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let seen = received.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = vec![0; 4096];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            seen.lock().unwrap().extend_from_slice(&buf[..n]);
            let _ = sock
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                .await;
        }
    });
    let settings = CloudApiSettings {
        base_url: format!("https://{addr}"),
        version: VERSION.into(),
        phone_number_id: PHONE_NUMBER_ID.into(),
        token: CLOUD_TOKEN.into(),
    };
    let provider =
        CloudApiProvider::new(&settings, Duration::from_secs(5), &TlsTrust::web_roots()).unwrap();
    match provider.send(message(0)).await {
        DeliveryOutcome::Failed {
            retryable: true,
            reason,
            ..
        } => assert!(reason.contains("TLS handshake"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // What reached the server was a TLS ClientHello (a handshake record,
    // 0x16), not the request, the token or the message.
    let bytes = received.lock().unwrap().clone();
    assert_eq!(bytes.first(), Some(&0x16), "{bytes:?}");
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        !text.contains(CLOUD_TOKEN) && !text.contains("POST"),
        "{text}"
    );
}

#[test]
fn a_ca_file_must_exist_and_hold_a_certificate() {
    let dir = std::env::temp_dir();
    let missing = dir.join(format!("oncesend-no-such-ca-{}.pem", std::process::id()));
    let err = TlsTrust::load(Some(&missing)).unwrap_err().to_string();
    assert!(
        err.contains(&missing.display().to_string()) && err.contains("cannot read"),
        "{err}"
    );

    let empty = dir.join(format!("oncesend-empty-ca-{}.pem", std::process::id()));
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let err = TlsTrust::load(Some(&empty)).unwrap_err();
    assert!(matches!(err, NetError::CaEmpty(_)), "{err}");
    assert!(err.to_string().contains("holds no certificate"), "{err}");

    let broken = dir.join(format!("oncesend-broken-ca-{}.pem", std::process::id()));
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = TlsTrust::load(Some(&broken)).unwrap_err().to_string();
    assert!(err.contains(&broken.display().to_string()), "{err}");
    for f in [empty, broken] {
        std::fs::remove_file(f).unwrap();
    }
    // A real CA loads.
    let ca = TestCa::new();
    TlsTrust::load(Some(&ca.file)).unwrap();
}

#[tokio::test]
async fn the_engine_refuses_to_start_with_a_ca_file_it_cannot_use() {
    let mut p = spawn_daemon(
        "oncesend-engine",
        env!("CARGO_BIN_EXE_oncesend-engine"),
        &["--listen", "127.0.0.1:0"],
        &[
            ("DATABASE_URL", "memory:".into()),
            ("ONCESEND_CA_FILE", "/nonexistent/ca.pem".into()),
        ],
    );
    let status = p.exit_within(Duration::from_secs(20)).await;
    assert!(!status.success(), "{status}");
    let logs = p.logs.dump();
    assert!(logs.contains("/nonexistent/ca.pem"), "{logs}");
}

#[tokio::test]
async fn a_run_whose_provider_cannot_be_verified_shows_why_and_sends_nothing() {
    let mock = MockCloudApi::start(|_, _| Fault::Accept).await;
    let mut env: Vec<_> = cloud_env(&mock)
        .into_iter()
        .filter(|(k, _)| *k != "ONCESEND_CA_FILE")
        .collect();
    env.push(("DATABASE_URL", "memory:".into()));
    let (_up, url) = start_up(FAST, &env).await;
    let api = Api::new(&url, None);
    put_flow(&api).await;
    let accepted = trigger(&api, 1, 1).await;
    let run = accepted[0].run;
    eventually(
        "the run to record the TLS failure",
        Duration::from_secs(30),
        || async {
            let (s, j) = api.get(&format!("/v1/runs/{run}")).await;
            assert_eq!(s, 200, "{j}");
            j.to_string().contains("UnknownIssuer")
        },
    )
    .await;
    let (_, j) = api.get(&format!("/v1/runs/{run}")).await;
    assert_ne!(j["status"], "failed", "a connect failure is retried: {j}");
    assert!(mock.calls().is_empty(), "{:?}", mock.calls());
}
