use std::path::PathBuf;

/// Errors of the engine crate. Each names the file, token or parameter at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] glm5_model::Error),
    #[error("{path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("{path}: the chat template is invalid: {reason}")]
    TemplateSyntax { path: PathBuf, reason: String },
    #[error("{path}: rendering the chat template failed: {reason}")]
    TemplateRender { path: PathBuf, reason: String },
    #[error("{dir}: no chat template (looked for chat_template.jinja and tokenizer_config.json 'chat_template')")]
    NoTemplate { dir: PathBuf },
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("'{param}': {reason}")]
    BadParam { param: &'static str, reason: String },
    #[error("the prompt is {prompt} tokens, which leaves no room in the model's context of {ctx} tokens (max_position_embeddings); shorten it or pass --truncate")]
    PromptTooLong { prompt: usize, ctx: usize },
    #[error("the prompt is empty: at least one token is needed")]
    EmptyPrompt,
    #[error("the request queue is full ({waiting} requests waiting); retry later")]
    QueueFull { waiting: usize },
    #[error("constrained decoding failed: {0}")]
    Grammar(String),
    #[error("the engine thread has stopped")]
    EngineStopped,
}

pub type Result<T> = std::result::Result<T, Error>;
