"""The model card (README.md) written next to a trained reader checkpoint: data, size, steps, wall time, scores."""
from __future__ import annotations

import json
from pathlib import Path

from kvi_engine.utils.atomic import atomic_open


def _table(scores: dict) -> str:
    if not scores:
        return "(none recorded)\n"
    lines = ["| condition | score |", "|---|---|"]
    lines += [f"| {k} | {100 * v:.1f}% |" for k, v in scores.items()]
    return "\n".join(lines) + "\n"


def _amp(info: dict) -> str:
    dt = info.get("autocast_dtype")
    return f", matmuls in {dt} (autocast)" if dt else ""


def write_card(out: str | Path, infos: list[dict], heldout: dict | None = None, notes: str = "") -> Path:
    """``out/README.md`` from the ``train_info.json`` dicts of the stages that built the checkpoint, plus optional
    greedy-decoding held-out scores (``{condition: EM}``) and free-text notes (lineage, caveats)."""
    out = Path(out)
    cfg = json.loads((out / "config.json").read_text())
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file() and f.name != "README.md")
    stages = "\n".join(
        f"- stage `{i['stage']}`: {i['steps']} QA steps, {i['tokens']:,} tokens, "
        f"{i['times'].get('induction_s', 0) / 60:.1f} min induction warm-up + {i['times']['train_s'] / 60:.1f} min "
        f"QA training ({i['args'].get('threads', 1)} thread(s){_amp(i)}), mix `{i['args'].get('mix')}`, "
        f"lr {i['args'].get('lr')}, seed {i['args'].get('seed')}" for i in infos)
    text = f"""# kvi-engine reader

A {cfg['model_type']} causal LM trained from scratch (no pretrained weights) to answer questions from facts it is
given, as text or as injected KV. Load it with plain Hugging Face classes:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(DIR); tok = AutoTokenizer.from_pretrained(DIR)
```
or `kvi ... --model reader`. Prompt format: `kvi_engine.query.prompts.qa_prompt` (the chat template of the tokenizer
config renders a user turn in it).

## Size
{cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, {cfg['num_attention_heads']} heads
({cfg['num_key_value_heads']} KV heads), vocabulary {cfg['vocab_size']} (byte-level BPE trained on generated
text), {infos[-1]['params'] / 1e6:.2f}M parameters, {size / 2**20:.1f} MiB on disk.

## Data
Seeded synthetic worlds (`kvi_engine.reader.generator`): random syllable-word entities (disjoint from the sample
corpus and the evaluation sets under ../shared/data: `kvi_engine/reader/blocklist.txt`; held-out entities by a
hash of the name, never generated for training), facts rendered with the statement templates of
`kvi_engine.reader.schema` (every sample-corpus relation and more), questions in several phrasings, 1-hop and
2-hop (two chained facts), distractor facts in most contexts; 1..64 facts per context.

## Training
{stages}

## Held-out scores
Teacher-forced EM during training (last evaluation; formats: rag = facts as prompt lines, doc = running text,
kvi = block-diagonal capsules):

{_table(infos[-1].get('heldout_teacher_forced_em', {}))}
Greedy-decoding EM (`kvi bench fidelity`):

{_table(heldout or {})}
{notes}
"""
    with atomic_open(out / "README.md", "w") as f:
        f.write(text)
    return out / "README.md"
