#!/usr/bin/env bash
# Stage 0 of the Hindi recipe: a small synthetic Hindi corpus spoken by espeak-ng (voice "hi"),
# written as OUT_DIR/wav/<speaker>/<id>.wav and OUT_DIR/utterances.tsv (with a split column).
#
#   local/prepare.sh OUT_DIR NUM_SPEAKERS UTTS_PER_SPEAKER
#
# Pseudo-speakers are speechae's (voice variant x pitch x rate, speechae.data.synth.make_speakers).
# The last two speakers are dev and test and read sentences that no training speaker reads
# (local/sentences_hi.txt is split once, with a fixed seed), so a text probe cannot memorise.
# A stand-in until `speechae synth-corpus` takes a language list (it speaks English + Bengali).
set -euo pipefail
out_dir=${1:?usage: $0 OUT_DIR NUM_SPEAKERS UTTS_PER_SPEAKER}
num_speakers=${2:?number of speakers}
utts=${3:?utterances per speaker}
sentences=$(dirname "$0")/sentences_hi.txt
mkdir -p "$out_dir"
python - "$out_dir" "$num_speakers" "$utts" "$sentences" <<'EOF'
import random
import sys
from pathlib import Path

import soundfile as sf

from speechae.data.synth import make_speakers
from speechae.recipes.fixtures import speak

out, num_speakers, utts, sentence_file = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if num_speakers < 3:
    sys.exit("local/prepare.sh: need at least 3 speakers (train, dev, test)")
pool = [s.strip() for s in Path(sentence_file).read_text(encoding="utf-8").splitlines() if s.strip()]
random.Random(0).shuffle(pool)
if 2 * utts >= len(pool):
    sys.exit(f"local/prepare.sh: {len(pool)} sentences cannot give dev and test {utts} unseen sentences each")
held_out = {"dev": pool[:utts], "test": pool[utts:2 * utts]}
shared = pool[2 * utts:]
rng = random.Random(0)
speakers = make_speakers(num_speakers, seed=0)
rows = []
for i, spk in enumerate(speakers):
    split = "dev" if i == num_speakers - 2 else "test" if i == num_speakers - 1 else "train"
    texts = held_out[split] if split != "train" else rng.sample(shared, min(utts, len(shared)))
    voice = "hi+" + spk.bn_voice.split("+", 1)[1]
    for j, text in enumerate(texts):
        utt = f"{spk.id}-hi-{j:03d}"
        wav = out / "wav" / spk.id / f"{utt}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        sf.write(wav, speak(text, voice, spk, 16000), 16000, subtype="PCM_16")
        rows.append(f"{utt}\t{spk.id}\twav/{spk.id}/{utt}.wav\t{text}\t{split}\n")
(out / "utterances.tsv").write_text("".join(rows), encoding="utf-8")
print(f"local/prepare.sh: {len(rows)} Hindi utterances from {num_speakers} speakers in {out}")
EOF
