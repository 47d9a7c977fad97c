"""`phiforge synth inspect FILE`: one synthetic sample with its lineage, readable in a terminal."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.tree import Tree

from phiforge.errors import UserError
from phiforge.files import read_jsonl


def show_sample(console: Console, path: Path, index: int) -> None:
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    for i, record in enumerate(read_jsonl(path)):
        if i == index:
            break
    else:
        raise UserError(f"{path}: has no sample {index} (it holds {sum(1 for _ in read_jsonl(path))})")
    if "provenance" not in record:
        raise UserError(f"{path}: sample {index} has no provenance; inspect a file under the synth stage's datasets/")
    console.print(f"[bold]{record['id']}[/]  dataset [cyan]{record['dataset']}[/]")
    if "text" in record:
        console.print(Panel(record["text"], title="text (pretraining document)", expand=False))
    for m in record.get("messages", []):
        console.print(Panel(m["content"], title=m["role"], expand=False))
    prov = record["provenance"]
    tree = Tree("lineage")
    tree.add(f"seed {prov['seed']['id']} from {prov['seed']['source']}")
    if prov.get("teacher"):
        tree.add(f"teacher {prov['teacher']}")
    for step in prov["steps"]:
        node = tree.add(f"step {step['step']}: {step['kind']} at {step['at']}")
        for key, value in step.items():
            if key not in {"step", "kind", "at"}:
                text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                node.add(f"{key}: {text[:300]}{'…' if len(text) > 300 else ''}")
    if prov.get("verifier"):
        v = prov["verifier"]
        tree.add(f"verified by {v['verifier']}: {'passed' if v['ok'] else 'failed'} ({v['detail']})")
    tree.add(f"created {prov['created']}")
    console.print(tree)
