//! glm5-model: the GLM-5 family (`glm_moe_dsa`, `glm4_moe_lite`, `deepseek_v32`).
//!
//! Owns the typed [`Config`] parsed from `config.json`, what a config implies about a checkpoint
//! ([`spec`]), weight loading by checkpoint name ([`weights`]), synthetic checkpoints
//! ([`synth`]) and the reference forward pass. It knows nothing about requests, sampling or HTTP.

mod absorbed;
pub mod config;
mod error;
mod expanded;
pub mod gguf_map;
pub mod gguf_write;
pub mod glm_moe_dsa;
pub mod kv_cache;
mod mla;
pub mod mtp;
pub mod rope;
pub mod source;
pub mod spec;
pub mod synth;
pub mod trace;
pub mod weights;

pub use config::{Config, IndexerType, MlpType, ModelType, SUPPORTED_MODEL_TYPES};
pub use error::{Error, Result};
pub use glm5_kernels::rows::RowFormat;
pub use glm_moe_dsa::Model;
pub use kv_cache::{KvCache, KvFormat};
pub use source::Quant;
pub use trace::Trace;
