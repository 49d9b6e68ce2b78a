"""Tiny random models for tests, benchmarks and the offline fallback.

Weights cannot be downloaded on development and CI machines, so tests use tiny random models of the supported
families (Llama, Qwen2, Mistral, Qwen3) with a byte-level BPE tokenizer trained in well under a second on the
shipped sample text; ``bench_model`` is the ~100M-parameter CPU benchmark model.
"""
from __future__ import annotations

import functools

import torch

from kvi_engine.utils.paths import sample_dir

FAMILIES = ("llama", "qwen2", "mistral", "qwen3")

_BASE_TEXT = (
    "the of and to in is was for on with as by at from that this it an be are which or has had not were "
    "who what where when how why does did is a virus causes fever treated by drug located in city capital "
    "founded company works for member of born discovered produces leads part headquartered transmitted "
    "Question: Answer: Context: Evidence: yes no 0 1 2 3 4 5 6 7 8 9 . , ? ! : ; ' \" ( ) - "
)


def _training_text() -> list[str]:
    lines = [_BASE_TEXT]
    if sample_dir().is_dir():
        for p in sorted(sample_dir().rglob("*")):
            if p.suffix in (".md", ".txt", ".jsonl") and p.is_file():
                lines.extend(p.read_text(encoding="utf-8", errors="replace").splitlines())
    return lines


@functools.lru_cache(maxsize=8)
def _tokenizer_json(vocab_size: int, bos: bool) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<s>", "<pad>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_training_text(), trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                           special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return tok.to_str()


def tiny_tokenizer(vocab_size: int = 1024, bos: bool = False):
    """A byte-level BPE tokenizer (any text encodes). ``bos=True`` prepends <s> like Llama tokenizers do,
    which gives banks a shared prefix; ``bos=False`` behaves like Qwen tokenizers (no prefix)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    t = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab_size, bos)),
                                eos_token="<|endoftext|>", pad_token="<pad>",
                                bos_token="<s>" if bos else None)
    t.padding_side = "left"
    return t


def tiny_config(family: str, vocab_size: int, *, hidden: int = 64, layers: int = 2, heads: int = 4,
                kv_heads: int = 2, intermediate: int | None = None, head_dim: int | None = None, **extra):
    """Config of a small random model of ``family``; GQA by default (4 query heads over 2 KV heads)."""
    import transformers as tf

    cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "mistral": tf.MistralConfig,
           "qwen3": tf.Qwen3Config}.get(family)
    if cls is None:
        raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")
    kw = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
              num_key_value_heads=kv_heads, intermediate_size=intermediate or 2 * hidden,
              max_position_embeddings=4096, tie_word_embeddings=False)
    if head_dim is not None or family == "qwen3":
        kw["head_dim"] = head_dim or hidden // heads
    kw.update(extra)
    return cls(**kw)


def tiny_model(family: str = "qwen2", tokenizer=None, *, seed: int = 0, dtype=torch.float32, **config_kw):
    """A random model of ``family`` sized for tests; weights scaled like a trained model's (std 0.02)."""
    from transformers import AutoModelForCausalLM

    tokenizer = tokenizer or tiny_tokenizer()
    cfg = tiny_config(family, len(tokenizer), **config_kw)
    cfg.pad_token_id = tokenizer.pad_token_id
    cfg.eos_token_id = tokenizer.eos_token_id
    cfg.bos_token_id = tokenizer.bos_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    model.eval()
    return model


def bench_model(tokenizer=None, *, seed: int = 0):
    """The ~100M-parameter CPU benchmark model (Qwen2 family, 12 layers, hidden 768, GQA 12/4)."""
    tokenizer = tokenizer or tiny_tokenizer(vocab_size=8192)
    return tiny_model("qwen2", tokenizer, seed=seed, hidden=768, layers=12, heads=12, kv_heads=4,
                      intermediate=2688), tokenizer


def tiny_replica(family: str = "llama", *, bos: bool = True, seed: int = 0):
    """``(model, tokenizer)`` of a tiny random model: the model factory the distributed tests send to their workers
    (as ``functools.partial(tiny_replica, ...)``, importable by reference)."""
    tok = tiny_tokenizer(bos=bos)
    return tiny_model(family, tok, seed=seed), tok
