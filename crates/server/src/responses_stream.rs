//! The streamed Responses API: `response.created`, `response.in_progress`, then per output item
//! `response.output_item.added`, its content events (`response.content_part.added`,
//! `response.reasoning_text.delta` / `response.output_text.delta` ... `.done`,
//! `response.content_part.done`; or `response.function_call_arguments.delta` / `.done`, or
//! `response.custom_tool_call_input.delta` / `.done`), `response.output_item.done`; and last
//! `response.completed` (or `response.incomplete`) with the whole response. Every event carries
//! its `type` and a `sequence_number`.

use axum::response::sse::Event as Sse;
use axum::response::Response;
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

use crate::common::*;
use crate::openai::{engine_failed, sse};
use crate::responses::{call_item, keep, response_json, Plan};
use crate::State;

/// The item being streamed: reasoning or message text.
#[derive(Clone, Copy, PartialEq)]
enum Open {
    None,
    Reasoning,
    Message,
}

struct StreamState {
    state: State,
    plan: Plan,
    id: String,
    created: u64,
    reader: Reader,
    seq: u64,
    /// Output items so far (the open one's text grows as deltas go out).
    output: Vec<Value>,
    open: Open,
    started: bool,
    ended: bool,
}

impl StreamState {
    fn event(&mut self, kind: &str, mut v: Value) -> Sse {
        v["type"] = json!(kind);
        v["sequence_number"] = json!(self.seq);
        self.seq += 1;
        Sse::default().event(kind).data(v.to_string())
    }

    fn response(
        &self,
        done: Option<(&glm5_engine::scheduler::Usage, &glm5_engine::FinishReason)>,
    ) -> Value {
        response_json(
            &self.state,
            &self.plan,
            &self.id,
            self.created,
            &self.output,
            done,
        )
    }

    /// The open item's index, id and text part.
    fn open_item(&self) -> (usize, String, Value) {
        let i = self.output.len() - 1;
        let item = &self.output[i];
        (
            i,
            item["id"].as_str().unwrap_or("").to_string(),
            item["content"][0].clone(),
        )
    }

    /// Close the open item; open `kind` if it is another.
    fn switch(&mut self, kind: Open, out: &mut Vec<Sse>) {
        if self.open == kind {
            return;
        }
        if self.open != Open::None {
            let (i, item_id, part) = self.open_item();
            let text = part["text"].clone();
            let done = if self.open == Open::Reasoning {
                "response.reasoning_text.done"
            } else {
                "response.output_text.done"
            };
            let mut d =
                json!({"item_id": item_id, "output_index": i, "content_index": 0, "text": text});
            if self.open == Open::Message {
                d["logprobs"] = json!([]);
            }
            out.push(self.event(done, d));
            let e =
                json!({"item_id": item_id, "output_index": i, "content_index": 0, "part": part});
            out.push(self.event("response.content_part.done", e));
            if self.open == Open::Message {
                self.output[i]["status"] = json!("completed");
            }
            let e = json!({"output_index": i, "item": self.output[i]});
            out.push(self.event("response.output_item.done", e));
        }
        self.open = kind;
        let (item, part) = match kind {
            Open::None => return,
            Open::Reasoning => (
                json!({"type": "reasoning", "id": new_id("rs_"), "summary": [], "content": []}),
                json!({"type": "reasoning_text", "text": ""}),
            ),
            Open::Message => (
                json!({"type": "message", "id": new_id("msg_"), "status": "in_progress",
                       "role": "assistant", "content": []}),
                json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []}),
            ),
        };
        let i = self.output.len();
        let item_id = item["id"].clone();
        let e = json!({"output_index": i, "item": item});
        out.push(self.event("response.output_item.added", e));
        let e = json!({"item_id": item_id, "output_index": i, "content_index": 0, "part": part});
        out.push(self.event("response.content_part.added", e));
        let mut item = item;
        item["content"] = json!([part]);
        self.output.push(item);
    }

    /// A text delta into the open item.
    fn delta(&mut self, kind: Open, s: &str, out: &mut Vec<Sse>) {
        let first = self.open != kind;
        if first && s.trim().is_empty() {
            return;
        }
        self.switch(kind, out);
        let s = if first { s.trim_start() } else { s };
        let (i, item_id, part) = self.open_item();
        let text = format!("{}{s}", part["text"].as_str().unwrap_or(""));
        self.output[i]["content"][0]["text"] = json!(text);
        let (name, mut e) = match kind {
            Open::Reasoning => ("response.reasoning_text.delta", json!({})),
            _ => ("response.output_text.delta", json!({"logprobs": []})),
        };
        e["item_id"] = json!(item_id);
        e["output_index"] = json!(i);
        e["content_index"] = json!(0);
        e["delta"] = json!(s);
        out.push(self.event(name, e));
    }

    fn call(&mut self, name: &str, arguments: &Obj, out: &mut Vec<Sse>) {
        self.switch(Open::None, out);
        let item = call_item(&self.plan, name, arguments);
        let i = self.output.len();
        let item_id = item["id"].clone();
        let mut added = item.clone();
        added["status"] = json!("in_progress");
        let (field, events) = if item["type"] == "custom_tool_call" {
            ("input", "response.custom_tool_call_input")
        } else {
            ("arguments", "response.function_call_arguments")
        };
        let full = item[field].clone();
        added[field] = json!("");
        out.push(self.event(
            "response.output_item.added",
            json!({"output_index": i, "item": added}),
        ));
        let e = json!({"item_id": item_id, "output_index": i, "delta": full});
        out.push(self.event(&format!("{events}.delta"), e));
        let mut e = json!({"item_id": item_id, "output_index": i, "name": name});
        e[field] = full;
        out.push(self.event(&format!("{events}.done"), e));
        out.push(self.event(
            "response.output_item.done",
            json!({"output_index": i, "item": item}),
        ));
        self.output.push(item);
    }

    async fn next(&mut self) -> Option<Vec<Sse>> {
        if self.ended {
            return None;
        }
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            let r = self.response(None);
            out.push(self.event("response.created", json!({"response": r})));
            out.push(self.event("response.in_progress", json!({"response": r})));
            return Some(out);
        }
        match self.reader.next().await {
            Some(Out::Reasoning(s)) => self.delta(Open::Reasoning, &s, &mut out),
            Some(Out::Text(s)) => self.delta(Open::Message, &s, &mut out),
            Some(Out::ToolCall { name, arguments }) => self.call(&name, &arguments, &mut out),
            Some(Out::Logprob(_)) => {}
            Some(Out::Done(u, f)) => {
                self.switch(Open::None, &mut out);
                let r = self.response(Some((&u, &f)));
                keep(&self.state, &self.plan, &r);
                let kind = if r["status"] == "completed" {
                    "response.completed"
                } else {
                    "response.incomplete"
                };
                out.push(self.event(kind, json!({"response": r})));
                self.ended = true;
            }
            Some(Out::Error(e)) => {
                let body = engine_failed(e).body();
                let e = json!({"code": body["error"]["code"], "message": body["error"]["message"], "param": null});
                out.push(self.event("error", e));
                self.ended = true;
            }
            None => self.ended = true,
        }
        Some(out)
    }
}

pub fn stream_response(
    state: State,
    plan: Plan,
    id: String,
    created: u64,
    reader: Reader,
) -> Response {
    let st = StreamState {
        state,
        plan,
        id,
        created,
        reader,
        seq: 0,
        output: Vec::new(),
        open: Open::None,
        started: false,
        ended: false,
    };
    let body = stream::unfold(st, |mut st| async move {
        st.next().await.map(|evs| (stream::iter(evs), st))
    })
    .flatten();
    sse(body)
}
