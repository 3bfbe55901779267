//! The service starts on the real local stack, reports ready, and drains cleanly on shutdown.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

#[tokio::test(flavor = "multi_thread")]
async fn starts_ready_and_stops_cleanly() {
    ve_testkit::assert_service_lifecycle(
        "query-api",
        ve_query_api::DEFAULTS,
        |mut config: ve_query_api::Config, ctx| {
            // Ephemeral ports: a fixed one can be taken by any other socket of the machine (50052
            // is inside Linux's ephemeral range), or by a query-api already running.
            config.http.listen = "127.0.0.1:0".parse().unwrap();
            config.grpc.listen = "127.0.0.1:0".parse().unwrap();
            ve_query_api::run(config, ctx)
        },
    )
    .await;
}
