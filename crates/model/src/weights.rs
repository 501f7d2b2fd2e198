//! Checking a checkpoint against its config, and reading tensors by checkpoint name as f32
//! (the reference path's representation), dequantizing block-FP8 on the way.

use std::collections::{BTreeMap, BTreeSet};

use glm5_format::{Checkpoint, DType, TensorView};

use crate::config::Config;
use crate::spec::{tensor_specs, Role};
use crate::{Error, Result};

/// What `check` found: tensors the config implies but the files lack, tensors the files have
/// that the config does not explain, and bytes stored per dtype.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    pub bytes_per_dtype: BTreeMap<String, u64>,
    pub mtp_present: bool,
}

/// Suffix of the FP8 block scale stored beside a quantized weight.
pub const SCALE_SUFFIX: &str = "_scale_inv";

/// Compare a checkpoint with what its config implies. Wrong shapes, FP8 weights without their
/// scale, and dtypes that cannot hold weights are errors; missing and unexpected names are
/// reported (loading fails later on a missing one).
pub fn check(cfg: &Config, ckpt: &Checkpoint) -> Result<Report> {
    let specs = tensor_specs(cfg);
    let mut report = Report::default();
    let mut explained = BTreeSet::new();
    for s in &specs {
        if !ckpt.contains(&s.name) {
            if !s.mtp {
                report.missing.push(s.name.clone());
            }
            continue;
        }
        if s.mtp {
            report.mtp_present = true;
        }
        explained.insert(s.name.clone());
        let t = ckpt.get(&s.name)?;
        if t.shape != s.shape.as_slice() {
            return Err(Error::ShapeMismatch {
                file: t.file.to_path_buf(),
                name: s.name.clone(),
                expected: s.shape.clone(),
                actual: t.shape.to_vec(),
            });
        }
        match t.dtype {
            DType::F32 | DType::F16 | DType::BF16 => {}
            DType::F8E4M3 => {
                let scale = fp8_scale(cfg, ckpt, &t)?;
                let scale_name = scale.name.to_string();
                explained.insert(scale_name);
            }
            other => {
                return Err(Error::WrongDType {
                    file: t.file.to_path_buf(),
                    name: s.name.clone(),
                    dtype: other.to_string(),
                    expected: "F32, F16, BF16 or F8_E4M3".into(),
                })
            }
        }
    }
    for name in ckpt.names() {
        if !explained.contains(name) {
            report.unexpected.push(name.to_string());
        }
        if let Ok(t) = ckpt.get(name) {
            *report
                .bytes_per_dtype
                .entry(t.dtype.to_string())
                .or_default() += t.bytes.len() as u64;
        }
    }
    Ok(report)
}

/// The FP8 scale grid for a `[out, in]` weight: `[ceil(out/b0), ceil(in/b1)]`. The block size
/// comes from `quantization_config.weight_block_size`, or 128x128 when the config has none.
fn scale_shape(cfg: &Config, w: &[usize]) -> Vec<usize> {
    let [b0, b1] = cfg.fp8.as_ref().map_or([128, 128], |q| q.weight_block_size);
    vec![w[0].div_ceil(b0), w[1].div_ceil(b1)]
}

/// The block scale of FP8 weight `t`, checked: present, `[ceil(out/b0), ceil(in/b1)]`, float.
fn fp8_scale<'a>(cfg: &Config, ckpt: &'a Checkpoint, t: &TensorView) -> Result<TensorView<'a>> {
    let scale_name = format!("{}{SCALE_SUFFIX}", t.name);
    let scale = ckpt.get(&scale_name).map_err(|_| Error::MissingScale {
        file: t.file.to_path_buf(),
        name: t.name.to_string(),
    })?;
    let expected = match t.shape {
        [rows, cols] => scale_shape(cfg, &[*rows, *cols]),
        _ => {
            return Err(Error::ShapeMismatch {
                file: t.file.to_path_buf(),
                name: t.name.to_string(),
                expected: vec![0, 0],
                actual: t.shape.to_vec(),
            })
        }
    };
    if scale.shape != expected.as_slice() {
        return Err(Error::ShapeMismatch {
            file: scale.file.to_path_buf(),
            name: scale_name,
            expected,
            actual: scale.shape.to_vec(),
        });
    }
    if !matches!(scale.dtype, DType::F32 | DType::BF16 | DType::F16) {
        return Err(Error::WrongDType {
            file: scale.file.to_path_buf(),
            name: scale_name,
            dtype: scale.dtype.to_string(),
            expected: "F32".into(),
        });
    }
    Ok(scale)
}

/// Read tensor `name` as f32 in its checkpoint shape `shape`, dequantizing block FP8
/// (`W[i,j] = fp8(Wq[i,j]) * scale_inv[i / b0, j / b1]`, ragged last blocks included).
pub fn load_f32(cfg: &Config, ckpt: &Checkpoint, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let t = ckpt.get(name).map_err(|_| Error::MissingTensor {
        dir: ckpt.dir.clone(),
        name: name.to_string(),
    })?;
    if t.shape != shape {
        return Err(Error::ShapeMismatch {
            file: t.file.to_path_buf(),
            name: name.to_string(),
            expected: shape.to_vec(),
            actual: t.shape.to_vec(),
        });
    }
    match t.dtype {
        DType::F32 | DType::F16 | DType::BF16 => Ok(t.to_f32()),
        DType::F8E4M3 => {
            let s = fp8_scale(cfg, ckpt, &t)?;
            let [b0, b1] = cfg.fp8.as_ref().map_or([128, 128], |q| q.weight_block_size);
            let scale = s.to_f32();
            let mut w = t.to_f32();
            let (rows, cols) = (shape[0], shape[1]);
            let scale_cols = cols.div_ceil(b1);
            for i in 0..rows {
                let srow = &scale[(i / b0) * scale_cols..(i / b0 + 1) * scale_cols];
                for (j, x) in w[i * cols..(i + 1) * cols].iter_mut().enumerate() {
                    *x *= srow[j / b1];
                }
            }
            Ok(w)
        }
        other => Err(Error::WrongDType {
            file: t.file.to_path_buf(),
            name: name.to_string(),
            dtype: other.to_string(),
            expected: "F32, F16, BF16 or F8_E4M3".into(),
        }),
    }
}

/// Whether `synth --dtype fp8` (and GLM-5-FP8) stores this role block-quantized.
pub fn is_fp8_role(role: Role) -> bool {
    role == Role::Linear
}
