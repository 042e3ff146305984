"""Generate benchmarks/RESULTS.md from the JSON figures in benchmarks/results/.

    python benchmarks/results_md.py          # after the benchmarks: bash benchmarks/run_all.sh

Each row is one figure of issue 9 with its target, read from the JSON a benchmark script
wrote in the same run; a missing JSON is reported as "not run", never filled in.
"""

from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path

from common import RESULTS, git

OUT = Path(__file__).parent / "RESULTS.md"
# fixes to how figures are measured: a figure measured at a commit that lacks one is not what its
# row says, so its row shows why and gives no verdict until it is measured again
LOGGING_FIXES = {"998a4a6": "the trainer's timed windows left its logging call out"}
OVERHEAD_FIXES = {**LOGGING_FIXES, "f4782fe": "the arms ran in a fixed order, bare first"}
HF_FIXES = {**OVERHEAD_FIXES, "f43dbfe": "the HF Trainer arm also checked each loss for NaN/inf and counted FLOPs "
                                         "every step"}


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def code_at(commit: str, path: str) -> str:
    """`path`'s code at `commit`: its syntax tree without docstrings (comments are not in it), so
    that editing either does not mark a figure measured before as stale."""
    tree = ast.parse(git("show", f"{commit}:{path}"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        docstring = isinstance(body, list) and body and isinstance(body[0], ast.Expr)
        if docstring and isinstance(body[0].value, ast.Constant):
            node.body = body[1:]
    return ast.dump(tree)


def changed_since(commit: str, path: str) -> bool:
    """Whether `path`'s code differs between the commit a figure was measured at and HEAD."""
    return code_at(commit.rstrip("+"), path) != code_at("HEAD", path)


def lacked_fixes(commit: str, fixes: dict[str, str]) -> list[str]:
    """What each measurement fix that `commit` does not contain would have changed."""
    root = RESULTS.parent.parent
    return [why for fix, why in fixes.items() if subprocess.run(
        ["git", "merge-base", "--is-ancestor", fix, commit.rstrip("+")], cwd=root).returncode != 0]


def measured_at() -> list[tuple[Path, str]]:
    """The commit each results file was measured at ("+": with uncommitted changes)."""
    out = []
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        parts = [data] if "commit" in data else [p for p in data.values() if isinstance(p, dict)] or [data]
        out.append((path, ", ".join(sorted({p.get("commit", "not recorded") for p in parts}))))
    return out


def row(number: str, figure: str, value: str, target: str = "", met: bool | None = None,
        lacked: list[str] | None = None) -> str:
    """One figure; `lacked`: the measurement fixes it predates (no verdict then: re-measure it)."""
    verdict = "" if met is None else ("yes" if met else "**no**")
    if lacked:
        value += f" (measured before these fixes: {'; '.join(lacked)})"
        verdict = "re-measure"
    return f"| {number} | {figure} | {value} | {target} | {verdict} |"


def spread(times: dict, name: str) -> str:
    low, high = times[name]
    return f"{low * 1e3:.1f}-{high * 1e3:.1f} ms"


def ratio_text(ratio: float, target: float) -> str:
    """The ratio to 3 decimals, or 4 where 3 would print the target itself (1.0504 as "1.050x"
    next to "<= 1.05" and "no")."""
    digits = 4 if f"{ratio:.3f}" == f"{target:.3f}" and ratio != target else 3
    return f"{ratio:.{digits}f}x"


def quartile_range(quartiles: list[float]) -> str:
    return f"{quartiles[0]:.3f}-{quartiles[1]:.3f}"


def overhead_rows(overhead: dict, batch: str, device: str = "") -> list[str]:
    t, s = overhead["step_time_s"], overhead["spread_s"]
    of_medians, quartiles = overhead["ratio_of_medians"], overhead.get("ratio_quartiles", {})
    repeats = f", {overhead['repeats']} repeats"

    def paired(other: str) -> str:  # GPU figures measured before the quartiles were kept have none
        return f"quartiles {quartile_range(quartiles[other])}; " if other in quartiles else ""


    return [
        row(f"1{device}", f"lifelong step / bare PyTorch loop, {batch} (median of paired ratios{repeats})",
            f"{overhead['ratio_lifelong_vs_bare']:.3f}x ({paired('vs_bare')}medians {t['lifelong'] * 1e3:.1f} vs "
            f"{t['bare'] * 1e3:.1f} ms, "
            f"{of_medians['vs_bare']:.3f}x; spread {spread(s, 'lifelong')} / {spread(s, 'bare')})",
            "<= 1.03", overhead["ratio_lifelong_vs_bare"] <= 1.03, lacked_fixes(overhead["commit"], OVERHEAD_FIXES)),
        row(f"2{device}", f"lifelong step / HF Trainer step, {batch} (median of paired ratios{repeats})",
            f"{overhead['ratio_lifelong_vs_hf_trainer']:.3f}x ({paired('vs_hf_trainer')}median "
            f"{t['hf_trainer'] * 1e3:.1f} ms HF, {of_medians['vs_hf_trainer']:.3f}x; spread {spread(s, 'hf_trainer')})",
            "<= 1.0", overhead["ratio_lifelong_vs_hf_trainer"] <= 1.0, lacked_fixes(overhead["commit"], HF_FIXES)),
    ]


def method_rows(methods: dict, number: str, setting: str) -> list[str]:
    """Each method's step / finetune's, paired rounds, flagged where the method's code changed since."""
    out = []
    for name, target in methods["targets"].items():
        method_file = f"lifelong/methods/{name}.py"
        stale = changed_since(methods["commit"], method_file)
        ratio, quartiles = methods["ratio_vs_finetune"][name], methods["ratio_quartiles"][name]
        out.append(row(number, f"{name} step / finetune step, {setting}",
                       f"{ratio_text(ratio, target)} (quartiles {quartile_range(quartiles)})"
                       + (f" (measured before later changes to {method_file})" if stale else ""),
                       f"<= {target}", ratio <= target))
    return out


def variant_row(variants: dict, setting: str, figure: str = "3 GPU") -> str:
    """A candidates script's paired rounds: each variant's step / finetune's, with quartiles."""
    ratios, quartiles = variants["ratio_vs_finetune"], variants["ratio_quartiles"]
    return row(figure, f"{setting}, step / finetune step, paired rounds ({variants['device']}, code at "
                        f"{variants['commit']})",
               "; ".join(f"{name} {ratios[name]:.3f}x ({quartile_range(quartiles[name])})"
                         for name in ratios if name != "finetune"))


def rows() -> list[str]:
    out = []
    overhead, small = load("overhead"), load("overhead_mb1")
    if overhead:
        out += overhead_rows(overhead, "batch 8x128")
    if small:
        out += overhead_rows(small, "batch 1x128 (the framework's own cost)")
    if not (overhead or small):
        out.append(row("1-2", "overhead.py", "not run"))
    tgl = load("tgl")
    if tgl:
        ratio = tgl["ratio_log_every_step_vs_rarely"]
        out.append(row("3", "per-layer grad-norm logging every step / rarely (median of paired ratios)",
                       f"{ratio:.3f}x (quartiles {quartile_range(tgl['ratio_quartiles'])})", "<= 1.03", ratio <= 1.03))
        tracing = tgl["tracing"]
        out.append(row("3", "TGL tracing, share of a stage",
                       f"{tracing['fraction_of_stage']:.1%} ({tracing['trace_s']:.2f} s per trace with selection "
                       f"and plot, stage of {tracing['stage_steps']} steps)"))
    else:
        out.append(row("3", "tgl.py", "not run"))
    for name, batch in (("methods", "8x128"), ("methods_mb1", "1x128")):
        methods = load(name)
        if not methods:
            out.append(row("3", f"methods.py ({batch})", "not run"))
            continue
        # no verdict here: joint's step is finetune's, so its ratio shows these runs' noise (10-20%)
        ratios = methods["ratio_vs_finetune"]
        out.append(row("3", f"each method / finetune, whole runs in turn, {batch} (joint runs finetune's step: "
                       "its distance from 1 is the noise; targets are judged on the paired rows)",
                       ", ".join(f"{n} {r:.2f}x" for n, r in ratios.items() if n != "finetune")))
    for name, batch in (("methods_paired", "8x128"), ("methods_paired_mb1", "1x128"),
                        ("methods_paired_mb1_stage3", "1x128 at stage 3 (3 finished stages for EWC)")):
        paired = load(name)
        if not paired:
            out.append(row("3", f"methods_paired.py ({batch})", "not run"))
            continue
        out += method_rows(paired, "3", f"{batch}, paired rounds in one process ({paired['rounds']} rounds)")
    for name in ("migu_sums_cpu", "migu_sums_cpu_100m", "migu_sums_cpu_100m_8x128"):
        if parts := load(name):
            out.append(variant_row(parts, "MIGU's parts left out, moved into hooks, or with method.skip_masked_rows "
                                          f"(its kept rows' gradients only), {parts['model']} "
                                          f"{parts['micro_batch']}x128, CPU 1 thread (migu_sums.py --device cpu)", "3"))
    ops = load("op_counts")
    if ops:
        counts = ops["ops_per_step"]
        out.append(row("3", "compute ops per step, 12 blocks (what a launch-bound GPU step pays for)",
                       ", ".join(f"{n} {c}" for n, c in counts.items())))
    evaluation = load("eval_throughput")
    if evaluation:
        ratio = evaluation["ratio_lifelong_vs_bare"]
        out.append(row("4", "probe perplexity tokens/s / bare batched loop (median of paired ratios)",
                       f"{ratio:.3f}x (quartiles {quartile_range(evaluation['ratio_quartiles'])}, "
                       f"{evaluation['tokens_per_s']['lifelong']:.0f} tok/s, same values: "
                       f"{evaluation['same_value']})", ">= 0.95", ratio >= 0.95))
    else:
        out.append(row("4", "eval_throughput.py", "not run"))
    data = load("data_path")
    if data:
        out.append(row("5", "data path tokens/s / training step tokens/s",
                       f"{data['ratio_data_vs_step']:.0f}x ({data['data_path_tokens_per_s']:.3g} vs "
                       f"{data['train_step_tokens_per_s']:.3g} tok/s, {data['data']})", "> 1 (never starves)",
                       data["ratio_data_vs_step"] > 1))
    corpus = load("corpus")
    if corpus:
        out.append(row("5", f"{corpus['corpus_mb']} MB jsonl: load + tokenize + pack (cold)",
                       f"{corpus['cold_tokens_per_s']:.3g} tok/s ({corpus['cold_mb_per_s']:.1f} MB/s, "
                       f"{corpus['tokens']:.3g} tokens, padding {corpus['padding_fraction']:.1%}, "
                       f"peak RSS {corpus['peak_rss_mb']:.0f} MB)"))
        out.append(row("5", "same corpus, warm (both caches hit)", f"{corpus['seconds']['warm']['total']:.2f} s"))
    scaling = load("scaling")
    if scaling:
        for preset, f in scaling["presets"].items():
            out.append(row("6", f"{preset} ({f['parameters'] / 1e6:.1f}M params)",
                           f"{f['step_s'] * 1e3:.0f} ms/step, {f['tokens_per_s']:.0f} tok/s"))
        for setup, f in scaling["ddp"].items():
            out.append(row("6", f"tiny_gpt2, {setup.replace('_', ' ')}", f"{f['tokens_per_s']:.0f} tok/s"))
        out.append(row("6", "2-process DDP (gloo) speed-up", f"{scaling['ddp_speedup_vs_1_thread']:.2f}x vs 1 thread, "
                       f"{scaling['ddp_speedup_vs_2_threads']:.2f}x vs 2 threads"))
    else:
        out.append(row("6", "scaling.py", "not run"))
    end = load("end_to_end")
    if end:
        out.append(row("7", "`lifelong-train` (default run)", f"{end['default_run_s']:.0f} s", "< 300 s",
                       end["default_run_s"] < 300))
        if "paper_main_cpu_sweep_s" in end:
            out.append(row("7", f"`-m experiment=paper_main_cpu` ({end['paper_main_cpu_runs']} runs) + report",
                           f"{end['paper_main_cpu_sweep_s'] / 60:.1f} min + {end['report_s']:.0f} s"))
    else:
        out.append(row("7", "end_to_end.py", "not run"))
    cuda = load("cuda_bf16")
    if cuda:
        over, logging, methods = cuda["overhead"], cuda["logging"], cuda["methods"]
        on = f"{over['device']}, bf16, gpt2_100m 16x512, code at {over['commit']}"
        out += overhead_rows(over, on, " GPU")
        spread = quartile_range(logging["ratio_quartiles"])
        pairs = f" (median of {logging['repeats']} pairs' ratios, quartiles {spread})"
        out.append(row("3 GPU", f"grad-norm logging every step / every {logging['rarely_every']} ({logging['device']}, "
                       f"code at {logging['commit']})", f"{logging['ratio']:.3f}x{pairs}", "<= 1.03",
                       logging["ratio"] <= 1.03, lacked_fixes(logging["commit"], LOGGING_FIXES)))
        out += method_rows(methods, "3 GPU", f"{methods['device']}, gpt2_100m 16x512, paired rounds (code at "
                                             f"{methods['commit']})")
        paper = cuda.get("methods_paper_scale")
        if paper:
            out += method_rows(paper, "3 GPU", f"{paper['device']}, paper scale, {paper['model']} "
                                               f"{paper['batch'][0]}x{paper['batch'][1]}, paired rounds (code at "
                                               f"{paper['commit']})")
        else:
            out.append(row("3 GPU", "migu and ewc step / finetune step at paper scale (gpu.py methods_paper_scale)",
                           "not run"))
        for name in ("migu_sums_cuda", "migu_sums_cuda_paper"):
            if sums := load(name):
                out.append(variant_row(sums, f"MIGU's ways of summing abs(output) and masking, {sums['model']} "
                                             f"{sums['micro_batch']}x512 (migu_sums.py)"))
        if ewc := load("ewc_variants_cuda"):
            out.append(variant_row(ewc, f"EWC's gradient term, {ewc['model']} {ewc['micro_batch']}x512 "
                                        "(ewc_variants.py)"))
        for preset, f in cuda["throughput"]["presets"].items():
            mfu = f", MFU {f['mfu']:.1%}" if f["mfu"] is not None else ""
            out.append(row("6 GPU", f"{preset} ({f['parameters'] / 1e6:.1f}M params, {f['batch'][0]}x{f['batch'][1]}, "
                           f"{cuda['throughput']['device']}, code at {cuda['throughput']['commit']})",
                           f"{f['tokens_per_s']:.3g} tok/s{mfu}", lacked=lacked_fixes(cuda["throughput"]["commit"],
                                                                                 LOGGING_FIXES)))
    return out


def main() -> None:
    text = "\n".join([
        "# Benchmark results",
        "",
        "Generated by `python benchmarks/results_md.py` from `benchmarks/results/*.json`; regenerate",
        "everything with `bash benchmarks/run_all.sh` (about an hour on 2 CPU cores), and the GPU",
        "rows on a machine with one GPU with `DEADLINE=560 bash benchmarks/gpu_check.sh OUT_DIR`. Ratios",
        "are measured side by side in one run; medians over repetitions, spreads min-max.",
        "",
        "| # | figure | measured | target | met |",
        "|---|---|---|---|---|",
        *rows(),
        "",
        "Each figure's code: " + ", ".join(f"{path.stem} {commit}" for path, commit in measured_at()) + ".",
        "",
    ])
    OUT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
