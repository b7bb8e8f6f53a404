//! The proxy's one error type, mapped once into `application/problem+json`
//! (RFC 9457) so every refusal looks the same to a client and says why.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use crate::edit::EditError;
use crate::routing::PathError;
use crate::sanitize::{BodyError, SanitizeError};

impl From<SanitizeError> for ProxyError {
    fn from(e: SanitizeError) -> Self {
        match e {
            SanitizeError::Body(e) => ProxyError::Body(e),
            SanitizeError::Edit(e) => ProxyError::Edit(e),
        }
    }
}

/// Everything the proxy itself can answer with instead of the upstream.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request target cannot be canonicalized safely.
    #[error(transparent)]
    Path(#[from] PathError),
    /// The intercepted body is not one strict JSON object.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// A rule's edits or checks failed on the body.
    #[error(transparent)]
    Edit(#[from] EditError),
    /// Framing that could make the upstream read a different request.
    #[error("ambiguous request framing: {0}")]
    Framing(&'static str),
    /// The decoded body exceeds `server.max_body_bytes`.
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// A `Content-Encoding` the proxy cannot decode.
    #[error("unsupported content-encoding {0:?}; use gzip, deflate, br or none")]
    UnsupportedEncoding(String),
    /// The compressed body is corrupt.
    #[error("request body could not be decoded: {0}")]
    Undecodable(String),
    /// The client stopped sending its body in time.
    #[error("request body was not received within {0} ms")]
    BodyTimeout(u64),
    /// The client's body stream failed (disconnect, bad chunking).
    #[error("request body could not be read")]
    BodyRead,
    /// The upstream could not be connected to.
    #[error("upstream is unreachable")]
    UpstreamUnreachable,
    /// The upstream closed or broke the connection before answering.
    #[error("upstream failed before answering")]
    UpstreamFailed,
    /// The upstream did not answer within `upstream.response_timeout_ms`.
    #[error("upstream did not answer within {0} ms")]
    UpstreamTimeout(u64),
    /// A bug: a request handler panicked.
    #[error("internal error")]
    Internal,
}

impl ProxyError {
    /// HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Path(_)
            | ProxyError::Body(_)
            | ProxyError::Edit(_)
            | ProxyError::Framing(_)
            | ProxyError::Undecodable(_)
            | ProxyError::BodyRead => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProxyError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::UpstreamUnreachable | ProxyError::UpstreamFailed => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable machine-readable reason, used in the problem `type`, logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::Path(_) => "invalid-path",
            ProxyError::Body(_) => "invalid-body",
            ProxyError::Edit(e) => e.reason(),
            ProxyError::Framing(_) => "ambiguous-framing",
            ProxyError::BodyTooLarge { .. } => "body-too-large",
            ProxyError::UnsupportedEncoding(_) => "unsupported-encoding",
            ProxyError::Undecodable(_) => "undecodable-body",
            ProxyError::BodyTimeout(_) => "body-timeout",
            ProxyError::BodyRead => "body-read-failed",
            ProxyError::UpstreamUnreachable => "upstream-unreachable",
            ProxyError::UpstreamFailed => "upstream-failed",
            ProxyError::UpstreamTimeout(_) => "upstream-timeout",
            ProxyError::Internal => "internal-error",
        }
    }
}

/// Builds a problem+json response; also used for errors raised outside the
/// proxy handler (panics, admin endpoints).
pub fn problem(status: StatusCode, reason: &str, detail: &str) -> Response {
    problem_for_rule(status, reason, detail, None)
}

/// A problem+json response naming the rule that refused the request (an
/// RFC 9457 extension member `rule`) when one applied.
pub fn problem_for_rule(
    status: StatusCode,
    reason: &str,
    detail: &str,
    rule: Option<&str>,
) -> Response {
    let mut body = serde_json::json!({
        "type": format!("tag:guestgate,2026:problem:{reason}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    if let Some(rule) = rule {
        body["rule"] = rule.into();
    }
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
        response.headers_mut().insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, deflate, br"),
        );
    }
    response
}

impl ProxyError {
    /// The problem+json answer, naming the rule that applied, if any.
    pub fn into_problem(self, rule: Option<&str>) -> Response {
        problem_for_rule(self.status(), self.reason(), &self.to_string(), rule)
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        self.into_problem(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn problems_are_rfc9457_json() {
        let response = ProxyError::BodyTooLarge { limit: 10 }.into_response();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["status"], 413);
        assert_eq!(json["type"], "tag:guestgate,2026:problem:body-too-large");
        assert_eq!(json["title"], "Payload Too Large");
        assert_eq!(json["detail"], "request body exceeds 10 bytes");
    }
}
