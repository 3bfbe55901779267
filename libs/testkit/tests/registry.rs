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

/// A record written with an older envelope schema (here: one whose body union lacked the first
/// kind, so union indexes differ) is resolved to the current envelope by name, while a record
/// written with the current schema takes the decoder's fast path; both read as the same envelope.
#[tokio::test]
async fn an_older_writer_schema_is_resolved_to_the_current_envelope() {
    use apache_avro::types::Value as Avro;
    use ve_schema::{Body, Codec, Envelope, Map, Source, WebEvent};

    let stack = Stack::require();
    let codec = Codec::new(&stack.registry()).unwrap();
    let envelope = Envelope {
        event_id: "e-old-writer".into(),
        event_time: 1_700_000_000_000_000,
        ingest_time: 1_700_000_000_100_000,
        tenant_id: "t1".into(),
        source: Source {
            kind: "sdk".into(),
            id: "web-js/1.0".into(),
        },
        schema_name: "ve.v1.WebEvent".into(),
        schema_version: 1,
        attributes: Map::new(),
        tags: Map::from([("env".into(), "prod".into())]),
        body: Body::Web(WebEvent {
            event_type: "pageview".into(),
            session_id: "s1".into(),
            user_id: None,
            url: Some("https://example.com/a".into()),
            path: Some("/a".into()),
            title: None,
            referrer: None,
            user_agent: None,
            selector: None,
            scroll_depth: Some(0.5),
            name: None,
            metrics: Default::default(),
            properties: "{}".into(),
        }),
    };

    // The older schema: the current one without the first body kind.
    let mut older: Value = serde_json::from_str(ve_schema::envelope_schema_json()).unwrap();
    let body = older["fields"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|f| f["name"] == "body")
        .unwrap();
    let _ = body["type"].as_array_mut().unwrap().remove(0);
    let older = older.to_string();
    let subject = unique("old-writer-value");
    let (status, registered) = post(
        &reqwest::Client::new(),
        format!("{}/subjects/{subject}/versions", stack.registry().url),
        &older,
    )
    .await;
    assert_eq!(status, 200, "{registered}");
    let older_id = u32::try_from(registered["id"].as_i64().unwrap()).unwrap();

    let Avro::Record(mut fields) = envelope.to_value().unwrap() else {
        panic!("envelope value is not a record")
    };
    for (name, value) in &mut fields {
        if name == "body" {
            let Avro::Union(index, inner) = std::mem::replace(value, Avro::Null) else {
                panic!("body is not a union")
            };
            *value = Avro::Union(index - 1, inner);
        }
    }
    let schema = apache_avro::Schema::parse_str(&older).unwrap();
    let datum = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
        .build()
        .unwrap()
        .write_value_to_vec(Avro::Record(fields))
        .unwrap();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&older_id.to_be_bytes());
    framed.extend_from_slice(&datum);

    assert_eq!(codec.decode(&framed).await.unwrap(), envelope);
    let current = codec.encode(&unique("current"), &envelope).await.unwrap();
    assert_ne!(Codec::schema_id(&current), Some(older_id));
    assert_eq!(codec.decode(&current).await.unwrap(), envelope);
}
