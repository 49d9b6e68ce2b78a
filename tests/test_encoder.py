"""The default sentence encoder (all-MiniLM-L6-v2 through transformers, no sentence-transformers) against the
Sentence Transformers pipeline of the same model files: the independent reference of what MiniLM embeddings are."""
import numpy as np
import pytest

from kvi_engine.retrieval.encoder import MiniLMEncoder, default_encoder
from kvi_engine.utils.paths import minilm_path

TEXTS = ["Who founded Quillon Biotech?", "Quillon Biotech was founded by Ines Marrow in 2004.",
         "SFTSV infection causes fever, thrombocytopenia and leukopenia; ticks transmit it. " * 12,  # > 256 tokens
         "东京是日本的首都。", "x"]


def test_minilm_equals_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(str(minilm_path()), device="cpu", local_files_only=True)
    want = ref.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    enc = MiniLMEncoder(batch_size=2)  # batches of mixed lengths: padding must not change an embedding
    for got in (enc.encode_queries(TEXTS), enc.encode_passages(TEXTS), enc.encode_passages(TEXTS[::-1])[::-1]):
        assert got.dtype == np.float32 and got.shape == (len(TEXTS), 384)
        np.testing.assert_allclose(got, want, atol=2e-5)
    assert enc.encode_queries([]).shape == (0, 384) and enc.encode_passages([]).shape == (0, 384)
    assert default_encoder() is default_encoder()
