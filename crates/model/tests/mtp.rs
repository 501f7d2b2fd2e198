//! The MTP layer against its PyTorch reference (testdata/golden/mtp_tiny, made by
//! scripts/make_mtp_golden.py from the bundled model), and cache rollback: truncating the main and
//! MTP caches after rejected drafts and continuing equals a fresh prefill.

use std::path::PathBuf;

use glm5_format::Shard;
use glm5_kernels::WFormat;
use glm5_model::mtp::MtpInput;
use glm5_model::{Model, Quant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn bundled() -> PathBuf {
    root().join("models/glm5-tiny")
}

fn ints(shard: &Shard, name: &str) -> Vec<usize> {
    shard
        .get(name)
        .unwrap()
        .to_f32()
        .iter()
        .map(|&v| v as usize)
        .collect()
}

fn rel_max(ours: &[f32], refs: &[f32]) -> f32 {
    assert_eq!(ours.len(), refs.len());
    let m = refs.iter().fold(0f32, |m, v| m.max(v.abs()));
    ours.iter()
        .zip(refs)
        .fold(0f32, |d, (a, b)| d.max((a - b).abs()))
        / m
}

fn argmax(l: &[f32]) -> usize {
    (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b })
}

/// Step-1 logits at every pair, and one chained step fed its own `u`, as the reference computes
/// them; on the reference path and on the fast path in f32.
#[test]
fn mtp_layer_matches_reference() {
    let r = Shard::open(&root().join("testdata/golden/mtp_tiny/reference.safetensors")).unwrap();
    let tokens: Vec<u32> = ints(&r, "tokens").iter().map(|&t| t as u32).collect();
    let rows = ints(&r, "rows");
    let want = r.get("mtp_logits").unwrap().to_f32();
    let want_chain = r.get("chain_logits").unwrap().to_f32();
    let draft = ints(&r, "draft")[0] as u32;
    for quant in [Quant::Reference, Quant::Uniform(WFormat::F32)] {
        let m = Model::load_as(&bundled(), quant).unwrap();
        let (h, v) = (m.cfg.hidden_size, m.cfg.vocab_size);
        assert!(tokens.len() > m.cfg.indexer.as_ref().unwrap().index_topk);
        let mut cache = m.new_cache();
        let hidden = m.forward_hidden(&tokens, &mut cache, None).unwrap(); // [T, hidden]
        let n = tokens.len() - 1;
        let u = m
            .mtp_forward(
                &mut [MtpInput {
                    hidden: &hidden[..n * h],
                    next: &tokens[1..],
                    cache: &mut cache,
                }],
                None,
            )
            .unwrap();
        assert_eq!(cache.mtp_len, n);
        let logits = m.mtp_logits(&u).unwrap(); // [n, vocab]
        let ours: Vec<f32> = rows
            .iter()
            .flat_map(|&i| logits[i * v..(i + 1) * v].iter().copied())
            .collect();
        let err = rel_max(&ours, &want);
        assert!(err < 2e-4, "{quant:?}: step-1 logits off by {err:e}");
        assert_eq!(argmax(&logits[(n - 1) * v..]) as u32, draft);

        let u2 = m
            .mtp_forward(
                &mut [MtpInput {
                    hidden: &u[(n - 1) * h..],
                    next: &[draft],
                    cache: &mut cache,
                }],
                None,
            )
            .unwrap();
        let err = rel_max(&m.mtp_logits(&u2).unwrap(), &want_chain);
        assert!(err < 2e-4, "{quant:?}: chained logits off by {err:e}");
        eprintln!("{quant:?}: ok");
    }
}

/// Speculative rollback: append drafts, keep only some, continue with other tokens: the logits
/// (main and MTP) equal those of a fresh prefill of the final sequence. Past `index_topk`, so
/// the indexer keys are rolled back too.
#[test]
fn rollback_then_continue_equals_fresh_prefill() {
    let m = Model::load_as(&bundled(), Quant::Uniform(WFormat::Q8_0)).unwrap();
    let h = m.cfg.hidden_size;
    let seq: Vec<u32> = (0..150).map(|i| ((i * 7919 + 13) % 4000) as u32).collect();
    let (prefix, last) = (&seq[..140], &seq[140..]);

    // Fresh: the whole sequence, then the MTP layer over all its pairs.
    let mut fresh = m.new_cache();
    let hf = m.forward_hidden(&seq, &mut fresh, None).unwrap();
    let uf = m
        .mtp_forward(
            &mut [MtpInput {
                hidden: &hf[..(seq.len() - 1) * h],
                next: &seq[1..],
                cache: &mut fresh,
            }],
            None,
        )
        .unwrap();

    // Speculative: the prefix, drafts that are wrong after the first, rollback, the rest.
    let mut c = m.new_cache();
    let hp = m.forward_hidden(prefix, &mut c, None).unwrap();
    m.mtp_forward(
        &mut [MtpInput {
            hidden: &hp[..139 * h],
            next: &prefix[1..],
            cache: &mut c,
        }],
        None,
    )
    .unwrap();
    let wrong = [last[0], 7, 8, 9];
    let hw = m.forward_hidden(&wrong, &mut c, None).unwrap();
    // Draft entries in the MTP layer beyond the verified tokens.
    m.mtp_forward(
        &mut [MtpInput {
            hidden: &hp[139 * h..],
            next: &[last[0]],
            cache: &mut c,
        }],
        None,
    )
    .unwrap();
    m.mtp_forward(
        &mut [MtpInput {
            hidden: &hw[..h],
            next: &[5],
            cache: &mut c,
        }],
        None,
    )
    .unwrap();
    c.truncate(141); // keep last[0]
    c.truncate_mtp(139);
    assert_eq!((c.len, c.mtp_len), (141, 139));
    let hr = m.forward_hidden(&last[1..], &mut c, None).unwrap();
    let mut tail_hidden = hp[139 * h..].to_vec();
    tail_hidden.extend_from_slice(&hw[..h]);
    tail_hidden.extend_from_slice(&hr[..(last.len() - 2) * h]);
    let ur = m
        .mtp_forward(
            &mut [MtpInput {
                hidden: &tail_hidden,
                next: &seq[140..],
                cache: &mut c,
            }],
            None,
        )
        .unwrap();

    let main_err = rel_max(&m.logits(&hr, 9), &m.logits(&hf[141 * h..], 9));
    assert!(
        main_err < 1e-4,
        "main logits after rollback off by {main_err:e}"
    );
    let mtp_err = rel_max(
        &m.mtp_logits(&ur).unwrap(),
        &m.mtp_logits(&uf[139 * h..]).unwrap(),
    );
    assert!(
        mtp_err < 1e-4,
        "MTP logits after rollback off by {mtp_err:e}"
    );
    assert_eq!(c.layers[0].kv.len(), fresh.layers[0].kv.len());
}

/// A verify step (several tokens in one forward) computes each row exactly as one-token decode
/// steps do, bit for bit, so greedy speculative decoding cannot change the output.
#[test]
fn a_multi_token_step_equals_single_steps_bitwise() {
    for quant in [
        Quant::Uniform(WFormat::F32),
        Quant::Uniform(WFormat::BF16),
        Quant::Uniform(WFormat::Q8_0),
        Quant::Q4KM,
    ] {
        let m = Model::load_as(&bundled(), quant).unwrap();
        let seq: Vec<u32> = (0..140).map(|i| ((i * 7919 + 13) % 4000) as u32).collect();
        let mut a = m.new_cache();
        m.forward_hidden(&seq[..136], &mut a, None).unwrap();
        let mut b = a.clone();
        let many = m.forward(&seq[136..], &mut a, None).unwrap();
        let mut single = Vec::new();
        for &t in &seq[136..] {
            single.extend(m.forward(&[t], &mut b, None).unwrap());
        }
        let diff = many
            .iter()
            .zip(&single)
            .fold(0f32, |d, (x, y)| d.max((x - y).abs()));
        assert_eq!(diff, 0.0, "{quant:?}: rows differ by up to {diff:e}");
    }
}

/// Without speculative decoding the MTP layer is not loaded at all (a whole MoE layer of
/// weights that would otherwise pass through memory while loading), and the main model is the
/// same.
#[test]
fn the_mtp_layer_is_loaded_only_when_asked_for() {
    let quant = Quant::Uniform(WFormat::Q8_0);
    let with = Model::load_with(&bundled(), quant, true).unwrap();
    let without = Model::load_with(&bundled(), quant, false).unwrap();
    assert!(with.mtp.is_some() && without.mtp.is_none());
    let mtp_bytes: usize = with
        .mtp
        .as_ref()
        .unwrap()
        .weights()
        .iter()
        .map(|m| m.nbytes())
        .sum();
    assert!(mtp_bytes > 0);
    assert_eq!(with.weight_bytes(), without.weight_bytes() + mtp_bytes);
    let tokens = [3u32, 1, 4, 1, 5, 9];
    let (mut a, mut b) = (with.new_cache(), without.new_cache());
    assert_eq!(
        with.forward(&tokens, &mut a, None).unwrap(),
        without.forward(&tokens, &mut b, None).unwrap()
    );
}
