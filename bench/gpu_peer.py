#!/usr/bin/env python3
"""The Python side of scripts/device-check.sh's GPU benchmark.

Trains the same checkpoint folder mftk trains (a 7B-shape Mistral that
`mftk init` wrote) with transformers + PEFT (LoRA) and, when bitsandbytes
imports, with a 4-bit NF4 base (QLoRA), on rows of the same length and batch
size, every token supervised, and prints one JSON object per case on stdout:
  {"case": "lora"|"qlora", "side": "transformers+peft", "tokens_per_s": ...,
   "peak_allocated_bytes": ..., "steps": ..., "skipped": "why" (only when skipped)}
tokens/s is measured over the timed steps only (after the warm-up steps), as
mftk's own figure is (its last metrics window).

usage: gpu_peer.py MODEL_DIR --seq N --batch B --steps S --warmup W --lr LR --r R --alpha A
"""
import argparse
import json
import sys
import time


def emit(record):
    print(json.dumps(record), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--cases", default="lora,qlora")
    a = ap.parse_args()

    side = "transformers+peft"
    try:
        import torch
        import transformers
        import peft
    except Exception as e:  # noqa: BLE001 - any import failure means: no peer here
        for case in a.cases.split(","):
            emit({"case": case, "side": side, "skipped": f"not importable: {e}"})
        return 0
    if not torch.cuda.is_available():
        for case in a.cases.split(","):
            emit({"case": case, "side": side, "skipped": "torch.cuda.is_available() is False"})
        return 0

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    device = torch.device("cuda:0")
    for case in a.cases.split(","):
        kwargs = {"torch_dtype": torch.bfloat16}
        if case == "qlora":
            try:
                import bitsandbytes  # noqa: F401
            except Exception as e:  # noqa: BLE001
                emit({"case": case, "side": side + "+bitsandbytes", "skipped": f"bitsandbytes not importable: {e}"})
                continue
            kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                bnb_4bit_use_double_quant=False)
            kwargs["device_map"] = {"": 0}
        label = side + ("+bitsandbytes" if case == "qlora" else "")
        try:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            model = transformers.AutoModelForCausalLM.from_pretrained(a.model_dir, **kwargs)
            if case != "qlora":
                model.to(device)
            model.config.use_cache = False
            model = peft.get_peft_model(model, peft.LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=0.0,
                                                               target_modules=targets, task_type="CAUSAL_LM"))
            # LoRA weights in fp32 over the bf16 (or 4-bit) base, as mftk keeps them.
            for p in model.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=a.lr)
            vocab = model.config.vocab_size
            gen = torch.Generator(device="cpu").manual_seed(0)
            ids = torch.randint(0, vocab, (a.steps + a.warmup, a.batch, a.seq), generator=gen)
            model.train()
            t0 = None
            for i in range(a.warmup + a.steps):
                if i == a.warmup:
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                x = ids[i].to(device)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = model(input_ids=x, labels=x).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            emit({"case": case, "side": label, "steps": a.steps,
                  "tokens_per_s": a.steps * a.batch * a.seq / seconds,
                  "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
                  "final_loss": float(loss.item()),
                  "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                               "peft": peft.__version__}})
            del model, opt
        except Exception as e:  # noqa: BLE001 - report and go on to the next case
            emit({"case": case, "side": label, "skipped": f"failed: {type(e).__name__}: {e}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
