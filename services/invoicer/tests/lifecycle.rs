//! The service starts on the real local stack, reports ready, and drains cleanly on shutdown.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

#[tokio::test(flavor = "multi_thread")]
async fn starts_ready_and_stops_cleanly() {
    ve_testkit::assert_service_lifecycle("invoicer", ve_invoicer::DEFAULTS, ve_invoicer::run).await;
}
