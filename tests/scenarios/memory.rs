//! `memory`: retained memory is really resident (RSS grows by what was asked), clearing really
//! releases it, and the safety cap refuses growth past `MEMORY_LEAK_LIMIT_MB`.

use std::time::Duration;

use crate::common::{spawn_app_alone, Db};

const MIB: f64 = 1024.0 * 1024.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leak_grows_rss_and_clear_releases_it() {
    // Arrange (the app runs in this process, so the process RSS is the app's RSS).
    let app = spawn_app_alone(Db::Sqlite, &[]).await;
    let before = app.metric("process_resident_memory_bytes").await;

    // Act: retain 64 MiB.
    let (status, body) = app.get_json("/api/memory-leak?size_mb=64").await;
    assert_eq!(status, 200, "{body}");
    let grown = app.metric("process_resident_memory_bytes").await;

    // Assert: RSS grew by at least 90% of 64 MiB, and the gauge says 64 MiB retained.
    let delta = (grown - before) / MIB;
    assert!(delta >= 0.9 * 64.0, "RSS grew by {delta:.1} MiB for a 64 MiB leak");
    assert_eq!(app.metric("memory_retained_bytes").await, 64.0 * MIB);

    // Act: clear.
    let (status, body) = app.post_json("/api/clear-memory").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["released_mb"], 64);

    // Assert: retained gauge back to 0 and the pages left the process.
    assert_eq!(app.metric("memory_retained_bytes").await, 0.0);
    let after = app.metric("process_resident_memory_bytes").await;
    let released = (grown - after) / MIB;
    assert!(released >= 0.8 * 64.0, "only {released:.1} MiB of RSS released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safety_cap_refuses_growth_with_a_clear_error() {
    // Arrange: a 16 MiB cap.
    let app = spawn_app_alone(Db::Sqlite, &["--memory-leak-limit-mb", "16"]).await;

    // Act + assert: 10 fits, another 10 does not.
    assert_eq!(app.get_json("/api/memory-leak?size_mb=10").await.0, 200);
    let (status, body) = app.get_json("/api/memory-leak?size_mb=10").await;
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["error"], "memory_cap");
    assert_eq!(body["limit_mb"], 16);
    assert!(
        body["detail"].as_str().unwrap().contains("MEMORY_LEAK_LIMIT_MB"),
        "{body}"
    );
    assert_eq!(app.metric("memory_retained_bytes").await, 10.0 * MIB);
    assert_eq!(app.metric("memory_cap_refusals_total").await, 1.0);

    // A spike counts against the same cap while it is held.
    let (status, _) = app.get_json("/api/memory-spike?size_mb=8").await;
    assert_eq!(status, 507);
    assert_eq!(app.get_json("/api/memory-spike?size_mb=6").await.0, 200);

    // After clearing, the room is back.
    app.post_json("/api/clear-memory").await;
    assert_eq!(app.get_json("/api/memory-leak?size_mb=15").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spike_is_held_then_freed() {
    let app = spawn_app_alone(Db::Sqlite, &[]).await;
    let spike = {
        let (client, url) = (app.client.clone(), app.url("/api/memory-spike?size_mb=32"));
        tokio::spawn(async move { client.get(&url).send().await.unwrap().status().as_u16() })
    };
    let held = crate::common::eventually(Duration::from_secs(2), || async {
        app.metric("memory_spike_bytes").await == 32.0 * MIB
    })
    .await;
    assert!(held, "the spike never showed in memory_spike_bytes");
    assert_eq!(spike.await.unwrap(), 200);
    assert_eq!(app.metric("memory_spike_bytes").await, 0.0);
    assert_eq!(app.metric("memory_retained_bytes").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_budget_refuses_instead_of_growing() {
    let app = spawn_app_alone(Db::Sqlite, &[]).await;

    // Fragile: 5 leaks of 16 MiB all succeed and RSS climbs with them.
    let before = app.metric("process_resident_memory_bytes").await;
    for _ in 0..5 {
        assert_eq!(app.get_json("/api/memory-leak?size_mb=16").await.0, 200);
    }
    let grown = (app.metric("process_resident_memory_bytes").await - before) / MIB;
    assert!(grown >= 0.9 * 80.0, "fragile RSS grew only {grown:.1} MiB");
    app.post_json("/api/clear-memory").await;

    // Hardened (switched at runtime) with a 32 MiB budget: the same leaks stop at the budget.
    app.switch_profile("hardened").await;
    app.set_knobs(serde_json::json!({"memory_budget_mb": 32})).await;
    let before = app.metric("process_resident_memory_bytes").await;
    let mut statuses = vec![];
    for _ in 0..5 {
        let (status, body) = app.get_json("/api/memory-leak?size_mb=16").await;
        if status == 507 {
            assert_eq!(body["error"], "memory_cap");
            assert!(
                body["lift_with"].as_str().unwrap().contains("memory_budget_mb"),
                "{body}"
            );
        }
        statuses.push(status);
    }
    assert_eq!(statuses, vec![200, 200, 507, 507, 507]);
    let grown = (app.metric("process_resident_memory_bytes").await - before) / MIB;
    assert!(
        grown < 32.0 + 16.0,
        "hardened RSS grew {grown:.1} MiB past a 32 MiB budget"
    );
    assert_eq!(app.metric("memory_retained_bytes").await, 32.0 * MIB);
    assert_eq!(app.metric("memory_cap_refusals_total").await, 3.0);
}
