"""Rewrite the README's performance section from a results file of ``pytransfer bench``:

    python -m pytransfer.bench.readme bench/reference/<file>.json [--readme README.md]

Everything between ``<!-- bench:start -->`` and ``<!-- bench:end -->`` is replaced. The
section names the machine and gives ratios measured in the same run, never absolute times.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def _ratio(v: dict) -> str:
    if v["ratio"] is None:
        return "not run"
    return f"{v['ratio']:.3g}×"


def _target(v: dict) -> str:
    if v["target"] is None:
        return "—"
    mark = {True: " ✓", False: " ✗", None: ""}[v["met"]]
    return f"≥ {v['target']:.3g}×{mark}"


def _exp(p: dict) -> str:
    """Which exp the exp ceiling is (results files from before it took the faster of two
    carry only torch.exp's rate)."""
    if "exp_torch_per_s" not in p:
        return " (torch.exp)"
    if p.get("exp_vexp_per_s", 0.0) >= p["exp_per_s"]:
        return (f" (float32, the kernels' own vectorised exp; torch.exp "
                f"{p['exp_torch_per_s'] / 1e9:.2f})")
    return " (float32 torch.exp, faster here than the kernels' own exp)"


def section(result: dict, source: str) -> str:
    """The Markdown of the performance section."""
    m = result["meta"]
    p = result["peaks"]
    lines = [
        f"Recorded run: `{source}` ({m['size']} size, `pytransfer bench"
        f"{' --quick' if m['size'] == 'quick' else ''} --threads {m['threads']}`), "
        f"{m['cpu']} ({m['cpu_count']} cores), {m['threads']} thread(s), device "
        f"{m['device']}, torch {m['torch']}, triton {m['triton']}, commit "
        f"`{(m['git_commit'] or 'unknown')[:12]}`."
        + (f" **{m['note']}**" if m.get("note") else ""),
        "",
        f"Machine peaks measured in the same run: {p['exp_per_s'] / 1e9:.2f} G exp/s{_exp(p)}, "
        f"{p['flop_per_s'] / 1e9:.1f} GFLOP/s (float32 GEMM), "
        f"{p['bytes_per_s'] / 1e9:.1f} GB/s (copy). Ratios are anchor time / our time in the "
        "same run; *bound* is the ceiling that applies to our kernel and the fraction of it "
        "reached; *2 thr* is our speed-up at 2 threads over 1.",
        "",
        "| op | workload | ours | vs anchor | ratio | target | bound | 2 thr | error |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["records"]:
        rl = r["roofline"]
        bound = f"{rl['bound']} {100 * rl['fraction']:.0f}%" if rl else ""
        sp = r["speedup"].get(r["subject"])
        err = r["error"].get(r["subject"])
        first = [r["op"], f"{r['name']} ({r['detail']})", r["subject"]]
        extra = [bound, "" if sp is None else f"{sp:.2f}×",
                 "" if err is None else f"{err:.0e}"]
        rows = [[label, _ratio(v), _target(v)] for label, v in r["ratios"].items()]
        rows += [[f"*{name}*", f"{mm['value']:.3g}",
                  "—" if mm["target"] is None else
                  f"{mm['sense'].replace('>=', '≥').replace('<=', '≤')} {mm['target']:g}"
                  + (" ✓" if mm["met"] else " ✗")] for name, mm in r["metrics"].items()]
        for i, row in enumerate(rows or [["", "", ""]]):
            cells = (first if i == 0 else ["", "", ""]) + row + (extra if i == 0 else [""] * 3)
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    where: dict[tuple[str, str], dict[str, list[str]]] = {}  # (anchor, reason) -> family: sizes
    for r in result["records"]:
        for label, reason in {**r["missing"], **r["failed"]}.items():
            sizes = where.setdefault((label, reason), {}).setdefault(
                f"{r['op']}: {r['family']}", [])
            sizes.append(f"{r['size_name']}={r['size']:g}")
    lines += ["", "Not run:"] + [f"- {op} (op): {why}" for op, why in result["absent"].items()]
    for (label, reason), fams in where.items():
        places = "; ".join(f"{fam}, {', '.join(sizes)}" for fam, sizes in fams.items())
        lines.append(f"- {label} ({places}): {reason}")
    if result["missed"]:
        lines += ["", f"Targets missed in this run ({len(result['missed'])}):"]
        lines += [f"- {m}" for m in result["missed"]]
    return "\n".join(lines)


def rewrite(readme: Path, results: Path) -> None:
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme} has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    body = section(json.loads(results.read_text()), results.as_posix())
    readme.write_text(f"{head}{START}\n{body}\n{END}{tail}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    args = parser.parse_args(argv)
    rewrite(args.readme, args.results)


if __name__ == "__main__":
    main()
