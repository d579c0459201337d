"""README's and docs/*.md's Python examples run as shown.

Convention: every ```python block of README.md and docs/*.md runs, the blocks of one file in order in one namespace,
from an empty working directory, with "../shared/tokenizers/t5" pointing at the real tokenizer. A block that cannot
run here (it needs a trained checkpoint, real prepared data, or the reader's own variables) is marked by the HTML
comment `<!-- no-run: <why> -->` (invisible on GitHub) on the line right before its opening fence; such a block
must still compile and its import statements are executed, so a renamed module or function still fails the test.
"""

import ast
import math
import re

import pytest
from conftest import REPO_ROOT, TOKENIZER_DIR

BLOCK = re.compile(r"(?:<!--\s*no-run:(?P<why>[^>]*)-->[ \t]*\n)?```python\n(?P<code>.*?)```", flags=re.DOTALL)
DOCS = sorted(path.name for path in (REPO_ROOT / "docs").glob("*.md") if "```python" in path.read_text(encoding="utf-8"))


def python_blocks(path) -> list[tuple[str, str | None]]:
    """(code, the no-run reason or None) of every python block of a markdown file, in order."""
    text = path.read_text(encoding="utf-8")
    return [(match["code"], match["why"].strip() if match["why"] is not None else None)
            for match in BLOCK.finditer(text)]


def run_blocks(path, namespace: dict) -> int:
    """Run the file's runnable blocks; compile the no-run ones and run their imports. Returns how many ran."""
    ran = 0
    for index, (code, why) in enumerate(python_blocks(path)):
        code = code.replace('"../shared/tokenizers/t5"', repr(str(TOKENIZER_DIR)))
        where = f"{path.name} python block {index + 1}"
        tree = compile(code, where, "exec", flags=ast.PyCF_ONLY_AST)
        if why is None:
            exec(compile(tree, where, "exec"), namespace)  # noqa: S102 (running the documented example is the test)
            ran += 1
        else:
            assert why, f"{where}: a no-run mark needs its reason"
            imports = ast.Module([node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)], [])
            exec(compile(imports, where, "exec"), {})  # noqa: S102
    return ran


def test_readme_python_blocks_all_run(tmp_path, tokenizer, monkeypatch):
    blocks = python_blocks(REPO_ROOT / "README.md")
    assert len(blocks) >= 3, "README lost its usage example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    assert run_blocks(REPO_ROOT / "README.md", namespace) == len(blocks) - sum(why is not None for _, why in blocks)
    assert namespace["items"].shape == (1, 10)
    assert (tmp_path / "my-peapod" / "model.safetensors").exists()
    assert (tmp_path / "my-peapod" / "modeling_peapod.py").exists()
    assert type(namespace["reloaded"]).__name__ == "PeaPODForConditionalGeneration"
    assert any("lora_A" in name for name, _ in namespace["peft_model"].named_parameters())
    assert sorted(entry["item_id"] for entry in namespace["ranking"]) == [3, 42, 77, 100]  # the pipeline's
    assert set(namespace["explanation"]) == {"explanation"} and len(namespace["next_items"]) == 5
    assert sorted(entry["item_id"] for entry in namespace["new_user_ranking"]) == [3, 42, 77, 100]


@pytest.mark.parametrize("doc", DOCS)
def test_docs_python_blocks_run(doc, tmp_path, tokenizer, monkeypatch):
    path = REPO_ROOT / "docs" / doc
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    ran = run_blocks(path, namespace)
    assert ran == sum(why is None for _, why in python_blocks(path))
    if doc == "data.md":
        assert namespace["data"].num_users == namespace["config"]["statistics"]["num_users"]
    if doc == "python_api.md":  # the typed results of the whole run
        assert namespace["data"].num_users == 30 and namespace["run"].global_step == 4
        assert namespace["result"].complete and (tmp_path / "runs" / "tiny" / "eval" / "results.json").exists()
    if doc == "evaluation.md":  # the output its metrics example documents
        result = namespace["ranking"].compute(predictions=[[3, 1, 2], [5, 4]], references=[1, 9], k_values=[1, 5, 10])
        ndcg = 1 / math.log2(3) / 2  # user 1's item at rank 2 of 3, user 2's absent: "0.315..."
        assert result == pytest.approx({"hr@1": 0.0, "ndcg@1": 0.0, "hr@5": 0.5, "ndcg@5": ndcg, "hr@10": 0.5,
                                        "ndcg@10": ndcg, "num_users": 2})
