//! The registry of the local stack over HTTP, as Confluent clients use it: an incompatible change
//! is refused with 409, a compatible one accepted, ids stable.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

use serde_json::{Value, json};
use ve_testkit::{Stack, unique};

const V1: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[{"name":"id","type":"string"},{"name":"total","type":"double"}]}"#;
/// Adds a field with a default: readers of v2 can read v1 data (BACKWARD compatible).
const V2: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[{"name":"id","type":"string"},{"name":"total","type":"double"},{"name":"currency","type":"string","default":"EUR"}]}"#;
/// Adds a field without a default: v1 data lacks it (BACKWARD incompatible).
const BAD: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[{"name":"id","type":"string"},{"name":"total","type":"double"},{"name":"coupon","type":"string"}]}"#;

async fn post(client: &reqwest::Client, url: String, schema: &str) -> (u16, Value) {
    let response = client
        .post(url)
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .json(&json!({ "schema": schema }))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn incompatible_change_is_refused_and_compatible_one_accepted() {
    let base = Stack::require().registry().url;
    let client = reqwest::Client::new();
    let subject = unique("orders-value");
    let versions = format!("{base}/subjects/{subject}/versions");

    let (status, body) = post(&client, versions.clone(), V1).await;
    assert_eq!(status, 200, "{body}");
    let id1 = body["id"].as_i64().unwrap();

    let (status, body) = post(&client, versions.clone(), BAD).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error_code"], 409);
    assert!(
        body["message"].as_str().unwrap().contains("incompatible"),
        "{body}"
    );

    let (status, body) = post(
        &client,
        format!("{base}/compatibility/subjects/{subject}/versions/latest"),
        V2,
    )
    .await;
    assert_eq!(
        (status, &body["is_compatible"]),
        (200, &json!(true)),
        "{body}"
    );

    let (status, body) = post(&client, versions.clone(), V2).await;
    assert_eq!(status, 200, "{body}");
    let id2 = body["id"].as_i64().unwrap();
    assert_ne!(id1, id2);

    // Registering v2 again is idempotent; the subject has two versions.
    assert_eq!(
        post(&client, versions.clone(), V2).await.1["id"].as_i64(),
        Some(id2)
    );
    let list: Value = client
        .get(&versions)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list, json!([1, 2]));
    let by_id: Value = client
        .get(format!("{base}/schemas/ids/{id2}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schema: Value = serde_json::from_str(by_id["schema"].as_str().unwrap()).unwrap();
    assert_eq!(schema["fields"][2]["name"], "currency");
}
