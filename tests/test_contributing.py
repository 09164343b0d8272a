"""CONTRIBUTING.md's worked example (a `lowercase` stage) is real code: run it, so the guide stays true."""
from __future__ import annotations

import re
import sys
from pathlib import Path

from tasks.core.stage import Stage

GUIDE = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"


def test_the_guide_example_stage_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    assert len(blocks) == 4, "config, functions, declaration, test"
    *code, test = blocks
    module = tmp_path / "guide_lowercase.py"
    module.write_text("from __future__ import annotations\n\n" + "\n\n".join(code) + "\n\n" + test)
    monkeypatch.syspath_prepend(str(tmp_path))
    import guide_lowercase

    try:
        assert isinstance(guide_lowercase.STAGE, Stage) and guide_lowercase.STAGE.reads == ("dedup",)
        guide_lowercase.test_lowercase(tmp_path / "run")
    finally:
        sys.modules.pop("guide_lowercase", None)
