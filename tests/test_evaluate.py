"""Evaluation: task files, the three metrics against unbatched references, fitness and the cache."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hub_merge.errors import ConfigError, SearchStateError, TaskFileError
from hub_merge.evaluate import (
    Evaluator,
    ScoreCache,
    Task,
    fitness_from_scores,
    load_task,
    load_tasks,
)


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tiny(tiny_zoo):
    tok = AutoTokenizer.from_pretrained(tiny_zoo.base)
    base = AutoModelForCausalLM.from_pretrained(tiny_zoo.base, dtype=torch.float32).eval()
    return tiny_zoo, tok, base


# --- task files -------------------------------------------------------------------------------


def test_task_file_errors_name_the_problem(tmp_path):
    with pytest.raises(TaskFileError, match="does not exist"):
        load_task(tmp_path / "missing.jsonl")
    with pytest.raises(TaskFileError, match="empty"):
        load_task(write(tmp_path / "empty.jsonl", ["", "  "]))
    bad = write(tmp_path / "bad.jsonl", [{"prompt": "a", "answer": "b"}, "{not json"])
    with pytest.raises(TaskFileError, match="bad.jsonl, line 2: not valid JSON"):
        load_task(bad)
    with pytest.raises(TaskFileError, match="line 1: 'answer' is missing"):
        load_task(write(tmp_path / "noanswer.jsonl", [{"prompt": "a"}]))
    with pytest.raises(TaskFileError, match="line 1: 'prompt'"):
        load_task(write(tmp_path / "noprompt.jsonl", [{"answer": "a"}]))
    with pytest.raises(TaskFileError, match="not one of the choices"):
        load_task(
            write(tmp_path / "mc.jsonl", [{"prompt": "a", "answer": "z", "choices": ["x", "y"]}])
        )
    with pytest.raises(TaskFileError, match="JSON object"):
        load_task(write(tmp_path / "list.jsonl", ["[1, 2]"]))
    a = write(tmp_path / "a.jsonl", [{"prompt": "p", "answer": "q"}])
    sub = tmp_path / "sub"
    sub.mkdir()
    with pytest.raises(TaskFileError, match="unique"):
        load_tasks([a, write(sub / "a.jsonl", [{"prompt": "p", "answer": "q"}])])


def test_task_loading_limit_and_choices(tmp_path):
    rows = [{"prompt": f"p{i}", "answer": f"a{i}"} for i in range(10)]
    task = load_task(write(tmp_path / "t.jsonl", rows), limit=3)
    assert task.name == "t" and [e.prompt for e in task.examples] == ["p0", "p1", "p2"]
    assert task.digest != load_task(tmp_path / "t.jsonl").digest
    mc = load_task(
        write(tmp_path / "mc.jsonl", [{"prompt": "q", "answer": 1, "choices": ["x", "y"]}])
    )
    assert mc.examples[0].answer == "y" and mc.examples[0].choices == ("x", "y")


def test_fitness_is_higher_is_better_and_weighted():
    assert fitness_from_scores({"a": 1.0, "b": 3.0}, "answer_loss") == -2.0
    assert fitness_from_scores({"a": 0.5, "b": 1.0}, "exact_match") == 0.75
    assert fitness_from_scores({"a": 1.0, "b": 3.0}, "answer_loss", {"a": 3, "b": 1}) == -1.5
    with pytest.raises(ConfigError):
        fitness_from_scores({"a": 1.0}, "answer_loss", {"a": 0})


def test_score_cache_persists_atomically(tmp_path):
    cache = ScoreCache(tmp_path / "scores.json")
    assert cache.get("h1") is None and cache.misses == 1
    cache.put("h1", {"t": 1.5})
    again = ScoreCache(tmp_path / "scores.json")
    assert again.get("h1") == {"t": 1.5} and again.hits == 1 and "h1" in again
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(SearchStateError, match="corrupt"):
        ScoreCache(tmp_path / "bad.json")


# --- metrics ----------------------------------------------------------------------------------


def reference_loss(model, tok, prompt, answer):
    """Unbatched, unpadded: mean cross-entropy of answer tokens + EOS given the prompt."""
    p = tok(prompt, add_special_tokens=True)["input_ids"]
    a = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([p + a])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    return float(-torch.stack([logp[len(p) + i - 1, t] for i, t in enumerate(a)]).mean())


def reference_logprob(model, tok, prompt, choice):
    """Unbatched: summed log-probability of the choice's tokens given the prompt (no EOS)."""
    p = tok(prompt)["input_ids"]
    c = tok(choice, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([p + c])).logits[0].float(), -1)
    return float(sum(logp[len(p) + i - 1, t] for i, t in enumerate(c)))


def test_answer_loss_matches_unbatched_reference_with_either_padding(tiny):
    zoo, tok, base = tiny
    task = load_task(zoo.tasks["add"], limit=12)
    want = sum(reference_loss(base, tok, e.prompt, e.answer) for e in task.examples) / len(
        task.examples
    )
    for side, bs in (("right", 1), ("right", 5), ("left", 5)):
        got = Evaluator([task], tok, batch_size=bs, padding_side=side).score(base)["add"]
        assert math.isclose(got, want, rel_tol=1e-4), (side, bs, got, want)


def test_expert_beats_base_on_its_own_task(tiny):
    zoo, tok, base = tiny
    tasks = load_tasks([zoo.tasks["add"], zoo.tasks["uppercase"]], limit=16)
    ev = Evaluator(tasks, tok)
    expert = AutoModelForCausalLM.from_pretrained(zoo.experts["add"], dtype=torch.float32)
    base_scores, expert_scores = ev.score(base), ev.score(expert)
    assert expert_scores["add"] < base_scores["add"]
    assert ev.fitness(expert_scores) == -(expert_scores["add"] + expert_scores["uppercase"]) / 2
    assert ev.evaluations == 2


def test_exact_match_batches_generation_correctly(tiny, tmp_path):
    zoo, tok, base = tiny
    expert = AutoModelForCausalLM.from_pretrained(
        zoo.experts["uppercase"], dtype=torch.float32
    ).eval()
    prompts = [e.prompt for e in load_task(zoo.tasks["uppercase"], limit=6).examples]
    # what the model says, one prompt at a time, with no padding at all
    said = []
    for p in prompts:
        ids = torch.tensor([tok(p)["input_ids"]])
        out = expert.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        said.append(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip())
    assert all(said)
    right = load_task(
        write(
            tmp_path / "right.jsonl",
            [{"prompt": p, "answer": s} for p, s in zip(prompts, said, strict=False)],
        )
    )
    wrong = Task("wrong", tuple(type(e)(e.prompt, e.answer + "#") for e in right.examples))
    ev = Evaluator([right, wrong], tok, metric="exact_match", batch_size=4, max_new_tokens=12)
    assert ev.score(expert) == {"right": 1.0, "wrong": 0.0}


def test_choice_picks_the_most_likely_option(tiny, tmp_path):
    zoo, tok, base = tiny
    expert = AutoModelForCausalLM.from_pretrained(
        zoo.experts["uppercase"], dtype=torch.float32
    ).eval()
    rows = []
    for e in load_task(zoo.tasks["uppercase"], limit=5).examples:
        choices = [e.answer, e.answer.lower(), "zz" + e.answer[::-1]]
        ll = [reference_logprob(expert, tok, e.prompt, c) for c in choices]
        best = max(range(3), key=lambda i: ll[i])
        rows.append({"prompt": e.prompt, "answer": best, "choices": choices})
    task = load_task(write(tmp_path / "mc.jsonl", rows))
    assert Evaluator([task], tok, metric="choice", batch_size=4).score(expert)["mc"] == 1.0
    flipped = [{**r, "answer": (r["answer"] + 1) % 3} for r in rows]
    task2 = load_task(write(tmp_path / "mc2.jsonl", flipped))
    assert Evaluator([task2], tok, metric="choice").score(expert)["mc2"] == 0.0
    with pytest.raises(TaskFileError, match="choices"):
        Evaluator([load_task(zoo.tasks["add"], limit=2)], tok, metric="choice")


def test_evaluator_rejects_bad_settings(tiny):
    zoo, tok, _ = tiny
    task = load_task(zoo.tasks["add"], limit=2)
    with pytest.raises(ConfigError, match="Unknown metric"):
        Evaluator([task], tok, metric="bleu")
    with pytest.raises(ConfigError, match="unknown tasks"):
        Evaluator([task], tok, weights={"nope": 1.0})
    assert Evaluator([task], tok).key != Evaluator([task], tok, metric="exact_match").key


class _PlainForward(torch.nn.Module):
    """A causal LM whose forward takes no ``logits_to_keep`` (an older or custom model)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, input_ids, attention_mask, position_ids):
        return self.inner(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        )


def test_length_sorted_batches_keep_the_unbatched_scores(tiny):
    """Rows sorted and packed by length, only answer logits projected: same losses to 1e-4."""
    from hub_merge.evaluate.scoring import KEEPS_LOGITS

    zoo, tok, base = tiny
    expert = AutoModelForCausalLM.from_pretrained(zoo.experts["sort"], dtype=torch.float32).eval()
    # tasks of different prompt and answer lengths, mixed in one task so batches must re-order
    mixed = Task(
        "mixed",
        tuple(
            e for n in ("add", "reverse", "sort") for e in load_task(zoo.tasks[n], limit=5).examples
        ),
    )
    want = sum(reference_loss(expert, tok, e.prompt, e.answer) for e in mixed.examples) / len(
        mixed.examples
    )
    for side, bs in (("right", 4), ("left", 7), ("right", "auto")):
        got = Evaluator([mixed], tok, batch_size=bs, padding_side=side).score(expert)["mixed"]
        assert got == pytest.approx(want, abs=1e-4), (side, bs)
    assert KEEPS_LOGITS[type(expert)] is True  # the cheap path ran on a transformers model
    plain = _PlainForward(expert).eval()
    got = Evaluator([mixed], tok, batch_size=4).score(plain)["mixed"]
    assert KEEPS_LOGITS[type(plain)] is False
    assert got == pytest.approx(want, abs=1e-4)
    with pytest.raises(ConfigError, match="batch_size"):
        Evaluator([mixed], tok, batch_size=0)
