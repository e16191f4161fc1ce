"""Installed-looking distributions for tests: a plugin without pip.

`write_distribution` writes what an installer leaves behind (a ``NAME-VERSION.dist-info`` folder with
``METADATA`` and ``entry_points.txt``) plus the plugin's source files under a folder. Once that folder
is on ``sys.path`` (pytest: ``monkeypatch.syspath_prepend(folder)``), ``importlib.metadata`` finds the
distribution and koopsweep's loader sees its entry points exactly as if it had been pip-installed::

    write_distribution(
        tmp_path, "koopsweep-mine", "1.0",
        entry_points={"koopsweep.variants": {"mine": "my_variant:Mine"}},
        files={"my_variant.py": source},
    )
    monkeypatch.syspath_prepend(tmp_path)
    assert "mine" in koopsweep.plugins.available("variants")
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path


def write_distribution(
    root: str | Path,
    name: str,
    version: str = "1.0",
    *,
    entry_points: Mapping[str, Mapping[str, str]] | None = None,
    files: Mapping[str, str] | None = None,
) -> Path:
    """Write distribution ``name`` ``version`` under ``root``: its dist-info and ``files`` (relative
    path -> text). ``entry_points`` maps a group to ``{entry point name: "module:attribute"}``.
    Returns the dist-info folder."""
    root = Path(root)
    normalized = re.sub(r"[-_.]+", "_", name)
    info = root / f"{normalized}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for group, points in (entry_points or {}).items():
        lines.append(f"[{group}]")
        lines += [f"{ep_name} = {target}" for ep_name, target in points.items()]
        lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines))
    for relative, text in (files or {}).items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return info
