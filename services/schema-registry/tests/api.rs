//! Component tests: the REST API over registries fed by a shared in-memory log.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed assertion

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::sync::Barrier;
use tower::ServiceExt;
use ve_schema_registry::{LogError, MemoryLog, Registry, RegistryConfig, SchemaLog, router};

const V1_JSON: &str = "application/vnd.schemaregistry.v1+json";

#[derive(Clone)]
struct Replica {
    registry: Arc<Registry>,
    app: Router,
}

fn replica(log: &Arc<MemoryLog>) -> Replica {
    let registry = Registry::new(log.clone(), RegistryConfig::default());
    let _feeder = log.attach(&registry);
    Replica {
        app: router(registry.clone()),
        registry,
    }
}

fn single() -> Replica {
    replica(&MemoryLog::new())
}

impl Replica {
    async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_with(method, uri, body, V1_JSON).await
    }

    async fn call_with(
        &self,
        method: Method,
        uri: &str,
        body: Option<Value>,
        content_type: &str,
    ) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, content_type)
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .expect("request");
        let response = self.app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        assert_eq!(
            response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some(V1_JSON),
            "{uri}"
        );
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call(Method::GET, uri, None).await
    }

    async fn register(&self, subject: &str, schema: &str) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            &format!("/subjects/{subject}/versions"),
            Some(json!({ "schema": schema })),
        )
        .await
    }

    async fn register_id(&self, subject: &str, schema: &str) -> i64 {
        let (status, body) = self.register(subject, schema).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["id"].as_i64().expect("id")
    }

    /// Everything the API shows, for comparing replicas.
    async fn snapshot(&self) -> BTreeMap<(String, i64), (i64, String)> {
        let mut out = BTreeMap::new();
        let (_, subjects) = self.get("/subjects?deleted=true").await;
        for subject in subjects.as_array().expect("subjects") {
            let subject = subject.as_str().expect("subject");
            let (_, versions) = self
                .get(&format!("/subjects/{subject}/versions?deleted=true"))
                .await;
            for version in versions.as_array().expect("versions") {
                let version = version.as_i64().expect("version");
                let (status, body) = self
                    .get(&format!(
                        "/subjects/{subject}/versions/{version}?deleted=true"
                    ))
                    .await;
                assert_eq!(status, StatusCode::OK, "{body}");
                let _ = out.insert(
                    (subject.to_owned(), version),
                    (
                        body["id"].as_i64().expect("id"),
                        body["schema"].as_str().expect("schema").to_owned(),
                    ),
                );
            }
        }
        out
    }
}

fn error_code(body: &Value) -> i64 {
    body["error_code"].as_i64().unwrap_or(-1)
}

fn user(fields: &str) -> String {
    format!(r#"{{"type":"record","name":"User","namespace":"ve.test","fields":[{fields}]}}"#)
}

const ID: &str = r#"{"name":"id","type":"long"}"#;
const NAME: &str = r#"{"name":"name","type":"string"}"#;
const NAME_DEFAULT: &str = r#"{"name":"name","type":"string","default":""}"#;

#[tokio::test]
async fn register_returns_id_and_identical_schema_keeps_it() {
    let r = single();
    let v1 = user(ID);
    assert_eq!(r.register_id("users-value", &v1).await, 1);
    // Same schema, different formatting: same id, no new version.
    let reformatted = r#"{ "namespace": "ve.test", "name": "User", "type": "record",
              "fields": [ { "type": "long", "name": "id" } ] }"#;
    assert_eq!(r.register_id("users-value", reformatted).await, 1);
    assert_eq!(r.get("/subjects/users-value/versions").await.1, json!([1]));
    assert_eq!(r.get("/subjects").await.1, json!(["users-value"]));
    // Clients escape slashes in subject names.
    assert_eq!(r.register_id("ns%2Fusers", &v1).await, 1);
    assert_eq!(r.get("/subjects/ns%2Fusers/versions").await.1, json!([1]));
    let _ = r.call(Method::DELETE, "/subjects/ns%2Fusers", None).await;
    // The same schema under another subject shares the id.
    assert_eq!(r.register_id("other-value", &v1).await, 1);
    assert_eq!(
        r.get("/schemas/ids/1/versions").await.1,
        json!([{"subject":"other-value","version":1},{"subject":"users-value","version":1}])
    );
}

#[tokio::test]
async fn all_confluent_content_types_are_accepted() {
    let r = single();
    for (i, content_type) in [
        "application/vnd.schemaregistry.v1+json",
        "application/vnd.schemaregistry+json",
        "application/json",
    ]
    .into_iter()
    .enumerate()
    {
        let (status, body) = r
            .call_with(
                Method::POST,
                &format!("/subjects/s{i}/versions"),
                Some(json!({ "schema": "\"string\"", "schemaType": "AVRO" })),
                content_type,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{content_type}: {body}");
        assert_eq!(body, json!({ "id": 1 }));
    }
}

#[tokio::test]
async fn lookup_finds_registered_schema() {
    let r = single();
    let v1 = user(ID);
    let id = r.register_id("users-value", &v1).await;
    let (status, body) = r
        .call(
            Method::POST,
            "/subjects/users-value",
            Some(json!({ "schema": v1 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"subject": "users-value", "version": 1, "id": id, "schema": v1})
    );

    let (status, body) = r
        .call(
            Method::POST,
            "/subjects/nobody",
            Some(json!({ "schema": v1 })),
        )
        .await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, 40401));

    let other = user(&format!("{ID},{NAME_DEFAULT}"));
    let (status, body) = r
        .call(
            Method::POST,
            "/subjects/users-value",
            Some(json!({ "schema": other })),
        )
        .await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, 40403));
}

#[tokio::test]
async fn schema_by_id_and_types() {
    let r = single();
    let v1 = user(ID);
    let id = r.register_id("users-value", &v1).await;
    assert_eq!(
        r.get(&format!("/schemas/ids/{id}")).await,
        (StatusCode::OK, json!({ "schema": v1 }))
    );
    // What schema_registry_converter asks for.
    assert_eq!(
        r.get(&format!("/schemas/ids/{id}?deleted=true")).await.1,
        json!({ "schema": v1 })
    );
    let (status, raw) = r.get(&format!("/schemas/ids/{id}/schema")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(raw["name"], "User");
    let (status, body) = r.get("/schemas/ids/99").await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, 40403));
    assert_eq!(r.get("/schemas/types").await.1, json!(["AVRO"]));
}

#[tokio::test]
async fn versions_latest_and_by_number() {
    let r = single();
    let v1 = user(ID);
    let v2 = user(&format!("{ID},{NAME_DEFAULT}"));
    let id1 = r.register_id("users-value", &v1).await;
    let id2 = r.register_id("users-value", &v2).await;
    assert_ne!(id1, id2);
    assert_eq!(
        r.get("/subjects/users-value/versions").await.1,
        json!([1, 2])
    );
    assert_eq!(
        r.get("/subjects/users-value/versions/latest").await.1,
        json!({"subject": "users-value", "version": 2, "id": id2, "schema": v2})
    );
    assert_eq!(
        r.get("/subjects/users-value/versions/1").await.1,
        json!({"subject": "users-value", "version": 1, "id": id1, "schema": v1})
    );
    assert_eq!(
        r.get("/subjects/users-value/versions/-1").await.1["version"],
        json!(2)
    );
    let (status, raw) = r.get("/subjects/users-value/versions/2/schema").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(raw["fields"][1]["name"], "name");

    let (status, body) = r.get("/subjects/users-value/versions/3").await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, 40402));
    for bad in ["0", "abc", "99999999999"] {
        let (status, body) = r
            .get(&format!("/subjects/users-value/versions/{bad}"))
            .await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::UNPROCESSABLE_ENTITY, 42202),
            "{bad}"
        );
    }
    let (status, body) = r.get("/subjects/nobody/versions").await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, 40401));
    let (status, body) = r.get("/subjects/nobody/versions/latest").await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, 40401));
}

#[tokio::test]
async fn incompatible_and_invalid_schemas_are_refused() {
    let r = single();
    let _ = r.register_id("users-value", &user(ID)).await;
    // A new field without default cannot be read from old data: not BACKWARD.
    let (status, body) = r
        .register("users-value", &user(&format!("{ID},{NAME}")))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error_code(&body), 409);
    let message = body["message"].as_str().expect("message");
    assert!(
        message.starts_with(
            "Schema being registered is incompatible with an earlier schema for subject \"users-value\", details: ["
        ),
        "{message}"
    );
    assert!(
        message.contains("READER_FIELD_MISSING_DEFAULT_VALUE"),
        "{message}"
    );

    let (status, body) = r.register("users-value", r#"{"type":"recrod"}"#).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, 42201)
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("Invalid schema")
    );
    let (status, body) = r
        .call(
            Method::POST,
            "/subjects/x/versions",
            Some(json!({"schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF"})),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, 42201)
    );

    // Neither attempt left a trace.
    assert_eq!(r.get("/subjects/users-value/versions").await.1, json!([1]));
    assert_eq!(r.get("/subjects").await.1, json!(["users-value"]));
}

#[tokio::test]
async fn compatible_change_creates_new_version() {
    let r = single();
    let _ = r.register_id("users-value", &user(ID)).await;
    let id = r
        .register_id("users-value", &user(&format!("{ID},{NAME_DEFAULT}")))
        .await;
    assert_eq!(id, 2);
    // int -> long promotion reads old data too.
    let _ = r
        .register_id("n", &user(r#"{"name":"n","type":"int"}"#))
        .await;
    let id = r
        .register_id("n", &user(r#"{"name":"n","type":"long"}"#))
        .await;
    assert_eq!(id, 4);
    assert_eq!(r.get("/subjects/n/versions").await.1, json!([1, 2]));
}

#[tokio::test]
async fn global_and_subject_config() {
    let r = single();
    assert_eq!(
        r.get("/config").await,
        (StatusCode::OK, json!({"compatibilityLevel": "BACKWARD"}))
    );
    assert_eq!(
        r.call(
            Method::PUT,
            "/config",
            Some(json!({"compatibility": "FULL"}))
        )
        .await,
        (StatusCode::OK, json!({"compatibility": "FULL"}))
    );
    assert_eq!(
        r.get("/config").await.1,
        json!({"compatibilityLevel": "FULL"})
    );

    let (status, body) = r.get("/config/users-value").await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, 40408));
    assert_eq!(
        r.get("/config/users-value?defaultToGlobal=true").await.1,
        json!({"compatibilityLevel": "FULL"})
    );

    let _ = r.register_id("users-value", &user(ID)).await;
    // FULL forbids adding a field without default.
    let (status, _) = r
        .register("users-value", &user(&format!("{ID},{NAME}")))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    assert_eq!(
        r.call(
            Method::PUT,
            "/config/users-value",
            Some(json!({"compatibility": "none"}))
        )
        .await,
        (StatusCode::OK, json!({"compatibility": "NONE"}))
    );
    assert_eq!(
        r.get("/config/users-value").await.1,
        json!({"compatibilityLevel": "NONE"})
    );
    let (status, _) = r
        .register("users-value", &user(&format!("{ID},{NAME}")))
        .await;
    assert_eq!(status, StatusCode::OK);

    assert_eq!(
        r.call(Method::DELETE, "/config/users-value", None).await,
        (StatusCode::OK, json!({"compatibilityLevel": "NONE"}))
    );
    let (status, body) = r.get("/config/users-value").await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, 40408));

    for bad in [json!({"compatibility": "SIDEWAYS"}), json!({})] {
        let (status, body) = r.call(Method::PUT, "/config", Some(bad)).await;
        assert_eq!(
            (status, error_code(&body)),
            (StatusCode::UNPROCESSABLE_ENTITY, 42203)
        );
    }
    let (status, body) = r
        .call(
            Method::PUT,
            "/config/users-value",
            Some(json!({"compatibility": 3})),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, 422)
    );
}

#[tokio::test]
async fn compatibility_endpoint() {
    let r = single();
    let _ = r.register_id("users-value", &user(ID)).await;
    let good = json!({ "schema": user(&format!("{ID},{NAME_DEFAULT}")) });
    let bad = json!({ "schema": user(&format!("{ID},{NAME}")) });
    for path in [
        "/compatibility/subjects/users-value/versions/latest",
        "/compatibility/subjects/users-value/versions/1",
        "/compatibility/subjects/users-value/versions",
    ] {
        assert_eq!(
            r.call(Method::POST, path, Some(good.clone())).await,
            (StatusCode::OK, json!({"is_compatible": true})),
            "{path}"
        );
        assert_eq!(
            r.call(Method::POST, path, Some(bad.clone())).await,
            (StatusCode::OK, json!({"is_compatible": false})),
            "{path}"
        );
    }
    let (status, body) = r
        .call(
            Method::POST,
            "/compatibility/subjects/users-value/versions/latest?verbose=true",
            Some(bad),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["is_compatible"], json!(false));
    let messages = body["messages"].as_array().expect("messages");
    assert!(messages.iter().any(|m| {
        m.as_str()
            .is_some_and(|m| m.contains("READER_FIELD_MISSING_DEFAULT_VALUE"))
    }));

    let (status, body) = r
        .call(
            Method::POST,
            "/compatibility/subjects/users-value/versions/7",
            Some(good.clone()),
        )
        .await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, 40402));
    let (status, body) = r
        .call(
            Method::POST,
            "/compatibility/subjects/nobody/versions/latest",
            Some(good.clone()),
        )
        .await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, 40401));
    // Nothing to be incompatible with yet.
    assert_eq!(
        r.call(
            Method::POST,
            "/compatibility/subjects/nobody/versions",
            Some(good)
        )
        .await,
        (StatusCode::OK, json!({"is_compatible": true}))
    );
}

#[tokio::test]
async fn transitive_levels_check_every_version() {
    let r = single();
    let v1 = user(ID);
    let v2 = user(&format!("{ID},{NAME_DEFAULT}"));
    // Readable from v2 data (always has `name`), not from v1 data.
    let v3 = json!({ "schema": user(&format!("{ID},{NAME}")) });
    for subject in ["plain", "transitive"] {
        let _ = r.register_id(subject, &v1).await;
        let _ = r.register_id(subject, &v2).await;
    }
    let _ = r
        .call(
            Method::PUT,
            "/config/transitive",
            Some(json!({"compatibility": "BACKWARD_TRANSITIVE"})),
        )
        .await;
    for (subject, expected) in [("plain", true), ("transitive", false)] {
        let (_, body) = r
            .call(
                Method::POST,
                &format!("/compatibility/subjects/{subject}/versions/latest"),
                Some(v3.clone()),
            )
            .await;
        assert_eq!(body["is_compatible"], json!(expected), "{subject}");
    }
    let (status, _) = r
        .call(Method::POST, "/subjects/plain/versions", Some(v3.clone()))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = r
        .call(Method::POST, "/subjects/transitive/versions", Some(v3))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("{oldSchemaVersion: 1}"))
    );
}

#[tokio::test]
async fn soft_and_permanent_delete() {
    let r = single();
    let v1 = user(ID);
    let v2 = user(&format!("{ID},{NAME_DEFAULT}"));
    let id1 = r.register_id("s", &v1).await;
    let _ = r.register_id("s", &v2).await;

    assert_eq!(
        r.call(Method::DELETE, "/subjects/s/versions/1", None).await,
        (StatusCode::OK, json!(1))
    );
    let (status, body) = r.call(Method::DELETE, "/subjects/s/versions/1", None).await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, 40406));
    assert_eq!(r.get("/subjects/s/versions").await.1, json!([2]));
    assert_eq!(
        r.get("/subjects/s/versions?deleted=true").await.1,
        json!([1, 2])
    );
    let (status, body) = r.get("/subjects/s/versions/1").await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, 40402));
    assert_eq!(
        r.get("/subjects/s/versions/1?deleted=true").await.0,
        StatusCode::OK
    );
    // Old data still decodes.
    assert_eq!(
        r.get(&format!("/schemas/ids/{id1}")).await.0,
        StatusCode::OK
    );

    // Permanent delete needs a soft delete first.
    let (status, body) = r
        .call(Method::DELETE, "/subjects/s?permanent=true", None)
        .await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, 40405));
    assert_eq!(
        r.call(Method::DELETE, "/subjects/s", None).await,
        (StatusCode::OK, json!([2]))
    );
    assert_eq!(r.get("/subjects").await.1, json!([]));
    assert_eq!(r.get("/subjects?deleted=true").await.1, json!(["s"]));
    let (status, body) = r.call(Method::DELETE, "/subjects/s", None).await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, 40404));
    let (status, body) = r.get("/subjects/s/versions").await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, 40401));

    assert_eq!(
        r.call(Method::DELETE, "/subjects/s?permanent=true", None)
            .await,
        (StatusCode::OK, json!([1, 2]))
    );
    assert_eq!(r.get("/subjects?deleted=true").await.1, json!([]));
    assert_eq!(
        r.get(&format!("/schemas/ids/{id1}")).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, body) = r.call(Method::DELETE, "/subjects/s", None).await;
    assert_eq!((status, error_code(&body)), (StatusCode::NOT_FOUND, 40401));

    // Re-registering continues the numbering and keeps the schema's id: data written with the
    // old id must never decode with another schema.
    assert_eq!(r.register_id("s", &v1).await, id1);
    assert_eq!(r.get("/subjects/s/versions").await.1, json!([3]));
}

#[tokio::test]
async fn references_resolve_and_protect_the_referenced_version() {
    let r = single();
    let address = r#"{"type":"record","name":"Address","namespace":"ve.test","fields":[{"name":"city","type":"string"}]}"#;
    let _ = r.register_id("address", address).await;
    let person = r#"{"type":"record","name":"Person","namespace":"ve.test","fields":[{"name":"home","type":"ve.test.Address"}]}"#;
    let references = json!([{"name": "ve.test.Address", "subject": "address", "version": 1}]);
    let (status, body) = r
        .call(
            Method::POST,
            "/subjects/person/versions",
            Some(json!({"schema": person, "references": references})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["id"].as_i64().expect("id");
    let (_, body) = r.get(&format!("/schemas/ids/{id}")).await;
    assert_eq!(body["references"], references);
    let (_, body) = r.get("/subjects/person/versions/latest").await;
    assert_eq!(body["references"], references);
    assert_eq!(
        r.get("/subjects/address/versions/1/referencedby").await.1,
        json!([id])
    );
    let (status, body) = r
        .call(Method::DELETE, "/subjects/address/versions/1", None)
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, 42206)
    );

    // Without the reference the type is unknown.
    let (status, body) = r.register("person2", person).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, 42201)
    );
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let r = single();
    assert_eq!(
        r.get("/nope").await,
        (
            StatusCode::NOT_FOUND,
            json!({"error_code": 404, "message": "HTTP 404 Not Found"})
        )
    );
    let (status, body) = r.call(Method::PATCH, "/config", None).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::METHOD_NOT_ALLOWED, 405)
    );
    let (status, body) = r
        .call_with(Method::POST, "/subjects/s/versions", None, "text/plain")
        .await;
    assert_eq!((status, error_code(&body)), (StatusCode::BAD_REQUEST, 400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_log_and_converge() {
    let log = MemoryLog::new();
    let a = replica(&log);
    let b = replica(&log);
    let v1 = user(ID);
    let v2 = user(&format!("{ID},{NAME_DEFAULT}"));

    let id1 = a.register_id("users-value", &v1).await;
    // Read-your-writes through the other replica, right away.
    assert_eq!(
        b.get(&format!("/schemas/ids/{id1}")).await,
        (StatusCode::OK, json!({ "schema": v1 }))
    );
    // B decides on a state that includes A's write: same id, next version, and the
    // compatibility check sees v1.
    assert_eq!(b.register_id("users-value", &v1).await, id1);
    let id2 = b.register_id("users-value", &v2).await;
    assert_eq!(id2, id1 + 1);
    let (status, _) = a
        .register("users-value", &user(r#"{"name":"id","type":"string"}"#))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let _ = a
        .call(
            Method::PUT,
            "/config/users-value",
            Some(json!({"compatibility": "FULL"})),
        )
        .await;
    assert_eq!(
        b.get("/config/users-value").await.1,
        json!({"compatibilityLevel": "FULL"})
    );

    a.registry.sync().await.expect("sync");
    b.registry.sync().await.expect("sync");
    assert_eq!(a.snapshot().await, b.snapshot().await);
    assert_eq!(a.snapshot().await.len(), 2);

    // A late replica replaying the whole log agrees too.
    let c = replica(&log);
    c.registry.sync().await.expect("sync");
    assert_eq!(c.snapshot().await, a.snapshot().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_registrations_never_duplicate_ids_or_versions() {
    let log = MemoryLog::new();
    let replicas = [replica(&log), replica(&log)];
    // Every schema is its own record type, so all may coexist under NONE.
    let _ = replicas[0]
        .call(
            Method::PUT,
            "/config",
            Some(json!({"compatibility": "NONE"})),
        )
        .await;
    let schema = |n: usize| {
        format!(r#"{{"type":"record","name":"R{n}","fields":[{{"name":"f","type":"int"}}]}}"#)
    };

    let mut tasks = Vec::new();
    for n in 0..24 {
        for (i, r) in replicas.iter().enumerate() {
            // Both replicas register schemas 0..8 (identical races), the rest only one of them;
            // subjects alternate so versions race as well.
            if n >= 8 && n % 2 != i {
                continue;
            }
            let r = r.clone();
            let subject = format!("subject-{}", n % 3);
            let text = schema(n);
            tasks.push(tokio::spawn(async move {
                let id = r.register_id(&subject, &text).await;
                (subject, text, id)
            }));
        }
    }
    let mut returned: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for task in tasks {
        let (_subject, text, id) = task.await.expect("task");
        let _ = returned.entry(text).or_default().insert(id);
    }
    // Every schema got exactly one id, and no id was given to two schemas.
    assert_eq!(returned.len(), 24);
    let ids: BTreeSet<i64> = returned
        .values()
        .map(|ids| {
            assert_eq!(ids.len(), 1, "{ids:?}");
            *ids.iter().next().expect("one id")
        })
        .collect();
    assert_eq!(ids.len(), 24);

    for r in &replicas {
        r.registry.sync().await.expect("sync");
    }
    let snapshot = replicas[0].snapshot().await;
    assert_eq!(snapshot, replicas[1].snapshot().await);
    // Each schema exactly once per subject, with the id its registration returned.
    assert_eq!(snapshot.len(), 24);
    for (id, text) in snapshot.values() {
        assert_eq!(returned.get(text).and_then(|ids| ids.first()), Some(id));
    }
    for subject in 0..3 {
        let (_, versions) = replicas[1]
            .get(&format!("/subjects/subject-{subject}/versions"))
            .await;
        assert_eq!(
            versions,
            json!((1..=8).collect::<Vec<_>>()),
            "subject-{subject}"
        );
    }

    // Replaying the compacted topic (superseded config values gone, rejected attempts still
    // there or cleaned up) gives the same registry.
    let writer = &replicas[0];
    let _ = writer
        .call(
            Method::PUT,
            "/config",
            Some(json!({"compatibility": "BACKWARD"})),
        )
        .await;
    log.compact();
    let fresh = replica(&log);
    fresh.registry.sync().await.expect("sync");
    assert_eq!(fresh.snapshot().await, snapshot);
    assert_eq!(
        fresh.get("/config").await.1,
        json!({"compatibilityLevel": "BACKWARD"})
    );
}

/// Holds the next `armed` appends until that many are waiting, so that writers on different
/// replicas all decide before any of them appends: a guaranteed race.
struct GatedLog {
    inner: Arc<MemoryLog>,
    armed: AtomicUsize,
    barrier: Barrier,
}

#[async_trait::async_trait]
impl SchemaLog for GatedLog {
    async fn append(&self, key: Vec<u8>, value: Option<Vec<u8>>) -> Result<i64, LogError> {
        let gated = self
            .armed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if gated {
            let _ = self.barrier.wait().await;
        }
        self.inner.append(key, value).await
    }

    async fn end_offset(&self) -> Result<i64, LogError> {
        self.inner.end_offset().await
    }
}

fn is_attempt(record: &ve_schema_registry::LogRecord) -> bool {
    record.value.is_some() && record.key.starts_with(br#"{"keytype":"VE_SCHEMA""#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_race_is_retried_and_cleaned_up() {
    let memory = MemoryLog::new();
    let gated = Arc::new(GatedLog {
        inner: memory.clone(),
        armed: AtomicUsize::new(0),
        barrier: Barrier::new(2),
    });
    let replicas: Vec<Replica> = (0..2)
        .map(|_| {
            let registry = Registry::new(gated.clone(), RegistryConfig::default());
            let _feeder = memory.attach(&registry);
            Replica {
                app: router(registry.clone()),
                registry,
            }
        })
        .collect();
    let (a, b) = (&replicas[0], &replicas[1]);

    // Different schemas, same subject: both pick version 1 and id 1; one loses and retries.
    gated.armed.store(2, Ordering::SeqCst);
    let (ra, rb) = tokio::join!(
        a.register_id("s", "\"string\""),
        b.register_id("s", "\"bytes\"")
    );
    let mut ids = [ra, rb];
    ids.sort_unstable();
    assert_eq!(ids, [1, 2]);
    assert_eq!(a.get("/subjects/s/versions").await.1, json!([1, 2]));
    let records = memory.records();
    assert_eq!(
        records.iter().filter(|r| is_attempt(r)).count(),
        3,
        "{records:?}"
    );
    // The loser tombstoned its rejected attempt before retrying.
    let tombstoned: Vec<_> = records.iter().filter(|r| r.value.is_none()).collect();
    assert_eq!(tombstoned.len(), 1);
    assert!(
        records
            .iter()
            .any(|r| r.key == tombstoned[0].key && is_attempt(r))
    );

    // Same schema, same subject: one version, one id, whoever wins.
    gated.armed.store(2, Ordering::SeqCst);
    let (ra, rb) = tokio::join!(
        a.register_id("t", "\"long\""),
        b.register_id("t", "\"long\"")
    );
    assert_eq!((ra, rb), (3, 3));
    assert_eq!(b.get("/subjects/t/versions").await.1, json!([1]));

    // Same new schema in two subjects: both get the same fresh id.
    gated.armed.store(2, Ordering::SeqCst);
    let (ra, rb) = tokio::join!(a.register_id("u", "\"int\""), b.register_id("v", "\"int\""));
    assert_eq!((ra, rb), (4, 4));

    for r in &replicas {
        r.registry.sync().await.expect("sync");
    }
    assert_eq!(a.snapshot().await, b.snapshot().await);
    memory.compact();
    let fresh = replica(&memory);
    fresh.registry.sync().await.expect("sync");
    assert_eq!(fresh.snapshot().await, a.snapshot().await);
}
