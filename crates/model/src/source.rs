//! Where weights come from, by HF checkpoint name: an HF safetensors folder (BF16/F16/F32, or
//! block FP8 dequantized on read) or a llama.cpp `glm-dsa` GGUF file (names translated by
//! `gguf_map`; its stored blocks are used in place, straight from the mapping).
//!
//! And how weights are stored in memory: `Quant` picks a `WFormat` per tensor, following
//! llama.cpp's mixes (Q4_K_M keeps `output` and some `ffn_down` at Q6_K) and the rules of this
//! project: the router, norms and correction bias stay f32, and the MTP layer stays >= 8-bit.

use std::path::Path;
use std::sync::Arc;

use glm5_format::{Checkpoint, GgmlType, GgufFile};
use glm5_kernels::lowbit::LowBit;
use glm5_kernels::matrix::{fits, Bytes, Owner};
use glm5_kernels::{Matrix, WFormat};

use crate::config::Config;
use crate::gguf_map;
use crate::spec::tensor_specs;
use crate::weights::{load_f32, Report};
use crate::{Error, Result};
use std::collections::BTreeSet;

/// Tensors by HF name.
pub trait Source {
    /// Where the weights live (for messages).
    fn location(&self) -> &Path;
    fn contains(&self, name: &str) -> bool;
    /// The tensor as f32, checked against `shape` (outermost first).
    fn f32(&self, cfg: &Config, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
    /// The tensor as stored, when it is a matrix the kernels read directly (GGUF blocks).
    fn stored(&self, _name: &str, _rows: usize, _cols: usize) -> Result<Option<Matrix>> {
        Ok(None)
    }
    /// Whether stored matrices are regrouped for the fast kernels (a copy in anonymous memory)
    /// rather than read in place from the mapping.
    fn repack(&self) -> bool {
        true
    }
}

pub struct HfSource<'a> {
    pub ckpt: &'a Checkpoint,
}

impl Source for HfSource<'_> {
    fn location(&self) -> &Path {
        &self.ckpt.dir
    }
    fn contains(&self, name: &str) -> bool {
        self.ckpt.contains(name)
    }
    fn f32(&self, cfg: &Config, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        load_f32(cfg, self.ckpt, name, shape)
    }
}

pub struct GgufSource {
    pub file: GgufFile,
    /// Main-model layer count (MTP blocks follow).
    pub num_hidden_layers: usize,
    /// Merged expert tensors already regrouped for the fast kernels (`Matrix::packed`), by
    /// GGUF name: each expert's slice shares one buffer (large enough for 2 MiB pages).
    packed: std::sync::Mutex<std::collections::HashMap<String, Matrix>>,
    /// Regroup Q8_0/Q4_K/Q6_K matrices at load (`in_place` decides).
    repack: bool,
}

/// Whether a GGUF of `file_bytes` is read in place (every weight from the mapping, no
/// regrouped copy): `GLM5_GGUF_IN_PLACE=1` or `0` decides; otherwise when the file is larger
/// than half of the memory available now (`MemAvailable`), since a regrouped copy of it would
/// push its own pages, or the copy itself, out of memory.
pub fn in_place(file_bytes: u64) -> bool {
    match std::env::var("GLM5_GGUF_IN_PLACE").as_deref() {
        Ok("1") => return true,
        Ok("0") => return false,
        _ => {}
    }
    let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    });
    available.is_some_and(|a| file_bytes > a / 2)
}

/// A GGUF's mapping, shared by every matrix borrowed from it.
struct MapOwner(Arc<glm5_format::Mapped>);
impl Owner for MapOwner {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
    /// Drop the range's pages from this process (a repacked copy replaced them), so resident
    /// memory holds each weight once. They stay in the page cache and fault back in if read.
    fn release(&self, offset: usize, len: usize) {
        #[cfg(unix)]
        // SAFETY: the mapping is read-only and file-backed: dropped pages read back unchanged.
        let _ = unsafe {
            self.0
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len)
        };
        #[cfg(not(unix))]
        let _ = (offset, len);
    }
}

/// The GGML types and the kernels' formats, one to one.
const FORMATS: [(GgmlType, WFormat); 22] = [
    (GgmlType::F32, WFormat::F32),
    (GgmlType::F16, WFormat::F16),
    (GgmlType::BF16, WFormat::BF16),
    (GgmlType::Q8_0, WFormat::Q8_0),
    (GgmlType::Q4K, WFormat::Q4K),
    (GgmlType::Q5K, WFormat::Q5K),
    (GgmlType::Q6K, WFormat::Q6K),
    (GgmlType::Q4_0, WFormat::Low(LowBit::Q4_0)),
    (GgmlType::Q4_1, WFormat::Low(LowBit::Q4_1)),
    (GgmlType::Q5_0, WFormat::Low(LowBit::Q5_0)),
    (GgmlType::Q5_1, WFormat::Low(LowBit::Q5_1)),
    (GgmlType::IQ4NL, WFormat::Low(LowBit::IQ4NL)),
    (GgmlType::Q2K, WFormat::Low(LowBit::Q2K)),
    (GgmlType::Q3K, WFormat::Low(LowBit::Q3K)),
    (GgmlType::IQ4XS, WFormat::Low(LowBit::IQ4XS)),
    (GgmlType::IQ2XXS, WFormat::Low(LowBit::IQ2XXS)),
    (GgmlType::IQ2XS, WFormat::Low(LowBit::IQ2XS)),
    (GgmlType::IQ2S, WFormat::Low(LowBit::IQ2S)),
    (GgmlType::IQ3XXS, WFormat::Low(LowBit::IQ3XXS)),
    (GgmlType::IQ3S, WFormat::Low(LowBit::IQ3S)),
    (GgmlType::IQ1S, WFormat::Low(LowBit::IQ1S)),
    (GgmlType::IQ1M, WFormat::Low(LowBit::IQ1M)),
];

pub fn wformat_of(t: GgmlType) -> WFormat {
    FORMATS
        .iter()
        .find(|e| e.0 == t)
        .expect("every GGML type glm5 reads has a kernel format")
        .1
}

pub fn ggml_type_of(f: WFormat) -> GgmlType {
    FORMATS
        .iter()
        .find(|e| e.1 == f)
        .expect("every kernel format is a GGML type")
        .0
}

impl GgufSource {
    pub fn open(path: &Path) -> Result<GgufSource> {
        let file = GgufFile::open(path)?;
        let num_hidden_layers = gguf_map::main_layers(&file)?;
        let bytes: u64 = file.tensors.values().map(|t| t.len as u64).sum();
        Ok(GgufSource {
            file,
            num_hidden_layers,
            packed: Default::default(),
            repack: !in_place(bytes),
        })
    }

    /// What `weights::check` reports for an HF folder, for this file (`glm5 inspect`): the
    /// tensors the config implies that the file lacks (by GGUF name; `kv_b_proj` is there when
    /// its `attn_k_b` and `attn_v_b` halves are), the file's tensors that no HF name maps to,
    /// and bytes stored per GGML type. Shapes are checked when the model loads.
    pub fn check(&self, cfg: &Config) -> Report {
        let mut report = Report::default();
        let mut explained = BTreeSet::new();
        for s in tensor_specs(cfg) {
            let names = match s.name.strip_suffix("kv_b_proj.weight") {
                Some(p) => vec![format!("{p}k_b_proj.weight"), format!("{p}v_b_proj.weight")],
                None => vec![s.name.clone()],
            };
            for name in names {
                let Some((g, _)) = gguf_map::gguf_name(&name, self.num_hidden_layers) else {
                    if !s.mtp {
                        report.missing.push(name);
                    }
                    continue;
                };
                if self.file.tensors.contains_key(&g) {
                    report.mtp_present |= s.mtp;
                    explained.insert(g);
                } else if !s.mtp && !report.missing.contains(&g) {
                    report.missing.push(g);
                }
            }
        }
        for (name, t) in &self.file.tensors {
            *report
                .bytes_per_dtype
                .entry(t.ggml_type.name().to_string())
                .or_default() += t.len as u64;
            if !explained.contains(name) {
                report.unexpected.push(name.clone());
            }
        }
        report
    }

    fn bad(&self, tensor: &str, reason: String) -> Error {
        Error::Gguf {
            path: self.file.path.clone(),
            tensor: tensor.into(),
            reason,
        }
    }

    /// The stored matrix behind HF `name`, `[rows, cols]`, with its GGUF name.
    fn lookup(&self, name: &str, rows: usize, cols: usize) -> Result<Option<(String, Matrix)>> {
        Ok(self
            .lookup_whole(name, rows, cols)?
            .map(|(gname, m, slice)| match slice {
                Some(e) => (gname, m.slice_rows(e * rows, (e + 1) * rows)),
                None => (gname, m),
            }))
    }

    /// The whole stored tensor behind HF `name`, and the expert index when `name` is one
    /// expert's slice of a merged tensor.
    fn lookup_whole(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<(String, Matrix, Option<usize>)>> {
        let Some((gname, slice)) = gguf_map::gguf_name(name, self.num_hidden_layers) else {
            return Ok(None);
        };
        let Some(t) = self.file.tensors.get(&gname) else {
            return Ok(None);
        };
        let shape = t.shape();
        let (total_rows, tcols) = match shape.as_slice() {
            [c] => (1, *c),
            [r, c] => (*r, *c),
            [e, r, c] => (e * r, *c),
            _ => return Err(self.bad(&gname, format!("unexpected shape {shape:?}"))),
        };
        let want_rows = match slice {
            Some(_) => rows * shape.first().copied().unwrap_or(1),
            None => rows,
        };
        if tcols != cols || total_rows != want_rows {
            return Err(self.bad(
                &gname,
                format!(
                    "shape {shape:?} does not match the metadata ([{rows}, {cols}] per matrix)"
                ),
            ));
        }
        let owner: Arc<dyn Owner> = Arc::new(MapOwner(self.file.maps[t.part].clone()));
        let m = Matrix::from_bytes(
            wformat_of(t.ggml_type),
            total_rows,
            cols,
            Bytes::Shared {
                owner,
                offset: t.start,
                len: t.len,
            },
        )
        .map_err(|e| self.bad(&gname, e))?;
        Ok(Some((gname, m, slice)))
    }
}

impl Source for GgufSource {
    fn location(&self) -> &Path {
        &self.file.path
    }
    fn contains(&self, name: &str) -> bool {
        gguf_map::gguf_name(name, self.num_hidden_layers)
            .is_some_and(|(g, _)| self.file.tensors.contains_key(&g))
    }
    fn f32(&self, _cfg: &Config, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (rows, cols) = match shape {
            [c] => (1, *c),
            [r, c] => (*r, *c),
            _ => unreachable!("weights are vectors or matrices"),
        };
        match self.lookup(name, rows, cols)? {
            Some((_, m)) => Ok(m.to_f32()),
            None => Err(Error::MissingTensor {
                dir: self.file.path.clone(),
                name: gguf_map::gguf_name(name, self.num_hidden_layers)
                    .map_or_else(|| name.to_string(), |(g, _)| g),
            }),
        }
    }
    fn repack(&self) -> bool {
        self.repack
    }
    fn stored(&self, name: &str, rows: usize, cols: usize) -> Result<Option<Matrix>> {
        let Some((gname, whole, slice)) = self.lookup_whole(name, rows, cols)? else {
            return Ok(None);
        };
        let Some(e) = slice else {
            return Ok(Some(whole));
        };
        if !self.repack
            || !glm5_kernels::packed::groups(whole.format)
            || !rows.is_multiple_of(glm5_kernels::packed::GROUP)
        {
            return Ok(Some(whole.slice_rows(e * rows, (e + 1) * rows)));
        }
        let mut cache = self.packed.lock().unwrap_or_else(|p| p.into_inner());
        let packed = cache.entry(gname).or_insert_with(|| whole.packed());
        Ok(Some(packed.slice_rows(e * rows, (e + 1) * rows)))
    }
}

/// How weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    /// f32 everywhere and the expanded-K/V attention: the reference path.
    Reference,
    /// Every linear weight in one format (falling back to Q8_0, then BF16, where rows do not
    /// fill whole blocks).
    Uniform(WFormat),
    /// llama.cpp's Q4_K_M mix: Q4_K, with Q6_K for `lm_head` and for `down_proj` in the first
    /// and last eighth of the layers and every third layer between.
    Q4KM,
    /// llama.cpp's Q5_K_M mix: the same, with Q5_K in place of Q4_K.
    Q5KM,
}

impl Quant {
    pub fn parse(s: &str) -> Option<Quant> {
        Some(match s.to_ascii_lowercase().as_str() {
            "f32" => Quant::Uniform(WFormat::F32),
            "bf16" => Quant::Uniform(WFormat::BF16),
            "f16" => Quant::Uniform(WFormat::F16),
            "q8_0" => Quant::Uniform(WFormat::Q8_0),
            "q6_k" => Quant::Uniform(WFormat::Q6K),
            "q4_k" | "q4_k_m" => Quant::Q4KM,
            "q5_k" | "q5_k_m" => Quant::Q5KM,
            "iq4_xs" => Quant::Uniform(WFormat::Low(LowBit::IQ4XS)),
            "iq4_nl" => Quant::Uniform(WFormat::Low(LowBit::IQ4NL)),
            "reference" => Quant::Reference,
            _ => return None,
        })
    }

    pub fn name(self) -> String {
        match self {
            Quant::Reference => "reference".into(),
            Quant::Uniform(f) => f.name().into(),
            Quant::Q4KM => "q4_k_m".into(),
            Quant::Q5KM => "q5_k_m".into(),
        }
    }

    /// The format for linear weight `name` (an HF name) with rows of `cols` values.
    pub fn format_for(self, cfg: &Config, name: &str, cols: usize) -> WFormat {
        let wanted = match self {
            Quant::Reference => WFormat::F32,
            Quant::Uniform(f) => f,
            Quant::Q4KM | Quant::Q5KM => {
                let layer = gguf_map::layer_of(name);
                let n = cfg.num_hidden_layers;
                // llama.cpp's `use_more_bits`: the first and last eighth, every third between.
                let more_bits = |i: usize| i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
                let down = name.ends_with("down_proj.weight") && layer.is_some_and(more_bits);
                if name == "lm_head.weight" || down {
                    WFormat::Q6K
                } else if self == Quant::Q4KM {
                    WFormat::Q4K
                } else {
                    WFormat::Q5K
                }
            }
        };
        // The MTP layer and the small absorbed-attention matrices stay at >= 8 bits.
        let wanted = match wanted {
            WFormat::Q4K | WFormat::Q5K | WFormat::Q6K | WFormat::Low(_)
                if gguf_map::layer_of(name).is_some_and(|l| l >= cfg.num_hidden_layers)
                    || name.contains("kv_b_proj") =>
            {
                WFormat::Q8_0
            }
            w => w,
        };
        // Rows that are not whole 256-value blocks: IQ4_XS falls back to IQ4_NL (32-value
        // blocks, the same levels), as llama-quantize does; anything else to Q8_0.
        let narrower = match wanted {
            WFormat::Low(LowBit::IQ4XS) => WFormat::Low(LowBit::IQ4NL),
            _ => WFormat::Q8_0,
        };
        [wanted, narrower, WFormat::Q8_0, WFormat::BF16]
            .into_iter()
            .find(|&f| fits(f, cols))
            .expect("BF16 fits any width")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ggml_type_has_a_kernel_format_and_back() {
        for t in GgmlType::all() {
            let f = wformat_of(t);
            assert_eq!(ggml_type_of(f), t, "{}", t.name());
            // Block geometry agrees between the file format and the kernels.
            let (values, bytes) = t.block();
            assert_eq!(
                (f.block_len() as u64, f.block_bytes() as u64),
                (values, bytes),
                "{}",
                t.name()
            );
        }
    }
}
