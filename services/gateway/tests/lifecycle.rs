//! The service starts on the real local stack, reports ready, and drains cleanly on shutdown.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

#[tokio::test(flavor = "multi_thread")]
async fn starts_ready_and_stops_cleanly() {
    ve_testkit::assert_service_lifecycle(
        "gateway",
        ve_gateway::DEFAULTS,
        |mut config: ve_gateway::Config, ctx| {
            // Ephemeral ports, so the test never collides with a gateway already running.
            config.http.listen = "127.0.0.1:0".parse().unwrap();
            config.grpc.listen = "127.0.0.1:0".parse().unwrap();
            ve_gateway::run(config, ctx)
        },
    )
    .await;
}
