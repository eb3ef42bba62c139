"""Generate the worked example's step records (docs/ci.md): an invoice-extraction dataset of 800
items run by the current code (baseline.jsonl) and by three changes: a harmless one
(candidate_ok.jsonl), one that breaks totals (candidate_regressed.jsonl, about 5 points worse), and
one run on 40 items only (candidate_small.jsonl, too few to tell).

    python make_data.py [OUT_DIR]
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ITEMS = 800


def _record(prefix: str, i: int, total: float, got: float | str, summary: str) -> dict[str, object]:
    item = f"inv-{i:04d}"
    return {
        "source": "ci", "run_key": f"{prefix}-{item}", "step_key": "extract", "name": "extract", "kind": "llm",
        "workflow": "invoice-agent", "attributes": {"item_id": item},
        "input": {"document": f"Invoice {item}: total due {total:.2f} EUR"},
        "expected": {"total": total}, "output": {"total": got, "summary": summary},
    }  # fmt: skip


def generate(out: Path, *, seed: int = 7) -> dict[str, Path]:
    rng = random.Random(seed)
    totals = [round(rng.uniform(10, 5000), 2) for _ in range(ITEMS)]
    hard = [rng.random() < 0.12 for _ in range(ITEMS)]  # the current code gets these wrong

    def base_total(i: int) -> float:
        return round(totals[i] * 1.1, 2) if hard[i] else totals[i]

    files: dict[str, list[dict[str, object]]] = {"baseline": [], "candidate_ok": [], "candidate_regressed": []}
    for i in range(ITEMS):
        n = i + 1
        summary = f"Invoice of {totals[i]:.2f} EUR"
        files["baseline"].append(_record("base", n, totals[i], base_total(i), summary))
        # a harmless change: a handful of items change, in both directions
        r = rng.random()
        ok = totals[i] if (hard[i] and r < 0.1) else round(totals[i] + 1, 2) if r < 0.008 else base_total(i)
        files["candidate_ok"].append(_record("ok", n, totals[i], ok, summary))
        # a bad change: breaks about 6% of the totals the current code got right (fixes a few)
        r = rng.random()
        bad = round(totals[i] * 0.9, 2) if (not hard[i] and r < 0.065 and n != 1) else base_total(i)
        bad = totals[i] if hard[i] and r < 0.05 else bad
        files["candidate_regressed"].append(_record("bad", n, totals[i], bad, summary))
    files["candidate_small"] = files["candidate_ok"][:40]
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in files.items():
        paths[name] = out / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return paths


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1] if len(sys.argv) > 1 else ".")).values():
        sys.stdout.write(f"wrote {path}\n")
