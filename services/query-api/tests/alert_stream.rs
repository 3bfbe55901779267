//! Live alerts: an alert produced to the alerts topic arrives on the SSE stream (and the gRPC
//! stream) of its tenant, and never on another tenant's.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

mod common;

use futures::StreamExt;
use ve_query_api::grpc::proto;

/// Reads server-sent events until one named `alert`; returns its JSON data.
async fn next_alert(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buffer: &mut String,
) -> serde_json::Value {
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            if frame.lines().any(|l| l == "event: alert") {
                let data = frame
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .expect("alert data");
                return serde_json::from_str(data).unwrap();
            }
        }
        let chunk = stream.next().await.expect("stream open").unwrap();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// Opens the SSE stream of `tenant` and waits for its `subscribed` comment.
async fn open(
    api: &common::Api,
    tenant: &str,
) -> (
    impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
    String,
) {
    let response = reqwest::Client::new()
        .get(api.url("/alerts/stream"))
        .header("authorization", api.auth(tenant))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stream = Box::pin(response.bytes_stream());
    let mut buffer = String::new();
    while !buffer.contains(": subscribed") {
        let chunk = stream.next().await.expect("stream open").unwrap();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
    buffer.clear();
    (stream, buffer)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alert_reaches_its_tenant_only() {
    let api = common::Api::start().await;
    let (mut mine, mut mine_buffer) = open(&api, &api.mine).await;
    let (mut other, mut other_buffer) = open(&api, &api.other).await;
    let mut grpc = api.grpc().await;
    let mut grpc_stream = grpc
        .stream_alerts(api.grpc_request(&api.mine, proto::StreamAlertsRequest {}))
        .await
        .unwrap()
        .into_inner();

    api.publish_alert(&api.mine, "cpu_high").await;
    // Then one for the other tenant: the first alert it sees must be this one, not ours.
    api.publish_alert(&api.other, "disk_full").await;

    let alert = next_alert(&mut mine, &mut mine_buffer).await;
    assert_eq!(alert["rule_id"], "cpu_high");
    assert_eq!(alert["state"], "firing");
    let alert = next_alert(&mut other, &mut other_buffer).await;
    assert_eq!(
        alert["rule_id"], "disk_full",
        "another tenant's alert leaked: {alert}"
    );

    let message = grpc_stream.next().await.expect("grpc stream open").unwrap();
    match message.kind {
        Some(proto::alert_stream_message::Kind::Alert(a)) => assert_eq!(a.rule_id, "cpu_high"),
        other => panic!("{other:?}"),
    }
    drop(mine);
    drop(other);
    drop(grpc_stream);
    api.stop().await;
}
