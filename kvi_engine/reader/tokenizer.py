"""The reader's tokenizer: byte-level BPE trained on generated text, BOS-prefixed like Llama tokenizers.

add_prefix_space=True (like SentencePiece's dummy prefix): a text's first word is tokenized as it is mid-sentence
("Ġ" + word), so a capsule compiled alone ("Quillon Biotech was founded by ...") starts with the same tokens the
question uses to name its subject ("Who founded Quillon Biotech?").
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
# user turn -> the engine's prompt format; an assistant turn is the answer then EOS
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}{% if m['content'].startswith('Question:') or m['content'].startswith('Context:') %}"
    "{{ m['content'] }}{% else %}Question: {{ m['content'] }}\nAnswer:{% endif %}"
    "{% elif m['role'] == 'assistant' %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")
BASE_TEXT = ("Context: Question: Answer: the of and to in is was for on with as by at from that this it an be are "
             "which or has had not were who what where when how why does did whom whose yes no unknown "
             "0 1 2 3 4 5 6 7 8 9 10 100 1000 . , ? ! : ; ' \" ( ) - ")


def corpus(gen, n_contexts: int):
    yield BASE_TEXT
    for _ in range(n_contexts):
        c = gen.context(gen.rng.randint(1, 16), 4, hops=(1, 2), p_two_hop=0.3)
        q = c.questions[0]
        yield "Context:\n" + "".join(f"- {f}\n" for f in c.facts) + f"Question: {q.question}\nAnswer: {q.answer}"
        yield " ".join(c.facts) + f" Question: {q.question}\nAnswer: {q.answer}"
        for q in c.questions[1:]:
            yield f"Question: {q.question}\nAnswer: {q.answer}"


def train_tokenizer(gen, vocab_size: int = 4096, n_contexts: int = 6000) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(gen, n_contexts), trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                       special_tokens=[(BOS, tok.token_to_id(BOS))])
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    t = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                padding_side="left", add_prefix_space=True)
    t.chat_template = CHAT_TEMPLATE
    t.model_max_length = 2048
    return t


class Pieces:
    """Token ids of text pieces that concatenate exactly: ``start`` for the first piece of a sequence (prefix
    space, no BOS), ``cont`` for every following piece (no prefix space: it carries its own)."""

    def __init__(self, hf_tok: PreTrainedTokenizerFast):
        js = json.loads(hf_tok.backend_tokenizer.to_str())
        self.start_tok = Tokenizer.from_str(json.dumps(js))
        self.start_tok.post_processor = None
        js["pre_tokenizer"]["add_prefix_space"] = False
        self.cont_tok = Tokenizer.from_str(json.dumps(js))
        self.cont_tok.post_processor = None
        self.bos, self.eos, self.pad = hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id

    def start(self, texts):
        return [e.ids for e in self.start_tok.encode_batch(list(texts), add_special_tokens=False)]

    def cont(self, texts):
        return [e.ids for e in self.cont_tok.encode_batch(list(texts), add_special_tokens=False)]


if __name__ == "__main__":
    import sys

    from kvi_engine.reader.generator import Generator
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "out/tok")
    t0 = time.time()
    tk = train_tokenizer(Generator(seed=1234), vocab_size=int(sys.argv[2]) if len(sys.argv) > 2 else 4096)
    tk.save_pretrained(out)
    print(f"trained in {time.time() - t0:.1f}s, vocab {len(tk)} -> {out}")
