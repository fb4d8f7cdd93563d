//! Shared by the process-level tests: a mock WhatsApp Cloud API speaking
//! HTTPS on 127.0.0.1 with a certificate made at test time, the real
//! binaries as child processes, and a small HTTP client.
#![allow(dead_code)]

use oncesend::net::{HttpClient, TcpConnector};
use oncesend_core::check::{check, Accepted, FinalRun, History, ProviderCall};
use oncesend_core::{DeliveryKey, Recipient, RunId, RunStatus, TenantId};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

pub const PHONE_NUMBER_ID: &str = "1234";
pub const CLOUD_TOKEN: &str = "cloud-token";
pub const VERSION: &str = "v21.0";

/// A certificate authority made for one test, and server certificates it
/// signs. Its root is written to a PEM file for `--ca-file`.
pub struct TestCa {
    ca: rcgen::Certificate,
    key: rcgen::KeyPair,
    /// The root certificate, PEM.
    pub file: std::path::PathBuf,
}

impl TestCa {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "oncesend test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = params.self_signed(&key).unwrap();
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file =
            std::env::temp_dir().join(format!("oncesend-test-ca-{}-{n}.pem", std::process::id()));
        std::fs::write(&file, ca.pem()).unwrap();
        Self { ca, key, file }
    }

    /// A server configuration presenting a certificate for `names` (DNS
    /// names or IP addresses) signed by this CA.
    pub fn server(&self, names: &[&str]) -> Arc<tokio_rustls::rustls::ServerConfig> {
        use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.key).unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// What the mock does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 200 with a message id.
    Accept,
    /// 400, error 130429 (throughput), Retry-After: 1.
    Throttle,
    /// 400, error 131056 (pair rate limit).
    PairRate,
    /// 500.
    ServerError,
    /// Read the request, then close the connection without answering.
    Drop,
    /// The Cloud API's error answer for this code: its HTTP status, title
    /// and details as Meta documents them.
    Error(i64),
}

/// HTTP status, `error.message` and `error_data.details` the Cloud API
/// answers an error code with (../shared/reference/cloud-api.md, §3).
pub fn documented_error(code: i64) -> (u16, &'static str, &'static str) {
    match code {
        0 => (401, "AuthException", "We were unable to authenticate the app user."),
        190 => (401, "Error validating access token: Session has expired on Thursday, 03-Dec-26 10:00:00 PST.", "The access token has expired."),
        3 => (500, "Application does not have the capability to make this API call.", "Capability or permissions issue."),
        10 | 200..=299 => (403, "Application does not have permission for this action", "Permission is either not granted or has been removed."),
        368 => (403, "Temporarily blocked for policies violations", "The WhatsApp Business Account associated with the app has been restricted or disabled for violating a platform policy."),
        131031 => (403, "Business Account locked", "The WhatsApp Business Account associated with the app has been locked."),
        131042 => (400, "Business eligibility payment issue", "Message failed to send because there were one or more errors related to your payment method."),
        131048 => (400, "Spam rate limit hit", "Message failed to send because there are restrictions on how many messages can be sent from this phone number."),
        133010 => (400, "Phone number Not Registered", "Phone number is not registered on the WhatsApp Business Platform."),
        131047 => (400, "Re-engagement message", "Message failed to send because more than 24 hours have passed since the customer last replied to this number."),
        131026 => (400, "Message Undeliverable", "Unable to deliver message."),
        132001 => (404, "Template name does not exist in the translation", "template name (order_ready) does not exist in pt_BR"),
        132015 => (400, "Template is Paused", "Template is paused due to low quality so it cannot be sent in a template message."),
        130429 => (400, "Rate limit hit", "Cloud API message throughput has been reached."),
        131056 => (400, "(Business Account, Consumer Account) pair rate limit hit", "Too many messages sent from the sender phone number to the same recipient phone number in a short period of time."),
        131000 => (500, "Something went wrong", "Message failed to send due to an unknown error."),
        _ => (400, "Invalid parameter", "Invalid parameter."),
    }
}

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Call {
    pub key: DeliveryKey,
    pub to: String,
    /// `text.body` of a text message (empty for other kinds).
    pub text: String,
    /// The whole request body.
    pub body: serde_json::Value,
    pub fault: Fault,
    pub message_id: Option<String>,
}

type Decide = Arc<dyn Fn(&DeliveryKey, u32) -> Fault + Send + Sync>;

#[derive(Default)]
struct MockState {
    /// How long to think before answering, in ms.
    latency_ms: u64,
    calls: Vec<Call>,
    attempts: BTreeMap<DeliveryKey, u32>,
    shape_errors: Vec<String>,
    /// Connections whose TLS handshake failed (the client refused us).
    tls_failures: Vec<String>,
    /// Where status webhooks go, signed with the app secret.
    webhook: Option<(String, String)>,
    /// Status webhooks answered 200 by the engine.
    statuses_posted: u32,
}

/// A mock Cloud API. `decide(key, attempt)` picks each answer (attempt
/// counts from 1 per key).
#[derive(Clone)]
pub struct MockCloudApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<MockState>>,
    ca: Arc<TestCa>,
}

impl MockCloudApi {
    pub async fn start(
        decide: impl Fn(&DeliveryKey, u32) -> Fault + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(MockState::default()));
        let decide: Decide = Arc::new(decide);
        let ca = Arc::new(TestCa::new());
        let tls = tokio_rustls::TlsAcceptor::from(ca.server(&["127.0.0.1", "localhost"]));
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let (tls, st, decide) = (tls.clone(), st.clone(), decide.clone());
                tokio::spawn(async move {
                    match tls.accept(sock).await {
                        Ok(stream) => serve_conn(stream, st, decide).await,
                        Err(e) => st.lock().unwrap().tls_failures.push(e.to_string()),
                    }
                });
            }
        });
        Self { addr, state, ca }
    }

    /// The base URL: `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The PEM file of the CA that signed the mock's certificate.
    pub fn ca_file(&self) -> String {
        self.ca.file.display().to_string()
    }

    /// Why each refused TLS handshake failed, as the mock saw it.
    pub fn tls_failures(&self) -> Vec<String> {
        self.state.lock().unwrap().tls_failures.clone()
    }

    /// Requests that may have delivered a message (accepted or dropped),
    /// in arrival order.
    pub fn deliveries(&self) -> Vec<Call> {
        let s = self.state.lock().unwrap();
        s.calls
            .iter()
            .filter(|c| matches!(c.fault, Fault::Accept | Fault::Drop))
            .cloned()
            .collect()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn shape_errors(&self) -> Vec<String> {
        self.state.lock().unwrap().shape_errors.clone()
    }

    /// From now on, posts `sent`, `delivered` and `read` status webhooks
    /// for every accepted message to the engine at `engine_url`, signed
    /// with `app_secret`, as Meta does.
    pub fn post_statuses_to(&self, engine_url: &str, app_secret: &str) {
        self.state.lock().unwrap().webhook = Some((engine_url.to_string(), app_secret.to_string()));
    }

    /// Whether the mock posts status webhooks.
    pub fn posts_statuses(&self) -> bool {
        self.state.lock().unwrap().webhook.is_some()
    }

    /// Status webhooks the engine took (answered 200).
    pub fn statuses_posted(&self) -> u32 {
        self.state.lock().unwrap().statuses_posted
    }

    /// Makes every later answer (or drop) wait `latency` after the request
    /// was read, so that workers hold their runs for a while.
    pub fn set_latency(&self, latency: Duration) {
        self.state.lock().unwrap().latency_ms = latency.as_millis() as u64;
    }
}

fn check_shape(
    method: &str,
    path: &str,
    headers: &BTreeMap<String, String>,
    body: &serde_json::Value,
) -> Result<(DeliveryKey, String, String), String> {
    let want_path = format!("/{VERSION}/{PHONE_NUMBER_ID}/messages");
    if method != "POST" || path != want_path {
        return Err(format!("{method} {path}, expected POST {want_path}"));
    }
    if headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {CLOUD_TOKEN}")) {
        return Err(format!("authorization {:?}", headers.get("authorization")));
    }
    let obj = body.as_object().ok_or("body is not an object")?;
    // The envelope, then exactly one message object, named by `type`.
    let kind = body["type"].as_str().ok_or("no type")?;
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = vec![
        "biz_opaque_callback_data",
        "messaging_product",
        "recipient_type",
        "to",
        "type",
        kind,
    ];
    want.sort_unstable();
    if keys != want {
        return Err(format!("body keys {keys:?}, expected {want:?}"));
    }
    if body["messaging_product"] != "whatsapp" || body["recipient_type"] != "individual" {
        return Err(format!("body {body}"));
    }
    const TYPES: &[&str] = &[
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
    if !TYPES.contains(&kind) {
        return Err(format!(
            "(#100) Param type must be one of {TYPES:?}, got {kind:?}"
        ));
    }
    let text = match kind {
        "text" => {
            if body["text"]["body"].as_str().is_none_or(|b| b.is_empty()) {
                return Err(format!("text without a body: {}", body["text"]));
            }
            body["text"]["body"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }
        _ => String::new(),
    };
    let to = body["to"].as_str().ok_or("no to")?;
    let key: DeliveryKey = body["biz_opaque_callback_data"]
        .as_str()
        .ok_or("no biz_opaque_callback_data")?
        .parse()
        .map_err(|e| format!("callback data: {e}"))?;
    Ok((key, to.to_string(), text))
}

async fn serve_conn(
    sock: impl AsyncRead + AsyncWrite + Unpin,
    state: Arc<Mutex<MockState>>,
    decide: Decide,
) {
    let mut reader = BufReader::new(sock);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).await.unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let (status, extra, payload) = match check_shape(&method, &path, &headers, &json) {
            Err(e) => {
                state.lock().unwrap().shape_errors.push(e.clone());
                (
                    400,
                    "",
                    format!(
                        r#"{{"error":{{"message":"{}","code":100}}}}"#,
                        e.replace('"', "'")
                    ),
                )
            }
            Ok((key, to, text)) => {
                let fault = {
                    let mut s = state.lock().unwrap();
                    let attempt = s.attempts.entry(key).or_default();
                    *attempt += 1;
                    let fault = decide(&key, *attempt);
                    let n = s.calls.len() + 1;
                    let message_id =
                        matches!(fault, Fault::Accept | Fault::Drop).then(|| format!("wamid.{n}"));
                    s.calls.push(Call {
                        key,
                        to: to.clone(),
                        text,
                        body: json.clone(),
                        fault,
                        message_id: message_id.clone(),
                    });
                    (fault, message_id, s.latency_ms)
                };
                let (fault, message_id, latency_ms) = fault;
                if latency_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(latency_ms)).await;
                }
                let fault = (fault, message_id);
                match fault {
                    (Fault::Accept, Some(id)) => (
                        200,
                        "",
                        format!(r#"{{"messaging_product":"whatsapp","contacts":[{{"input":"{to}","wa_id":"{}"}}],"messages":[{{"id":"{id}"}}]}}"#, &to[1..]),
                    ),
                    (Fault::Throttle, _) => (400, "Retry-After: 1\r\n", r#"{"error":{"message":"(#130429) Rate limit hit","type":"OAuthException","code":130429}}"#.into()),
                    (Fault::PairRate, _) => (400, "", r#"{"error":{"message":"(#131056) Pair rate limit hit","type":"OAuthException","code":131056}}"#.into()),
                    (Fault::ServerError, _) => (500, "", r#"{"error":{"message":"Service temporarily unavailable","code":2}}"#.into()),
                    (Fault::Error(code), _) => {
                        let (status, message, details) = documented_error(code);
                        let n = state.lock().unwrap().calls.len();
                        (status, "", serde_json::json!({"error": {
                            "message": format!("(#{code}) {message}"),
                            "type": "OAuthException",
                            "code": code,
                            "error_data": {"messaging_product": "whatsapp", "details": details},
                            "fbtrace_id": format!("AbCdEf{n}"),
                        }}).to_string())
                    }
                    // Accepted, then the connection is lost: no answer,
                    // but the message went, and Meta still reports it.
                    (Fault::Drop, Some(id)) => {
                        let webhook = state.lock().unwrap().webhook.clone();
                        if let Some((url, secret)) = webhook {
                            tokio::spawn(post_statuses(url, secret, id, json.clone(), state.clone()));
                        }
                        return;
                    }
                    _ => return,
                }
            }
        };
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{payload}",
            payload.len()
        );
        // A message taken is reported by its statuses whether or not the
        // answer reaches the caller (who may have died meanwhile).
        if status == 200 {
            let webhook = state.lock().unwrap().webhook.clone();
            if let (Some((url, secret)), Ok(accepted)) =
                (webhook, serde_json::from_str::<serde_json::Value>(&payload))
            {
                let id = accepted["messages"][0]["id"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                tokio::spawn(post_statuses(url, secret, id, json.clone(), state.clone()));
            }
        }
        let out = reader.get_mut();
        if out.write_all(response.as_bytes()).await.is_err() || out.flush().await.is_err() {
            return;
        }
    }
}

/// The `sent`, `delivered` and `read` statuses of one accepted message, each
/// in a webhook of its own, shaped and signed as Meta sends them.
async fn post_statuses(
    url: String,
    secret: String,
    id: String,
    request: serde_json::Value,
    state: Arc<Mutex<MockState>>,
) {
    let api = Api::new(&url, None);
    let to = request["to"]
        .as_str()
        .unwrap_or("+")
        .trim_start_matches('+');
    for status in ["sent", "delivered", "read"] {
        let status = serde_json::json!({
            "id": id,
            "status": status,
            "timestamp": "1764756000",
            "recipient_id": to,
            "biz_opaque_callback_data": request["biz_opaque_callback_data"],
            "pricing": {"billable": true, "pricing_model": "PMP", "type": "regular", "category": "utility"},
        });
        // Meta retries a webhook the engine did not take (it may be
        // restarting), backing off.
        for attempt in 0..40u64 {
            let answer = try_post_status(&api, &secret, status.clone()).await;
            if matches!(answer, Ok((200, _, _))) {
                state.lock().unwrap().statuses_posted += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100 + 50 * attempt)).await;
        }
    }
}

/// Posts one status in a webhook shaped and signed as Meta sends it.
pub async fn post_status(
    api: &Api,
    secret: &str,
    status: serde_json::Value,
) -> (u16, String, serde_json::Value) {
    try_post_status(api, secret, status)
        .await
        .unwrap_or_else(|e| panic!("status webhook: {e}"))
}

/// As [`post_status`]; an engine that does not answer is an error.
pub async fn try_post_status(
    api: &Api,
    secret: &str,
    status: serde_json::Value,
) -> Result<(u16, String, serde_json::Value), oncesend::net::HttpError> {
    let body = serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID},
            "statuses": [status],
        }}]}],
    });
    let body = serde_json::to_vec(&body).unwrap();
    let signature = oncesend::api::webhook::sign(secret, &body);
    api.try_raw(
        "POST",
        "/v1/providers/cloud-api/webhook",
        &[("x-hub-signature-256", signature)],
        Some(body),
    )
    .await
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
    /// Its stderr, when captured.
    pub logs: Logs,
}

/// The JSON log lines a child wrote to stderr (other lines are kept as
/// strings).
#[derive(Clone, Default)]
pub struct Logs(
    Arc<Mutex<Vec<serde_json::Value>>>,
    /// True once the child's stderr is closed and every line is in.
    Option<tokio::sync::watch::Receiver<bool>>,
);

impl Logs {
    /// Collects `stderr` in the background.
    fn capture(stderr: tokio::process::ChildStderr) -> Self {
        let (closed, done) = tokio::sync::watch::channel(false);
        let logs = Logs(Arc::default(), Some(done));
        let keep = logs.0.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let v = serde_json::from_str::<serde_json::Value>(&line)
                    .unwrap_or(serde_json::Value::String(line));
                keep.lock().unwrap().push(v);
            }
            let _ = closed.send(true);
        });
        logs
    }

    /// Waits, at most `within`, until the child's stderr has closed and
    /// every line it wrote is collected: a process that has exited may
    /// still have lines in the pipe that the reader has not taken yet.
    pub async fn until_closed(&self, within: Duration) {
        if let Some(done) = &self.1 {
            let mut done = done.clone();
            let _ = tokio::time::timeout(within, done.wait_for(|closed| *closed)).await;
        }
    }

    /// The lines whose message is `message`.
    pub fn with_message(&self, message: &str) -> Vec<serde_json::Value> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v.pointer("/fields/message").and_then(|m| m.as_str()) == Some(message))
            .cloned()
            .collect()
    }

    /// Everything, for a failure message.
    pub fn dump(&self) -> String {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    /// Waits for the process to exit, at most `within`.
    pub async fn exit_within(&mut self, within: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => {
                self.logs.until_closed(within).await;
                status.unwrap()
            }
            Err(_) => panic!(
                "{} did not exit within {within:?}; its log:\n{}",
                self.name,
                self.logs.dump()
            ),
        }
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {}", self.name);
    }
}

/// Env for a default tenant on the mock.
pub fn cloud_env(mock: &MockCloudApi) -> Vec<(&'static str, String)> {
    vec![
        ("ONCESEND_PROVIDER", "cloud-api".into()),
        ("ONCESEND_CLOUD_API_URL", mock.url()),
        ("ONCESEND_CA_FILE", mock.ca_file()),
        ("ONCESEND_CLOUD_API_TOKEN", CLOUD_TOKEN.into()),
        ("ONCESEND_PHONE_NUMBER_ID", PHONE_NUMBER_ID.into()),
        ("ONCESEND_CLOUD_API_VERSION", VERSION.into()),
    ]
}

/// Starts `oncesend up` and waits for its banner; returns it and its URL.
pub async fn start_up(args: &[&str], env: &[(&'static str, String)]) -> (Proc, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oncesend"));
    cmd.arg("up")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("ONCESEND_TOKEN")
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start oncesend up");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("oncesend is up at ") {
                return url.trim().to_string();
            }
        }
        panic!("oncesend up exited before printing its URL");
    })
    .await
    .expect("oncesend up printed its URL in time");
    // Keep draining stdout so the log provider never blocks.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (
        Proc {
            child,
            name: "oncesend up",
            logs: Logs::default(),
        },
        url,
    )
}

/// Starts `oncesend-engine` (JSON logs) and waits until it listens.
pub async fn start_engine(args: &[&str], env: &[(&'static str, String)]) -> (Proc, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oncesend-engine"));
    if !args.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    cmd.args(args)
        .env_remove("ONCESEND_TOKEN")
        .env("ONCESEND_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start oncesend-engine");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if let Some(addr) = v.pointer("/fields/addr").and_then(|a| a.as_str()) {
                return format!("http://{addr}");
            }
        }
        panic!("oncesend-engine exited before listening");
    })
    .await
    .expect("engine listened in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (
        Proc {
            child,
            name: "oncesend-engine",
            logs: Logs::default(),
        },
        url,
    )
}

/// Starts a daemon binary with JSON logs captured (debug for oncesend's
/// own targets), without waiting for anything.
pub fn spawn_daemon(
    name: &'static str,
    bin: &str,
    args: &[&str],
    env: &[(&'static str, String)],
) -> Proc {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("ONCESEND_TOKEN")
        .env("ONCESEND_LOG_FORMAT", "json")
        .env("RUST_LOG", "warn,oncesend=debug,oncesend_core=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
    let logs = Logs::capture(child.stderr.take().unwrap());
    Proc { child, name, logs }
}

/// Starts `oncesend-worker` on `database_url` against the engine at
/// `engine_url`, with short leases, and waits until it works.
pub async fn start_worker(engine_url: &str, database_url: &str, id: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "--engine-url",
        engine_url,
        "--worker-id",
        id,
        "--lease-ms",
        "3000",
        "--send-timeout-ms",
        "1000",
        "--poll-ms",
        "20",
    ];
    if !extra.contains(&"--unknown-timeout-ms") {
        args.extend_from_slice(&["--unknown-timeout-ms", UNKNOWN_TIMEOUT_MS]);
    }
    args.extend_from_slice(extra);
    let mut p = spawn_daemon(
        "oncesend-worker",
        env!("CARGO_BIN_EXE_oncesend-worker"),
        &args,
        &[("DATABASE_URL", database_url.to_string())],
    );
    let logs = p.logs.clone();
    eventually("the worker to start", Duration::from_secs(30), || {
        let started = !logs.with_message("worker started").is_empty();
        async move { started }
    })
    .await;
    assert!(p.running(), "{}", p.logs.dump());
    p
}

/// A database of its own for one test: a fresh SQLite file, or a fresh
/// PostgreSQL database on `TEST_DATABASE_URL`'s server.
pub enum TestDb {
    Sqlite(std::path::PathBuf),
    Postgres {
        admin: sqlx::PgPool,
        name: String,
        url: String,
    },
}

impl TestDb {
    /// A fresh SQLite file.
    pub fn sqlite(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("oncesend-{name}-{}.db", std::process::id()));
        remove_sqlite(&path);
        TestDb::Sqlite(path)
    }

    /// A fresh PostgreSQL database, or `None` (with a note) when
    /// `TEST_DATABASE_URL` is unset. Panics, failing the test, when it is
    /// set and the server does not answer.
    pub async fn postgres(name: &str) -> Option<Self> {
        let admin_url = match std::env::var("TEST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => {
                eprintln!("TEST_DATABASE_URL is not set: the PostgreSQL variant of this test does not run");
                return None;
            }
        };
        let admin = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&admin_url)
            .await
            .unwrap_or_else(|e| {
                panic!("TEST_DATABASE_URL is set but PostgreSQL does not answer: {e}")
            });
        let name = format!("oncesend_{name}_{}", std::process::id());
        for sql in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
        ] {
            sqlx::raw_sql(&sql)
                .execute(&admin)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        let url = with_database(&admin_url, &name);
        Some(TestDb::Postgres { admin, name, url })
    }

    pub fn url(&self) -> String {
        match self {
            TestDb::Sqlite(path) => format!("sqlite://{}?mode=rwc", path.display()),
            TestDb::Postgres { url, .. } => url.clone(),
        }
    }

    /// Removes the database (after its processes are gone).
    pub async fn remove(self) {
        match self {
            TestDb::Sqlite(path) => remove_sqlite(&path),
            TestDb::Postgres { admin, name, .. } => {
                let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&admin)
                    .await;
            }
        }
    }
}

fn remove_sqlite(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.to_path_buf().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

/// `postgres://user@host:port/db?query` with `db` replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (head, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let authority_start = head.find("://").map_or(0, |i| i + 3);
    let base = match head[authority_start..].find('/') {
        Some(slash) => &head[..authority_start + slash],
        None => head,
    };
    format!("{base}/{name}{query}")
}

/// A JSON client for the API.
pub struct Api {
    http: HttpClient<TcpConnector>,
}

impl Api {
    pub fn new(url: &str, token: Option<&str>) -> Self {
        let u = oncesend::net::HttpUrl::parse(url).unwrap();
        Self {
            http: HttpClient::new(
                TcpConnector::new(u.addr),
                &u.authority,
                token.map(str::to_string),
                Duration::from_secs(20),
            ),
        }
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> (u16, String, serde_json::Value) {
        self.try_raw(method, path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// As [`Api::raw`], but a request that gets no answer (the engine is
    /// down) is an error, not a panic.
    pub async fn try_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<(u16, String, serde_json::Value), oncesend::net::HttpError> {
        let (status, h, bytes) = self
            .http
            .request(method.parse().unwrap(), path, headers, body)
            .await?;
        let ct = h
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Ok((status.as_u16(), ct, json))
    }

    pub async fn json(
        &self,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let (s, _, j) = self
            .raw(method, path, &[], Some(serde_json::to_vec(&body).unwrap()))
            .await;
        (s, j)
    }

    /// A GET whose answer is text (`/metrics`).
    pub async fn text(&self, path: &str) -> (u16, String) {
        let (status, _, bytes) = self
            .http
            .request(hyper::Method::GET, path, &[], None)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        (
            status.as_u16(),
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let (s, _, j) = self.raw("GET", path, &[], None).await;
        (s, j)
    }
}

/// Polls `cond` until it holds or `deadline` passes.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A stable pick per key, so faults land on ~5% of keys each.
fn bucket(key: &DeliveryKey) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.to_string().bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h % 100
}

/// The mock's answers: throttling (each one holds the whole sender for its
/// `Retry-After`, so only ~1% of keys), pair-rate refusals, server errors
/// on the first attempts of some keys, and a dropped reply on ~2% of keys.
pub fn faults(key: &DeliveryKey, attempt: u32) -> Fault {
    match (bucket(key), attempt) {
        (0, 1) => Fault::Throttle,
        (5..=9, 1) => Fault::PairRate,
        (10..=14, 1 | 2) => Fault::ServerError,
        (15..=16, _) => Fault::Drop,
        _ => Fault::Accept,
    }
}

/// Flags for `oncesend-engine` that keep tests fast: no pacing, a short
/// send timeout.
pub const ENGINE_FAST: &[&str] = &[
    "--recipient-gap-ms",
    "0",
    "--rate-per-sec",
    "100000",
    "--send-timeout-ms",
    "1000",
];

/// Flags for `oncesend up` that keep tests fast: no pacing, short leases
/// and timeouts.
pub const FAST: &[&str] = &[
    "--recipient-gap-ms",
    "0",
    "--rate-per-sec",
    "100000",
    "--send-timeout-ms",
    "1000",
    "--lease-ms",
    "3000",
    "--poll-ms",
    "20",
    "--unknown-timeout-ms",
    UNKNOWN_TIMEOUT_MS,
];

/// How long runs wait for a status on an unknown step in these tests.
pub const UNKNOWN_TIMEOUT_MS: &str = "1500";

/// Creates the three-step flow `onboarding`.
pub async fn put_flow(api: &Api) {
    let (s, j) = api
        .json(
            "PUT",
            "/v1/flows/onboarding",
            serde_json::json!({"steps": [
                {"text": "Hi {{name}}", "delay_ms": 0},
                {"text": "Your code is {{code}}", "delay_ms": 0},
                {"text": "Bye {{name}}", "delay_ms": 0},
            ]}),
        )
        .await;
    assert_eq!(s, 201, "{j}");
}

/// Triggers `runs` runs of `onboarding` over `recipients` recipients, each
/// with its own Idempotency-Key.
pub async fn trigger(api: &Api, runs: u32, recipients: u32) -> Vec<Accepted> {
    let mut accepted = Vec::new();
    for i in 0..runs {
        let to = format!("+55119{:08}", 10_000 + i % recipients);
        let body = serde_json::json!({"to": to, "vars": {"name": format!("n{i}"), "code": i}});
        let (s, _, j) = api
            .raw(
                "POST",
                "/v1/flows/onboarding/runs",
                &[("idempotency-key", format!("trigger-{i}"))],
                Some(serde_json::to_vec(&body).unwrap()),
            )
            .await;
        assert_eq!(s, 201, "{j}");
        accepted.push(Accepted {
            run: j["run_id"].as_str().unwrap().parse().unwrap(),
            tenant: TenantId::default_tenant(),
            to: Recipient::parse(&to).unwrap(),
            steps: 3,
        });
    }
    accepted
}

/// How many runs have `status`.
pub async fn count(api: &Api, status: &str) -> usize {
    let (s, j) = api
        .get(&format!("/v1/runs?status={status}&limit=1000"))
        .await;
    assert_eq!(s, 200, "{j}");
    j["runs"].as_array().unwrap().len()
}

/// Waits until all `runs` runs are completed, failed or cancelled. (Counting
/// pending and leased runs instead would race: a run released for a retry
/// can move from leased to pending between the two counts.)
pub async fn all_finished(api: &Api, runs: usize, deadline: Duration) {
    eventually("every run to finish", deadline, || async {
        count(api, "completed").await + count(api, "failed").await + count(api, "cancelled").await
            == runs
    })
    .await;
}

/// What the run API and the mock say once every run has finished.
pub struct Outcome {
    pub finals: BTreeMap<RunId, FinalRun>,
    /// Requests that may have delivered a message, in arrival order.
    pub deliveries: Vec<Call>,
    /// Keys whose reply the mock dropped.
    pub dropped: BTreeSet<DeliveryKey>,
}

/// Reads every run back and holds the history to the checker: each step
/// reached the mock at most once and in order, nothing was lost, and the
/// run API names each message id the mock gave out. When the mock posts
/// status webhooks, every run completed: a step whose reply was dropped
/// waited for its status and went on. When it does not, such a step stays
/// `unknown` and its run failed when its wait ran out.
pub async fn check_exactly_once(api: &Api, mock: &MockCloudApi, accepted: &[Accepted]) -> Outcome {
    let mut finals = BTreeMap::new();
    let mut unknown_keys = BTreeSet::new();
    let mut sent_ids = BTreeMap::new();
    for a in accepted {
        let (s, v) = api.get(&format!("/v1/runs/{}", a.run)).await;
        assert_eq!(s, 200, "{v}");
        let status = RunStatus::parse(v["status"].as_str().unwrap()).unwrap();
        let mut unknown_steps = Vec::new();
        for step in v["steps"].as_array().unwrap() {
            let index = step["index"].as_u64().unwrap() as u32;
            let key = DeliveryKey {
                run: a.run,
                step: index,
            };
            match step["status"].as_str().unwrap() {
                "unknown" => {
                    unknown_steps.push(index);
                    unknown_keys.insert(key);
                }
                // Status webhooks move a sent step on.
                "sent" | "delivered" | "read" => {
                    sent_ids.insert(
                        key,
                        step["provider_message_id"].as_str().unwrap().to_string(),
                    );
                }
                other => assert!(
                    other == "pending" && status == RunStatus::Failed,
                    "run {} step {index} is {other}: {v}",
                    a.run
                ),
            }
        }
        finals.insert(
            a.run,
            FinalRun {
                status,
                cursor: v["cursor"].as_u64().unwrap() as u32,
                reason: v["reason"].as_str().map(str::to_string),
                unknown_steps,
            },
        );
    }
    let deliveries = mock.deliveries();
    assert!(mock.shape_errors().is_empty(), "{:?}", mock.shape_errors());
    let history = History {
        accepted: accepted.to_vec(),
        calls: deliveries
            .iter()
            .enumerate()
            .map(|(i, c)| ProviderCall {
                key: c.key,
                at_ms: i as u64,
            })
            .collect(),
        finals: finals.clone(),
        ..History::default()
    };
    let report = check(&history);
    assert!(report.is_clean(), "{report}");
    // At most one delivery per key, dropped replies included.
    let mut seen = BTreeSet::new();
    for c in &deliveries {
        assert!(seen.insert(c.key), "{} reached the provider twice", c.key);
    }

    let dropped: BTreeSet<DeliveryKey> = deliveries
        .iter()
        .filter(|c| c.fault == Fault::Drop)
        .map(|c| c.key)
        .collect();
    let statuses = mock.posts_statuses();
    if statuses {
        assert!(unknown_keys.is_empty(), "{unknown_keys:?}");
    } else {
        assert_eq!(unknown_keys, dropped);
    }
    for a in accepted {
        let f = &finals[&a.run];
        if f.unknown_steps.is_empty() {
            assert_eq!(f.status, RunStatus::Completed, "{f:?}");
        } else {
            assert_eq!(f.status, RunStatus::Failed, "{f:?}");
            assert!(
                f.reason.as_deref().unwrap().contains("unknown timeout"),
                "{f:?}"
            );
        }
    }
    // With statuses, a dropped reply's step knows its message id from them.
    let named = |c: &&Call| c.fault == Fault::Accept || (statuses && c.fault == Fault::Drop);
    for c in deliveries.iter().filter(named) {
        assert_eq!(sent_ids.get(&c.key), c.message_id.as_ref(), "{}", c.key);
    }
    assert_eq!(sent_ids.len(), deliveries.iter().filter(named).count());
    // Each message went to its own run's recipient.
    let to: BTreeMap<RunId, &str> = accepted.iter().map(|a| (a.run, a.to.as_str())).collect();
    for c in &deliveries {
        assert_eq!(c.to, to[&c.key.run]);
    }
    Outcome {
        finals,
        deliveries,
        dropped,
    }
}
