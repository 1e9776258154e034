//! Errors as OpenAI's API writes them: an HTTP status and
//! `{"error": {"message", "type", "param", "code"}}`, so OpenAI clients raise their usual
//! exceptions (`BadRequestError`, `AuthenticationError`, `RateLimitError`).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use vlm_core::ErrorKind;

/// Seconds a client told "overloaded" should wait before it tries again.
pub const RETRY_AFTER_SECONDS: u64 = 1;

/// One failed request.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, ...
    pub kind: &'static str,
    /// The request field at fault, when there is one.
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400: the request itself is wrong; `message` says what to change.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    /// 400 naming the field at fault.
    pub fn bad_param(param: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param),
            ..Self::bad_request(message)
        }
    }

    /// 400 for a field this server knows but does not implement.
    pub fn not_supported(param: &'static str, what: &str) -> Self {
        ApiError {
            code: Some("not_supported"),
            ..Self::bad_param(param, format!("{what} is not supported yet by vlm-server"))
        }
    }

    pub fn unauthorized() -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "missing or wrong API key: send the header `Authorization: Bearer <key>` with a key the server was started with (--api-key)".into(),
            kind: "authentication_error",
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    /// 429: the queue is full.
    pub fn overloaded(queue: usize) -> Self {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "the server is busy ({queue} requests are already waiting); retry after {RETRY_AFTER_SECONDS} s"
            ),
            kind: "rate_limit_error",
            param: None,
            code: Some("server_overloaded"),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: Some("model_not_found"),
            ..Self::bad_request(message)
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    /// The JSON body (also sent as an SSE event when a stream fails after it started).
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

/// The model's errors: bad input (an image it cannot take, a prompt too long for the
/// context, an option out of range) is the client's to fix; the rest is ours.
impl From<vlm_core::Error> for ApiError {
    fn from(e: vlm_core::Error) -> Self {
        match e.kind() {
            ErrorKind::BadInput => ApiError::bad_request(e.to_string()),
            ErrorKind::Cancelled => ApiError {
                // nginx's "client closed request": nobody reads it, the metrics count it.
                status: StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
                message: e.to_string(),
                kind: "cancelled",
                param: None,
                code: None,
            },
            _ => ApiError::internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        response
    }
}
