#!/usr/bin/env python3
"""Fixtures for the text path, made from the bundled model folder with the Python reference:

  testdata/text/tokenizer_cases.json  strings -> ids from Python `tokenizers` (and the decoded text;
                                      `plain_ids`: with special tokens encoded as text)
  testdata/text/chat_cases.json       conversations -> transformers' apply_chat_template output
  testdata/text/greedy_cases.json     prompts -> transformers' greedy `generate` (32 new tokens, f32
                                      compute over the stored bf16 weights), with the gap between
                                      the two best logits at every step for tie-aware comparison

Usage:  pip install torch transformers==5.23.0 tokenizers
        python3 scripts/make_text_fixtures.py [--model models/glm5-tiny] [--out testdata/text]
Re-run whenever the bundled model is retrained. CI never runs this; it reads the JSON files.
"""
import argparse
import json
import os

import torch
import transformers
from tokenizers import Tokenizer
from transformers import AutoTokenizer, GlmMoeDsaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STRINGS = [
    "In the beginning God created the heaven and the earth.",
    "Hello, world! It's 2026; don't panic (42 + 1337 = 1379).",
    "    leading spaces, trailing tabs\t\t\n\nand blank lines\r\n",
    "a  b   c    d\u3000e",
    "日本語のテキストと中文文本，混合 English.",
    "emoji: 😀👍🏽 👨‍👩‍👧 🇫🇷 and ✨",
    "[gMASK]<sop><|user|>special tokens inside text<|assistant|><think>hm</think>ok",
    "<tool_call>get_verse<arg_key>book</arg_key><arg_value>Genesis</arg_value></tool_call>",
    "not special: <|user | > [gmask] </ think>",
    "replacement \ufffd and combining e\u0301 a\u0308 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "control \x00\x01\x1f and del \x7f",
    "ÀÉÎÕÜ ß ŒÆ Ω ∑ ∞ ≠ ≤ → ⇒",
    "",
    " ",
    "\n",
    "x" * 300,
    "numbers 1234567890 3.14159 -0.5e-10",
    "Thus saith the LORD, Behold, I will bring evil upon this place.",
]

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city — in °C",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
            "required": ["city"]}}},
    {"type": "function", "function": {"name": "now", "description": "The time", "parameters": {
        "type": "object", "properties": {}}}},
]

CHATS = [
    dict(messages=[{"role": "user", "content": "你好"}]),
    dict(messages=[{"role": "user", "content": "Hi"}], enable_thinking=False),
    dict(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "One?"},
                   {"role": "assistant", "content": "Yes.", "reasoning_content": "Think about one."},
                   {"role": "user", "content": "Two?"}]),
    dict(messages=[{"role": "user", "content": "Q"},
                   {"role": "assistant", "content": "<think>inline reasoning</think>  answer  "},
                   {"role": "user", "content": "again"}], add_generation_prompt=True),
    dict(messages=[{"role": "user", "content": "Q"},
                   {"role": "assistant", "content": "<think>kept</think>A"}], add_generation_prompt=False),
    dict(messages=[{"role": "user", "content": "Q"},
                   {"role": "assistant", "content": "A", "reasoning_content": "old"},
                   {"role": "user", "content": "Q2"}], clear_thinking=False),
    dict(messages=[{"role": "user", "content": [{"type": "text", "text": "part one, "},
                                                {"type": "image_url", "image_url": {"url": "x"}},
                                                {"type": "text", "text": "part two"}]}]),
    dict(tools=TOOLS, messages=[
        {"role": "user", "content": "Weather in Zürich and the time?"},
        {"role": "assistant", "content": "", "reasoning_content": "Two tools.", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather",
                                              "arguments": {"city": "Zürich", "days": 3, "opts": {"u": "°C", "l": [1, 2.5]}}}},
            {"type": "function", "function": {"name": "now", "arguments": {}}}]},
        {"role": "tool", "content": "{\"temp\": 21}"},
        {"role": "tool", "content": "12:00"},
    ]),
    dict(tools=TOOLS, messages=[
        {"role": "user", "content": "time?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [{"name": "now", "arguments": {}}]},
        {"role": "tool", "content": "12:00"},
        {"role": "assistant", "content": "It is noon.", "reasoning_content": "The tool said 12:00."},
        {"role": "user", "content": "thanks"},
    ], enable_thinking=False),
    dict(tools=TOOLS[:1], messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "x"}]),
]

GREEDY_PROMPTS = [
    ("plain", "And God said"),
    ("plain", "In the beginning"),
    ("plain", "Once upon a time"),
    ("plain", "The LORD is my shepherd"),
    ("chat", [{"role": "user", "content": "In the beginning God created the heaven and the earth."}]),
    ("chat_tools", [{"role": "user", "content": "Read Genesis 1:3."}]),
]
GET_VERSE = {"type": "function", "function": {
    "name": "get_verse", "description": "Look up one verse of the King James Bible.",
    "parameters": {"type": "object", "properties": {
        "book": {"type": "string", "description": "Book name, e.g. Genesis"},
        "chapter": {"type": "integer"}, "verse": {"type": "integer"}},
        "required": ["book", "chapter", "verse"]}}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "glm5-tiny"))
    ap.add_argument("--out", default=os.path.join(ROOT, "testdata", "text"))
    ap.add_argument("--skip-greedy", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    meta = {"transformers": transformers.__version__, "torch": torch.__version__,
            "made_by": "scripts/make_text_fixtures.py"}

    tk = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    plain = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    plain.encode_special_tokens = True  # split_special_tokens=True: specials spelled are text
    cases = []
    for s in STRINGS:
        ids = tk.encode(s, add_special_tokens=False).ids
        cases.append({"text": s, "ids": ids, "decoded": tk.decode(ids, skip_special_tokens=False),
                      "plain_ids": plain.encode(s, add_special_tokens=False).ids})
    with open(os.path.join(args.out, "tokenizer_cases.json"), "w") as f:
        json.dump({"meta": meta, "cases": cases}, f, ensure_ascii=False, indent=1)
        f.write("\n")

    tok = AutoTokenizer.from_pretrained(args.model)
    chats = []
    for c in CHATS:
        c = dict(c)
        kwargs = {k: c.pop(k) for k in list(c) if k not in ("messages", "tools")}
        agp = kwargs.pop("add_generation_prompt", True)
        text = tok.apply_chat_template(c["messages"], tools=c.get("tools"), tokenize=False,
                                       add_generation_prompt=agp, **kwargs)
        chats.append({"messages": c["messages"], "tools": c.get("tools"), "add_generation_prompt": agp,
                      "kwargs": kwargs, "expected": text,
                      "expected_ids": tok.encode(text, add_special_tokens=False)})
    with open(os.path.join(args.out, "chat_cases.json"), "w") as f:
        json.dump({"meta": meta, "cases": chats}, f, ensure_ascii=False, indent=1)
        f.write("\n")

    if args.skip_greedy:
        return
    model = GlmMoeDsaForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval()
    greedy = []
    for kind, p in GREEDY_PROMPTS:
        if kind == "plain":
            text = p
        else:
            text = tok.apply_chat_template(p, tools=[GET_VERSE] if kind == "chat_tools" else None,
                                           tokenize=False, add_generation_prompt=True)
        ids = tok.encode(text, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                                 output_scores=True, return_dict_in_generate=True)
        new = out.sequences[0, len(ids):].tolist()
        gaps = []
        for s in out.scores:
            top2 = s[0].float().topk(2).values
            gaps.append(float(top2[0] - top2[1]))
        greedy.append({"kind": kind, "prompt_text": text, "prompt_ids": ids, "new_ids": new, "top2_gaps": gaps,
                       "new_text": tok.decode(new, skip_special_tokens=False)})
        print(kind, repr(tok.decode(new, skip_special_tokens=False)))
    with open(os.path.join(args.out, "greedy_cases.json"), "w") as f:
        json.dump({"meta": meta, "stop_ids": model.generation_config.eos_token_id, "cases": greedy}, f,
                  ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
