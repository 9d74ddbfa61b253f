#!/usr/bin/env python3
"""Writes data/preference/{train,eval}.jsonl: the bundled preference task for
dpo and orpo (configs/preference.toml). Deterministic (fixed seed); run it
again and the files are byte-identical.

Each prompt asks for a word of one category; the chosen reply is a word of
that category, the rejected reply a word of another category. Every word is
chosen under its own category's prompts and rejected under the others', so
no word is better than another on its own: a model can only rank a pair
right by reading the prompt. The held-out pairs are (phrasing, chosen,
rejected) combinations never trained on, and use one phrasing per category
that no training row uses. TRL's two row forms are mixed: plain strings, and
lists of messages (some with a system prompt).
"""
import json
import random

rng = random.Random(20261203)
categories = {
    "colour": "red green blue yellow black white".split(),
    "animal": "horse cat dog bird fish mouse".split(),
    "fruit": "apple banana cherry lemon melon grape".split(),
}
phrasings = {  # the last one of each list is held out for eval
    "colour": ["Name a colour.", "Give me a colour.", "Say a colour.", "Which colour do you like?"],
    "animal": ["Name an animal.", "Give me an animal.", "Say an animal.", "Which animal do you like?"],
    "fruit": ["Name a fruit.", "Give me a fruit.", "Say a fruit.", "Which fruit do you like?"],
}


def row(prompt, chosen, rejected):
    form = rng.randrange(3)
    if form == 0:
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    messages = [{"role": "user", "content": prompt}]
    if form == 2:
        messages.insert(0, {"role": "system", "content": "Answer with one word."})
    return {"prompt": messages, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def pairs(held_out_phrasing):
    out = []
    for cat, words in categories.items():
        prompts = phrasings[cat][-1:] if held_out_phrasing else phrasings[cat][:-1]
        others = [w for c, ws in categories.items() if c != cat for w in ws]
        for prompt in prompts:
            for chosen in words:
                for rejected in others:
                    out.append((prompt, chosen, rejected))
    return out


train = pairs(False)
rng.shuffle(train)
train = train[:480]
evaluation = pairs(True)
rng.shuffle(evaluation)
evaluation = evaluation[:64]
for name, rows in (("train", train), ("eval", evaluation)):
    with open(f"data/preference/{name}.jsonl", "w", encoding="utf-8") as f:
        for p, c, r in rows:
            f.write(json.dumps(row(p, c, r), ensure_ascii=False) + "\n")
print(f"wrote data/preference/train.jsonl ({len(train)} pairs) and data/preference/eval.jsonl ({len(evaluation)} pairs)")
