//! The web console in a real browser: headless Chromium, driven through
//! chromedriver, against `oncesend up` on SQLite. Each test signs in (or
//! finds it need not), acts as an operator would, and checks both what the
//! page shows and what the API says happened. Screenshots go to
//! `target/ui-screenshots/`.

use crate::common::{cloud_env, eventually, start_up, Api, Fault, MockCloudApi, TestDb};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Longest any condition in the page may take to hold (the page refreshes
/// every 5 s; an action redraws at once).
const PAGE_WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "console-test-token";
/// Text that would run if the page ever put data in as markup.
const SCRIPT: &str = "<script>window.__pwned=1</script>";

/// Installs Chromium and its driver when they are missing; fails the test,
/// saying what to do, when that is not possible. Never skips.
fn ensure_chromium() {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let present = || Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if present() {
        return;
    }
    eprintln!(
        "{CHROMIUM} or {CHROMEDRIVER} is missing: apt-get install -y chromium chromium-driver"
    );
    let apt = |args: &[&str]| {
        std::process::Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    let packages = ["install", "-y", "chromium", "chromium-driver"];
    let mut install = apt(&packages);
    if !present() {
        // Stale package lists are the usual reason: fetch them once, retry.
        let _ = apt(&["update"]);
        install = apt(&packages);
    }
    assert!(
        present(),
        "the console tests drive a real browser and need {CHROMIUM} and {CHROMEDRIVER} \
         (Debian packages chromium and chromium-driver); installing them failed ({install:?}). \
         Run `apt-get install -y chromium chromium-driver` as root, then test again"
    );
}

/// A headless Chromium session; its driver is killed when dropped.
struct Browser {
    web: Client,
    _driver: Child,
    shots: PathBuf,
}

impl Browser {
    async fn start() -> Self {
        ensure_chromium();
        // A free port for the driver: the OS picks one, the driver takes it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("started successfully") {
                    return;
                }
            }
            panic!("chromedriver exited before it listened on port {port}");
        })
        .await
        .expect("chromedriver started within 30 s");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000"],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let web = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("no Chromium session from chromedriver: {e}"));
        let shots = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("the target directory")
            .join("ui-screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        Self {
            web,
            _driver: driver,
            shots,
        }
    }

    /// The element at `xpath` once it exists, or a failure naming it and
    /// showing what the page says instead.
    async fn wait_for(&self, xpath: &str) -> Element {
        match self
            .web
            .wait()
            .at_most(PAGE_WAIT)
            .for_element(Locator::XPath(xpath))
            .await
        {
            Ok(e) => e,
            Err(e) => {
                let text = self
                    .web
                    .find(Locator::Css("body"))
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap_or_default();
                self.shot("failure").await;
                panic!("no {xpath} in the page within {PAGE_WAIT:?} ({e}); it shows:\n{text}")
            }
        }
    }

    async fn click(&self, xpath: &str) {
        self.wait_for(xpath).await.click().await.unwrap();
    }

    /// Confirms the open confirmation, after checking it says `says`;
    /// `input`, when given, goes in its field first.
    async fn confirm(&self, says: &str, input: Option<&str>) {
        let text = self
            .wait_for("//dialog[@id='confirm' and @open]//p[@id='confirm-text']")
            .await
            .text()
            .await
            .unwrap();
        assert!(text.contains(says), "the confirmation says {text:?}");
        if let Some(v) = input {
            self.wait_for("//input[@id='confirm-input']")
                .await
                .send_keys(v)
                .await
                .unwrap();
        }
        self.click("//button[@id='confirm-yes']").await;
        self.wait_for("//dialog[@id='confirm' and not(@open)]")
            .await;
    }

    async fn shot(&self, name: &str) {
        if let Ok(png) = self.web.screenshot().await {
            let path = self.shots.join(format!("{name}.png"));
            std::fs::write(&path, png).unwrap();
            eprintln!("screenshot: {}", path.display());
        }
    }

    /// `typeof window.__pwned`: "undefined" unless a script from data ran.
    async fn pwned(&self) -> String {
        self.web
            .execute("return typeof window.__pwned;", vec![])
            .await
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }
}

async fn run_status(api: &Api, run: &str) -> String {
    let (code, body) = api.get(&format!("/v1/runs/{run}")).await;
    assert_eq!(code, 200, "{body}");
    body["status"].as_str().unwrap().to_string()
}

/// Signs in, lists runs, reads a run's timeline, cancels it, pauses and
/// resumes a sender, sees a flow's `<script>` as text, and triggers a run
/// from the Flows page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_works_the_console_in_a_real_browser() {
    let db = TestDb::sqlite("console-browser");
    let (_up, url) = start_up(
        &["--recipient-gap-ms", "0"],
        &[("DATABASE_URL", db.url()), ("ONCESEND_TOKEN", TOKEN.into())],
    )
    .await;
    let api = Api::new(&url, Some(TOKEN));
    let (code, body) = api
        .json(
            "PUT",
            "/v1/flows/greeting",
            serde_json::json!({"steps": [
                {"text": format!("Hi {{{{name}}}}! {SCRIPT}"), "delay_ms": 0},
                {"message": {"type": "template", "template": {"name": "order_ready",
                    "language": {"code": "pt_BR"},
                    "components": [{"type": "body", "parameters": [{"type": "text", "text": "{{name}}"}]}]}}},
                {"text": "See you tomorrow", "delay_ms": 3_600_000},
            ]}),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let mut runs = Vec::new();
    for to in ["+5511900000001", "+5511900000002"] {
        let (code, body) = api
            .json(
                "POST",
                "/v1/flows/greeting/runs",
                serde_json::json!({"to": to, "vars": {"name": "Ana"}}),
            )
            .await;
        assert_eq!(code, 201, "{body}");
        runs.push(body["run_id"].as_str().unwrap().to_string());
    }
    let run = runs[0].clone();

    let b = Browser::start().await;
    // Sign in: the page asks, since the engine has a token.
    b.web.goto(&format!("{url}/ui")).await.unwrap();
    b.wait_for("//section[@id='sign-in' and not(@hidden)]//input[@id='token']")
        .await
        .send_keys("wrong-token")
        .await
        .unwrap();
    b.click("//form[@id='sign-in-form']//button").await;
    b.wait_for("//p[@id='sign-in-error' and not(@hidden) and contains(., 'refused')]")
        .await;
    b.wait_for("//input[@id='token']")
        .await
        .send_keys(TOKEN)
        .await
        .unwrap();
    b.click("//form[@id='sign-in-form']//button").await;

    // The runs list, with both runs and the counts.
    for r in &runs {
        b.wait_for(&format!("//table[@id='runs']//tr[@data-run='{r}']"))
            .await;
    }
    b.wait_for("//div[@id='counts']//a[@data-count='pending']/b")
        .await;
    b.shot("runs-list").await;
    // Filtered by recipient, only the second run is left.
    b.wait_for("//form[@id='run-filters']//input[@name='to']")
        .await
        .send_keys("+5511900000002")
        .await
        .unwrap();
    b.click("//form[@id='run-filters']//button").await;
    b.wait_for(&format!(
        "//table[@id='runs' and not(.//tr[@data-run='{run}'])]//tr[@data-run='{}']",
        runs[1]
    ))
    .await;
    b.web.goto(&format!("{url}/ui#/runs")).await.unwrap();

    // The run's timeline: its first two steps go out at once, the third
    // waits an hour. The flow's script is text and never ran.
    b.click(&format!("//table[@id='runs']//a[text()='{run}']"))
        .await;
    for step in [0, 1] {
        b.wait_for(&format!(
            "//ol[@id='timeline']/li[@data-step='{step}']//span[contains(@class,'badge') and text()='sent']"
        ))
        .await;
    }
    b.wait_for("//ol[@id='timeline']/li[@data-step='2']//span[contains(@class,'badge') and text()='pending']")
        .await;
    b.wait_for("//ol[@id='timeline']/li[@data-step='1']//b[text()='order_ready']")
        .await;
    let first = b
        .wait_for("//ol[@id='timeline']/li[@data-step='0']//p[@class='text']")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(first, format!("Hi Ana! {SCRIPT}"));
    assert_eq!(b.pwned().await, "undefined", "a script from a flow ran");
    b.shot("run-timeline").await;

    // Cancel it, through the confirmation.
    b.click("//button[@id='cancel-run']").await;
    b.confirm("no further step", None).await;
    b.wait_for("//span[@id='run-status']/span[text()='cancelled']")
        .await;
    assert_eq!(run_status(&api, &run).await, "cancelled");
    b.shot("run-cancelled").await;

    // Pause the default sender with a reason, then resume it.
    b.click("//nav//a[@data-page='senders']").await;
    let card = "//section[@data-tenant='default']";
    b.wait_for(&format!(
        "{card}//span[@class='sender-state']/span[text()='active']"
    ))
    .await;
    b.click(&format!("{card}//button[contains(@class,'pause')]"))
        .await;
    b.confirm("Nothing more of this tenant", Some("template review"))
        .await;
    b.wait_for(&format!(
        "{card}//span[@class='sender-state']/span[text()='paused']"
    ))
    .await;
    b.wait_for(&format!("{card}//dd[contains(., 'template review')]"))
        .await;
    let (_, tenant) = api.get("/v1/tenants/default").await;
    assert!(
        tenant["paused"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("template review")),
        "{tenant}"
    );
    b.shot("senders-paused").await;
    b.click(&format!("{card}//button[contains(@class,'resume')]"))
        .await;
    b.confirm("waiting runs go on", None).await;
    b.wait_for(&format!(
        "{card}//span[@class='sender-state']/span[text()='active']"
    ))
    .await;
    let (_, tenant) = api.get("/v1/tenants/default").await;
    assert!(tenant["paused"].is_null(), "{tenant}");

    // Suppress a recipient by hand, then lift it.
    let who = "+5511900000099";
    b.wait_for(&format!("{card}//form[@class='inline']/input[@name='to']"))
        .await
        .send_keys(who)
        .await
        .unwrap();
    b.wait_for(&format!(
        "{card}//form[@class='inline']/input[@name='reason']"
    ))
    .await
    .send_keys("asked by phone")
    .await
    .unwrap();
    b.click(&format!("{card}//form[@class='inline']/button"))
        .await;
    b.confirm("their unfinished runs are cancelled", None).await;
    b.wait_for(&format!(
        "{card}//table[@class='suppressions']//tr[td[text()='{who}'] and td[text()='asked by phone']]"
    ))
    .await;
    let (code, _) = api
        .get(&format!("/v1/tenants/default/suppressions/{who}"))
        .await;
    assert_eq!(code, 200, "the opt-out is stored");
    b.click(&format!(
        "{card}//tr[td[text()='{who}']]//button[contains(@class,'lift')]"
    ))
    .await;
    b.confirm("accepted again", None).await;
    b.wait_for(&format!("{card}//td[text()='Nobody has opted out.']"))
        .await;
    let (code, _) = api
        .get(&format!("/v1/tenants/default/suppressions/{who}"))
        .await;
    assert_eq!(code, 404, "the opt-out is lifted");

    // The flow as the recipient would see it, the script as text; and a
    // test run triggered from it.
    b.click("//nav//a[@data-page='flows']").await;
    let flow = "//section[@data-flow='greeting']";
    let text = b
        .wait_for(&format!("{flow}//li[@data-step='0']//p[@class='text']"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(text, format!("Hi {{{{name}}}}! {SCRIPT}"));
    b.wait_for(&format!(
        "{flow}//li[@data-step='1']//span[@class='chip' and text()='{{{{1}}}} = {{{{name}}}}']"
    ))
    .await;
    assert_eq!(b.pwned().await, "undefined", "a script from a flow ran");
    b.wait_for(&format!("{flow}//input[@name='to']"))
        .await
        .send_keys("+5511900000003")
        .await
        .unwrap();
    let vars = b.wait_for(&format!("{flow}//textarea[@name='vars']")).await;
    // Filled in with the variables the flow's steps use.
    assert_eq!(
        vars.prop("value").await.unwrap().as_deref(),
        Some(r#"{"name":""}"#)
    );
    vars.clear().await.unwrap();
    vars.send_keys(r#"{"name": "Bia"}"#).await.unwrap();
    b.click(&format!("{flow}//form[@class='trigger']/button"))
        .await;
    b.confirm("starts a real run", None).await;
    let link = b
        .wait_for(&format!("{flow}//a[contains(@class,'run-link')]"))
        .await;
    let triggered = link.text().await.unwrap();
    let (code, body) = api.get(&format!("/v1/runs/{triggered}")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["to"], "+5511900000003");
    b.shot("flows").await;
    link.click().await.unwrap();
    b.wait_for(
        "//ol[@id='timeline']/li[@data-step='0']//p[@class='text' and starts-with(., 'Hi Bia!')]",
    )
    .await;

    // Health: the figures, and a line of the last hour's samples once the
    // engine has taken two (it takes one at start, then one every 5 s).
    b.click("//nav//a[@data-page='health']").await;
    b.wait_for("//div[@data-figure='depth']/b").await;
    b.wait_for("//div[@data-figure='depth']/*[name()='svg']/*[name()='polyline']")
        .await;
    let (code, history) = api.get("/v1/stats/history").await;
    assert_eq!(code, 200, "{history}");
    assert_eq!(history["every_ms"], 5_000);
    assert!(
        history["samples"].as_array().unwrap().len() >= 2,
        "{history}"
    );
    b.wait_for("//table[contains(@class,'sends')]//th[text()='sent']")
        .await;
    // The sends made above fell in some sample's window: their latency is
    // in the history, and on the page with its line.
    let (_, history) = api.get("/v1/stats/history").await;
    let timed: Vec<&serde_json::Value> = history["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| !s["send_latency"].is_null())
        .collect();
    assert!(!timed.is_empty(), "no sample timed a send: {history}");
    let answered: u64 = timed
        .iter()
        .map(|s| s["send_latency"]["count"].as_u64().unwrap())
        .sum();
    assert!(answered >= 4, "{history}");
    for s in &timed {
        let l = &s["send_latency"];
        assert!(l["p50_ms"].as_u64() <= l["p99_ms"].as_u64(), "{l}");
        assert!(l["p99_ms"].as_u64() <= l["max_ms"].as_u64(), "{l}");
    }
    for figure in ["latency-p50", "latency-p99"] {
        b.wait_for(&format!(
            "//div[@data-figure='{figure}']/b[contains(., ' ms')]"
        ))
        .await;
    }
    b.wait_for("//div[@data-figure='sent-rate']/b[contains(., '/s')]")
        .await;
    b.shot("health").await;
    assert_eq!(b.pwned().await, "undefined");
    let _ = b.web.close().await;
    db.remove().await;
}

/// Against a Cloud API that first drops a request after reading it (the
/// step's outcome is unknown), then refuses one recipient (131026, the run
/// fails): the operator resolves the unknown step as sent and retries the
/// failed run from the console, each through its confirmation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_settles_an_unknown_step_and_retries_a_failed_run() {
    use std::sync::atomic::{AtomicU8, Ordering};
    const DROP: u8 = 0;
    const REFUSE_ONCE: u8 = 1;
    let mode = std::sync::Arc::new(AtomicU8::new(DROP));
    let m = mode.clone();
    let mock = MockCloudApi::start(move |_, attempt| match m.load(Ordering::SeqCst) {
        DROP => Fault::Drop,
        _ if attempt == 1 => Fault::Error(131026),
        _ => Fault::Accept,
    })
    .await;
    let db = TestDb::sqlite("console-settle");
    let mut env = cloud_env(&mock);
    env.push(("DATABASE_URL", db.url()));
    let (_up, url) = start_up(&["--recipient-gap-ms", "0"], &env).await;
    let api = Api::new(&url, None);
    let (code, body) = api
        .json(
            "PUT",
            "/v1/flows/notice",
            serde_json::json!({"steps": [{"message": {"type": "template", "template": {
                "name": "order_ready", "language": {"code": "pt_BR"}}}}]}),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let trigger = |to: &'static str| {
        let api = &api;
        async move {
            let (code, body) = api
                .json(
                    "POST",
                    "/v1/flows/notice/runs",
                    serde_json::json!({"to": to}),
                )
                .await;
            assert_eq!(code, 201, "{body}");
            body["run_id"].as_str().unwrap().to_string()
        }
    };
    let step_is = |run: String, status: &'static str| {
        let api = &api;
        async move {
            let (_, body) = api.get(&format!("/v1/runs/{run}")).await;
            body["steps"][0]["status"] == status
        }
    };
    let lost = trigger("+5511900000011").await;
    eventually(
        "the dropped send is unknown",
        Duration::from_secs(30),
        || step_is(lost.clone(), "unknown"),
    )
    .await;
    mode.store(REFUSE_ONCE, Ordering::SeqCst);
    let refused = trigger("+5511900000012").await;
    eventually("the refused run failed", Duration::from_secs(30), || {
        let (api, refused) = (&api, refused.clone());
        async move { run_status(api, &refused).await == "failed" }
    })
    .await;

    let b = Browser::start().await;
    b.web.goto(&format!("{url}/ui#/runs/{lost}")).await.unwrap();
    b.wait_for("//ol[@id='timeline']/li[@data-step='0']//span[contains(@class,'badge') and text()='unknown']")
        .await;
    b.shot("run-unknown").await;
    b.click("//li[@data-step='0']//button[contains(@class,'resolve-sent')]")
        .await;
    b.confirm("not sent again", None).await;
    b.wait_for(
        "//ol[@id='timeline']/li[@data-step='0']//span[contains(@class,'badge') and text()='sent']",
    )
    .await;
    b.wait_for("//li[@data-step='0']//dd[starts-with(., 'operator at')]")
        .await;
    b.wait_for("//span[@id='run-status']/span[text()='completed']")
        .await;
    assert_eq!(run_status(&api, &lost).await, "completed");

    b.web
        .goto(&format!("{url}/ui#/runs/{refused}"))
        .await
        .unwrap();
    b.wait_for("//span[@id='run-status']/span[text()='failed']")
        .await;
    b.wait_for("//li[@data-step='0']//dd[text()='131026']")
        .await;
    b.shot("run-failed").await;
    b.click("//button[@id='retry-run']").await;
    b.confirm("sent to +5511900000012 again", None).await;
    b.wait_for("//span[@id='run-status']/span[text()='completed']")
        .await;
    assert_eq!(run_status(&api, &refused).await, "completed");
    b.shot("run-retried").await;
    let _ = b.web.close().await;
    db.remove().await;
}

/// `oncesend up` on loopback without a token, as a new user starts it: the
/// console needs no sign-in, every `/ui` answer carries the content
/// security policy, and the sample flow triggered from the Flows page with
/// only a number completes on its run's timeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_loopback_without_a_token_the_console_opens_and_the_sample_flow_runs() {
    let db = TestDb::sqlite("console-open");
    let (_up, url) = start_up(&[], &[("DATABASE_URL", db.url())]).await;
    let u = oncesend::net::HttpUrl::parse(&url).unwrap();
    let http = oncesend::net::HttpClient::new(
        oncesend::net::TcpConnector::new(u.addr),
        &u.authority,
        None,
        Duration::from_secs(10),
    );
    for path in ["/ui", "/ui/app.js", "/ui/app.css"] {
        let (status, headers, _) = http
            .request(hyper::Method::GET, path, &[], None)
            .await
            .unwrap();
        assert_eq!(status, 200, "{path}");
        let csp = headers
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
            "{path}: {csp:?}"
        );
    }
    let b = Browser::start().await;
    b.web.goto(&format!("{url}/ui")).await.unwrap();
    b.wait_for("//nav[@id='nav' and not(@hidden)]").await;
    b.wait_for("//table[@id='runs']//td[text()='No runs match.']")
        .await;
    b.wait_for("//section[@id='sign-in' and @hidden]").await;
    b.wait_for("//button[@id='sign-out' and @hidden]").await;
    b.shot("open-on-loopback").await;

    // What a new user does next: the Flows page has the sample flow `up`
    // put; triggered with nothing but a number, it completes on its
    // timeline.
    b.click("//nav//a[@data-page='flows']").await;
    let flow = "//section[@data-flow='welcome']";
    b.wait_for(&format!("{flow}//li[@data-step='1']")).await;
    b.wait_for(&format!("{flow}//input[@name='to']"))
        .await
        .send_keys("+5511900000009")
        .await
        .unwrap();
    b.click(&format!("{flow}//form[@class='trigger']/button"))
        .await;
    b.confirm("starts a real run", None).await;
    b.click(&format!("{flow}//a[contains(@class,'run-link')]"))
        .await;
    b.wait_for("//span[@id='run-status']/span[text()='completed']")
        .await;
    b.wait_for("//ol[@id='timeline']/li[@data-step='1']//p[@class='text' and starts-with(., 'Step 2 of 2')]")
        .await;
    b.shot("sample-flow-completed").await;
    let _ = b.web.close().await;
    db.remove().await;
}

/// What the guards did, on the timeline where it happened: a worker of the
/// test's own claims a run, sends its first step and stalls past its
/// lease; a second takes the run over (a lease rescue), begins the same
/// step again and is answered from the ledger (a replay), and the first
/// wakes and writes under its old epoch (fenced). Then the runs list a
/// page at a time, and by time range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeline_shows_rescues_fenced_writes_and_replays_and_the_list_pages_by_time() {
    use oncesend::store::sql::{SqlClock, SqlOptions, SqlStore};
    use oncesend::store::Store;
    use oncesend_core::{DeliveryKey, DeliveryOutcome, RunId, StoreOp, StoreReply, WorkerId};

    let db = TestDb::sqlite("console-events");
    let (_up, url) = start_up(&[], &[("DATABASE_URL", db.url())]).await;
    let api = Api::new(&url, None);
    let (code, body) = api
        .json(
            "PUT",
            "/v1/flows/later",
            serde_json::json!({"steps": [{"text": "first", "delay_ms": 3_600_000},
                {"text": "second", "delay_ms": 3_600_000}]}),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let mut runs = Vec::new();
    for i in 0..3 {
        let (code, body) = api
            .json(
                "POST",
                "/v1/flows/later/runs",
                serde_json::json!({"to": format!("+55119000000{}", 10 + i)}),
            )
            .await;
        assert_eq!(code, 201, "{body}");
        runs.push(body["run_id"].as_str().unwrap().to_string());
    }
    let run = runs[0].clone();
    let id: RunId = run.parse().unwrap();

    // Two workers of the test's own, on the daemon's database, an hour
    // ahead of it (the store takes their clock), so the daemon's own
    // worker, for which nothing is due yet, stays out of the way.
    let store = SqlStore::connect(
        &db.url(),
        SqlOptions {
            clock: SqlClock::Caller,
            ..SqlOptions::default()
        },
    )
    .await
    .unwrap();
    let t = oncesend::clock::TokioClock::system().now_ms() + 3_700_000;
    let apply = |op: StoreOp| {
        let store = store.clone();
        async move { store.apply(op).await.unwrap() }
    };
    let claim = |owner: &str, lease_ms: u64, now_ms: u64| StoreOp::Claim {
        owner: WorkerId::new(owner).unwrap(),
        max: 1,
        lease_ms,
        now_ms,
    };
    let StoreReply::Claimed(first) = apply(claim("ghost-worker", 1_000, t)).await else {
        panic!("a claim answers Claimed")
    };
    assert_eq!(first[0].id, id, "the oldest run is claimed first");
    let key = DeliveryKey { run: id, step: 0 };
    let begin = |epoch: u64, now_ms: u64| StoreOp::BeginDelivery {
        key,
        epoch,
        send_timeout_ms: 500,
        now_ms,
    };
    let begun = apply(begin(1, t + 1)).await;
    assert!(matches!(begun, StoreReply::Begun { .. }), "{begun:?}");
    apply(StoreOp::FinishDelivery {
        key,
        outcome: DeliveryOutcome::Sent {
            provider_message_id: "wamid.ghost".into(),
        },
        now_ms: t + 2,
    })
    .await;
    let StoreReply::Claimed(second) = apply(claim("rescuer", 60_000, t + 5_000)).await else {
        panic!("a claim answers Claimed")
    };
    assert!(second[0].id == id && second[0].rescued, "{second:?}");
    let again = apply(begin(2, t + 5_001)).await;
    assert!(matches!(again, StoreReply::AlreadySent { .. }), "{again:?}");
    let advance = |epoch: u64, now_ms: u64| StoreOp::Advance {
        run: id,
        epoch,
        step: 0,
        delay_ms: Some(3_600_000),
        now_ms,
    };
    assert_eq!(apply(advance(1, t + 5_002)).await, StoreReply::Fenced);
    let went_on = apply(advance(2, t + 5_003)).await;
    assert!(
        matches!(went_on, StoreReply::Advanced { .. }),
        "{went_on:?}"
    );

    // The API's account.
    let (code, view) = api.get(&format!("/v1/runs/{run}")).await;
    assert_eq!(code, 200, "{view}");
    let kinds: Vec<&str> = view["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["rescued", "replayed", "fenced"], "{view}");
    assert_eq!(view["steps"][0]["sent_by"], "ghost-worker", "{view}");
    assert_eq!(view["steps"][0]["status"], "sent", "{view}");

    // The page's: each event in step 0's lane, in plain words.
    let b = Browser::start().await;
    b.web.goto(&format!("{url}/ui#/runs/{run}")).await.unwrap();
    let lane = "//ol[@id='timeline']/li[@data-step='0']";
    for (kind, says) in [
        (
            "rescued",
            "rescuer took the run over under epoch 2 from ghost-worker (epoch 1)",
        ),
        (
            "replayed",
            "under epoch 2 was answered from the ledger (sent): nothing went to the provider again",
        ),
        (
            "fenced",
            "A write (advance) from a holder at epoch 1 was refused: the run was at epoch 2",
        ),
    ] {
        b.wait_for(&format!(
            "{lane}//ol[@class='events']/li[@data-kind='{kind}' and contains(., '{says}')]"
        ))
        .await;
    }
    b.wait_for(&format!(
        "{lane}//dd[contains(., 'ghost-worker · epoch 1')]"
    ))
    .await;
    b.wait_for("//ol[@id='timeline']/li[@data-step='1' and not(.//ol[@class='events'])]")
        .await;
    b.shot("run-events").await;

    // The list, two to a page: the newest two, then the oldest.
    b.web
        .goto(&format!("{url}/ui#/runs?limit=2"))
        .await
        .unwrap();
    let shows = |only: Vec<String>| {
        let has: Vec<String> = runs
            .iter()
            .map(|r| {
                let row = format!(".//tr[@data-run='{r}']");
                if only.contains(r) {
                    row
                } else {
                    format!("not({row})")
                }
            })
            .collect();
        format!("//table[@id='runs' and {}]", has.join(" and "))
    };
    b.wait_for(&shows(vec![runs[2].clone(), runs[1].clone()]))
        .await;
    b.wait_for("//span[@id='finished-note' and contains(., 'every finished run kept')]")
        .await;
    b.click("//a[@id='older']").await;
    b.wait_for(&shows(vec![runs[0].clone()])).await;
    b.wait_for("//a[@id='newest']").await;
    b.shot("runs-older").await;

    // By time: until ten minutes ago, none; from ten minutes ago, all.
    b.web.goto(&format!("{url}/ui#/runs")).await.unwrap();
    let set_time = |field: &str, value: &str| {
        format!(
            "{{ const d = new Date(Date.now() - 600000); const p = (n) => String(n).padStart(2, '0');
             document.querySelector(\"#run-filters input[name='{field}']\").value = {value}; }}"
        )
    };
    let local = "d.getFullYear() + '-' + p(d.getMonth() + 1) + '-' + p(d.getDate()) + 'T' + p(d.getHours()) + ':' + p(d.getMinutes())";
    b.wait_for("//form[@id='run-filters']").await;
    b.web
        .execute(&set_time("before", local), vec![])
        .await
        .unwrap();
    b.click("//form[@id='run-filters']//button").await;
    b.wait_for("//table[@id='runs']//td[@class='empty' and text()='No runs match.']")
        .await;
    b.web
        .execute(
            &format!("{} {}", set_time("before", "''"), set_time("after", local)),
            vec![],
        )
        .await
        .unwrap();
    b.click("//form[@id='run-filters']//button").await;
    b.wait_for(&shows(runs.clone())).await;
    b.shot("runs-by-time").await;
    db.remove().await;
}
