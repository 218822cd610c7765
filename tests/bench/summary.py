#!/usr/bin/env python3
"""The figures that issue 21 sets targets for, read from a folder that tests/bench/gpu.sh wrote: one line each,
with the target where the run had the real shapes and diffusers on the same card where it ran. The attention and
matmul lines take the run's largest shape (L = 8,704 and M = 8,704 · 3,072 → 12,288 at the `gpu` preset).

Usage: summary.py FOLDER
"""
import json
import pathlib
import sys


def read(folder, name):
    path = folder / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def attention(bench):
    rows = (bench or {}).get("attention") or []
    if not rows:
        return ["attention: not run"]
    r = max(rows, key=lambda r: r["L"])
    target = " (target ≥ 150)" if (r["L"], r["heads"], r["head_dim"]) == (8704, 24, 128) else ""
    coop = "-" if r.get("coop_tflops") is None else f"{r['coop_tflops']:.3g}"
    flash = "-" if r.get("flash_tflops") is None else f"{r['flash_tflops']:.3g}"
    return [
        f"attention L = {r['L']}, {r['heads']} × {r['head_dim']}: coop {coop} TFLOP/s{target}, flash {flash}, "
        f"model {r['model_ms']:.2f} ms ({r['model_kernel']}, {r['kernel_path']})"
    ]


def matmuls(bench):
    rows = [r for r in (bench or {}).get("matmul") or [] if r["ty"] in ("Q8_0", "Q4_0")]
    if not rows:
        return ["matmul: not run"]
    largest = max(r["m"] * r["k"] * r["n"] for r in rows)
    lines = []
    for r in rows:
        if r["m"] * r["k"] * r["n"] != largest:
            continue
        target = " (target ≥ 200)" if (r["m"], r["k"], r["n"]) == (8704, 3072, 12288) else ""
        coop = "-" if r.get("coop_gflops") is None else f"{r['coop_gflops'] / 1e3:.3g}"
        tiles = " ".join(
            f"{t['tile']}{'*' if t['tile'] == r.get('coop_tile') else ''}: {t['gflops'] / 1e3:.3g}"
            for t in r.get("coop_by_tile") or []
        )
        tiles = f" (tiles {tiles})" if tiles else ""
        lines.append(
            f"matmul {r['ty']} {r['m']}×{r['k']}→{r['n']}: coop {coop} TFLOP/s{target}{tiles}, "
            f"packed f32 {r['packed_gflops'] / 1e3:.3g}, burn f32 {r['f32_gflops'] / 1e3:.3g}"
        )
    return lines


def step(report, name, target, peers):
    rows = (report or {}).get("step") or []
    if not rows:
        return [f"{name}: not run"]
    sizes = report["sizes"]
    best = min(rows, key=lambda r: r["seconds"])
    peak = best.get("peak_device_bytes")
    peak = "-" if peak is None else f"{peak / 2**20:.0f} MiB"
    weights = best["weights"] + (" streamed" if best["streamed"] else "") + (" f16" if best["precision"] == "f16" else "")
    real = sizes["preset"].startswith("gpu")
    return [
        f"{name}, {sizes['step_image_tokens']} + {sizes['step_text_tokens']} tokens: {best['seconds']:.3f} s "
        f"({weights}, {best['kernel_path']}, peak {peak}){target if real else ''}"
        f"{diffusers(peers, sizes['step_image_tokens'])}"
    ]


def diffusers(rows, image_tokens):
    """Diffusers' seconds for the same step on the same card, in each dtype it ran."""
    figures = [
        f"{str(r['dtype']).removeprefix('torch.')} {r['seconds']:.3f} s"
        for r in rows or []
        if r.get("image_tokens") == image_tokens and "seconds" in r
    ]
    return f"; diffusers {', '.join(figures)}" if figures else ""


def main():
    folder = pathlib.Path(sys.argv[1])
    bench, peers = read(folder, "bench"), read(folder, "diffusers")
    lines = attention(bench) + matmuls(bench)
    lines += step(read(folder, "bench-step"), "step", " (target ≤ 1.5 s at 1024²)", peers)
    lines += step(read(folder, "bench-512"), "step", " (target ≤ 0.5 s at 512²)", peers)
    lines += step(read(folder, "bench-step-f32"), "step on the f32 kernels", "", [])
    cmma = read(folder, "burn-cmma")
    for r in (cmma or {}).get("rows") or []:
        shape = f"{r['m']}×{r['k']}→{r['n']}" if r.get("op") == "matmul" else f"L = {r.get('L')}"
        lines.append(f"burn-cmma {r.get('op')} {shape}: {r.get('tflops', 0):.3g} TFLOP/s, cmma {r.get('cmma')}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
