//! Errors of the registry and of its log, with the Confluent error codes clients branch on.

use axum::http::StatusCode;

/// Failure of the [`SchemaLog`](crate::SchemaLog) backend.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The backend (e.g. the Kafka producer or the watermark query) failed.
    #[error("schema log backend error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// The log is shut down and accepts no more records.
    #[error("schema log is closed")]
    Closed,
}

impl LogError {
    /// Wraps any backend error.
    pub fn backend(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend(Box::new(err))
    }

    /// A backend error that only has a message.
    pub fn message(msg: impl Into<String>) -> Self {
        Self::Backend(msg.into().into())
    }
}

/// Everything a registry operation can fail with. Each variant maps to the HTTP status and
/// Confluent `error_code` that Confluent's registry returns for the same condition, because
/// clients (Java/Python serializers, `schema_registry_converter`) branch on those codes.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// 40401.
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    /// 40402.
    #[error("Version {0} not found.")]
    VersionNotFound(String),
    /// 40403, for lookups by schema content.
    #[error("Schema not found")]
    SchemaNotFound,
    /// 40403, for lookups by id.
    #[error("Schema {0} not found")]
    SchemaIdNotFound(i32),
    /// 40404.
    #[error("Subject '{0}' was soft deleted.Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    /// 40405.
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    /// 40406.
    #[error("Subject '{0}' Version {1} was soft deleted.Set permanent=true to delete permanently")]
    VersionSoftDeleted(String, i32),
    /// 40407.
    #[error("Subject '{0}' Version {1} was not deleted first before being permanently deleted")]
    VersionNotSoftDeleted(String, i32),
    /// 40408.
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectCompatibilityNotConfigured(String),
    /// 409 (Confluent uses the bare HTTP status as error code here).
    #[error(
        "Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: [{}]",
        .messages.join(", ")
    )]
    Incompatible {
        /// Subject the schema was registered under.
        subject: String,
        /// Confluent-style detail entries.
        messages: Vec<String>,
    },
    /// 42201.
    #[error("Invalid schema {0}")]
    InvalidSchema(String),
    /// 42202.
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    /// 42203.
    #[error(
        "Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive"
    )]
    InvalidCompatibilityLevel(String),
    /// 42206.
    #[error("{0}")]
    ReferenceExists(String),
    /// 42208.
    #[error("The specified subject '{0}' is not valid.")]
    InvalidSubject(String),
    /// 400 / 422 for request bodies that are not the JSON we expect.
    #[error("{message}")]
    BadRequest {
        /// HTTP status: 400 for unparsable JSON, 422 for JSON of the wrong shape.
        status: StatusCode,
        /// Human readable reason.
        message: String,
    },
    /// 50001.
    #[error("Error while accessing the schema log: {0}")]
    Store(#[from] LogError),
    /// 50002.
    #[error("Operation timed out: {0}")]
    Timeout(String),
}

impl RegistryError {
    /// HTTP status and Confluent error code of this error.
    pub fn status_and_code(&self) -> (StatusCode, u32) {
        match self {
            Self::SubjectNotFound(_) => (StatusCode::NOT_FOUND, 40401),
            Self::VersionNotFound(_) => (StatusCode::NOT_FOUND, 40402),
            Self::SchemaNotFound | Self::SchemaIdNotFound(_) => (StatusCode::NOT_FOUND, 40403),
            Self::SubjectSoftDeleted(_) => (StatusCode::NOT_FOUND, 40404),
            Self::SubjectNotSoftDeleted(_) => (StatusCode::NOT_FOUND, 40405),
            Self::VersionSoftDeleted(..) => (StatusCode::NOT_FOUND, 40406),
            Self::VersionNotSoftDeleted(..) => (StatusCode::NOT_FOUND, 40407),
            Self::SubjectCompatibilityNotConfigured(_) => (StatusCode::NOT_FOUND, 40408),
            Self::Incompatible { .. } => (StatusCode::CONFLICT, 409),
            Self::InvalidSchema(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42201),
            Self::InvalidVersion(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42202),
            Self::InvalidCompatibilityLevel(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42203),
            Self::ReferenceExists(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42206),
            Self::InvalidSubject(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42208),
            Self::BadRequest { status, .. } => (*status, u32::from(status.as_u16())),
            Self::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, 50001),
            Self::Timeout(_) => (StatusCode::INTERNAL_SERVER_ERROR, 50002),
        }
    }

    /// Whether this is a "does not exist" answer that may just mean this replica lags the log.
    pub(crate) fn is_not_found(&self) -> bool {
        self.status_and_code().0 == StatusCode::NOT_FOUND
    }
}
