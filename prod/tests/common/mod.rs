//! Shared by the process-level tests: a mock WhatsApp Cloud API speaking
//! real HTTP on 127.0.0.1, the real binaries as child processes, and a
//! small HTTP client.
#![allow(dead_code)]

use oncesend::net::{HttpClient, TcpConnector};
use oncesend_core::DeliveryKey;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

pub const PHONE_NUMBER_ID: &str = "1234";
pub const CLOUD_TOKEN: &str = "cloud-token";
pub const VERSION: &str = "v21.0";

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
}

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Call {
    pub key: DeliveryKey,
    pub to: String,
    pub text: String,
    pub fault: Fault,
    pub message_id: Option<String>,
}

type Decide = Arc<dyn Fn(&DeliveryKey, u32) -> Fault + Send + Sync>;

#[derive(Default)]
struct MockState {
    calls: Vec<Call>,
    attempts: BTreeMap<DeliveryKey, u32>,
    shape_errors: Vec<String>,
}

/// A mock Cloud API. `decide(key, attempt)` picks each answer (attempt
/// counts from 1 per key).
#[derive(Clone)]
pub struct MockCloudApi {
    pub addr: SocketAddr,
    state: Arc<Mutex<MockState>>,
}

impl MockCloudApi {
    pub async fn start(
        decide: impl Fn(&DeliveryKey, u32) -> Fault + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(MockState::default()));
        let decide: Decide = Arc::new(decide);
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve_conn(sock, st.clone(), decide.clone()));
            }
        });
        Self { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    if keys
        != [
            "biz_opaque_callback_data",
            "messaging_product",
            "recipient_type",
            "text",
            "to",
            "type",
        ]
    {
        return Err(format!("body keys {keys:?}"));
    }
    if body["messaging_product"] != "whatsapp"
        || body["recipient_type"] != "individual"
        || body["type"] != "text"
    {
        return Err(format!("body {body}"));
    }
    let text = body
        .pointer("/text/body")
        .and_then(|t| t.as_str())
        .ok_or("no text.body")?;
    if body["text"].as_object().map(|o| o.len()) != Some(1) {
        return Err(format!("text {}", body["text"]));
    }
    let to = body["to"].as_str().ok_or("no to")?;
    let key: DeliveryKey = body["biz_opaque_callback_data"]
        .as_str()
        .ok_or("no biz_opaque_callback_data")?
        .parse()
        .map_err(|e| format!("callback data: {e}"))?;
    Ok((key, to.to_string(), text.to_string()))
}

async fn serve_conn(sock: TcpStream, state: Arc<Mutex<MockState>>, decide: Decide) {
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
                        fault,
                        message_id: message_id.clone(),
                    });
                    (fault, message_id)
                };
                match fault {
                    (Fault::Accept, Some(id)) => (
                        200,
                        "",
                        format!(r#"{{"messaging_product":"whatsapp","contacts":[{{"input":"{to}","wa_id":"{}"}}],"messages":[{{"id":"{id}"}}]}}"#, &to[1..]),
                    ),
                    (Fault::Throttle, _) => (400, "Retry-After: 1\r\n", r#"{"error":{"message":"(#130429) Rate limit hit","type":"OAuthException","code":130429}}"#.into()),
                    (Fault::PairRate, _) => (400, "", r#"{"error":{"message":"(#131056) Pair rate limit hit","type":"OAuthException","code":131056}}"#.into()),
                    (Fault::ServerError, _) => (500, "", r#"{"error":{"message":"Service temporarily unavailable","code":2}}"#.into()),
                    // Accepted, then the connection is lost: no answer.
                    _ => return,
                }
            }
        };
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{payload}",
            payload.len()
        );
        if reader
            .get_mut()
            .write_all(response.as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
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
        },
        url,
    )
}

/// Starts `oncesend-engine` (JSON logs) and waits until it listens.
pub async fn start_engine(args: &[&str], env: &[(&'static str, String)]) -> (Proc, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oncesend-engine"));
    cmd.args(["--listen", "127.0.0.1:0"])
        .args(args)
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
        },
        url,
    )
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
        let (status, h, bytes) = self
            .http
            .request(method.parse().unwrap(), path, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let ct = h
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status.as_u16(), ct, json)
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
