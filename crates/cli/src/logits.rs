//! `glm5 logits`: the reference forward pass, for tests and for debugging against HF.

use std::collections::BTreeMap;
use std::path::Path;

use glm5_format::{DType, SafetensorsWriter, TensorSpec};
use glm5_model::{Model, Trace};

pub fn run(
    dir: &Path,
    tokens: &[u32],
    out: &Path,
    step: bool,
    chunk: Option<usize>,
    trace_path: Option<&Path>,
) -> anyhow::Result<()> {
    if tokens.is_empty() {
        anyhow::bail!("--tokens: at least one token id is needed");
    }
    let model = Model::load(dir)?;
    let mut cache = model.new_cache();
    let mut trace = Trace::default();
    let mut tr = trace_path.map(|_| &mut trace);
    let chunk = if step {
        1
    } else {
        chunk.unwrap_or(tokens.len()).max(1)
    };
    let mut logits = Vec::with_capacity(tokens.len() * model.cfg.vocab_size);
    for part in tokens.chunks(chunk) {
        logits.extend(model.forward(part, &mut cache, tr.as_deref_mut())?);
    }
    glm5_format::write_npy_f32(out, &[tokens.len(), model.cfg.vocab_size], &logits)?;
    if let Some(p) = trace_path {
        let specs: Vec<TensorSpec> = trace
            .tensors
            .iter()
            .map(|(name, (shape, _))| TensorSpec {
                name: name.clone(),
                dtype: DType::F32,
                shape: shape.clone(),
            })
            .collect();
        let mut w = SafetensorsWriter::create(p, specs, &BTreeMap::new())?;
        for (name, (_, data)) in &trace.tensors {
            let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            w.write_tensor(name, &bytes)?;
        }
        w.finish()?;
    }
    eprintln!(
        "wrote logits [{}, {}] to {}",
        tokens.len(),
        model.cfg.vocab_size,
        out.display()
    );
    Ok(())
}
