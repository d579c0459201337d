"""README's Python usage example runs exactly as shown."""

import os
import re

from conftest import REPO_ROOT, TOKENIZER_DIR


def python_blocks() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_usage_example_runs(tmp_path, tokenizer, monkeypatch):
    blocks = python_blocks()
    assert len(blocks) >= 3, "README lost its usage example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks[:3]:
        code = block.replace('"../shared/tokenizers/t5"', repr(str(TOKENIZER_DIR)))
        exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["items"].shape == (1, 10)
    assert (tmp_path / "my-peapod" / "model.safetensors").exists()
    assert type(namespace["reloaded"]).__name__ == "PeaPODForConditionalGeneration"
    assert os.path.exists(tmp_path / "my-peapod" / "modeling_peapod.py")
