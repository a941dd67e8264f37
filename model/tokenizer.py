"""SentencePiece BPE units of the ASR-multitask model (seed 001, section 4.1: 5,000 units trained on
the pre-training corpus's transcripts).

CTC outputs: blank is output 0 (`CTC_BLANK`), BPE piece i is output i + 1, so a network over a
tokenizer of `vocabulary` pieces has `vocabulary + 1` outputs. The trained model is a SentencePiece
model proto (bytes), written beside the weights of every checkpoint (`save`, `load`).

Transcripts are normalised before training and encoding (`normalise_transcript`): lower case,
letters, digits and apostrophes only, single spaces; LibriSpeech's upper case, RAVDESS's sentence
case and FSDD's digit words then share one set of units.
"""

import io
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

TOKENIZER_FILE = "tokenizer.model"
PIECE_OUTPUT_OFFSET = 1  # output id = piece id + 1 (output 0 is CTC's blank)
UNKNOWN_PIECE = 0  # SentencePiece's <unk>; no <s>, </s> or padding pieces
_NOT_SPOKEN = re.compile(r"[^a-z0-9' ]+")


class TokenizerError(ValueError):
    """A tokenizer cannot be trained on these transcripts, or a tokenizer file is unreadable."""


def normalise_transcript(text: str) -> str:
    """`"Kids are talking, by the DOOR."` -> `"kids are talking by the door"`."""
    return " ".join(_NOT_SPOKEN.sub(" ", text.lower()).split())


class BpeTokenizer:
    """Transcript <-> BPE piece ids (0-based) <-> CTC outputs (piece + 1)."""

    def __init__(self, model_proto: bytes, source: str = "tokenizer") -> None:
        self.model_proto = model_proto
        self._processor = spm.SentencePieceProcessor()
        try:
            self._processor.LoadFromSerializedProto(model_proto)
        except (RuntimeError, OSError) as error:
            raise TokenizerError(f"{source}: not a SentencePiece model ({error})") from None

    @classmethod
    def train(cls, transcripts: Iterable[str], vocabulary: int, *, seed_sentences: int = 1_000_000) -> "BpeTokenizer":
        """BPE with `vocabulary` pieces (including <unk>) from these transcripts.

        A small corpus cannot fill a large vocabulary (FSDD's ten digit words give ~50 pieces): the
        error says how many pieces this corpus supports, so the caller can ask for fewer.
        """
        texts = [normalise_transcript(text) for text in transcripts]
        texts = [text for text in texts if text]
        if not texts:
            raise TokenizerError("no transcripts to train the tokenizer on (all empty after normalisation)")
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(texts), model_writer=model, model_type="bpe", vocab_size=vocabulary,
                character_coverage=1.0, bos_id=-1, eos_id=-1, pad_id=-1, unk_id=UNKNOWN_PIECE,
                input_sentence_size=seed_sentences, shuffle_input_sentence=False, num_threads=1,
                minloglevel=2,
            )
        except RuntimeError as error:
            message = str(error)
            supported = re.search(r"<= (\d+)", message)
            hint = f"; this corpus supports at most {supported.group(1)} pieces" if supported else ""
            raise TokenizerError(f"cannot train a {vocabulary}-piece BPE tokenizer on {len(texts)} transcripts "
                                 f"({message.strip()}){hint}") from None
        return cls(model.getvalue())

    @classmethod
    def load(cls, path: Path) -> "BpeTokenizer":
        if not path.is_file():
            raise TokenizerError(f"{path}: no tokenizer file")
        return cls(path.read_bytes(), source=str(path))

    def save(self, path: Path) -> Path:
        path.write_bytes(self.model_proto)
        return path

    @property
    def vocabulary(self) -> int:
        """Pieces (the CTC head has one output more: the blank)."""
        return int(self._processor.GetPieceSize())

    def pieces(self, text: str) -> list[str]:
        return list(self._processor.EncodeAsPieces(normalise_transcript(text)))

    def encode(self, text: str) -> list[int]:
        """Piece ids (0-based) of the normalised text."""
        return list(self._processor.EncodeAsIds(normalise_transcript(text)))

    def decode(self, piece_ids: Sequence[int]) -> str:
        return str(self._processor.DecodeIds(list(piece_ids)))

    def ctc_targets(self, text: str) -> list[int]:
        """CTC outputs of the text: piece ids + 1."""
        return [piece + PIECE_OUTPUT_OFFSET for piece in self.encode(text)]
