#!/usr/bin/env python3
"""Helpers of scripts/device-check.sh (standard library only).

  data DIR --docs N --words W        DIR/train.jsonl: N completion documents of W words (seeded)
  recipe DIR --device D --seq S ...  a LoRA (or --nf4: QLoRA) recipe on DIR/base and DIR/train.jsonl, on stdout
  sample-gpu FILE -- CMD...          runs CMD while sampling nvidia-smi's memory.used of GPU 0 every 100 ms;
                                     FILE gets {"baseline_mib", "peak_mib"}; exits with CMD's code
  report OUT --work DIR --warmup W   OUT/device-check.json from the logs and metrics, and a table on stdout
"""
import argparse
import json
import os
import random
import subprocess
import sys
import threading

WORDS = ("the river stone cloud green seven paper light model token layer weight adapter rank matrix "
         "memory device kernel packing window attention gradient optimizer step batch sequence loss value "
         "train quick brown fox jumps over lazy dog north south east west morning evening number letter").split()


def cmd_data(a):
    rng = random.Random(1234)
    os.makedirs(a.dir, exist_ok=True)
    with open(os.path.join(a.dir, "train.jsonl"), "w") as f:
        for _ in range(a.docs):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(a.words))}) + "\n")


def cmd_recipe(a):
    name = a.name or ("qlora" if a.nf4 else "lora")
    quantize = '\n[quantize]\nplugin = "nf4"\n' if a.nf4 else ""
    print(f"""# written by scripts/device_check_data.py for scripts/device-check.sh
[model]
plugin = "mistral"
path = "{a.dir}/base"
{quantize}
[adapter]
plugin = "lora"
r = 8
alpha = 16.0

[[datasets]]
path = "{a.dir}/train.jsonl"
type = "completion"

[data]
dataset_prepared_path = "{a.dir}/prepared"

[training]
device = "{a.device}"
bf16 = {"false" if a.fp32 else "true"}
sequence_len = {a.seq}
micro_batch_size = {a.batch}
max_steps = {a.steps}
logging_steps = {a.log_every}
tensorboard = false
output_dir = "{a.dir}/out-{name}"

[schedule]
warmup_steps = 1

[validate]
parity_rows = 0
""")


def cmd_sample_gpu(a):
    command = a.command[1:] if a.command and a.command[0] == "--" else a.command
    samples = []
    try:
        smi = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0",
                                "-lms", "100"], stdout=subprocess.PIPE, text=True)
    except OSError:
        smi = None

    def read():
        for line in smi.stdout:
            try:
                samples.append(float(line.strip()))
            except ValueError:
                pass

    reader = threading.Thread(target=read, daemon=True) if smi else None
    if reader:
        reader.start()
    code = subprocess.call(command)
    if smi:
        smi.terminate()
        reader.join(timeout=2)
    with open(a.file, "w") as f:
        json.dump({"baseline_mib": samples[0] if samples else None, "peak_mib": max(samples) if samples else None,
                   "samples": len(samples)}, f)
    return code


def mftk_figures(run_dir, warmup):
    """tokens/s over the metrics windows after the first (the warm-up), and the final loss."""
    tokens = seconds = 0.0
    loss = None
    try:
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            for line in f:
                j = json.loads(line)
                if "tokens_per_s" not in j:
                    continue
                loss = j.get("loss")
                if j["step"] > warmup and j["tokens_per_s"] > 0:
                    tokens += j["tokens"]
                    seconds += j["tokens"] / j["tokens_per_s"]
    except OSError:
        return None, None
    return (tokens / seconds if seconds else None), loss


def read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def tail_line(path, needle):
    try:
        with open(path) as f:
            lines = [l.strip() for l in f if needle in l]
        return lines[-1] if lines else None
    except OSError:
        return None


def tiny_agreement(tiny):
    """The tiny fp32 run's final loss on the GPU and on the CPU: the same training within float rounding."""
    losses = {}
    for side in ("cpu", "cuda"):
        s = read_json(os.path.join(tiny, f"out-{side}", "summary.json"), {})
        losses[side] = s.get("final_loss")
    if None in losses.values():
        return {"final_loss": losses, "relative_difference": None}
    diff = abs(losses["cuda"] - losses["cpu"]) / max(abs(losses["cpu"]), 1e-12)
    return {"final_loss": losses, "relative_difference": diff, "agree_1e-4": diff < 1e-4}


def cmd_report(a):
    out = a.out
    rows = []
    for case in ("lora", "qlora"):
        mem = read_json(os.path.join(out, f"mftk-{case}.mem"), {})
        tps, loss = mftk_figures(os.path.join(a.work, "bench", f"out-{case}"), a.warmup)
        rows.append({"case": case, "side": "mftk", "tokens_per_s": tps, "final_loss": loss,
                     "peak_gpu_mib": (mem.get("peak_mib") or 0) - (mem.get("baseline_mib") or 0) if mem else None,
                     "log": f"mftk-{case}.log"})
        mem = read_json(os.path.join(out, f"peer-{case}.mem"), {})
        try:
            with open(os.path.join(out, f"peer-{case}.jsonl")) as f:
                peers = [json.loads(l) for l in f if l.strip().startswith("{")]
        except OSError:
            peers = [{"case": case, "side": "transformers+peft", "skipped": "no output (see peer log)"}]
        for p in peers:
            p["peak_gpu_mib"] = (mem.get("peak_mib") or 0) - (mem.get("baseline_mib") or 0) if mem else None
            rows.append(p)
    config = read_json(os.path.join(a.work, "bench", "base", "config.json"), {})
    result = {
        "shape": {"config": {k: config.get(k) for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                                        "num_key_value_heads", "num_hidden_layers", "vocab_size",
                                                        "sliding_window")},
                  "seq": a.seq, "batch": a.batch,
                  "dtype": "bf16 base, fp32 LoRA r=8 alpha=16 on the 7 projections"},
        "gpu": open(os.path.join(out, "gpu.txt")).read().strip() if os.path.exists(os.path.join(out, "gpu.txt")) else None,
        "torch": open(os.path.join(out, "torch.txt")).read().strip() if os.path.exists(os.path.join(out, "torch.txt")) else None,
        "tests": tail_line(os.path.join(out, "tests.log"), "tests ran") ,
        "tests_passed": tail_line(os.path.join(out, "tests.log"), "PASSED"),
        "tests_generic_passed": tail_line(os.path.join(out, "tests-generic.log"), "PASSED"),
        "tests_failed": tail_line(os.path.join(out, "tests.log"), "FAILED TEST"),
        "tiny_run_device": tail_line(os.path.join(out, "tiny-run.log"), ") on "),
        "tiny_run_done": tail_line(os.path.join(out, "tiny-run.log"), "done:"),
        "tiny_cpu_vs_cuda": tiny_agreement(os.path.join(a.work, "tiny")),
        "rows": rows,
    }
    with open(os.path.join(out, "device-check.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"GPU: {result['gpu']}   torch: {result['torch']}")
    print(f"tests: {result['tests_passed']} | generic kernels forced: {result['tests_generic_passed']}")
    print(f"tiny run: {result['tiny_run_device']}")
    print(f"tiny fp32 run, final loss cpu vs cuda: {result['tiny_cpu_vs_cuda']}")
    print(f"7B shape ({config.get('num_hidden_layers')} layers, vocab {config.get('vocab_size')}), seq {a.seq}, batch {a.batch}:")
    print(f"{'case':6} {'side':32} {'tokens/s':>10} {'peak GPU MiB':>13} {'final loss':>10}")
    for r in rows:
        if r.get("skipped"):
            print(f"{r['case']:6} {r['side']:32} skipped: {r['skipped']}")
            continue
        tps = f"{r['tokens_per_s']:.0f}" if r.get("tokens_per_s") else "n/a"
        mem = f"{r['peak_gpu_mib']:.0f}" if r.get("peak_gpu_mib") is not None else "n/a"
        loss = f"{r['final_loss']:.4f}" if isinstance(r.get("final_loss"), (int, float)) else "n/a"
        print(f"{r['case']:6} {r['side']:32} {tps:>10} {mem:>13} {loss:>10}")
    print(f"wrote {os.path.join(out, 'device-check.json')}")
    return 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("data")
    p.add_argument("dir")
    p.add_argument("--docs", type=int, required=True)
    p.add_argument("--words", type=int, required=True)
    p = sub.add_parser("recipe")
    p.add_argument("dir")
    p.add_argument("--device", default="cuda")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--log-every", type=int, default=2)
    p.add_argument("--nf4", action="store_true")
    p.add_argument("--fp32", action="store_true", help="fp32 weights and compute (default: bf16)")
    p.add_argument("--name", default="", help="output_dir is DIR/out-NAME (default: lora or qlora)")
    p = sub.add_parser("sample-gpu")
    p.add_argument("file")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p = sub.add_parser("report")
    p.add_argument("out")
    p.add_argument("--work", required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=1)
    a = ap.parse_args()
    return {"data": cmd_data, "recipe": cmd_recipe, "sample-gpu": cmd_sample_gpu, "report": cmd_report}[a.what](a) or 0


if __name__ == "__main__":
    sys.exit(main())
