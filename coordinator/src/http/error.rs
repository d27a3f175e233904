//! The API's one error type, [`ApiError`]: every failure answers
//! `{"error": {"code", "message"}}` with a stable machine-readable code (listed in [`Code`]),
//! and the extractors [`ApiJson`] and [`Id`] that turn malformed bodies and ids into it instead
//! of axum's plain-text rejections.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::store::StoreError;

/// The stable error codes (the `code` field), each with the status it goes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 400: the request is malformed (bad JSON, unknown field, bad value, non-numeric id).
    BadRequest,
    /// 401: no bearer token, or one that is unknown or revoked.
    Unauthorized,
    /// 403: the token's role does not allow this route (a read-only token on a write route).
    Forbidden,
    /// 404: no such route, node, invite or token.
    NotFound,
    /// 405: the route exists but not with this method.
    MethodNotAllowed,
    /// 409: the name or address is taken.
    Conflict,
    /// 413: the body is larger than the limit.
    BodyTooLarge,
    /// 415: the body is not declared as `application/json`.
    UnsupportedMediaType,
    /// 429: this client sent too many requests; see `Retry-After`.
    RateLimited,
    /// 500: the coordinator failed (details are in its log, not in the answer).
    Internal,
}

impl Code {
    /// Every code, for the OpenAPI document.
    pub const ALL: [Code; 10] = [
        Code::BadRequest,
        Code::Unauthorized,
        Code::Forbidden,
        Code::NotFound,
        Code::MethodNotAllowed,
        Code::Conflict,
        Code::BodyTooLarge,
        Code::UnsupportedMediaType,
        Code::RateLimited,
        Code::Internal,
    ];

    /// The `code` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::Unauthorized => "unauthorized",
            Code::Forbidden => "forbidden",
            Code::NotFound => "not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::Conflict => "conflict",
            Code::BodyTooLarge => "body_too_large",
            Code::UnsupportedMediaType => "unsupported_media_type",
            Code::RateLimited => "rate_limited",
            Code::Internal => "internal",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            Code::BadRequest => StatusCode::BAD_REQUEST,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::Conflict => StatusCode::CONFLICT,
            Code::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An API failure: stable code, human-readable message, and for 429 the seconds to wait.
#[derive(Debug)]
pub struct ApiError {
    /// What went wrong, machine-readably.
    pub code: Code,
    /// What went wrong, for people.
    pub message: String,
    /// Seconds until a retry can succeed (sent as `Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Code::BadRequest, message)
    }

    /// 404 for a missing `what`.
    pub fn not_found(what: &str) -> Self {
        Self::new(Code::NotFound, format!("{what} not found"))
    }

    /// 409 with `message`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(Code::Conflict, message)
    }

    /// 500; the cause goes to the log only.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "API failure");
        Self::new(Code::Internal, "internal error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code.as_str(), "message": self.message}});
        let mut resp = (self.code.status(), Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::internal(&e)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        let code = match &e {
            JsonRejection::MissingJsonContentType(_) => Code::UnsupportedMediaType,
            JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Code::BodyTooLarge
            }
            _ => Code::BadRequest,
        };
        Self::new(code, e.body_text())
    }
}

/// A JSON body whose rejections are [`ApiError`]s.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(e) => Err(e.into()),
        }
    }
}

/// The `{id}` of a route: a non-negative integer, else 400.
#[derive(Debug, Clone, Copy)]
pub struct Id(pub u64);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(raw)) => raw
                .parse()
                .map(Id)
                .map_err(|_| ApiError::bad_request(format!("id {raw:?} is not a number"))),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}
