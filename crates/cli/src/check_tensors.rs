//! `glm5 inspect --check-tensors`: every weight value decoded and checked to be finite (as
//! llama.cpp's `--check-tensors`), so a file with NaN or Inf weights is named with its tensor
//! instead of producing garbage text.

use std::path::Path;

use anyhow::{anyhow, Result};
use glm5_format::{decode_f32, Checkpoint, GgufFile};
use glm5_model::source::wformat_of;

/// Values decoded at a time (whole blocks), so a large tensor is never held as f32 at once.
const CHUNK_VALUES: usize = 1 << 20;

/// The first value that is not finite in `values`, as (index, value).
fn first_bad(values: &[f32]) -> Option<(usize, f32)> {
    values
        .iter()
        .position(|v| !v.is_finite())
        .map(|i| (i, values[i]))
}

/// Check every tensor; `Ok(n)` with the number checked, else an error naming the first bad one.
pub fn check(path: &Path) -> Result<usize> {
    let bad = |file: &Path, tensor: &str, at: usize, v: f32| {
        anyhow!(
            "{}: tensor '{tensor}' holds {v} at element {at} (NaN/Inf weights: the file is damaged or was written wrong)",
            file.display()
        )
    };
    let mut values = Vec::new();
    if path.is_file() {
        let file = GgufFile::open(path)?;
        for t in file.tensors.values() {
            let fmt = wformat_of(t.ggml_type);
            let bytes = file.bytes(t);
            let (block_values, block_bytes) = t.ggml_type.block();
            let step = (CHUNK_VALUES / block_values as usize).max(1) * block_bytes as usize;
            let mut done = 0;
            for chunk in bytes.chunks(step) {
                values.clear();
                fmt.dequantize_row(chunk, &mut values);
                if let Some((i, v)) = first_bad(&values) {
                    return Err(bad(path, &t.name, done + i, v));
                }
                done += values.len();
            }
        }
        return Ok(file.tensors.len());
    }
    let ckpt = Checkpoint::open(path)?;
    let names: Vec<String> = ckpt.names().map(str::to_string).collect();
    for name in &names {
        let t = ckpt.get(name)?;
        let size = t.dtype.size();
        let mut done = 0;
        for chunk in t.bytes.chunks(CHUNK_VALUES * size) {
            let values = decode_f32(t.dtype, chunk);
            // Integer tensors (I32/I64 indices) are finite by construction.
            if let Some((i, v)) = first_bad(&values) {
                return Err(bad(t.file, name, done + i, v));
            }
            done += values.len();
        }
    }
    Ok(names.len())
}
