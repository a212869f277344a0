"""gen/ is committed: it must be exactly what scripts/gen_protos makes from protos/."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _files(folder: Path) -> set[str]:
    return {
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_generated_stubs_match_the_protos(tmp_path):
    out = tmp_path / "gen"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(out)], check=True, capture_output=True
    )

    committed, fresh = _files(ROOT / "gen"), _files(out)
    assert committed == fresh, "gen/ has other files than protos/ produce: run scripts/gen_protos"
    stale = [name for name in sorted(fresh) if not filecmp.cmp(out / name, ROOT / "gen" / name, shallow=False)]
    assert not stale, f"stale generated stubs {stale}: run scripts/gen_protos"
