//! The one place where errors become HTTP statuses and error bodies, shaped for the API the
//! client speaks (OpenAI `{"error": {...}}` or Anthropic `{"type": "error", "error": {...}}`).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Api {
    OpenAi,
    Anthropic,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The request parameter at fault, when there is one.
    pub param: Option<String>,
    pub api: Api,
    pub retry_after: Option<u64>,
    /// A prompt too long for the context: (prompt tokens, context tokens). Each API words this
    /// its own way, and clients key on the words (Claude Code compacts on "prompt is too long",
    /// OpenAI clients on the code `context_length_exceeded`).
    pub too_long: Option<(usize, usize)>,
    /// OpenAI's `code` where it is more specific than the status (`model_not_found`).
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            param: None,
            api: Api::OpenAi,
            retry_after: None,
            too_long: None,
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    /// 400 naming the parameter.
    pub fn param(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            param: Some(param.to_string()),
            ..ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("'{param}': {}", message.into()),
            )
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn for_api(mut self, api: Api) -> ApiError {
        self.api = api;
        self
    }

    fn kind(&self) -> &'static str {
        match (self.status.as_u16(), self.api) {
            (_, Api::OpenAi) if self.too_long.is_some() => "context_length_exceeded",
            (_, Api::OpenAi) if self.code.is_some() => self.code.unwrap_or_default(),
            (401, Api::OpenAi) => "invalid_api_key",
            (401, Api::Anthropic) => "authentication_error",
            (404, Api::OpenAi) => "not_found",
            (405, Api::OpenAi) => "method_not_allowed",
            (413, Api::OpenAi) => "request_too_large",
            (404, Api::Anthropic) => "not_found_error",
            (413, Api::Anthropic) => "request_too_large",
            (429, _) => "rate_limit_error",
            (503, Api::Anthropic) => "overloaded_error",
            (s, Api::OpenAi) if s >= 500 => "server_error",
            (s, Api::Anthropic) if s >= 500 => "api_error",
            _ => "invalid_request_error",
        }
    }

    /// The JSON body (also sent as an SSE `error` event mid-stream).
    pub fn body(&self) -> serde_json::Value {
        let message = match (self.too_long, self.api) {
            (Some((prompt, ctx)), Api::OpenAi) => format!(
                "This model's maximum context length is {ctx} tokens. However, your request has {prompt} input tokens, which leaves no room for output. Please reduce the length of the input."
            ),
            (Some((prompt, ctx)), Api::Anthropic) => {
                format!("prompt is too long: {prompt} tokens > {} maximum", ctx - 1)
            }
            (None, _) => self.message.clone(),
        };
        match self.api {
            Api::OpenAi => json!({"error": {
                "message": message,
                "type": if self.status.is_server_error() { "server_error" } else { "invalid_request_error" },
                "param": self.param,
                "code": self.kind(),
            }}),
            Api::Anthropic => json!({"type": "error", "error": {
                "type": self.kind(),
                "message": message,
            }}),
        }
    }
}

impl From<glm5_engine::Error> for ApiError {
    fn from(e: glm5_engine::Error) -> ApiError {
        use glm5_engine::Error as E;
        match &e {
            E::QueueFull { .. } => ApiError {
                retry_after: Some(1),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string())
            },
            E::EngineStopped => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            E::BadParam { param, .. } => ApiError {
                param: Some(param.to_string()),
                ..ApiError::bad_request(e.to_string())
            },
            &E::PromptTooLong { prompt, ctx } => ApiError {
                too_long: Some((prompt, ctx)),
                ..ApiError::bad_request(e.to_string())
            },
            E::EmptyPrompt | E::TemplateRender { .. } => ApiError::bad_request(e.to_string()),
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}
