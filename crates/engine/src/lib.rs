//! glm5-engine: text in, text out.
//!
//! Owns the tokenizer (`tokenizer.json` through the `tokenizers` crate), incremental
//! detokenization, the model's Jinja chat template (rendered byte-identically to transformers),
//! sampling, stop handling and the generation loop of one sequence. It knows nothing of HTTP or
//! terminals, and nothing of tensor layouts beyond "tokens in, logits out". `scheduler` runs
//! many sequences at once (continuous batching, prefix cache) on its own thread.

pub mod batch;
pub mod chat;
pub mod constrain;
mod error;
pub mod generate;
pub mod gguf_tokenizer;
pub mod glm_grammar;
pub mod glm_parser;
pub mod metrics;
pub mod model_dir;
pub mod prefix_disk;
pub mod pyjson;
pub mod sampler;
pub mod scheduler;
pub mod tokenizer;

pub use chat::{ChatInput, ChatTemplate};
pub use error::{Error, Result};
pub use generate::{
    generate, FinishReason, GenerateRequest, LanguageModel, Output, Session, PREFILL_CHUNK,
};
pub use model_dir::{default_model_dir, GenerationDefaults, ModelDir};
pub use sampler::{Sampler, SamplingParams};
pub use tokenizer::{Detokenizer, Tokenizer};
