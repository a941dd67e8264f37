"""The BPE tokenizer of the ASR-multitask model: trained on transcripts, round-trips text, saved and
reloaded as bytes, CTC outputs offset by the blank."""

from pathlib import Path

import pytest
from emostream.model.asr_multitask import CTC_BLANK
from emostream.model.tokenizer import BpeTokenizer, TokenizerError, normalise_transcript

TRANSCRIPTS = [
    "Kids are talking by the door", "Dogs are sitting by the door", "the old man carried the red box",
    "a small bird watched the garden gate", "my brother opened the wooden chair in the kitchen",
    "her sister dropped a heavy stone near the station", "the teacher counted the apples on sunday",
] * 3


def test_normalisation_keeps_words_and_apostrophes_only() -> None:
    assert normalise_transcript("  Kids ARE talking, by the door!  ") == "kids are talking by the door"
    assert normalise_transcript("IT'S  nine-thirty") == "it's nine thirty"


def test_round_trips_text_and_offsets_ctc_outputs_by_the_blank(tmp_path: Path) -> None:
    tokenizer = BpeTokenizer.train(TRANSCRIPTS, vocabulary=60)
    assert tokenizer.vocabulary == 60
    for text in ("Kids are talking by the door", "the red bird opened the garden door", "carried"):
        pieces = tokenizer.encode(text)
        assert tokenizer.decode(pieces) == normalise_transcript(text)
        assert tokenizer.ctc_targets(text) == [p + 1 for p in pieces] and CTC_BLANK not in tokenizer.ctc_targets(text)
    assert len(tokenizer.encode("kids are talking by the door")) < len("kids are talking by the door")  # merges
    reloaded = BpeTokenizer.load(tokenizer.save(tmp_path / "tokenizer.model"))
    assert reloaded.encode("dogs are sitting by the door") == tokenizer.encode("dogs are sitting by the door")
    assert reloaded.vocabulary == 60


def test_a_vocabulary_the_corpus_cannot_fill_is_refused_with_the_limit() -> None:
    with pytest.raises(TokenizerError, match=r"5000-piece .* at most \d+ pieces"):
        BpeTokenizer.train(["zero", "one", "two", "three"], vocabulary=5000)
    with pytest.raises(TokenizerError, match="no transcripts"):
        BpeTokenizer.train(["", "!!"], vocabulary=10)


def test_a_foreign_file_is_refused_by_name(tmp_path: Path) -> None:
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="tokenizer.model: not a SentencePiece model"):
        BpeTokenizer.load(bad)
