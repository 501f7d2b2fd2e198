//! A prompt longer than `PREFILL_CHUNK` goes through `Session` in chunks: the logits equal one
//! whole-prompt forward pass (to rounding: the chunks' attention sees earlier chunks through the
//! cache), every requested row comes back once, and the MTP layer's pending rows are caught up
//! after every chunk.

use std::path::{Path, PathBuf};

use glm5_engine::{LanguageModel, Session, PREFILL_CHUNK};
use glm5_kernels::WFormat;
use glm5_model::{Model, Quant};

fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/glm5-tiny")
}

#[test]
fn a_long_prompt_in_chunks_equals_one_pass() {
    let m = Model::load_with(&bundled(), Quant::Uniform(WFormat::BF16), true).unwrap();
    let v = m.cfg.vocab_size;
    // Two whole chunks and a partial one.
    let n = 2 * PREFILL_CHUNK + 77;
    let prompt: Vec<u32> = (0..n).map(|i| ((i * 7919 + 13) % 4000) as u32).collect();
    let whole = m.forward(&prompt, &mut m.new_cache(), None).unwrap(); // [n, vocab]

    let mut s = Session::new(&m);
    let all = s.extend_all(&prompt).unwrap();
    assert_eq!(all.len(), n * v, "one row of logits per prompt token");
    assert_eq!(s.cached().len(), n);
    let scale = whole.iter().fold(0f32, |a, x| a.max(x.abs()));
    let worst = all
        .iter()
        .zip(&whole)
        .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
    assert!(
        worst <= 1e-4 * scale,
        "chunked logits differ by {worst} (scale {scale})"
    );

    // Only the last row asked for: the same row, and the MTP layer caught up to one pending row.
    let mut s = Session::with_mtp(&m, 3).unwrap();
    let last = s.extend(&prompt).unwrap();
    assert_eq!(last, all[(n - 1) * v..], "the last row of the chunked pass");
    assert_eq!(s.cache.kv.mtp_len, n - 1);
    assert_eq!(s.cache.pending.len(), m.cfg.hidden_size);
}
