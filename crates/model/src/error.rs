use std::path::PathBuf;

/// Errors of the model crate. Each names the file, field or tensor at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Format(#[from] glm5_format::Error),
    #[error("{path}: field '{field}': {reason}")]
    Config {
        path: PathBuf,
        field: String,
        reason: String,
    },
    #[error("{path}: unsupported model_type '{found}' (supported: glm_moe_dsa, glm4_moe_lite, deepseek_v32)")]
    UnsupportedModelType { path: PathBuf, found: String },
    #[error("{file}: tensor '{name}' has shape {actual:?}, config implies {expected:?}")]
    ShapeMismatch {
        file: PathBuf,
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("{dir}: tensor '{name}' is missing (the config implies it)")]
    MissingTensor { dir: PathBuf, name: String },
    #[error("{file}: tensor '{name}' is FP8 but '{name}_scale_inv' is missing")]
    MissingScale { file: PathBuf, name: String },
    #[error("{file}: tensor '{name}' has dtype {dtype}, expected {expected}")]
    WrongDType {
        file: PathBuf,
        name: String,
        dtype: String,
        expected: String,
    },
    #[error("{path}: tensor '{tensor}': {reason}")]
    Gguf {
        path: PathBuf,
        tensor: String,
        reason: String,
    },
    #[error("{path}: cannot store '{name}': {reason}")]
    Quantize {
        path: PathBuf,
        name: String,
        reason: String,
    },
    #[error("token id {id} is out of range for vocab_size {vocab_size}")]
    TokenOutOfRange { id: u32, vocab_size: usize },
    #[error("position {pos} exceeds max_position_embeddings {max}")]
    ContextOverflow { pos: usize, max: usize },
    #[error("empty input: at least one token is needed")]
    EmptyInput,
    #[error("the model has no MTP layer (num_nextn_predict_layers is 0 or model.layers.{{num_hidden_layers}}.* is not in the weights)")]
    NoMtpLayer,
    #[error("{0}")]
    KvFormat(String),
}

pub type Result<T> = std::result::Result<T, Error>;
