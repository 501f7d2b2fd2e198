use std::path::PathBuf;

/// Everything that can go wrong between a path on disk and a tensor view.
/// Each variant names the file (and tensor where there is one) so that the message alone
/// tells the user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: file not found ({what})")]
    MissingFile { path: PathBuf, what: String },
    #[error("{path}: no model.safetensors or model.safetensors.index.json in this folder")]
    NoWeights { path: PathBuf },
    #[error("{path}: invalid JSON: {reason}")]
    Json { path: PathBuf, reason: String },
    #[error("{path}: invalid safetensors header: {reason}")]
    Header { path: PathBuf, reason: String },
    #[error("{path}: truncated: header promises {expected} bytes but the file has {actual}")]
    Truncated {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("{path}: shard listed in the index for tensor '{tensor}' does not exist")]
    ShardMissing { path: PathBuf, tensor: String },
    #[error(
        "{path}: index maps tensor '{tensor}' to this shard but the shard does not contain it"
    )]
    IndexMismatch { path: PathBuf, tensor: String },
    #[error("{path}: tensor '{tensor}' has unsupported dtype {dtype}")]
    UnsupportedDType {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    #[error("{path}: {reason}")]
    Gguf { path: PathBuf, reason: String },
    #[error("tensor '{name}' not found in the checkpoint")]
    MissingTensor { name: String },
    #[error("tensor '{tensor}' appears in two shards: {first} and {second}")]
    DuplicateTensor {
        tensor: String,
        first: PathBuf,
        second: PathBuf,
    },
}

pub type Result<T> = std::result::Result<T, Error>;
