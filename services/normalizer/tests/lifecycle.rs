//! The service starts on the real local stack, reports ready, and drains cleanly on shutdown.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

use ve_testkit::unique;

#[tokio::test(flavor = "multi_thread")]
async fn starts_ready_and_stops_cleanly() {
    ve_testkit::assert_service_lifecycle(
        "normalizer",
        ve_normalizer::DEFAULTS,
        |mut config: ve_normalizer::Config, ctx| {
            // Topics and group of its own, so the test never consumes anyone's real raw events.
            config.topics.raw = unique("ingest_raw");
            config.topics.normalized = unique("events_normalized");
            config.topics.metric = unique("signals_metric");
            config.kafka.group_id = unique("normalizer");
            ve_normalizer::run(config, ctx)
        },
    )
    .await;
}
