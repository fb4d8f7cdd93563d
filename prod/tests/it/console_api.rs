//! The API calls the console reads, against `oncesend up` on SQLite: runs
//! paged by seq and filtered by recipient, flows listed a page at a time,
//! tenants with their pause and the engine's pacing, and the figures as
//! JSON. (The SQL stores' answers themselves are held to the model's by
//! `sql_conformance`.)

use crate::common::{start_up, Api, TestDb};

#[tokio::test]
async fn the_console_s_reads_page_filter_and_list_what_the_store_holds() {
    let db = TestDb::sqlite("console-api");
    // Every flow's first step waits an hour: each run stays pending.
    let (_up, url) = start_up(&[], &[("DATABASE_URL", db.url())]).await;
    let api = Api::new(&url, None);
    for flow in ["wakeup", "bye", "reminder"] {
        let (code, body) = api
            .json(
                "PUT",
                &format!("/v1/flows/{flow}"),
                serde_json::json!({"steps": [{"text": format!("{flow} {{{{name}}}}"), "delay_ms": 3_600_000}]}),
            )
            .await;
        assert_eq!(code, 201, "{body}");
    }
    let mut runs = Vec::new();
    for i in 0..5 {
        let (code, body) = api
            .json(
                "POST",
                "/v1/flows/wakeup/runs",
                serde_json::json!({"to": format!("+55119000000{i:02}"), "vars": {"name": "Ana"}}),
            )
            .await;
        assert_eq!(code, 201, "{body}");
        runs.push(body["run_id"].as_str().unwrap().to_string());
    }

    // Pages of two, newest first, joined by next_before_seq, to the end.
    let mut seen = Vec::new();
    let mut path = "/v1/runs?limit=2".to_string();
    loop {
        let (code, page) = api.get(&path).await;
        assert_eq!(code, 200, "{page}");
        seen.extend(
            page["runs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["run_id"].as_str().unwrap().to_string()),
        );
        match page["next_before_seq"].as_u64() {
            Some(seq) => path = format!("/v1/runs?limit=2&before_seq={seq}"),
            None => break,
        }
    }
    let newest_first: Vec<String> = runs.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);

    let (code, mine) = api.get("/v1/runs?to=%2B5511900000003").await;
    assert_eq!(code, 200, "{mine}");
    assert_eq!(mine["runs"].as_array().unwrap().len(), 1, "{mine}");
    assert_eq!(mine["runs"][0]["run_id"], runs[3].as_str());
    let (code, bad) = api.get("/v1/runs?to=5511").await;
    assert_eq!(code, 422, "{bad}");
    assert!(bad["detail"].as_str().unwrap().contains("E.164"), "{bad}");

    // Flows by tenant then name, two to a page.
    let (code, first) = api.get("/v1/flows?limit=2").await;
    assert_eq!(code, 200, "{first}");
    let names = |page: &serde_json::Value| -> Vec<String> {
        page["flows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["flow"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&first), ["bye", "reminder"]);
    assert_eq!(first["flows"][0]["steps"][0]["text"], "bye {{name}}");
    // The page after `page`, as its `next` says.
    let after = |page: &serde_json::Value| {
        let next = &page["next"];
        format!(
            "/v1/flows?limit=2&after_tenant={}&after_flow={}",
            next["after_tenant"].as_str().unwrap(),
            next["after_flow"].as_str().unwrap()
        )
    };
    let (code, second) = api.get(&after(&first)).await;
    assert_eq!(code, 200, "{second}");
    // `welcome` is the sample flow `oncesend up` put into the empty database.
    assert_eq!(names(&second), ["wakeup", "welcome"]);
    if !second["next"].is_null() {
        let (code, third) = api.get(&after(&second)).await;
        assert_eq!(code, 200, "{third}");
        assert!(names(&third).is_empty(), "{third}");
        assert!(third["next"].is_null(), "{third}");
    }
    let (code, half) = api.get("/v1/flows?after_tenant=default").await;
    assert_eq!(code, 422, "{half}");

    // Tenants: default, active, with the engine's pacing.
    let (code, tenants) = api.get("/v1/tenants").await;
    assert_eq!(code, 200, "{tenants}");
    assert_eq!(tenants["tenants"][0]["tenant"], "default");
    assert!(tenants["tenants"][0]["paused"].is_null(), "{tenants}");
    assert_eq!(tenants["pacing"]["rate_per_sec"], 80);
    assert_eq!(tenants["pacing"]["recipient_gap_ms"], 6_000);

    // The figures: five runs waiting, none due.
    let (code, stats) = api.get("/v1/stats").await;
    assert_eq!(code, 200, "{stats}");
    assert_eq!(stats["runs"]["pending"], 5, "{stats}");
    assert_eq!(stats["runs"]["due"], 0, "{stats}");
    assert_eq!(stats["sends"]["sent"], 0, "{stats}");
    assert_eq!(stats["finished"]["cancelled"], 0, "{stats}");
    // Finished runs are counted too (among the latest 10,000 finished).
    for run in &runs[3..] {
        let (code, body) = api
            .json(
                "POST",
                &format!("/v1/runs/{run}/cancel"),
                serde_json::json!({}),
            )
            .await;
        assert_eq!(code, 200, "{body}");
    }
    let (_, stats) = api.get("/v1/stats").await;
    assert_eq!(stats["runs"]["pending"], 3, "{stats}");
    assert_eq!(stats["finished"]["cancelled"], 2, "{stats}");
    assert_eq!(stats["finished"]["completed"], 0, "{stats}");
    assert_eq!(stats["finished"]["failed"], 0, "{stats}");
    assert_eq!(stats["finished"]["latest"], 10_000, "{stats}");
    assert_eq!(stats["finished"]["all"], true, "{stats}");
    db.remove().await;
}
