"""The map of the code cannot rot: docs/architecture.md's import graph equals the code's, and the
README's data-flow map and the architecture doc name every package of wallwm_pretrain."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def packages() -> list[str]:
    return sorted(p.name for p in (REPO / "wallwm_pretrain").iterdir() if (p / "__init__.py").exists())


def test_the_import_graph_in_the_doc_is_the_code_s():
    proc = subprocess.run([sys.executable, "docs/architecture.py", "--check"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_every_package_is_on_the_readme_map_and_has_its_paragraph():
    readme = (REPO / "README.md").read_text()
    flow = readme.split("## Data flow", 1)[1].split("```", 2)[1]
    doc = (REPO / "docs" / "architecture.md").read_text()
    assert len(packages()) >= 10
    for name in packages():
        assert re.search(rf"wallwm_pretrain/{name}\b", flow), f"README's data-flow map lacks wallwm_pretrain/{name}"
        assert f"**`{name}/`**" in doc, f"docs/architecture.md has no paragraph on {name}/"
