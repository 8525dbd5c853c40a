"""lm-eval tasks as the fitness: an offline task YAML over a JSONL file, scored in memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hub_merge.cli import main
from hub_merge.errors import ConfigError, TaskFileError
from hub_merge.search import SearchConfig, search

pytestmark = pytest.mark.slow  # importing lm-eval alone takes ~20 s on the shared 2 cores

TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def include(tiny_zoo, tmp_path_factory) -> Path:
    """Local lm-eval tasks over the tiny zoo's task files (36 rows each, so it stays quick)."""
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    for name in ("add", "uppercase"):
        rows = tiny_zoo.tasks[name].read_text().splitlines()[:36]
        data = root / f"{name}.jsonl"
        data.write_text("\n".join(rows) + "\n")
        (root / f"tiny_{name}.yaml").write_text(TASK_YAML.format(name=f"tiny_{name}", path=data))
    held = root / "add_heldout.jsonl"
    held.write_text("\n".join(tiny_zoo.tasks["add"].read_text().splitlines()[36:48]) + "\n")
    (root / "tiny_add_heldout.yaml").write_text(
        TASK_YAML.format(name="tiny_add_heldout", path=held)
    )
    return root


def _config(zoo, include: Path, out: Path, **kw) -> SearchConfig:
    return SearchConfig(
        base=str(zoo.base),
        experts=[str(zoo.adapters["add"]), str(zoo.adapters["uppercase"])],
        tasks=kw.pop("tasks", ["lm-eval:tiny_add,tiny_uppercase"]),
        out=str(out),
        lm_eval_include=str(include),
        device="cpu",
        progress=False,
        settings={"k": 2, "generations": 1, "kinship_stop": None},
        **kw,
    )


def test_search_scores_candidates_with_lm_eval_in_memory(tiny_zoo, include, tmp_path):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    result = search(_config(tiny_zoo, include, out))
    tree = result.tree
    assert set(tree.tasks) == {"tiny_add", "tiny_uppercase"}
    assert tree.split["kind"] == "fraction" and tree.split["lm_eval"]["tiny_add"] == "acc"
    dev_n, test_n = tree.split["dev_rows"]["tiny_add"], tree.split["test_rows"]["tiny_add"]
    assert dev_n + test_n == 36 and dev_n > test_n > 0
    # every score is an accuracy, and no candidate was written to disk to be scored
    for node in tree.nodes.values():
        if node.scores:
            assert all(0.0 <= v <= 1.0 for v in node.scores.values())
    assert not any(p.suffix == ".safetensors" for p in out.rglob("*") if "winner" not in p.parts)

    # the add expert's dev score is what lm-eval itself gives on the same (dev) documents
    from hub_merge.lmeval import doc_key
    from hub_merge.splits import test_mask

    manager = TaskManager(include_path=str(include), include_defaults=False)
    docs = list(lm_eval.tasks.get_task_dict(["tiny_add"], manager)["tiny_add"].eval_docs)
    mask = test_mask("tiny_add", [doc_key(d) for d in docs], 0.3, 0)
    dev = [i for i, t in enumerate(mask) if not t]
    folder = tiny_zoo.adapters["add"]
    model = AutoModelForCausalLM.from_pretrained(tiny_zoo.base)
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, folder).merge_and_unload()
    tok = AutoTokenizer.from_pretrained(tiny_zoo.base)
    direct = lm_eval.simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tok, batch_size=16, device="cpu"),
        tasks=["tiny_add"],
        task_manager=manager,
        samples={"tiny_add": dev},
        log_samples=False,
        bootstrap_iters=0,
    )["results"]["tiny_add"]["acc,none"]
    expert = next(n for n in tree.nodes.values() if n.source and "add" in str(n.source))
    assert expert.scores["tiny_add"] == pytest.approx(direct, abs=1e-9)


def test_lm_eval_test_tasks_and_bad_input(tiny_zoo, include, tmp_path):
    # explicit test tasks: dev = every document of the task, test = the held-out task's
    out = tmp_path / "run"
    code = main(
        [
            "--quiet",
            "search",
            "--base", str(tiny_zoo.base),
            "--experts", str(tiny_zoo.adapters["add"]), str(tiny_zoo.adapters["uppercase"]),
            "--tasks", "lm-eval:tiny_add",
            "--test-tasks", "lm-eval:tiny_add_heldout",
            "--lm-eval-include", str(include),
            "--generations", "1", "--k", "2",
            "--out", str(out), "--device", "cpu", "--json",
        ]
    )  # fmt: skip
    assert code == 0
    tree = json.loads((out / "family_tree.json").read_text())
    split = tree["split"]
    assert split["kind"] == "files" and split["test_rows"] == {"tiny_add": 12}
    assert split["dev_rows"] == {"tiny_add": 36}

    with pytest.raises(ConfigError, match="not both"):
        search(_config(tiny_zoo, include, tmp_path / "a", tasks=["lm-eval:tiny_add", "x.jsonl"]))
    with pytest.raises(ConfigError, match="gsm8k"):
        search(_config(tiny_zoo, include, tmp_path / "b", tasks=["lm-eval:gsm8k"]))
    with pytest.raises(TaskFileError, match="tiny_nope"):
        search(_config(tiny_zoo, include, tmp_path / "c", tasks=["lm-eval:tiny_nope"]))
    with pytest.raises(ConfigError, match="both a dev and a test task"):
        search(
            _config(
                tiny_zoo, include, tmp_path / "d", tasks=["lm-eval:tiny_add"],
                test_tasks=["lm-eval:tiny_add"],
            )
        )  # fmt: skip
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()
