//! A model folder as a whole: weights, tokenizer, chat template and `generation_config.json`
//! defaults, and where the bundled default model lives.

use std::path::{Path, PathBuf};

use glm5_format::GgufFile;
use glm5_model::{Model, Quant};
use serde_json::Value;

use crate::chat::ChatTemplate;
use crate::error::{Error, Result};
use crate::sampler::SamplingParams;
use crate::tokenizer::Tokenizer;

/// The bundled default model's folder name under `models/`.
pub const DEFAULT_MODEL: &str = "glm5-tiny";

/// Where the bundled model is: `$GLM5_MODEL`, then `models/glm5-tiny` beside the executable's
/// workspace (`target/<profile>/glm5` -> `../../models`), then the source tree it was built from.
pub fn default_model_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GLM5_MODEL") {
        return Some(PathBuf::from(p));
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        for up in exe.ancestors().skip(1).take(4) {
            candidates.push(up.join("models").join(DEFAULT_MODEL));
        }
    }
    candidates.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../models")
            .join(DEFAULT_MODEL),
    );
    candidates
        .into_iter()
        .find(|c| c.join("config.json").is_file())
}

/// Sampling defaults of `generation_config.json` (missing file: transformers' defaults).
#[derive(Debug, Clone)]
pub struct GenerationDefaults {
    pub params: SamplingParams,
    pub max_new_tokens: Option<usize>,
    pub eos_token_ids: Vec<u32>,
}

impl GenerationDefaults {
    /// The defaults a GGUF carries: `general.sampling.*` (llama.cpp's converter and
    /// `glm5 quantize` copy them from `generation_config.json`) and the end-of-turn ids of
    /// `tokenizer.ggml.*`.
    pub fn from_gguf(file: &GgufFile) -> GenerationDefaults {
        let num = |k: &str| file.get(&format!("general.sampling.{k}"))?.as_f64();
        let mut p = SamplingParams::default();
        if let Some(t) = num("temp") {
            p.temperature = t as f32;
        }
        if let Some(t) = num("top_k") {
            p.top_k = t as usize;
        }
        if let Some(t) = num("top_p") {
            p.top_p = t as f32;
        }
        if let Some(t) = num("min_p") {
            p.min_p = t as f32;
        }
        if let Some(t) = num("penalty_repeat") {
            p.repetition_penalty = t as f32;
        }
        GenerationDefaults {
            params: p,
            max_new_tokens: None,
            eos_token_ids: crate::gguf_tokenizer::stop_ids(file),
        }
    }

    pub fn from_model_dir(dir: &Path) -> Result<GenerationDefaults> {
        let path = dir.join("generation_config.json");
        let mut g = GenerationDefaults {
            params: SamplingParams::default(),
            max_new_tokens: None,
            eos_token_ids: Vec::new(),
        };
        let Some(v) = crate::chat::read_json(&path)? else {
            return Ok(g);
        };
        let bad = |field: &str, reason: &str| Error::BadFile {
            path: path.clone(),
            reason: format!("field '{field}': {reason}"),
        };
        let num = |k: &str| -> Result<Option<f64>> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x.as_f64().map(Some).ok_or_else(|| bad(k, "not a number")),
            }
        };
        let p = &mut g.params;
        if let Some(t) = num("temperature")? {
            p.temperature = t as f32;
        }
        if let Some(t) = num("top_p")? {
            p.top_p = t as f32;
        }
        if let Some(t) = num("top_k")? {
            p.top_k = t as usize;
        }
        if let Some(t) = num("min_p")? {
            p.min_p = t as f32;
        }
        if let Some(t) = num("repetition_penalty")? {
            p.repetition_penalty = t as f32;
        }
        if v.get("do_sample").and_then(Value::as_bool) == Some(false) {
            p.temperature = 0.0;
        }
        g.max_new_tokens = num("max_new_tokens")?.map(|n| n as usize);
        g.eos_token_ids = match v.get("eos_token_id") {
            None | Some(Value::Null) => vec![],
            Some(Value::Number(n)) => {
                vec![n.as_u64().ok_or_else(|| bad("eos_token_id", "not an id"))? as u32]
            }
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_u64()
                        .map(|n| n as u32)
                        .ok_or_else(|| bad("eos_token_id", "not an id"))
                })
                .collect::<Result<_>>()?,
            Some(_) => return Err(bad("eos_token_id", "not an id or a list of ids")),
        };
        p.validate().map_err(|e| bad("sampling", &e.to_string()))?;
        Ok(g)
    }
}

/// Everything `run`, `chat` and `serve` need from one folder.
pub struct ModelDir {
    pub dir: PathBuf,
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub generation: GenerationDefaults,
    /// Stop token ids: config.json and generation_config.json `eos_token_id`, plus GLM's
    /// `<|endoftext|>`, `<|user|>` and `<|observation|>` when the vocabulary has them.
    pub stop_token_ids: Vec<u32>,
    /// A GGUF's `tokenizer.chat_template` (folders read theirs from disk).
    gguf_template: Option<String>,
    /// Where the chat template is read from when there is no GGUF template.
    template_dir: PathBuf,
}

impl std::fmt::Debug for ModelDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ModelDir({})", self.dir.display())
    }
}

/// A GGUF's tokenizer: the whole `tokenizer.json` where `glm5 quantize` stored it, else rebuilt
/// from `tokenizer.ggml.*` (llama.cpp's converter).
fn gguf_tokenizer(file: &GgufFile, path: &Path) -> Result<Tokenizer> {
    if let Some(json) = file
        .get("tokenizer.huggingface.json")
        .and_then(|v| v.as_str())
    {
        return Tokenizer::from_bytes(json.as_bytes(), path);
    }
    let json = crate::gguf_tokenizer::tokenizer_json(file).map_err(|reason| Error::Tokenizer {
        path: path.to_path_buf(),
        reason,
    })?;
    Tokenizer::from_bytes(json.as_bytes(), path)
}

impl ModelDir {
    /// An HF folder on the reference path.
    pub fn load(dir: &Path) -> Result<ModelDir> {
        ModelDir::load_as(dir, Quant::Reference)
    }

    /// An HF folder or a `.gguf` file, with weights held as `quant` says (and the MTP layer
    /// where the weights have one).
    pub fn load_as(dir: &Path, quant: Quant) -> Result<ModelDir> {
        ModelDir::load_with(dir, quant, true)
    }

    /// `load_as`, with the MTP layer loaded only when `mtp` is true.
    pub fn load_with(dir: &Path, quant: Quant, mtp: bool) -> Result<ModelDir> {
        if dir.is_file() {
            return ModelDir::load_gguf(dir, quant, mtp);
        }
        if !dir.is_dir() {
            return Err(Error::BadFile {
                path: dir.to_path_buf(),
                reason: "not a model folder or .gguf file (no such path)".into(),
            });
        }
        let tokenizer = Tokenizer::from_path(dir)?;
        let generation = GenerationDefaults::from_model_dir(dir)?;
        let model = Model::load_with(dir, quant, mtp)?;
        Ok(ModelDir::assemble(dir, model, tokenizer, generation, None))
    }

    /// Weights from `path`, but the tokenizer and chat template from `tokenizer` (a folder or a
    /// GGUF): for checkpoints that ship none, such as `glm5 synth` output.
    pub fn load_with_tokenizer(
        path: &Path,
        quant: Quant,
        mtp: bool,
        tokenizer: &Path,
    ) -> Result<ModelDir> {
        let tok = ModelDir::load_tokenizer(tokenizer)?;
        let model = Model::load_with(path, quant, mtp)?;
        let (generation, template) = if tokenizer.is_dir() {
            (GenerationDefaults::from_model_dir(tokenizer)?, None)
        } else {
            let file = GgufFile::open(tokenizer).map_err(glm5_model::Error::from)?;
            let template = file
                .get("tokenizer.chat_template")
                .and_then(|v| v.as_str())
                .map(str::to_string);
            (GenerationDefaults::from_gguf(&file), template)
        };
        let mut md = ModelDir::assemble(path, model, tok, generation, template);
        md.template_dir = tokenizer.to_path_buf();
        Ok(md)
    }

    /// The tokenizer of an HF folder or a `.gguf` file, without loading any weights.
    pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
        if path.is_file() {
            let file = GgufFile::open(path).map_err(glm5_model::Error::from)?;
            return gguf_tokenizer(&file, path);
        }
        Tokenizer::from_path(path)
    }

    fn load_gguf(path: &Path, quant: Quant, mtp: bool) -> Result<ModelDir> {
        let file = GgufFile::open(path).map_err(glm5_model::Error::from)?;
        let tokenizer = gguf_tokenizer(&file, path)?;
        let template = file
            .get("tokenizer.chat_template")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let generation = GenerationDefaults::from_gguf(&file);
        drop(file);
        let model = Model::load_with(path, quant, mtp)?;
        Ok(ModelDir::assemble(
            path, model, tokenizer, generation, template,
        ))
    }

    fn assemble(
        dir: &Path,
        model: Model,
        tokenizer: Tokenizer,
        generation: GenerationDefaults,
        gguf_template: Option<String>,
    ) -> ModelDir {
        let mut stop_token_ids = model.cfg.eos_token_id.clone();
        stop_token_ids.extend(&generation.eos_token_ids);
        for s in ["<|endoftext|>", "<|user|>", "<|observation|>"] {
            stop_token_ids.extend(tokenizer.token_id(s));
        }
        stop_token_ids.sort_unstable();
        stop_token_ids.dedup();
        ModelDir {
            dir: dir.to_path_buf(),
            model,
            tokenizer,
            generation,
            stop_token_ids,
            gguf_template,
            template_dir: dir.to_path_buf(),
        }
    }

    /// The chat template, read when first needed so a broken template only fails chat use.
    pub fn template(&self) -> Result<ChatTemplate> {
        if let Some(src) = &self.gguf_template {
            return ChatTemplate::from_source(src.clone(), self.dir.clone(), Default::default());
        }
        ChatTemplate::from_model_dir(&self.template_dir)
    }
}
