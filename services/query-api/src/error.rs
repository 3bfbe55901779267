/// Why a request failed. One enum for both transports: each variant maps to one HTTP status and
/// one gRPC code, so REST and gRPC clients are told the same thing.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueryError {
    /// Missing, malformed, unknown-tenant, wrong or revoked key: deliberately indistinguishable.
    #[error("invalid or missing API key")]
    Unauthorized,
    /// The request is malformed (unknown template, bad time, bad parameter).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The SQL does not parse, or ClickHouse rejected it (unknown column, type mismatch, ...).
    #[error("bad SQL: {0}")]
    BadSql(String),
    /// A statement the SQL rules refuse; `reason` is the metric label.
    #[error("statement refused ({reason}): {detail}")]
    Refused {
        reason: &'static str,
        detail: String,
    },
    #[error("not found: {0}")]
    NotFound(String),
    /// `max_execution_time` was reached.
    #[error("time limit exceeded: {0}")]
    Timeout(String),
    /// `max_result_rows` or `max_memory_usage` was reached.
    #[error("limit exceeded: {0}")]
    TooLarge(String),
    /// ClickHouse cannot be reached: retry later.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl QueryError {
    pub fn refused(reason: &'static str, detail: impl Into<String>) -> Self {
        Self::Refused {
            reason,
            detail: detail.into(),
        }
    }

    pub fn http_status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::BadRequest(_) | Self::BadSql(_) => StatusCode::BAD_REQUEST,
            Self::Refused { .. } => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::TooLarge(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn grpc_status(&self) -> tonic::Status {
        let message = self.to_string();
        match self {
            Self::Unauthorized => tonic::Status::unauthenticated(message),
            Self::BadRequest(_) | Self::BadSql(_) => tonic::Status::invalid_argument(message),
            Self::Refused { .. } => tonic::Status::permission_denied(message),
            Self::NotFound(_) => tonic::Status::not_found(message),
            Self::Timeout(_) => tonic::Status::deadline_exceeded(message),
            Self::TooLarge(_) => tonic::Status::resource_exhausted(message),
            Self::Unavailable(_) => tonic::Status::unavailable(message),
            Self::Internal(_) => tonic::Status::internal(message),
        }
    }

    /// A stable short name, for logs and the `status` label.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::BadRequest(_) => "bad_request",
            Self::BadSql(_) => "bad_sql",
            Self::Refused { .. } => "refused",
            Self::NotFound(_) => "not_found",
            Self::Timeout(_) => "timeout",
            Self::TooLarge(_) => "too_large",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    /// Classifies a ClickHouse failure by its exception code (`Code: N.` in the body).
    pub fn from_clickhouse(error: &clickhouse::error::Error) -> Self {
        use clickhouse::error::Error as Ch;
        match error {
            Ch::Network(_) | Ch::TimedOut => Self::Unavailable(error.to_string()),
            Ch::BadResponse(text) => {
                let code = text
                    .split("Code: ")
                    .nth(1)
                    .and_then(|rest| rest.split('.').next())
                    .and_then(|n| n.trim().parse::<u32>().ok());
                let reason = text
                    .split("DB::Exception: ")
                    .nth(1)
                    .unwrap_or(text)
                    .split(" (version ")
                    .next()
                    .unwrap_or(text)
                    .trim()
                    .to_owned();
                match code {
                    // TIMEOUT_EXCEEDED
                    Some(159) => Self::Timeout(reason),
                    // TOO_MANY_ROWS_OR_BYTES, TOO_MANY_ROWS, MEMORY_LIMIT_EXCEEDED
                    Some(396 | 158 | 241) => Self::TooLarge(reason),
                    // READONLY, ACCESS_DENIED: the server refused what the rules let through.
                    Some(164 | 497) => Self::refused("server", reason),
                    // A server-side problem (e.g. it is shutting down, a table is missing).
                    Some(1001 | 210 | 209) | None => Self::Unavailable(reason),
                    Some(_) => Self::BadSql(reason),
                }
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<ve_auth::AuthError> for QueryError {
    fn from(e: ve_auth::AuthError) -> Self {
        match e {
            ve_auth::AuthError::Unauthorized => Self::Unauthorized,
        }
    }
}
