//! glm5-format: bytes on disk -> typed, zero-copy views.
//!
//! Owns the safetensors header parsing over `mmap`, the HF checkpoint folder layout
//! (`config.json`, `model.safetensors` or `model-0000k-of-0000n.safetensors` plus
//! `model.safetensors.index.json`), the on-disk [`DType`] and element decoding to f32, and a
//! streaming safetensors writer, and GGUF v3 (mapped reader, streaming writer). It knows nothing about tensor math, devices or model names.

mod atomic;
mod checkpoint;
mod dtype;
mod error;
mod gguf;
mod gguf_split;
mod mapped;
mod npy;
mod writer;

pub use atomic::{partial_path, write_atomic, AtomicFile};
pub use checkpoint::{read_json, Checkpoint, Shard, TensorView};
pub use dtype::{bf16_to_f32, decode_f32, f32_to_bf16, f32_to_fp8_e4m3, fp8_e4m3_to_f32, DType};
pub use error::{Error, Result};
pub use gguf::{ggml_type_name, GgmlType, GgufFile, GgufTensor, GgufWriter, Value as GgufValue};
pub use gguf_split::{split_path, GgufSplitWriter};
pub use mapped::Mapped;
pub use npy::{read_npy_f32, write_npy_f32};
pub use writer::{SafetensorsWriter, TensorSpec};
