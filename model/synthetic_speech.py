"""Synthetic transcribed speech from espeak-ng: varied voices, speaking rates and pitches reading
varied English sentences, each with its exact transcript. A stand-in for LibriSpeech where that is
not available (CTC pre-training at small scale, and tests), never a replacement for real speech.

The sentences are English prose from the docstrings of this Python's own standard library (about
6,300 sentences and 4,700 words on CPython 3.11; only those made of plain words, so what espeak-ng
says is exactly the transcript), or short sentences from a fixed word list with templates. Output:
a folder with 16 kHz FLAC files and a `labels.csv` (path, transcript, speaker, voice, rate_wpm,
pitch) that model/asr_corpus.py reads; the speaker is the voice + variant.
"""

import ast
import csv
import functools
import random
import re
import shutil
import subprocess
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from emostream.model.features import resample

ESPEAK_BINARY = "espeak-ng"
SYNTHETIC_SAMPLE_RATE_HZ = 16_000
# espeak-ng's own English voices (the mbrola ones need separate data files)
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
VARIANTS = ("", "+m1", "+m3", "+m5", "+m7", "+f1", "+f2", "+f3", "+f4", "+klatt")
RATE_WPM_RANGE = (120, 210)  # espeak-ng -s: words per minute (its default is 175)
PITCH_RANGE = (20, 80)  # espeak-ng -p: 0-99 (its default is 50)
SYNTHESIS_TIMEOUT_S = 30.0

_SUBJECTS = ("the man", "the woman", "a child", "my brother", "her sister", "the old dog", "a small bird",
             "the teacher", "our neighbour", "the doctor", "a tired farmer", "the young king", "his friend",
             "the captain", "a quiet girl", "the baker")
_VERBS = ("carried", "found", "painted", "opened", "watched", "followed", "cleaned", "dropped", "wanted",
          "lifted", "counted", "heard", "bought", "hid", "pulled", "showed")
_OBJECTS = ("the red box", "a heavy stone", "the green door", "an empty bottle", "the wooden chair",
            "a long letter", "the cold river", "a bright lamp", "the broken window", "a loaf of bread",
            "the silver key", "a warm coat", "the garden gate", "a basket of apples", "the morning paper")
_PLACES = ("in the kitchen", "near the station", "by the old bridge", "across the field", "under the table",
           "at the market", "on the hill", "behind the house", "in the dark forest", "along the road")
_TIMES = ("this morning", "last night", "after dinner", "before the storm", "on sunday", "every evening",
          "in the spring", "at noon")
PROSE_WORDS_RANGE = (4, 20)  # words in a prose sentence (utterances of 1.1-9.7 s in a 3,000 corpus)
TEXT_SOURCES = ("prose", "templates")
_PLAIN_SENTENCE = re.compile(r"[A-Z][A-Za-z ,;-]*[.!?]")  # no digits, code, quotes or abbreviations
_TEMPLATES = ("{s} {v} {o}", "{s} {v} {o} {p}", "{t} {s} {v} {o}", "{s} {v} {o} {t}", "{s} {v} {o} {p} {t}")


class EspeakNotInstalledError(RuntimeError):
    """espeak-ng is not on PATH."""


def espeak_binary() -> str | None:
    """Path of espeak-ng, or None where it is not installed."""
    return shutil.which(ESPEAK_BINARY)


def require_espeak() -> str:
    """Path of espeak-ng; EspeakNotInstalledError saying how to install it where it is missing."""
    binary = espeak_binary()
    if binary is None:
        raise EspeakNotInstalledError(f"{ESPEAK_BINARY} not found on PATH; install it (apt-get install "
                                      f"{ESPEAK_BINARY}; .ci/run does when it can) to synthesise speech")
    return binary


@functools.cache
def stdlib_prose_sentences() -> tuple[str, ...]:
    """Sentences of the standard library's docstrings (read with ast, nothing imported) as transcripts:
    lower case, words only, 4-20 words, deduplicated and sorted. Test modules are left out."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sentences: set[str] = set()
    for path in sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("*/*.py")):
        if path.name.startswith("test") or path.parent.name.startswith("test"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                docstring = ast.get_docstring(node)
                for sentence in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", docstring or "")):
                    if _PLAIN_SENTENCE.fullmatch(sentence.strip()):
                        words = re.sub(r"[,;.!?-]", " ", sentence.lower()).split()
                        if PROSE_WORDS_RANGE[0] <= len(words) <= PROSE_WORDS_RANGE[1]:
                            sentences.add(" ".join(words))
    return tuple(sorted(sentences))


def template_sentences(count: int, seed: int = 0) -> list[str]:
    """`count` short sentences from the fixed word list and templates, drawn with `seed`."""
    draw = random.Random(seed)
    return [draw.choice(_TEMPLATES).format(s=draw.choice(_SUBJECTS), v=draw.choice(_VERBS),
                                           o=draw.choice(_OBJECTS), p=draw.choice(_PLACES),
                                           t=draw.choice(_TIMES))
            for _ in range(count)]


def random_sentences(count: int, seed: int = 0, text: str = "prose") -> list[str]:
    """`count` English sentences (lower case, words only) drawn with `seed`: prose sentences without
    repeats until all have been used (then again, reshuffled), or template sentences."""
    if text not in TEXT_SOURCES:
        raise ValueError(f"text source {text!r} unknown; use one of {', '.join(TEXT_SOURCES)}")
    if text == "templates":
        return template_sentences(count, seed)
    prose, draw, sentences = list(stdlib_prose_sentences()), random.Random(seed), []
    while len(sentences) < count:
        draw.shuffle(prose)
        sentences.extend(prose[: count - len(sentences)])
    return sentences


@dataclass(frozen=True)
class SpokenSentence:
    """What espeak-ng is asked to say, and how."""

    transcript: str
    voice: str  # espeak-ng -v, voice + variant, e.g. en-gb+f3
    rate_wpm: int  # espeak-ng -s
    pitch: int  # espeak-ng -p, 0-99


def speak(sentence: SpokenSentence, binary: str | None = None) -> np.ndarray:
    """espeak-ng's audio of the sentence: float32 mono in [-1, 1] at SYNTHETIC_SAMPLE_RATE_HZ."""
    binary = binary or require_espeak()
    with tempfile.TemporaryDirectory(prefix="emostream-espeak-") as scratch:
        wav = Path(scratch) / "speech.wav"
        completed = subprocess.run(
            [binary, "-v", sentence.voice, "-s", str(sentence.rate_wpm), "-p", str(sentence.pitch),
             "-w", str(wav), sentence.transcript],
            capture_output=True, text=True, timeout=SYNTHESIS_TIMEOUT_S, check=False)
        if completed.returncode != 0 or not wav.is_file():
            raise RuntimeError(f"{ESPEAK_BINARY} -v {sentence.voice} failed (exit {completed.returncode}): "
                               f"{completed.stderr.strip()[:200]}")
        audio, rate_hz = sf.read(str(wav), dtype="float32", always_2d=False)
    return resample(audio, rate_hz, SYNTHETIC_SAMPLE_RATE_HZ)


def synthesise_corpus(folder: Path, utterances: int, seed: int = 0, text: str = "prose", workers: int = 2) -> Path:
    """Write `utterances` synthetic sentences of `text` (random_sentences; voices, rates and pitches
    drawn with `seed`) as FLAC files under `folder` with a `labels.csv`; returns the CSV's path.
    `workers` espeak-ng processes run at once; the corpus does not depend on how many."""
    binary = require_espeak()
    draw = random.Random(seed + 1)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "audio").mkdir(exist_ok=True)
    sentences = [SpokenSentence(transcript=transcript, voice=draw.choice(VOICES) + draw.choice(VARIANTS),
                                rate_wpm=draw.randint(*RATE_WPM_RANGE), pitch=draw.randint(*PITCH_RANGE))
                 for transcript in random_sentences(utterances, seed, text)]
    rows = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for index, (sentence, audio) in enumerate(zip(sentences, pool.map(lambda s: speak(s, binary), sentences),
                                                      strict=True)):
            relative = f"audio/synthetic-{seed}-{index:05d}.flac"
            sf.write(str(folder / relative), audio, SYNTHETIC_SAMPLE_RATE_HZ, subtype="PCM_16")
            rows.append({"path": relative, "transcript": sentence.transcript, "speaker": sentence.voice,
                         "voice": sentence.voice, "rate_wpm": sentence.rate_wpm, "pitch": sentence.pitch})
    labels = folder / "labels.csv"
    with labels.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "transcript", "speaker", "voice", "rate_wpm", "pitch"])
        writer.writeheader()
        writer.writerows(rows)
    return labels
