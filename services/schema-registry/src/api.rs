//! The Confluent-compatible REST API.
//!
//! Request bodies are parsed as JSON whatever their content type (Confluent clients send
//! `application/vnd.schemaregistry.v1+json`, `application/vnd.schemaregistry+json` or
//! `application/json`; curl users often send none); responses are
//! `application/vnd.schemaregistry.v1+json`. Errors are `{"error_code": N, "message": "..."}`
//! with Confluent's codes.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::avro::{AVRO, SchemaReference};
use crate::compat::CompatibilityLevel;
use crate::error::RegistryError;
use crate::registry::{NewSchema, Registry, VersionSpec};

/// Content type of every response.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

type Params = Query<HashMap<String, String>>;
type Reg = State<Arc<Registry>>;
type ApiResult = Result<Response, ApiError>;

/// The registry's HTTP API, ready to be served or `oneshot` in tests.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/schemas/types", get(schema_types))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/versions", get(id_versions))
        .route("/schemas/ids/{id}/subjects", get(id_subjects))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route(
            "/subjects/{subject}/versions/{version}",
            get(version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(raw_schema_by_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(referenced_by),
        )
        .route(
            "/config",
            get(global_config)
                .put(set_global_config)
                .delete(delete_global_config),
        )
        .route(
            "/config/{subject}",
            get(subject_config)
                .put(set_subject_config)
                .delete(delete_subject_config),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(compatibility_all),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compatibility_version),
        )
        .route("/mode", get(mode))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(registry)
}

/// An error rendered the Confluent way.
#[derive(Debug)]
struct ApiError(RegistryError);

impl From<RegistryError> for ApiError {
    fn from(err: RegistryError) -> Self {
        Self(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.0.status_and_code();
        if status.is_server_error() {
            tracing::error!(error = %self.0, "schema registry request failed");
        }
        error_response(status, code, &self.0.to_string())
    }
}

fn error_response(status: StatusCode, code: u32, message: &str) -> Response {
    respond(status, &json!({ "error_code": code, "message": message }))
}

fn respond(status: StatusCode, body: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, CONTENT_TYPE)], bytes).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, CONTENT_TYPE)],
            format!(r#"{{"error_code":50001,"message":"could not encode response: {e}"}}"#),
        )
            .into_response(),
    }
}

fn ok(body: &impl serde::Serialize) -> ApiResult {
    Ok(respond(StatusCode::OK, body))
}

fn flag(params: &HashMap<String, String>, name: &str) -> bool {
    params
        .get(name)
        .is_some_and(|v| v.is_empty() || v.eq_ignore_ascii_case("true"))
}

fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, RegistryError> {
    serde_json::from_slice(body).map_err(|e| {
        let status = if e.is_data() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::BAD_REQUEST
        };
        RegistryError::BadRequest {
            status,
            message: format!("invalid request body: {e}"),
        }
    })
}

fn parse_id(id: &str) -> Result<i32, RegistryError> {
    // An id that is not a number cannot exist; Confluent answers 404 as well.
    id.parse().map_err(|_| RegistryError::SchemaNotFound)
}

/// Body of register, lookup and compatibility requests. Other fields Confluent clients send
/// (`metadata`, `ruleSet`, `id`, ...) are accepted and ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaBody {
    schema: Option<String>,
    schema_type: Option<String>,
    references: Option<Vec<ReferenceBody>>,
}

#[derive(Debug, Deserialize)]
struct ReferenceBody {
    name: String,
    subject: String,
    version: i32,
}

impl SchemaBody {
    fn parse(body: &[u8]) -> Result<NewSchema, RegistryError> {
        let body: Self = parse_body(body)?;
        let schema = body
            .schema
            .ok_or_else(|| RegistryError::InvalidSchema("(empty schema)".to_owned()))?;
        Ok(NewSchema {
            schema,
            schema_type: body.schema_type,
            references: body
                .references
                .unwrap_or_default()
                .into_iter()
                .map(|r| SchemaReference {
                    name: r.name,
                    subject: r.subject,
                    version: r.version,
                })
                .collect(),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigBody {
    compatibility: Option<String>,
    compatibility_level: Option<String>,
}

impl ConfigBody {
    fn parse(body: &[u8]) -> Result<CompatibilityLevel, RegistryError> {
        let body: Self = parse_body(body)?;
        body.compatibility
            .or(body.compatibility_level)
            .ok_or_else(|| RegistryError::InvalidCompatibilityLevel(String::new()))?
            .parse()
    }
}

async fn root() -> ApiResult {
    ok(&json!({}))
}

async fn schema_types() -> ApiResult {
    ok(&[AVRO])
}

async fn mode() -> ApiResult {
    ok(&json!({ "mode": "READWRITE" }))
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, 404, "HTTP 404 Not Found")
}

async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        405,
        "HTTP 405 Method Not Allowed",
    )
}

async fn schema_by_id(State(reg): Reg, Path(id): Path<String>, Query(q): Params) -> ApiResult {
    let info = reg
        .schema_by_id(parse_id(&id)?, flag(&q, "deleted"))
        .await?;
    ok(&info)
}

async fn raw_schema_by_id(State(reg): Reg, Path(id): Path<String>, Query(q): Params) -> ApiResult {
    let info = reg
        .schema_by_id(parse_id(&id)?, flag(&q, "deleted"))
        .await?;
    Ok(raw(info.schema))
}

fn raw(schema: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        schema,
    )
        .into_response()
}

async fn id_versions(State(reg): Reg, Path(id): Path<String>, Query(q): Params) -> ApiResult {
    ok(&reg.id_versions(parse_id(&id)?, flag(&q, "deleted")).await?)
}

async fn id_subjects(State(reg): Reg, Path(id): Path<String>, Query(q): Params) -> ApiResult {
    let mut subjects: Vec<String> = reg
        .id_versions(parse_id(&id)?, flag(&q, "deleted"))
        .await?
        .into_iter()
        .map(|v| v.subject)
        .collect();
    subjects.dedup();
    ok(&subjects)
}

async fn subjects(State(reg): Reg, Query(q): Params) -> ApiResult {
    let mut subjects = reg.subjects(flag(&q, "deleted"));
    // ":*:" is the Java client's "all contexts" prefix.
    if let Some(prefix) = q
        .get("subjectPrefix")
        .filter(|p| !p.is_empty() && *p != ":*:")
    {
        subjects.retain(|s| s.starts_with(prefix.as_str()));
    }
    ok(&subjects)
}

async fn lookup(
    State(reg): Reg,
    Path(subject): Path<String>,
    Query(q): Params,
    body: Bytes,
) -> ApiResult {
    let new = SchemaBody::parse(&body)?;
    ok(&reg.lookup(&subject, new, flag(&q, "deleted")).await?)
}

async fn delete_subject(
    State(reg): Reg,
    Path(subject): Path<String>,
    Query(q): Params,
) -> ApiResult {
    ok(&reg.delete_subject(&subject, flag(&q, "permanent")).await?)
}

async fn versions(State(reg): Reg, Path(subject): Path<String>, Query(q): Params) -> ApiResult {
    ok(&reg.versions(&subject, flag(&q, "deleted")).await?)
}

async fn register(State(reg): Reg, Path(subject): Path<String>, body: Bytes) -> ApiResult {
    let new = SchemaBody::parse(&body)?;
    let id = reg.register(&subject, new).await?;
    ok(&json!({ "id": id }))
}

async fn version(
    State(reg): Reg,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Params,
) -> ApiResult {
    let spec: VersionSpec = version.parse()?;
    ok(&reg.version(&subject, spec, flag(&q, "deleted")).await?)
}

async fn delete_version(
    State(reg): Reg,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Params,
) -> ApiResult {
    let spec: VersionSpec = version.parse()?;
    ok(&reg
        .delete_version(&subject, spec, flag(&q, "permanent"))
        .await?)
}

async fn raw_schema_by_version(
    State(reg): Reg,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Params,
) -> ApiResult {
    let spec: VersionSpec = version.parse()?;
    Ok(raw(reg
        .version(&subject, spec, flag(&q, "deleted"))
        .await?
        .schema))
}

async fn referenced_by(
    State(reg): Reg,
    Path((subject, version)): Path<(String, String)>,
) -> ApiResult {
    let spec: VersionSpec = version.parse()?;
    ok(&reg.referenced_by(&subject, spec).await?)
}

async fn global_config(State(reg): Reg) -> ApiResult {
    ok(&json!({ "compatibilityLevel": reg.global_level() }))
}

async fn set_global_config(State(reg): Reg, body: Bytes) -> ApiResult {
    let level = ConfigBody::parse(&body)?;
    reg.set_global_level(level).await?;
    ok(&json!({ "compatibility": level }))
}

async fn delete_global_config(State(reg): Reg) -> ApiResult {
    let previous = reg.delete_global_level().await?;
    ok(&json!({ "compatibilityLevel": previous }))
}

async fn subject_config(
    State(reg): Reg,
    Path(subject): Path<String>,
    Query(q): Params,
) -> ApiResult {
    let level = if flag(&q, "defaultToGlobal") {
        reg.effective_level(&subject)
    } else {
        reg.subject_level(&subject).await?
    };
    ok(&json!({ "compatibilityLevel": level }))
}

async fn set_subject_config(
    State(reg): Reg,
    Path(subject): Path<String>,
    body: Bytes,
) -> ApiResult {
    let level = ConfigBody::parse(&body)?;
    reg.set_subject_level(&subject, level).await?;
    ok(&json!({ "compatibility": level }))
}

async fn delete_subject_config(State(reg): Reg, Path(subject): Path<String>) -> ApiResult {
    let previous = reg.delete_subject_level(&subject).await?;
    ok(&json!({ "compatibilityLevel": previous }))
}

async fn compatibility_all(
    State(reg): Reg,
    Path(subject): Path<String>,
    Query(q): Params,
    body: Bytes,
) -> ApiResult {
    let new = SchemaBody::parse(&body)?;
    let messages = reg.test_compatibility(&subject, None, new).await?;
    compatibility_response(&messages, flag(&q, "verbose"))
}

async fn compatibility_version(
    State(reg): Reg,
    Path((subject, version)): Path<(String, String)>,
    Query(q): Params,
    body: Bytes,
) -> ApiResult {
    let spec: VersionSpec = version.parse()?;
    let new = SchemaBody::parse(&body)?;
    let messages = reg.test_compatibility(&subject, Some(spec), new).await?;
    compatibility_response(&messages, flag(&q, "verbose"))
}

fn compatibility_response(messages: &[String], verbose: bool) -> ApiResult {
    if verbose {
        ok(&json!({ "is_compatible": messages.is_empty(), "messages": messages }))
    } else {
        ok(&json!({ "is_compatible": messages.is_empty() }))
    }
}
