use std::time::Duration;

/// Why a whole request was refused. Each maps to one HTTP status and one gRPC code; per-event
/// validation failures are not errors, they are listed in the batch report.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Missing, malformed, unknown-tenant, wrong or revoked key: deliberately indistinguishable.
    #[error("invalid or missing API key")]
    Unauthorized,
    /// The body (or a gRPC message) is larger than the configured limit.
    #[error("request body larger than {max} bytes")]
    PayloadTooLarge { max: usize },
    /// More events in one request than `limits.max_events_per_batch`.
    #[error("batch of {count} events exceeds the limit of {max} per request")]
    TooManyEvents { count: usize, max: usize },
    /// The request itself cannot be read (not JSON, wrong envelope, bad protobuf).
    #[error("malformed request: {0}")]
    BadRequest(String),
    #[error("unsupported {0}")]
    UnsupportedMediaType(String),
    /// The tenant's token bucket is empty; retry after the given time.
    #[error("rate limit exceeded, retry in {}s", retry_after_secs(*.retry_after))]
    RateLimited { retry_after: Duration },
    /// A dependency (broker, registry) failed: nothing of the request was acknowledged.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
}

impl GatewayError {
    /// The `reason` label of `gateway_events_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::TooManyEvents { .. } => "too_many_events",
            Self::BadRequest(_) => "malformed_request",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unavailable(_) => "unavailable",
        }
    }

    /// Whether the client should try the same request again later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::RateLimited { .. } | Self::Unavailable(_))
    }

    /// Seconds for a `Retry-After` header, when there should be one.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after } => Some(retry_after_secs(*retry_after)),
            Self::Unavailable(_) => Some(UNAVAILABLE_RETRY_SECS),
            _ => None,
        }
    }

    pub fn http_status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::PayloadTooLarge { .. } | Self::TooManyEvents { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn grpc_status(&self) -> tonic::Status {
        let mut status = match self {
            Self::Unauthorized => tonic::Status::unauthenticated(self.to_string()),
            Self::PayloadTooLarge { .. } | Self::RateLimited { .. } => {
                tonic::Status::resource_exhausted(self.to_string())
            }
            Self::TooManyEvents { .. } | Self::BadRequest(_) | Self::UnsupportedMediaType(_) => {
                tonic::Status::invalid_argument(self.to_string())
            }
            Self::Unavailable(_) => tonic::Status::unavailable(self.to_string()),
        };
        if let Some(secs) = self.retry_after()
            && let Ok(value) = secs.to_string().parse()
        {
            let _ = status.metadata_mut().insert("retry-after", value);
        }
        status
    }
}

impl From<ve_auth::AuthError> for GatewayError {
    fn from(e: ve_auth::AuthError) -> Self {
        match e {
            ve_auth::AuthError::Unauthorized => Self::Unauthorized,
        }
    }
}

/// What a client told "unavailable" should wait: long enough for a broker leader election.
const UNAVAILABLE_RETRY_SECS: u64 = 5;

fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}
