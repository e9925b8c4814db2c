"""Benchmarks whose figures go into the README and the issue notes.

    python -m asag.bench attention [--device cpu|cuda] [--dtype float32|float16|bfloat16] [--large]
    python -m asag.bench step      [--device cpu] [--model sd15|sdxl] [--latent N] [--layers "middle;u6-8"] [--steps N] [--negative-chunks 2]
    python -m asag.bench step --model flux|chroma|zimage|lumina|anima|qwen [--latent 128] [--heads N] [--layers "double 7-9, single 7-9;single 20-22"] [--cfg 1]
    python -m asag.bench joint     (what each reading of ASAG on joint text+image attention does to the attention)
    python -m asag.bench comfy     [--model sd15|sdxl|flux] [--latent N] [--steps N] [--layers "middle"]  (the ComfyUI node against PAG / SLG)

Every table compares implementations measured side by side in one run and prints ratios;
nothing here asserts a time. Peak memory is the CUDA allocator's peak on a GPU; on the CPU it is
the growth of the process's peak resident set over that one call (the CPU allocator keeps no
statistics of its own).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from .joint import joint_adversarial_attention
from .sinkhorn import adversarial_sinkhorn_attention

ATTENTION_SHAPES = ((16, 1024, 64), (8, 4096, 40))
# --large: SD1.5's first attention level at 1024x1024 (hires fix; one head's plan is 1 GiB), and
# SDXL's first attention level at 1024x1024. The textbook form would need three times the heads'
# n x n floats (24 GiB at 16,384 tokens), so these compare with SDPA only.
LARGE_ATTENTION_SHAPES = ((8, 16384, 40), (10, 4096, 64))
ATTENTION_ITERATIONS = 2


def textbook_sinkhorn_attention(q, k, v, *, iterations, strength=1.0, scale=None):
    """Sinkhorn the way the one public ASAG port does it, with the marginals corrected: ``exp`` of
    the raw logits (no stabilisation: overflows past ~88) and whole ``n x n`` matrices (logits,
    kernel, plan) renormalised in turn. The baseline the operator is measured against; unused
    anywhere else."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    n_q, n_k = q.shape[-2], k.shape[-2]
    logits = -strength * scale * (q @ k.transpose(-1, -2))
    kernel = torch.exp(logits)
    plan = kernel / kernel.sum(-1, keepdim=True)
    for _ in range(iterations):
        plan = plan / plan.sum(-2, keepdim=True) * (n_q / n_k)
        plan = plan / plan.sum(-1, keepdim=True)
    return plan @ v


def sdpa(q, k, v, **_):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


ATTENTION_IMPLS = {
    "asag": adversarial_sinkhorn_attention,
    "textbook": textbook_sinkhorn_attention,
    "sdpa": sdpa,
}


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_call(fn, device, repeats, warm_up=True):
    """Median wall time of ``fn`` in seconds, after one warm-up call."""
    if warm_up:
        fn()
        synchronize(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _proc_status_bytes(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_extra_bytes(fn, device):
    """Peak memory that ``fn`` adds on top of what is allocated before it runs."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    # CPU (Linux, glibc): malloc_trim hands the pages of freed memory back to the system (else
    # earlier calls' freed memory, still resident, would hide this call's allocations); writing 5
    # to clear_refs resets the resident-set high-water mark, which then measures this call alone.
    ctypes.CDLL(None).malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    base = _proc_status_bytes("VmRSS")
    fn()
    return _proc_status_bytes("VmHWM") - base


# The operators' memory against the budget, at a model's real shapes: Flux's joint attention (24 heads
# of 128 over 512 text tokens and the image's: 4096 at 1024x1024, 16,384 at 2048x2048) and a UNet
# self-attention (16 heads, 4096 tokens of 64).
MEMORY_CASES = (
    *(dict(op="joint", heads=24, n_txt=512, n_img=4096, d=128, dtype=dtype, budget_mib=budget)
      for dtype in ("float32", "bfloat16") for budget in (16, 256)),
    *(dict(op="unet", heads=16, n_txt=0, n_img=4096, d=64, dtype=dtype, budget_mib=16) for dtype in ("float32", "bfloat16")),
)
LARGE_MEMORY_CASES = tuple(dict(op="joint", heads=24, n_txt=512, n_img=16384, d=128, dtype=dtype, budget_mib=budget)
                           for dtype in ("float32", "bfloat16") for budget in (16, 256))
# glibc gives each buffer of this size or more its own mapping, handed back to the system when
# freed: the resident set then follows what is allocated, not what earlier work left in the heap.
MEASURE_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024), "MALLOC_ARENA_MAX": "2"}
WARM_UP_HEADS = 4  # as many heads as a chunk of the operators takes at these budgets


def memory_case_call(case, device, heads=None):
    """The call of ``case``'s operator (``joint``, ``unet``: the Sinkhorn operator over the image
    tokens, ``sdpa``) on seeded ``q, k, v`` of ``(1, heads, n_txt + n_img, d)``; ``token_major``:
    views of ``(1, tokens, heads, d)`` memory (as Qwen-Image's attention holds them); q and k
    times ``amplitude``."""
    heads = case["heads"] if heads is None else heads
    n, d, budget = case["n_txt"] + case["n_img"], case["d"], case["budget_mib"] * 2**20
    gen = torch.Generator().manual_seed(0)
    shape = (1, n, heads, d) if case.get("token_major") else (1, heads, n, d)
    q, k, v = ((torch.randn(shape, generator=gen) * (case.get("amplitude", 1.0) if i < 2 else 1.0))
               .to(device=device, dtype=getattr(torch, case["dtype"])) for i in range(3))
    if case.get("token_major"):
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if case["op"] == "joint":
        return lambda: joint_adversarial_attention(q, k, v, slice(case["n_txt"], None), iterations=ATTENTION_ITERATIONS,
                                                   budget_bytes=budget)
    if case["op"] == "unet":
        return lambda: adversarial_sinkhorn_attention(q, k, v, iterations=ATTENTION_ITERATIONS, budget_bytes=budget)
    return lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)


def largest_allocation(fn, device, besides=0):
    """The largest single block the allocator handed out while ``fn`` ran, other than one block of
    ``besides`` bytes (its output), from the profiler's record of every allocation, those inside
    PyTorch's own kernels included."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities, profile_memory=True) as prof:
        fn()
        synchronize(device)
    usage = "self_device_memory_usage" if device == "cuda" else "self_cpu_memory_usage"
    sizes = [getattr(event, usage) for event in prof.events() if not event.cpu_children]
    if besides in sizes:
        sizes.remove(besides)
    return max(sizes, default=0)


def measure_memory_case(case, device, repeats=0):
    """``case`` measured in this process, after a warm-up on a few of its heads (code, thread
    pools, the BLAS's own buffers for products of the chunks' shapes: what the first call pays
    once): ``peak``, what one call holds at once besides its output (the CUDA allocator's
    peak; on the CPU the growth of the resident set's high-water mark, which counts the call's
    allocations only in a process started with ``MEASURE_ENV``), and ``output``. With ``repeats``,
    also the largest single allocation besides the output, and the median time of that many calls
    (the measured one the first) and of plain SDPA on the same q, k, v."""
    memory_case_call(case, device, heads=min(case["heads"], WARM_UP_HEADS))()
    synchronize(device)
    call = memory_case_call(case, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        ctypes.CDLL(None).malloc_trim(0)  # freed heap pages, which the call might reuse, are counted again
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets the high-water mark
        base = _proc_status_bytes("VmRSS")
    start = time.perf_counter()
    out = call()
    synchronize(device)
    seconds = [time.perf_counter() - start]
    peak = (torch.cuda.max_memory_allocated() if device == "cuda" else _proc_status_bytes("VmHWM")) - base
    output = out.numel() * out.element_size()
    result = dict(case, peak=peak - output, output=output)
    del out
    if repeats:
        seconds += [time_call(call, device, 1, warm_up=False) for _ in range(repeats - 1)]
        sdpa_call = memory_case_call(dict(case, op="sdpa"), device)
        result.update(largest=largest_allocation(call, device, besides=output), seconds=statistics.median(seconds),
                      sdpa_seconds=time_call(sdpa_call, device, repeats))
    return result


def measure_memory_cases(cases, device, repeats=0):
    """``measure_memory_case`` of each case in turn, on the CPU in one fresh interpreter started
    with ``MEASURE_ENV``."""
    if device == "cuda":
        return [measure_memory_case(case, device, repeats) for case in cases]
    child = subprocess.run([sys.executable, "-m", "asag.bench", "memory", "--device", "cpu", "--repeats", str(repeats),
                            "--cases", json.dumps(list(cases))], env={**os.environ, **MEASURE_ENV},
                           cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), capture_output=True, text=True)
    if child.returncode:
        raise RuntimeError(f"measuring {cases} failed:\n{child.stderr}")
    return json.loads(child.stdout.splitlines()[-1])


def bench_memory(device, repeats, large=False):
    cases = MEMORY_CASES + (LARGE_MEMORY_CASES if large else ())
    print(f"one call's memory against the budget, iterations={ATTENTION_ITERATIONS}, {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; peak: the {'CUDA allocator' if device == 'cuda' else 'resident set'}'s "
          f"less the output{'' if device == 'cuda' else ', each case in a fresh process'}; time: median of {repeats}")
    rows = []
    for case in cases:  # one process each
        (r,) = measure_memory_cases([case], device, repeats)
        budget = r["budget_mib"] * 2**20
        shape = f"{r['heads']}x{r['n_txt']}+{r['n_img']}x{r['d']}" if r["op"] == "joint" else f"{r['heads']}x{r['n_img']}x{r['d']}"
        rows.append([r["op"], shape, r["dtype"], r["budget_mib"], f"{r['output'] / 2**20:.1f}", f"{r['peak'] / 2**20:.1f}",
                     f"{r['peak'] / budget:.2f}", f"{r['largest'] / 2**20:.1f}", f"{r['seconds'] * 1e3:.0f}",
                     f"{r['sdpa_seconds'] * 1e3:.0f}", f"{r['seconds'] / r['sdpa_seconds']:.1f}"])
    print(format_table(["operator", "shape (H,N,D)", "dtype", "budget MiB", "output MiB", "peak MiB", "peak/budget",
                        "largest other MiB", "ms", "sdpa ms", "time/sdpa"], rows))


def format_table(header, rows):
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(c).rjust(w) for c, w in zip(r, widths)) for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def bench_attention(device, dtype_name, repeats, large=False):
    dtype = getattr(torch, dtype_name)
    shapes = LARGE_ATTENTION_SHAPES if large else ATTENTION_SHAPES
    impls = [name for name in ATTENTION_IMPLS if not (large and name == "textbook")]
    print(f"adversarial Sinkhorn attention, iterations={ATTENTION_ITERATIONS}, {dtype_name}, {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {repeats}")
    rows = []
    for shape in shapes:
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(shape, generator=gen).to(device=device, dtype=dtype) for _ in range(3))
        calls = {name: lambda impl=ATTENTION_IMPLS[name]: impl(q, k, v, iterations=ATTENTION_ITERATIONS) for name in impls}
        times = {name: time_call(fn, device, repeats) for name, fn in calls.items()}
        peaks = {name: peak_extra_bytes(fn, device) for name, fn in calls.items()}
        ratios = [f"{times['asag'] / times[other]:.2f}" for other in impls[1:]]
        if not large:
            ratios.append(f"{peaks['asag'] / peaks['textbook']:.2f}")
        rows.append(["x".join(map(str, shape)), *(f"{times[n] * 1e3:.1f}" for n in impls), *(f"{peaks[n] / 2**20:.0f}" for n in impls), *ratios])
    header = ["shape (BH,N,D)", *(f"{n} ms" for n in impls), *(f"{n} MiB" for n in impls), *(f"time asag/{n}" for n in impls[1:])]
    if not large:
        header.append("peak asag/textbook")
    print(format_table(header, rows))


# A Flux-like joint sequence, small: text first, then the image; heads folded.
JOINT_SHAPE = dict(heads=4, n_txt=32, n_img=256, d=64)


def _image_block_alone(q, k, v, image, iterations):
    """The reading that perturbs the image block alone: image queries see the image keys only."""
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    out[:, image] = adversarial_sinkhorn_attention(q[:, image], k[:, image], v[:, image], iterations=iterations)
    return out


JOINT_READINGS = {
    "image queries over image keys (chosen)": lambda q, k, v, image, iterations: joint_adversarial_attention(q, k, v, image, iterations=iterations),
    "whole joint sequence": lambda q, k, v, image, iterations: adversarial_sinkhorn_attention(q, k, v, iterations=iterations),
    "image block only, text share dropped": _image_block_alone,
}


def joint_properties(weights, model, n_txt):
    """What a reading did to joint attention: ``weights`` and ``model`` are (groups, N, N) attention
    matrices (row = what one query gives each key; the text is the first ``n_txt`` tokens), the
    reading's and the model's own."""
    image_rows, model_image_rows = weights[:, n_txt:], model[:, n_txt:]
    block = image_rows[:, :, n_txt:]
    plan = block / block.sum(-1, keepdim=True).clamp_min(1e-30)  # the image share, renormalised
    entropy = -(plan.clamp_min(1e-30).log() * plan).sum(-1) / torch.log(torch.tensor(float(plan.shape[-1])))
    return {
        "text rows changed (max)": (weights[:, :n_txt] - model[:, :n_txt]).abs().max().item(),
        "image rows' text share changed (max)": (image_rows[:, :, :n_txt].sum(-1) - model_image_rows[:, :, :n_txt].sum(-1)).abs().max().item(),
        "image rows sum - 1 (max)": (image_rows.sum(-1) - 1).abs().max().item(),
        "image plan column error (max)": (plan.sum(-2) - 1).abs().max().item(),
        "image plan row entropy / uniform": entropy.mean().item(),
    }


def bench_joint(iterations=ATTENTION_ITERATIONS):
    heads, n_txt, n_img, d = JOINT_SHAPE["heads"], JOINT_SHAPE["n_txt"], JOINT_SHAPE["n_img"], JOINT_SHAPE["d"]
    n = n_txt + n_img
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(heads, n, d, generator=gen) * 1.5 for _ in range(2))
    one_hot = torch.eye(n).expand(heads, n, n)  # values that make each output row the attention row itself
    model = torch.softmax(q @ k.transpose(1, 2) * d ** -0.5, dim=-1)
    rows = []
    for name, reading in JOINT_READINGS.items():
        props = joint_properties(reading(q, k, one_hot, slice(n_txt, None), iterations), model, n_txt)
        rows.append([name, *(f"{value:.3g}" for value in props.values())])
    print(f"ASAG on joint attention: {heads} heads, {n_txt} text + {n_img} image tokens, d {d}, q and k ~ N(0, 1.5^2), "
          f"iterations {iterations}; the model gives the text {model[:, n_txt:, :n_txt].sum(-1).mean().item():.3f} "
          f"of an image query's attention on average")
    print(format_table(["reading", *props], rows))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m asag.bench", description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["attention", "step", "joint", "memory", "comfy"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--repeats", type=int, help="timed runs (default 5; memory: 1)")
    parser.add_argument("--latent", type=int, default=64, help="step: latent side (64 = 512x512)")
    parser.add_argument("--large", action="store_true", help="attention: the high-resolution shapes, against SDPA; "
                                                             "memory: also Flux at 2048x2048 (minutes on a CPU)")
    parser.add_argument("--cases", help=argparse.SUPPRESS)  # memory: measure these in this process, print them as JSON
    parser.add_argument("--model", default="sd15", choices=["sd15", "sdxl", "flux", "chroma", "zimage", "lumina", "anima", "qwen"], help="step: the model's shape")
    parser.add_argument("--layers", help="step: comma-separated ASAG layer (or transformer block) lists, separated by ';' "
                                         "(default: middle and an output-side list; transformers: the default blocks and single 20-22)")
    parser.add_argument("--heads", type=int, default=2, help="step, transformers: heads of 128 (Flux and Qwen-Image have 24, Z-Image 30, Anima 16)")
    parser.add_argument("--cfg", type=float, default=1.0, help="step, transformers: the CFG scale (1: distilled Flux dev)")
    parser.add_argument("--steps", type=int, default=3, help="step: sampling steps per run")
    parser.add_argument("--negative-chunks", type=int, default=1,
                        help="step: also rows with a negative prompt of this many 77-token chunks (pad_cond_uncond on)")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.what == "memory" else 5
    if args.what == "attention":
        bench_attention(args.device, args.dtype, args.repeats, args.large)
    elif args.what == "joint":
        bench_joint()
    elif args.what == "memory" and args.cases:
        print(json.dumps([measure_memory_case(case, args.device, args.repeats) for case in json.loads(args.cases)]))
    elif args.what == "comfy":
        from .comfybench import bench_comfy
        bench_comfy(args.repeats, args.model, args.latent, args.steps, tuple(args.layers.split(";")) if args.layers else None, args.heads)
    elif args.what == "memory":
        bench_memory(args.device, args.repeats, args.large)
    elif args.model in ("flux", "chroma", "zimage", "lumina", "anima", "qwen"):
        from .ditbench import bench_dit_step
        layers = tuple(args.layers.split(";")) if args.layers else None
        bench_dit_step(args.repeats, args.model, args.latent, args.heads, layers, args.steps if args.steps != 3 else 1, args.cfg)
    else:
        from .stepbench import bench_step
        layers = tuple(args.layers.split(";")) if args.layers else None
        bench_step(args.device, args.repeats, args.latent, model=args.model, layers=layers, steps=args.steps, negative_chunks=args.negative_chunks)


if __name__ == "__main__":
    main()
