#!/usr/bin/env python3
"""Writes data/tool_use/: a small function-calling task for Mistral v0.3's chat
format (configs/tool_use.toml). Deterministic (fixed seed); run it again and
the files are byte-identical.

Every eval row (and every other training row) offers the same two tools,
and the assistant answers with exactly one call:
  calculator  "What is 17 times 23?"          -> {"op": "multiply", "a": 17, "b": 23}
  lookup      "Which currency does Peru use?" -> {"country": "Peru", "fact": "currency"}
The eval rows are held out: number pairs and (phrasing, country) pairs that
never appear in training, so a correct call means the model learned to read
the question, not to recall a row.

The final call has no "id": mistral-common lets the last message's calls go
without one (the JSON then has no "id" key), and a random id is nothing a
model could learn. Conversations that continue after a call need ids.

Files:
  train.jsonl, eval.jsonl  chat rows {"messages": [...], "tools": [...]} (OpenAI/TRL shape)
  tools.json               the tool list, for `mftk generate --chat --tools`
  corpus.txt               text for the task's tokenizer (`mftk init --corpus`): mftk's
                           corpus plus the task's questions and JSON, so that JSON
                           syntax gets pieces of its own instead of single bytes
"""
import json
import os
import random

rng = random.Random(20261203)
OUT = "data/tool_use"

TOOLS = [
    {"type": "function", "function": {
        "name": "calculator",
        "description": "Apply an arithmetic operation to two numbers",
        "parameters": {"type": "object",
                       "properties": {"op": {"type": "string", "enum": ["add", "subtract", "multiply"]},
                                      "a": {"type": "number"}, "b": {"type": "number"}},
                       "required": ["op", "a", "b"]}}},
    {"type": "function", "function": {
        "name": "lookup",
        "description": "Look up a fact about a country",
        "parameters": {"type": "object",
                       "properties": {"country": {"type": "string"},
                                      "fact": {"type": "string", "enum": ["capital", "population", "currency"]}},
                       "required": ["country", "fact"]}}},
]

calc_templates = {
    "add": ["What is {a} plus {b}?", "Add {a} and {b}.", "Compute {a} + {b}.", "What do {a} and {b} add up to?"],
    "subtract": ["What is {a} minus {b}?", "From {a} subtract {b}.", "Compute {a} - {b}.",
                 "What is {a} take away {b}?"],
    "multiply": ["What is {a} times {b}?", "Multiply {a} by {b}.", "Compute {a} * {b}.",
                 "What is the product of {a} and {b}?"],
}
countries = ["France", "Germany", "Italy", "Spain", "Japan", "Egypt", "Canada", "Kenya", "Peru", "Norway",
             "Chile", "Greece"]
fact_templates = {
    "capital": ["What is the capital of {c}?", "Name the capital of {c}.", "Which city is the capital of {c}?"],
    "population": ["How many people live in {c}?", "What is the population of {c}?",
                   "Look up the population of {c}."],
    "currency": ["Which currency does {c} use?", "What money is used in {c}?", "Look up the currency of {c}."],
}


# Held out: number pairs by a rule on the pair (every number is still seen
# in training, in both places), and some (phrasing, country) pairs.
def held_out_pair(a, b):
    return (3 * a + b) % 13 == 5


lookup_pairs = [(fact, t, c) for fact in fact_templates for t in range(3) for c in range(len(countries))]
rng.shuffle(lookup_pairs)
held_out_lookups = set(lookup_pairs[:24])


def calculator_row(held_out):
    while True:
        op = rng.choice(list(calc_templates))
        a, b = rng.randrange(2, 100), rng.randrange(2, 100)
        if held_out_pair(a, b) == held_out:
            q = rng.choice(calc_templates[op]).format(a=a, b=b)
            return q, "calculator", {"op": op, "a": a, "b": b}


def lookup_row(held_out):
    while True:
        fact, t, c = rng.choice(lookup_pairs)
        if ((fact, t, c) in held_out_lookups) == held_out:
            q = fact_templates[fact][t].format(c=countries[c])
            return q, "lookup", {"country": countries[c], "fact": fact}


def chat_row(question, name, arguments, arguments_as_string, with_tools=True):
    # OpenAI's shape: arguments are usually a JSON string; mftk takes an
    # object too and encodes both the same way.
    args = json.dumps(arguments) if arguments_as_string else arguments
    call = {"type": "function", "function": {"name": name, "arguments": args}}
    row = {"messages": [{"role": "user", "content": question},
                        {"role": "assistant", "tool_calls": [call]}]}
    if with_tools:
        row["tools"] = TOOLS
    return row


# Half of the training rows leave the tool list out. A random tiny model
# starts with attention spread evenly over its context, so behind 170 tokens
# of tool list the few tokens of the question barely reach the gradient;
# on short rows it learns to copy the numbers in a fraction of the time, and
# the copying carries over to rows with the list (rotary positions: the
# question sits at the same distance from the call either way). Every eval
# row has the list.
def rows(n, held_out):
    out, seen = [], set()
    # Two calculator rows for each lookup: copying two numbers into the
    # right places is the harder thing to learn.
    makers = [calculator_row, calculator_row, lookup_row]
    while len(out) < n:
        q, name, arguments = makers[len(out) % 3](held_out)
        if held_out and q in seen:
            continue
        seen.add(q)
        out.append(chat_row(q, name, arguments, arguments_as_string=len(out) % 4 < 2,
                            with_tools=held_out or len(out) % 2 == 0))
    return out


train = rows(1200, held_out=False)
evaluation = rows(48, held_out=True)
questions = lambda data: {r["messages"][0]["content"] for r in data}
assert not questions(train) & questions(evaluation)

os.makedirs(OUT, exist_ok=True)
for name, data in (("train", train), ("eval", evaluation)):
    with open(f"{OUT}/{name}.jsonl", "w") as f:
        for r in data:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
with open(f"{OUT}/tools.json", "w") as f:
    f.write(json.dumps(TOOLS, indent=2) + "\n")

# The tokenizer's text: mftk's own corpus, then lines as the model will see
# them (json.dumps with Python's separators, as the v3 format writes them).
with open("data/tokenizer/corpus.txt") as f:
    corpus = f.read().rstrip("\n").split("\n")
corpus.append(json.dumps(TOOLS, ensure_ascii=False))
for r in train[:400]:
    call = r["messages"][1]["tool_calls"][0]["function"]
    arguments = call["arguments"] if isinstance(call["arguments"], dict) else json.loads(call["arguments"])
    corpus.append(r["messages"][0]["content"])
    corpus.append(json.dumps([{"name": call["name"], "arguments": arguments}], ensure_ascii=False))
with open(f"{OUT}/corpus.txt", "w") as f:
    f.write("\n".join(corpus) + "\n")
print(len(train), "train,", len(evaluation), "eval rows;", len(corpus), "corpus lines")
