"""What every ``kvi`` verb shares: the user errors that print one line (exit 2), capsule-id parsing, model options."""
from __future__ import annotations

import argparse


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors a user can fix (missing files, malformed input, a bank from another model, bad ids): one clear line
    and exit status 2. Anything else is a bug and keeps its traceback."""
    from kvi_engine.capsules.capsule import CapsuleFormatError
    from kvi_engine.dispatch import BackendUnavailable
    from kvi_engine.distributed.cluster import ClusterError
    from kvi_engine.formats.container import FormatError
    from kvi_engine.models.fingerprint import FingerprintMismatch
    from kvi_engine.models.rope import UnsupportedRoPE
    from kvi_engine.utils.extras import MissingExtra
    # OSError: a named model or tokenizer that cannot be found or loaded.
    return (OSError, CapsuleFormatError, FormatError, FingerprintMismatch, UnsupportedRoPE, BackendUnavailable,
            ClusterError, MissingExtra, IndexError, KeyError, ValueError)


def message(e: BaseException) -> str:
    """One line for a user error: KeyError's repr quoting dropped, further lines cut."""
    text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return str(text).strip().splitlines()[0] if str(text).strip() else type(e).__name__


def parse_ids(text: str) -> list[int]:
    try:
        ids = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"capsule ids must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise argparse.ArgumentTypeError("empty capsule id list")
    bad = [i for i in ids if not 0 <= i < 2**63]
    if bad:
        raise argparse.ArgumentTypeError(f"capsule id {bad[0]} is out of range (ids are integers in [0, 2^63))")
    return ids


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="HF model name, local dir or 'reader' (the bundled reader) (default: "
                                   "Qwen/Qwen2.5-0.5B-Instruct; the reader, announced loudly, when it cannot be loaded)")
    p.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16"], default="auto")
    p.add_argument("--device", default="cpu")


def load_model_from(args):
    """``(model, tokenizer)`` named by ``--model/--dtype/--device``."""
    import torch

    from kvi_engine.models.loading import load_model
    dtype = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    model, tok, _fallback = load_model(args.model, dtype=dtype, device=args.device)
    return model, tok
