#!/usr/bin/env python3
"""Writes data/quickstart/{train,eval}.jsonl: the quickstart's synthetic
instruction set. Deterministic (fixed seed); run it again and the files are
byte-identical. Four small tasks a tiny model can learn on a CPU in minutes,
each generalising to the held-out prompts rather than memorising them:
  unit conversion  "Convert 7 km to m."          -> "7000 m"
  lookups          "What is the capital of Peru?" -> "Lima"   (held-out phrasings)
  word repetition  "Say pear twice."              -> "pear pear"  (held-out phrasings)
  next number      "What number comes after 41?" -> "42"
"""
import json
import random

rng = random.Random(20261127)
units = [("km", "m", 1000), ("m", "cm", 100), ("kg", "g", 1000)]
capitals = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
            ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Kenya", "Nairobi"),
            ("Peru", "Lima"), ("Norway", "Oslo"), ("Chile", "Santiago"), ("Greece", "Athens")]
capital_templates = ["What is the capital of {}?", "Name the capital of {}.", "Which city is the capital of {}?",
                     "Tell me the capital of {}."]
words = ("apple banana cherry river mountain forest city garden window table chair paper stone water fire "
         "light shadow morning evening north south east west red green blue yellow black white small large "
         "quick slow happy calm bright dark").split()


# Each task holds some values out of training entirely; the eval rows use
# only those, so a correct answer means the model learned the rule.
def unit_example(held_out):
    while True:
        a, b, k = rng.choice(units)
        n = rng.randrange(1, 100)
        if (n % 7 == 3) == held_out:
            return f"Convert {n} {a} to {b}.", f"{n * k} {b}"


# A word never produced in training could not be produced at all (its
# lm_head row only ever gets pushed down), so what is held out is a
# phrasing of the request for a word, as with the capitals: every word is
# trained under some phrasings and tested under another.
repeat_templates = ["Say {} twice.", "Repeat {} two times.", "Write {} twice.", "Echo {} two times."]
repeat_pairs = [(t, w) for t in range(len(repeat_templates)) for w in range(len(words))]
rng.shuffle(repeat_pairs)
held_out_repeats = set(repeat_pairs[:24])


def repeat_example(held_out):
    while True:
        t, w = rng.choice(repeat_pairs)
        if ((t, w) in held_out_repeats) == held_out:
            return repeat_templates[t].format(words[w]), f"{words[w]} {words[w]}"


def next_example(held_out):
    while True:
        n = rng.randrange(0, 98)
        if n % 10 == 9:
            continue  # no carries: a tiny model learns "last digit + 1" in minutes
        if (n % 6 == 4) == held_out:
            return f"What number comes after {n}?", f"{n + 1}"


capital_pairs = [(t, c) for t in range(len(capital_templates)) for c in range(len(capitals))]
rng.shuffle(capital_pairs)
held_out_capitals = set(capital_pairs[:16])  # these template/country pairs never appear in training


def capital_example(held_out):
    while True:
        t, c = rng.choice(capital_pairs)
        if ((t, c) in held_out_capitals) == held_out:
            return capital_templates[t].format(capitals[c][0]), capitals[c][1]


def rows(n, held_out):
    out, seen = [], set()
    makers = [unit_example, repeat_example, next_example, capital_example]
    while len(out) < n:
        q, a = makers[len(out) % len(makers)](held_out)
        if held_out and q in seen:
            continue
        seen.add(q)
        out.append({"instruction": q, "output": a})
    return out


train = rows(1200, held_out=False)
evaluation = rows(48, held_out=True)
assert not {r["instruction"] for r in train} & {r["instruction"] for r in evaluation}
for name, data in (("train", train), ("eval", evaluation)):
    with open(f"data/quickstart/{name}.jsonl", "w") as f:
        for r in data:
            f.write(json.dumps(r) + "\n")
print(len(train), "train,", len(evaluation), "eval rows")
