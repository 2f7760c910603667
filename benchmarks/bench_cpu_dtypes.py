"""Half precision on this CPU: a 1024×1024 matrix product and a 3×3 convolution in fp32, bf16 and fp16, side by
side (one thread by default), and augment's own 256×256 estimate (`augment.devices.cpu_slowdown`, what `--dtype bf16`'s
note and the test suite's full-size bf16 cases go by).

    python benchmarks/bench_cpu_dtypes.py
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/bench_cpu_dtypes.py   # as an AVX2-only CPU

Prints one JSON object: per dtype, products per second and the ratio of its time to fp32's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import _root  # noqa: F401,I001  (the repository root on sys.path: benchmarks/_root.py)
import torch

from augment.devices import cpu_slowdown

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def rate(fn, seconds: float) -> float:
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 2:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=2.0, help="time per measurement (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = p.parse_args()
    if not args.seconds > 0 or args.threads < 1:
        print("bench_cpu_dtypes.py: --seconds must be > 0 and --threads >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    result = {"capability": torch.backends.cpu.get_cpu_capability(), "threads": args.threads}
    base = {}
    for name, dt in DTYPES.items():
        a, b = (torch.randn(1024, 1024, generator=g).to(dt) for _ in range(2))
        conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(dt)
        x = torch.randn(1, 64, 32, 32, generator=g).to(dt)
        with torch.no_grad():
            mm, cv = rate(lambda a=a, b=b: a @ b, args.seconds), rate(lambda c=conv, x=x: c(x), args.seconds)
        base.setdefault("mm", mm)
        base.setdefault("conv", cv)
        result[name] = {"matmul_1024_per_s": round(mm, 2), "conv3x3_64ch_32px_per_s": round(cv, 1),
                        "matmul_time_vs_fp32": round(base["mm"] / mm, 2),
                        "conv_time_vs_fp32": round(base["conv"] / cv, 2)}  # fmt: skip
    result["cpu_slowdown_bf16"] = round(cpu_slowdown(torch.bfloat16), 2)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
