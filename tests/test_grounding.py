"""Grounding filter on English and Chinese output: supported sentences stay, unsupported ones go."""
import pytest

from kvi_engine.retrieval.grounding import GroundingFilter

EN = ["The Grellan virus causes Grellan fever.", "Grellan fever is treated by Velotrex."]
ZH = ["格伦病毒引起格伦热。", "格伦热由维洛特克斯治疗。"]


def test_english_keeps_supported_and_drops_unsupported():
    out = GroundingFilter()("Velotrex treats Grellan fever. It was invented on Mars by friendly aliens.", EN)
    assert out.text == "Velotrex treats Grellan fever."
    assert [j.kept for j in out.judgements] == [True, False] and out.checked
    assert out.dropped[0].support < 0.5


def test_two_hop_answer_stitched_from_two_evidence_sentences_survives():
    out = GroundingFilter()("The disease caused by the Grellan virus is treated by Velotrex.", EN)
    assert out.text == "The disease caused by the Grellan virus is treated by Velotrex."


def test_chinese_uses_character_bigrams():
    out = GroundingFilter()("格伦热由维洛特克斯治疗。它是火星人在月球上发明的。", ZH)
    assert out.text == "格伦热由维洛特克斯治疗。"
    assert [j.kept for j in out.judgements] == [True, False]


def test_mixed_language_output():
    out = GroundingFilter()("Velotrex treats Grellan fever. 格伦病毒引起格伦热。火星人喜欢唱歌跳舞。", EN + ZH)
    assert out.text == "Velotrex treats Grellan fever. 格伦病毒引起格伦热。"


def test_named_entity_absent_from_evidence_is_dropped_despite_overlap():
    f = GroundingFilter(entities=["Velotrex", "Amberlin", "Grellan fever"])
    out = f("Grellan fever is treated by Amberlin.", EN)
    assert out.text == "" and "Amberlin" in out.judgements[0].reason
    assert GroundingFilter()("Grellan fever is treated by Amberlin.", EN).text  # overlap alone would keep it


def test_fallback_no_evidence_and_contentless_sentences():
    f = GroundingFilter(fallback="No supported answer.")
    assert f("Mars is red.", EN).text == "No supported answer."
    unchecked = f("Mars is red.", [])
    assert unchecked.text == "Mars is red." and not unchecked.checked
    assert f("Yes. Velotrex.", EN).text == "Yes. Velotrex."
    with pytest.raises(ValueError, match="min_support"):
        GroundingFilter(min_support=1.5)
    with pytest.raises(ValueError, match="2 outputs but 1"):
        f.filter_batch(["a", "b"], [EN])
