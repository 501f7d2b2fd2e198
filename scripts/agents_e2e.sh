#!/usr/bin/env bash
# Claude Code (`claude -p`) and Codex (`codex exec`) each run one turn, tools enabled, against
# `glm5 serve` on a copy of the bundled model whose context holds their system prompts.
# Installs both from npm into target/agents (once). Prints one line per agent and the
# server's view (prompt tokens, time to first token); exits non-zero if an agent fails.
#
#   bash scripts/agents_e2e.sh            # after cargo build --release
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=$root/target/release/glm5
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 2; }
agents=$root/target/agents
if [ ! -x "$agents/node_modules/.bin/claude" ] || [ ! -x "$agents/node_modules/.bin/codex" ]; then
  mkdir -p "$agents"
  (cd "$agents" && npm install --silent --no-audit --no-fund @anthropic-ai/claude-code @openai/codex)
fi
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
# The bundled model with a 256K window (RoPE runs past its training length; the text is
# nonsense either way, the protocol is what is tested).
mkdir "$work/model"
for f in "$root"/models/glm5-tiny/*; do ln -s "$f" "$work/model/"; done
rm "$work/model/config.json"
python3 -c "import json,sys; c=json.load(open(sys.argv[1])); c['max_position_embeddings']=262144; json.dump(c, open(sys.argv[2], 'w'))" \
  "$root/models/glm5-tiny/config.json" "$work/model/config.json"
port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$bin" serve --model "$work/model" --model-name glm5-tiny --port "$port" --ctx 262144 --max-seqs 2 \
  >"$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
mkdir "$work/project" && echo "hello" >"$work/project/README.md"
cd "$work/project"

# Claude Code: headless, stream-json; its fast-model side requests go to the same model.
t0=$(date +%s.%N)
ANTHROPIC_BASE_URL=http://127.0.0.1:$port ANTHROPIC_API_KEY=glm5 ANTHROPIC_MODEL=glm5-tiny \
ANTHROPIC_SMALL_FAST_MODEL=glm5-tiny ANTHROPIC_DEFAULT_HAIKU_MODEL=glm5-tiny \
CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 HOME=$work/home \
  timeout 600 "$agents/node_modules/.bin/claude" -p "List the files in this folder." \
  --model glm5-tiny --output-format stream-json --verbose >"$work/claude.jsonl" 2>&1 || true
t1=$(date +%s.%N)
claude=$(python3 - "$work/claude.jsonl" <<'EOF'
import json, sys
res = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{"type":"result"')]
tools = [json.loads(l) for l in open(sys.argv[1]) if l.startswith('{"type":"system"')]
ok = res and res[-1].get("subtype") == "success" and not res[-1].get("is_error")
ntools = len(tools[0].get("tools", [])) if tools else 0
print(("ok" if ok else "FAILED") + f": {ntools} tools offered; result "
      + (json.dumps({k: res[-1].get(k) for k in ("subtype", "terminal_reason", "ttft_ms", "usage")})[:400] if res else "none"))
EOF
)
echo "claude code: $claude ($(python3 -c "print(f'{$t1-$t0:.1f}')") s)"

# Codex: exec through the Responses API.
mkdir "$work/codex"
cat >"$work/codex/config.toml" <<EOF
model = "glm5-tiny"
model_provider = "glm5"
[model_providers.glm5]
name = "glm5"
base_url = "http://127.0.0.1:$port/v1"
wire_api = "responses"
env_key = "GLM5_KEY"
EOF
t0=$(date +%s.%N)
rc=0
CODEX_HOME=$work/codex GLM5_KEY=glm5 timeout 600 "$agents/node_modules/.bin/codex" exec \
  --skip-git-repo-check "List the files in this folder." >"$work/codex.out" 2>&1 || rc=$?
t1=$(date +%s.%N)
# The toy model rarely ends its turn (no EOS within the server's default max tokens); Codex
# reports that as an incomplete response and exits 1. The protocol worked if the reply was shown
# and no other error came.
errors=$(grep "^ERROR" "$work/codex.out" | grep -v "Incomplete response returned, reason: max_output_tokens" || true)
if grep -q "^codex$" "$work/codex.out" && grep -q "tokens used" "$work/codex.out" && [ -z "$errors" ]; then
  codex="ok: exit $rc, $(grep -A1 'tokens used' "$work/codex.out" | tail -1) tokens"
  grep -q "Incomplete response" "$work/codex.out" && codex="$codex (the toy model ran to the token limit: Codex calls that an incomplete response)"
else
  codex="FAILED (exit $rc): $(tail -3 "$work/codex.out" | tr '\n' ' ')"
fi
echo "codex: $codex ($(python3 -c "print(f'{$t1-$t0:.1f}')") s)"
curl -s "http://127.0.0.1:$port/metrics" | grep -E "^glm5_(requests_total|prompt_tokens_total|time_to_first_token_seconds_(sum|count)) "
case "$claude$codex" in *FAILED*) exit 1 ;; esac
