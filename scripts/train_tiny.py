#!/usr/bin/env python3
"""Train glm5's bundled default model, models/glm5-tiny/, on CPU.

The model is transformers' GlmMoeDsaForCausalLM (MLA, DSA lightning indexer with one IndexShare
layer, MoE with sigmoid routing, a correction bias and a shared expert) plus one MTP layer
(`model.layers.{num_hidden_layers}.*`: enorm, hnorm, eh_proj, a full decoder layer,
shared_head.norm; embeddings and lm_head shared) trained jointly as in glm5-architecture.md §4.

Corpus: the King James Version of the Bible (1611; public domain, its copyright expired), as shipped
by Debian's `bible-kjv-text` package and printed by `bible` from `bible-kjv`:
    apt-get install bible-kjv bible-kjv-text
Chapters are documents; every 50th chapter (index % 50 == 7) is held out for perplexity.
Besides plain text, some sequences are chat conversations rendered with the model's own chat
template (models/glm5-tiny/chat_template.jinja): "continue the passage" turns (with and without
thinking) and a tool round trip with a `get_verse` tool, so the chat template, reasoning and GLM
tool-call format are exercised by a model that really produces them.

Training:
  * next-token loss on every token; MTP loss (weight 0.3 per step) for 2 chained MTP steps: step 1
    takes the main model's final-normed hidden state h_i and the embedding of t_{i+1} at RoPE
    position i and predicts t_{i+2}; step 2 feeds back step 1's output hidden state (before
    shared_head.norm, as vLLM's proposer does) with the embedding of t_{i+2} at position i+1;
  * the indexer is trained by the DSA warm-up objective, KL(normalised sum over heads of the main
    attention || softmax(index scores)), on detached inputs; attention is dense for the first 40% of
    steps (index_topk lifted) and sparse (index_topk = 128) afterwards;
  * aux-loss-free load balancing: after each step every router's e_score_correction_bias moves by
    1e-3 * sign(mean load - expert load).

Output (committed): config.json, generation_config.json, model.safetensors (BF16 weights, f32
correction bias, per-expert tensor names as save_pretrained writes them, plus the MTP layer),
tokenizer.json, tokenizer_config.json, chat_template.jinja, and train_log.json with the held-out
perplexity.

Usage:  pip install torch transformers==5.23.0 safetensors tokenizers
        python3 scripts/train_tiny.py [--minutes 40 | --steps N] [--out models/glm5-tiny] [--seed 0]

The committed model was made in two stages on a 2-core CPU (about 50 + 20 minutes):
  python3 scripts/train_tiny.py --steps 644 --seq 256 --batch 16 --plain-fraction 0.7
  cp -r models/glm5-tiny /tmp/stage1
  python3 scripts/train_tiny.py --init /tmp/stage1 --steps 301 --lr 1.5e-3 --dense-fraction 0 --seed 1
(stage 1 trains the tokenizer and the model from scratch; stage 2 continues on 512-token windows so
that whole tool-use conversations, whose prompt alone is ~400 tokens, fit in one window).
Their logs are models/glm5-tiny/train_log_stage1.json and train_log.json.
CI never runs this.
"""
import argparse
import copy
import json
import math
import os
import random
import re
import subprocess
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
import transformers
from transformers import GlmMoeDsaConfig, GlmMoeDsaForCausalLM, PreTrainedTokenizerFast
from transformers.models.glm_moe_dsa.modeling_glm_moe_dsa import GlmMoeDsaDecoderLayer, GlmMoeDsaRMSNorm

assert transformers.__version__.startswith("5.23"), f"need transformers 5.23, have {transformers.__version__}"

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# GLM-5's added tokens, in GLM-5's order (glm5-architecture.md §6.1); they follow the base vocab.
SPECIALS = [
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
    "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
    "<|end_of_video|>", "<|begin_of_audio|>", "<|end_of_audio|>", "<|begin_of_transcription|>",
    "<|end_of_transcription|>", "<|code_prefix|>", "<|code_middle|>", "<|code_suffix|>", "<think>",
    "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<arg_key>",
    "</arg_key>", "<arg_value>", "</arg_value>", "/nothink", "<|begin_of_box|>", "<|end_of_box|>",
    "<|image|>", "<|video|>",
]
VOCAB = 4096
# The GLM-4 / cl100k-style split before byte-level BPE.
SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+")

BOOKS = """Genesis Exodus Leviticus Numbers Deuteronomy Joshua Judges Ruth 1_Samuel 2_Samuel 1_Kings
2_Kings 1_Chronicles 2_Chronicles Ezra Nehemiah Esther Job Psalms Proverbs Ecclesiastes
Song_of_Solomon Isaiah Jeremiah Lamentations Ezekiel Daniel Hosea Joel Amos Obadiah Jonah Micah
Nahum Habakkuk Zephaniah Haggai Zechariah Malachi Matthew Mark Luke John Acts Romans 1_Corinthians
2_Corinthians Galatians Ephesians Philippians Colossians 1_Thessalonians 2_Thessalonians 1_Timothy
2_Timothy Titus Philemon Hebrews James 1_Peter 2_Peter 1_John 2_John 3_John Jude Revelation"""
BOOKS = [b.replace("_", " ") for b in BOOKS.split()]

MODEL_CONFIG = dict(
    vocab_size=VOCAB, hidden_size=256, intermediate_size=640, moe_intermediate_size=192,
    num_hidden_layers=4, first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4,
    q_lora_rank=128, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
    n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1,
    routed_scaling_factor=2.5, norm_topk_prob=True,
    index_n_heads=4, index_head_dim=32, index_topk=128, indexer_types=["full", "full", "shared", "full"],
    num_nextn_predict_layers=1, hidden_act="silu", rms_norm_eps=1e-5,
    rope_parameters={"rope_theta": 10000.0, "rope_type": "default"}, rope_interleave=True,
    indexer_rope_interleave=True, max_position_embeddings=2048, tie_word_embeddings=False,
    attention_bias=False, initializer_range=0.02,
)
SEQ = 512  # --seq
BATCH = 8  # --batch
PLAIN = 0.6  # --plain-fraction
MTP_STEPS = 2
MTP_WEIGHT = 0.3
BIAS_RATE = 1e-3


def load_kjv():
    out = subprocess.run(["bible", "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True,
                         env={**os.environ, "COLUMNS": "100000"}).stdout
    chapters, order, cur = [], [], None
    for line in out.splitlines():
        m = re.match(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$", line)
        assert m, f"unexpected line from `bible`: {line[:80]!r}"
        abbr, ch, vs, text = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4).strip()
        if abbr not in order:
            order.append(abbr)
        key = (abbr, ch)
        if key != cur:
            chapters.append({"book": BOOKS[order.index(abbr)], "chapter": ch, "verses": []})
            cur = key
        chapters[-1]["verses"].append(text)
    assert len(order) == 66 and sum(len(c["verses"]) for c in chapters) == 31102, "KJV text incomplete"
    return chapters


def build_tokenizer(train_texts):
    tk = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tk.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - len(SPECIALS), min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tk.train_from_iterator(train_texts, trainer=trainer)
    assert tk.get_vocab_size() == VOCAB - len(SPECIALS), tk.get_vocab_size()
    from tokenizers import AddedToken
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    assert tk.get_vocab_size() == VOCAB
    return tk


GET_VERSE = {"type": "function", "function": {
    "name": "get_verse", "description": "Look up one verse of the King James Bible.",
    "parameters": {"type": "object", "properties": {
        "book": {"type": "string", "description": "Book name, e.g. Genesis"},
        "chapter": {"type": "integer"}, "verse": {"type": "integer"}},
        "required": ["book", "chapter", "verse"]}}}
ASK = ["Read {r}.", "Show me {r}.", "What does {r} say?", "Look up {r} for me.", "Please read {r}."]
CONT_THINK = ["I will continue the passage.", "The user quoted a verse. I give the next one.",
              "This is scripture; the next verse follows."]


def chat_sample(rng, chapters, tok):
    """One conversation rendered with the chat template (text, not ids)."""
    think = rng.random() < 0.6
    if rng.random() < 0.5:
        c = rng.choice([c for c in chapters if len(c["verses"]) >= 4])
        v = rng.randrange(len(c["verses"]) - 3)
        ref = f"{c['book']} {c['chapter']}:{v + 1}"
        msgs = [{"role": "user", "content": rng.choice(ASK).format(r=ref)},
                {"role": "assistant", "content": "",
                 "reasoning_content": "The user wants a verse, so I call get_verse." if think else "",
                 "tool_calls": [{"type": "function", "function": {"name": "get_verse", "arguments": {
                     "book": c["book"], "chapter": c["chapter"], "verse": v + 1}}}]},
                {"role": "tool", "content": c["verses"][v]},
                {"role": "assistant", "content": c["verses"][v],
                 "reasoning_content": "The tool returned the verse." if think else ""}]
        return tok.apply_chat_template(msgs, tools=[GET_VERSE], tokenize=False) + "<|endoftext|>"
    c = rng.choice([c for c in chapters if len(c["verses"]) >= 7])
    turns = rng.randint(1, 3)
    v = rng.randrange(len(c["verses"]) - 2 * turns)
    msgs = []
    if rng.random() < 0.2:
        msgs.append({"role": "system", "content": "You are a helpful assistant who knows the King James Bible."})
    for t in range(turns):
        msgs.append({"role": "user", "content": c["verses"][v + 2 * t]})
        msgs.append({"role": "assistant", "content": c["verses"][v + 2 * t + 1],
                     "reasoning_content": rng.choice(CONT_THINK) if think else ""})
    tools = [GET_VERSE] if rng.random() < 0.25 else None
    return tok.apply_chat_template(msgs, tools=tools, tokenize=False) + "<|endoftext|>"


class Mtp(nn.Module):
    """The MTP layer, named as the checkpoint stores it under model.layers.{N}."""

    def __init__(self, config):
        super().__init__()
        cfg = copy.deepcopy(config)
        n = config.num_hidden_layers
        cfg.mlp_layer_types = list(config.mlp_layer_types) + ["sparse"]
        cfg.indexer_types = list(config.indexer_types) + ["full"]
        self.enorm = GlmMoeDsaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.hnorm = GlmMoeDsaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * config.hidden_size, config.hidden_size, bias=False)
        self.layer = GlmMoeDsaDecoderLayer(cfg, n)
        self.shared_head_norm = GlmMoeDsaRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, model, h, next_ids, positions, mask):
        e = model.model.embed_tokens(next_ids)
        u = self.eh_proj(torch.cat([self.enorm(e), self.hnorm(h)], dim=-1))
        pe = model.model.rotary_emb(u, position_ids=positions)
        u, _ = self.layer(u, attention_mask=mask, position_ids=positions, position_embeddings=pe)
        return u, model.lm_head(self.shared_head_norm(u))


def causal_mask(s, dtype=torch.float32):
    m = torch.full((s, s), torch.finfo(dtype).min, dtype=dtype).triu(1)
    return m[None, None]


class Probes:
    """Hooks: attention weights and indexer inputs per layer (for the indexer loss), router choices."""

    def __init__(self, modules):
        self.attn, self.idx_in, self.routes = {}, {}, []
        for name, mod in modules:
            if hasattr(mod, "indexer") and mod.indexer is not None:
                mod.register_forward_hook(lambda m, a, k, out, n=name: self.attn.__setitem__(n, out[1]),
                                          with_kwargs=True)
                mod.indexer.register_forward_pre_hook(
                    lambda m, a, k, n=name: self.idx_in.__setitem__(n, (m, a, k)), with_kwargs=True)
            if hasattr(mod, "e_score_correction_bias"):
                mod.register_forward_hook(lambda m, a, out: self.routes.append((m, out[2].detach())))

    def clear(self):
        self.attn.clear(), self.idx_in.clear(), self.routes.clear()

    def indexer_loss(self):
        total = 0.0
        for name, (ix, args, kw) in self.idx_in.items():
            hidden, q_resid, (cos, sin), mask = args[0].detach(), args[1].detach(), args[2], args[3]
            b, s, _ = hidden.shape
            from transformers.models.glm_moe_dsa.modeling_glm_moe_dsa import apply_rotary_pos_emb_interleave
            q = ix.wq_b(q_resid).view(b, s, ix.n_heads, ix.head_dim)
            q_rot, q_pass = torch.split(q, [ix.qk_rope_head_dim, ix.head_dim - ix.qk_rope_head_dim], dim=-1)
            k = ix.k_norm(ix.wk(hidden)).unsqueeze(2)
            k_rot, k_pass = torch.split(k, [ix.qk_rope_head_dim, ix.head_dim - ix.qk_rope_head_dim], dim=-1)
            q_rot, k_rot = apply_rotary_pos_emb_interleave(q_rot, k_rot, cos, sin, unsqueeze_dim=2)
            q = torch.cat([q_rot, q_pass], -1).transpose(1, 2)  # [B, H, S, D]
            k = torch.cat([k_rot, k_pass], -1).squeeze(2)  # [B, S, D]
            scores = F.relu(q @ k.transpose(-1, -2).unsqueeze(1)) * ix.softmax_scale  # [B, H, S, T]
            w = ix.weights_proj(hidden).float() * ix.n_heads ** -0.5  # [B, S, H]
            index_scores = torch.einsum("bsh,bhst->bst", w, scores) + mask.clamp(min=-1e9)
            target = self.attn[name].detach().float().sum(1)
            target = target / target.sum(-1, keepdim=True)
            logq = F.log_softmax(index_scores, dim=-1)
            total = total + (target * (torch.log(target.clamp(min=1e-12)) - logq)).sum(-1).mean()
        return total

    def update_bias(self):
        with torch.no_grad():
            for router, idx in self.routes:
                load = torch.bincount(idx.flatten(), minlength=router.num_experts).float()
                router.e_score_correction_bias += BIAS_RATE * torch.sign(load.mean() - load)


def batches(rng, ids_plain, chat_texts_fn, tok):
    """Endless batches [BATCH, SEQ+1]: PLAIN of the rows are plain windows, the rest packed chats."""
    while True:
        rows = []
        for _ in range(BATCH):
            if rng.random() < PLAIN:
                o = rng.randrange(len(ids_plain) - SEQ - 1)
                rows.append(ids_plain[o:o + SEQ + 1])
            else:
                row = []
                while len(row) < SEQ + 1:
                    row += tok.encode(chat_texts_fn(), add_special_tokens=False)
                rows.append(row[:SEQ + 1])
        yield torch.tensor(rows)


def set_index_topk(model, mtp, k):
    for m in list(model.modules()) + list(mtp.modules()):
        if hasattr(m, "index_topk"):
            m.index_topk = k


def forward_losses(model, mtp, probes, x):
    inp, tgt = x[:, :-1], x[:, 1:]
    s = inp.shape[1]
    out = model.model(input_ids=inp)
    h = out.last_hidden_state  # [B, S, H], final-normed
    loss = F.cross_entropy(model.lm_head(h).flatten(0, 1), tgt.flatten())
    mtp_losses = []
    hprev = h
    for d in range(1, MTP_STEPS + 1):
        n = s - d  # pairs (h_i, t_{i+d}) for i < n, predicting t_{i+d+1}
        pos = torch.arange(d - 1, d - 1 + n)[None]
        mask = causal_mask(n).expand(inp.shape[0], 1, n, n)
        u, logits = mtp(model, hprev[:, :n], inp[:, d:d + n], pos, mask)
        mtp_losses.append(F.cross_entropy(logits.flatten(0, 1), tgt[:, d:d + n].flatten()))
        hprev = u
    return loss, mtp_losses


def export(model, mtp, config, out_dir):
    sd = {}
    n_exp = config.n_routed_experts
    inter = config.moe_intermediate_size

    def put(prefix, module):
        for k, v in module.state_dict().items():
            name = f"{prefix}{k}"
            if k.endswith("experts.gate_up_proj"):
                base = name[: -len("gate_up_proj")]
                for e in range(n_exp):
                    sd[f"{base}{e}.gate_proj.weight"] = v[e, :inter].to(torch.bfloat16).contiguous()
                    sd[f"{base}{e}.up_proj.weight"] = v[e, inter:].to(torch.bfloat16).contiguous()
            elif k.endswith("experts.down_proj"):
                base = name[: -len("down_proj")]
                for e in range(n_exp):
                    sd[f"{base}{e}.down_proj.weight"] = v[e].to(torch.bfloat16).contiguous()
            elif k.endswith("e_score_correction_bias"):
                sd[name] = v.float().contiguous()
            else:
                sd[name] = v.to(torch.bfloat16).contiguous()

    put("", model)
    n = config.num_hidden_layers
    p = f"model.layers.{n}."
    for k in ("enorm", "hnorm", "eh_proj"):
        put(p + k + ".", getattr(mtp, k))
    put(p, mtp.layer)
    put(p + "shared_head.norm.", mtp.shared_head_norm)
    save_file(sd, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})


@torch.no_grad()
def load_init(model, mtp, config, src):
    """Load an exported folder (per-expert names, MTP under model.layers.N) back into training form."""
    from safetensors.torch import load_file
    sd = {k: v.float() for k, v in load_file(os.path.join(src, "model.safetensors")).items()}
    n = config.num_hidden_layers

    def fuse(prefix):
        out, experts = {}, {}
        for k, v in sd.items():
            if not k.startswith(prefix):
                continue
            rest = k[len(prefix):]
            m = re.match(r"(.*mlp\.experts\.)(\d+)\.(gate|up|down)_proj\.weight$", rest)
            if m:
                experts.setdefault(m.group(1), {})[(int(m.group(2)), m.group(3))] = v
            else:
                out[rest] = v
        for base, parts in experts.items():
            e_n = range(config.n_routed_experts)
            out[base + "gate_up_proj"] = torch.stack([torch.cat([parts[(e, "gate")], parts[(e, "up")]]) for e in e_n])
            out[base + "down_proj"] = torch.stack([parts[(e, "down")] for e in e_n])
        return out

    main = {k: v for k, v in fuse("").items() if not k.startswith(f"model.layers.{n}.")}
    missing, unexpected = model.load_state_dict(main, strict=False)
    assert not missing, missing
    p = f"model.layers.{n}."
    mt = fuse(p)
    mtp_sd = {}
    for k, v in mt.items():
        if k.startswith(("enorm.", "hnorm.", "eh_proj.")):
            mtp_sd[k] = v
        elif k.startswith("shared_head.norm."):
            mtp_sd["shared_head_norm." + k[len("shared_head.norm."):]] = v
        else:
            mtp_sd["layer." + k] = v
    missing, unexpected = mtp.load_state_dict(mtp_sd, strict=True)
    print(f"initialised from {src}", flush=True)


@torch.no_grad()
def perplexity(model, ids, seq=SEQ):
    model.eval()
    nll, count = 0.0, 0
    for o in range(0, len(ids) - 1, seq):
        x = torch.tensor(ids[o:o + seq + 1])[None]
        if x.shape[1] < 2:
            break
        logits = model(input_ids=x[:, :-1]).logits
        nll += F.cross_entropy(logits[0], x[0, 1:], reduction="sum").item()
        count += x.shape[1] - 1
    model.train()
    return math.exp(nll / count), count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "glm5-tiny"))
    ap.add_argument("--minutes", type=float, default=40.0)
    ap.add_argument("--steps", type=int, default=0, help="fixed step count (default: fit --minutes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--init", default=None,
                    help="continue from this exported model folder (its tokenizer is kept)")
    ap.add_argument("--dense-fraction", type=float, default=0.4,
                    help="share of steps with dense attention (the indexer warm-up)")
    ap.add_argument("--seq", type=int, default=SEQ)
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--plain-fraction", type=float, default=PLAIN)
    args = ap.parse_args()
    globals().update(SEQ=args.seq, BATCH=args.batch, PLAIN=args.plain_fraction)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    os.makedirs(args.out, exist_ok=True)

    chapters = load_kjv()
    held = [c for i, c in enumerate(chapters) if i % 50 == 7]
    train = [c for i, c in enumerate(chapters) if i % 50 != 7]
    doc = lambda c: " ".join(c["verses"])  # noqa: E731
    if args.init:
        tk = Tokenizer.from_file(os.path.join(args.init, "tokenizer.json"))
    else:
        tk = build_tokenizer([doc(c) for c in train])
    template = open(os.path.join(ROOT, "models", "glm5-tiny", "chat_template.jinja")).read()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                  model_max_length=MODEL_CONFIG["max_position_embeddings"], padding_side="left",
                                  chat_template=template, clean_up_tokenization_spaces=False)
    tok.save_pretrained(args.out)
    ids = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    stops = [eot, tok.convert_tokens_to_ids("<|user|>"), tok.convert_tokens_to_ids("<|observation|>")]
    plain = []
    for c in train:
        plain += ids(doc(c)) + [eot]
    held_ids = []
    for c in held:
        held_ids += ids(doc(c)) + [eot]
    print(f"train tokens {len(plain)}, held-out tokens {len(held_ids)}", flush=True)

    config = GlmMoeDsaConfig(**MODEL_CONFIG, eos_token_id=stops, pad_token_id=eot, bos_token_id=None)
    config._attn_implementation = "eager"
    model = GlmMoeDsaForCausalLM(config)
    mtp = Mtp(config)
    mtp.apply(model._init_weights)
    if args.init:
        load_init(model, mtp, config, args.init)
    config.save_pretrained(args.out)
    model.train()
    probes = Probes(list(model.named_modules()) + [("mtp." + n, m) for n, m in mtp.named_modules()])
    params = list(model.parameters()) + list(mtp.parameters())
    n_params = sum(p.numel() for p in params)
    print(f"parameters: {n_params / 1e6:.2f}M", flush=True)
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    data = batches(rng, plain, lambda: chat_sample(rng, train, tok), tok)

    def step_fn(x):
        probes.clear()
        loss, mtp_losses = forward_losses(model, mtp, probes, x)
        idx_loss = probes.indexer_loss()
        total = loss + MTP_WEIGHT * sum(mtp_losses) + idx_loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        probes.update_bias()
        return loss.item(), [m.item() for m in mtp_losses], float(idx_loss.detach()) if torch.is_tensor(idx_loss) else idx_loss

    # Fit the schedule to the time budget: time a few steps first.
    total_steps = args.steps
    t0 = time.time()
    warm = 5
    set_index_topk(model, mtp, 10 ** 9)
    for g in opt.param_groups:
        g["lr"] = args.lr * 0.1
    for _ in range(warm):
        step_fn(next(data))
    per_step = (time.time() - t0) / warm
    if not total_steps:
        total_steps = max(50, int(args.minutes * 60 / per_step) - warm)
    print(f"{per_step:.2f} s/step -> {total_steps} steps", flush=True)
    log = []
    t0 = time.time()
    for step in range(total_steps):
        if step == int(args.dense_fraction * total_steps):
            set_index_topk(model, mtp, config.index_topk)
            print("sparse attention from here", flush=True)
        lr = args.lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / total_steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        loss, mtp_l, idx_l = step_fn(next(data))
        if step % 25 == 0 or step == total_steps - 1:
            rec = dict(step=step, loss=round(loss, 4), mtp=[round(m, 4) for m in mtp_l], indexer_kl=round(idx_l, 4),
                       lr=lr, elapsed_s=round(time.time() - t0, 1))
            log.append(rec)
            print(json.dumps(rec), flush=True)
        if step % 500 == 499:
            export(model, mtp, config, args.out)

    model.eval()
    config.save_pretrained(args.out)
    export(model, mtp, config, args.out)
    gen = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "eos_token_id": stops,
           "pad_token_id": eot, "max_new_tokens": 128}
    with open(os.path.join(args.out, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=2)
        f.write("\n")

    # Held-out perplexity with the exported (bf16-rounded) weights, computed in f32.
    reloaded = GlmMoeDsaForCausalLM.from_pretrained(args.out, dtype=torch.float32)
    ppl, count = perplexity(reloaded, held_ids)
    x = torch.tensor([ids("And God said")])
    sample = tok.decode(reloaded.generate(x, max_new_tokens=40, do_sample=False)[0])
    summary = dict(params=n_params, train_tokens=len(plain), held_out_tokens=count, held_out_perplexity=round(ppl, 3),
                   steps=total_steps, batch=BATCH, seq=SEQ, seconds=round(time.time() - t0), greedy_sample=sample,
                   torch=torch.__version__, transformers=transformers.__version__, log=log)
    with open(os.path.join(args.out, "train_log.json"), "w") as f:
        json.dump(summary, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"held-out perplexity {ppl:.2f} over {count} tokens\n{sample}", flush=True)


if __name__ == "__main__":
    main()
