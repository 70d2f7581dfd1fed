"""Synthetic multi-speaker English + Bengali corpus from espeak-ng, with exact phone alignments.

Layout written by :func:`synthesize_corpus` (the tiny recipe's stage 0)::

    OUT/
      wav/<speaker>/<utt_id>.wav      16-bit PCM, mono, ``sample_rate`` Hz
      utterances.jsonl                one JSON object per utterance (see ``Utterance``)
      speakers.json                   the pseudo-speaker definitions

Pseudo-speakers are (voice variant x pitch x rate); every speaker reads both languages, with an
English accent of its own, so speaker and language are not confounded.

Sentences of held-out speakers are unseen in training.  Stage 1 holds out the *last* speakers
(sorted ids; 2 dev + 2 test in the tiny recipe, see
:func:`speechae.data.manifests.split_speakers`), so the last ``private_speakers`` speakers
(default 4) each read sentences that no other speaker reads: every sentence of a dev or test
speaker is then absent from the training speakers' sentences, and a text probe cannot score
by memorising training transcripts.  The other speakers share the rest of the sentence list.
"""

from __future__ import annotations

import json
import math
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly
from tqdm import tqdm

from speechae.utils.io import atomic_path, read_lines

ENGLISH_VOICES = ("en-us", "en", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-gb-x-gbclan")
VARIANTS = ("m1", "f1", "m3", "f2", "m2", "f3", "m4", "f4", "m5", "f5", "m6", "m7")


@dataclass
class Speaker:
    """A pseudo-speaker: voice variant, pitch (0-100) and rate (words per minute)."""

    id: str
    en_voice: str
    bn_voice: str
    pitch: int
    rate: int


@dataclass
class Utterance:
    """One line of ``utterances.jsonl``.  ``phones`` holds (phone, start_s, end_s) triples."""

    id: str
    speaker: str
    language: str
    text: str
    audio: str  # path relative to the corpus directory
    duration: float
    sample_rate: int
    phones: list[tuple[str, float, float]]


def make_speakers(num_speakers: int, seed: int = 0) -> list[Speaker]:
    """Deterministic, well-spread pseudo-speakers (distinct variant, pitch and rate each)."""
    if num_speakers < 1:
        raise ValueError("num_speakers must be positive")
    rng = random.Random(seed)
    speakers = []
    for i in range(num_speakers):
        variant = VARIANTS[i % len(VARIANTS)]
        # Pitch and rate on interleaved grids so neighbours in index differ clearly.
        pitch = 25 + (i * 37) % 50
        rate = 140 + (i * 23) % 60
        speakers.append(Speaker(
            id=f"spk{i + 1:02d}",
            en_voice=f"{ENGLISH_VOICES[i % len(ENGLISH_VOICES)]}+{variant}",
            bn_voice=f"bn+{variant}",
            pitch=pitch + rng.randint(-3, 3),
            rate=rate + rng.randint(-5, 5),
        ))
    return speakers


def default_sentences(language: str) -> list[str]:
    """The sentence lists shipped with speechae (``speechae/resources/sentences_<lang>.txt``)."""
    ref = resources.files("speechae.resources") / f"sentences_{language}.txt"
    with resources.as_file(ref) as path:
        return read_lines(path)


def plan_utterances(speakers: list[Speaker], sentences: dict[str, list[str]], utts_per_speaker: int,
                    bn_fraction: float = 0.5, seed: int = 0,
                    private_speakers: int = 4) -> list[tuple[Speaker, str, str, str]]:
    """``(speaker, language, utt_id, text)`` for every utterance of the corpus.

    Each language's sentence list is split deterministically: the last ``private_speakers``
    speakers (by sorted id) get disjoint private parts of ``n`` sentences each (n = that
    speaker's utterances in the language); every other speaker draws from the remaining
    shared sentences (without replacement when they suffice).  Raises ValueError when the
    list is too short for the private parts."""
    rng = random.Random(seed)
    order = sorted(speakers, key=lambda s: s.id)
    private = {s.id for s in order[len(order) - min(max(private_speakers, 0), len(order)):]}
    n_bn = round(utts_per_speaker * bn_fraction)
    counts = {"en": utts_per_speaker - n_bn, "bn": n_bn}
    pools: dict[str, dict[str, list[str]]] = {}
    for lang, n in counts.items():
        pool = list(sentences[lang])
        if n and not pool:
            raise ValueError(f"no {lang} sentences to synthesize")
        rng.shuffle(pool)
        need = n * len(private)
        if n and need >= len(pool):
            raise ValueError(f"{len(pool)} {lang} sentences cannot give {len(private)} private speakers "
                             f"{n} sentences each and leave any for the others")
        parts = {sid: pool[k * n: (k + 1) * n] for k, sid in enumerate(sorted(private))}
        shared = pool[need:]
        pools[lang] = {s.id: parts.get(s.id, shared) for s in speakers}
    plan = []
    for spk in speakers:
        for lang in ("en", "bn"):
            n, pool = counts[lang], pools[lang][spk.id]
            texts = rng.sample(pool, n) if n <= len(pool) else rng.choices(pool, k=n)
            plan += [(spk, lang, f"{spk.id}-{lang}-{j:04d}", text) for j, text in enumerate(texts)]
    return plan


def _synth_one(job: tuple[str, str, str, str, int, int, int, str]) -> dict:
    from speechae.data.espeak import Espeak

    utt_id, voice, _language, text, rate, pitch, sample_rate, out_path = job
    engine = Espeak.get()
    syn = engine.synthesize(text, voice=voice, rate=rate, pitch=pitch)
    if syn.audio.size == 0:
        raise RuntimeError(f"espeak-ng produced no audio for {utt_id} ({voice}): {text!r}")
    audio = syn.audio.astype(np.float32) / 32768.0
    g = math.gcd(sample_rate, syn.sample_rate)
    audio = resample_poly(audio, sample_rate // g, syn.sample_rate // g).astype(np.float32)
    audio = np.clip(audio, -1.0, 1.0)
    with atomic_path(out_path) as tmp:
        sf.write(tmp, audio, sample_rate, subtype="PCM_16", format="WAV")
    duration = len(audio) / sample_rate
    phones = [(p, round(s / syn.sample_rate, 4), round(min(e / syn.sample_rate, duration), 4)) for p, s, e in syn.phones]
    return {"duration": duration, "phones": phones}


def synthesize_corpus(
    out_dir: str | Path,
    num_speakers: int = 12,
    utts_per_speaker: int = 34,
    bn_fraction: float = 0.5,
    sample_rate: int = 16000,
    num_jobs: int = 2,
    seed: int = 0,
    sentences_en: list[str] | None = None,
    sentences_bn: list[str] | None = None,
    private_speakers: int = 4,
) -> Path:
    """Synthesize the corpus into ``out_dir`` (built in a temporary directory, then moved).

    The default (12 speakers x 34 utterances) gives about 20 minutes of 16 kHz audio.
    ``private_speakers``: see :func:`plan_utterances` (at least the number of speakers stage 1
    holds out).  Returns ``out_dir``.  An existing complete corpus is replaced only when this
    succeeds.
    """
    out_dir = Path(out_dir)
    sentences = {
        "en": sentences_en if sentences_en is not None else default_sentences("en"),
        "bn": sentences_bn if sentences_bn is not None else default_sentences("bn"),
    }
    speakers = make_speakers(num_speakers, seed)
    plan = plan_utterances(speakers, sentences, utts_per_speaker, bn_fraction, seed, private_speakers)
    with atomic_path(out_dir, is_dir=True) as tmp:
        jobs = []
        for spk, lang, utt_id, text in plan:
            voice = spk.en_voice if lang == "en" else spk.bn_voice
            path = tmp / "wav" / spk.id / f"{utt_id}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            jobs.append((utt_id, voice, lang, text, spk.rate, spk.pitch, sample_rate, str(path)))
        with ProcessPoolExecutor(max(1, num_jobs)) as ex:
            results = list(tqdm(ex.map(_synth_one, jobs, chunksize=8), total=len(jobs), desc="espeak-ng", unit="utt"))
        with open(tmp / "utterances.jsonl", "w", encoding="utf-8") as f:
            for (spk, lang, utt_id, text), res in zip(plan, results):
                utt = Utterance(
                    id=utt_id, speaker=spk.id, language=lang, text=text,
                    audio=f"wav/{spk.id}/{utt_id}.wav", duration=round(res["duration"], 5),
                    sample_rate=sample_rate, phones=res["phones"],
                )
                f.write(json.dumps(asdict(utt), ensure_ascii=False) + "\n")
        (tmp / "speakers.json").write_text(json.dumps([asdict(s) for s in speakers], indent=2), encoding="utf-8")
    return out_dir


def read_utterances(corpus_dir: str | Path, checker: "Checker | None" = None) -> list[Utterance]:
    """Parse ``utterances.jsonl``.  A line that is not UTF-8 or not a valid record raises
    BadInputError naming file and line, or is skipped when ``checker`` says so."""
    from speechae.data.validate import BadInputError, Checker

    own = checker is None  # our own checker: report what it found before returning
    checker = checker or Checker("fail")
    path = Path(corpus_dir) / "utterances.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run stage 0 (speechae synth-corpus) first")

    def parse(raw: bytes, where: str) -> Utterance:
        try:
            d = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise BadInputError(f"{where}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise BadInputError(f"{where}: malformed JSON ({e.msg})") from None
        try:
            d["phones"] = [tuple(p) for p in d["phones"]]
            return Utterance(**d)
        except (TypeError, KeyError) as e:
            raise BadInputError(f"{where}: malformed utterance record ({e})") from None

    out = []
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            if raw.strip():
                utt = checker.ok(f"{path.name}:{i}", parse, raw, f"{path}:{i}")
                if utt is not None:
                    out.append(utt)
    if own:
        checker.raise_if_failed()
    return out
