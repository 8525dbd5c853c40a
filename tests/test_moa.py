"""Mixture-of-agents as the reference runs it (issue 23): sampling defaults, earlier rounds in
the system message, answer extraction before exact match, and the aggregator's loss column."""

from __future__ import annotations

import math

import pytest

from hub_merge.errors import ConfigError
from hub_merge.evaluate import Example, Task
from hub_merge.moa import AGGREGATE_PROMPT, MoaSettings, extract_answer, run_moa


class ChatTokenizer:
    """A tokenizer stand-in with a chat template that shows the messages' roles."""

    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert not tokenize and add_generation_prompt
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages)

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": list(text.encode())}


class FakePool:
    """Records every call; each proposer answers ``<name>:<prompt>``, the aggregator chats."""

    def __init__(self) -> None:
        self.tokenizer = ChatTokenizer()
        self.calls: list[tuple[str, list[str], int, float]] = []
        self.loss_inputs: list[Task] = []

    def generate(self, name, texts, budget, batch, temperature=0.0):
        self.calls.append((name, list(texts), budget, temperature))
        if name == "base":  # an aggregator that writes a sentence, then the answer
            return [f"Let me think.\nAnswer: {t.split('q=')[-1][:1]} " for t in texts], 9
        return [f"{name}:{t[-3:]}" for t in texts], 3

    def answer_loss(self, name, tasks):
        self.loss_inputs = list(tasks)
        return {t.name: 0.5 + i for i, t in enumerate(tasks)}


def test_reference_defaults_system_message_rounds_extraction_and_loss():
    settings = MoaSettings(layers=2)
    assert settings.temperature == 0.7 and settings.max_new_tokens == 2048  # the reference's
    tasks = [Task("t", (Example("q=4", "4"), Example("q=5", "6")))]
    pool = FakePool()
    report = run_moa(pool, tasks, ["a", "b"], "base", settings)
    names = [c[0] for c in pool.calls]
    assert names == ["a", "b", "a", "b", "base"]
    assert all(c[2] == 2048 and c[3] == 0.7 for c in pool.calls)
    # round 1: the raw prompt; round 2 and the aggregator: the previous round's answers in the
    # system message (aggregate-and-synthesize prompt, numbered), the query as the user's
    assert pool.calls[0][1] == ["q=4", "q=5"]
    second = pool.calls[2][1][0]
    assert second == (f"<system>{AGGREGATE_PROMPT}\n1. a:q=4\n2. b:q=4</system><user>q=4</user>")
    final_in = pool.calls[4][1][0]
    assert final_in.startswith(f"<system>{AGGREGATE_PROMPT}\n1. a:") and "<user>q=4" in final_in
    # the aggregator's sentence is not an exact match, its extracted answer is
    assert report.exact_match == {"t": 0.5}  # "4" right, "5" != "6"
    assert report.exact_match_strict == {"t": 0.0}
    # the loss column: the aggregator's answer-token loss given the proposals
    assert report.answer_loss == {"t": 0.5} and report.mean_answer_loss == 0.5
    given = pool.loss_inputs[0].examples
    assert [ex.prompt for ex in given] == pool.calls[4][1]
    assert [ex.answer for ex in given] == ["4", "6"]
    assert report.samples[0]["extracted"] == "4"
    with pytest.raises(ConfigError, match="temperature"):
        MoaSettings(temperature=-1).check()


@pytest.mark.parametrize(
    "text, answer",
    [
        ("42", "42"),
        ("  42  \nbecause 6*7", "42"),
        ("\n\nThe sum is\nAnswer: 7\n", "7"),
        ("answer: first. Answer: second ", "second"),
        ("", ""),
    ],
)
def test_answer_extraction(text, answer):
    assert extract_answer(text) == answer


def test_moa_on_the_tiny_zoo_scores_the_aggregators_loss(tiny_zoo):
    # the loss is hub_merge.evaluate's answer loss of the aggregator on its own MoA inputs
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hub_merge.evaluate import Evaluator, load_task
    from hub_merge.moa import ModelPool, aggregate_text

    pool = ModelPool(tiny_zoo.base, {"add": tiny_zoo.adapters["add"]}, device="cpu")
    task = load_task(tiny_zoo.tasks["add"], limit=3)
    report = run_moa(pool, [task], ["add"], "add", MoaSettings(max_new_tokens=4))
    assert math.isfinite(report.mean_answer_loss) and report.mean_answer_loss > 0
    assert report.settings["budget"] == 4 and report.calls_per_query == 2
    proposals = [s["proposals"] for s in report.samples]
    inputs = [
        aggregate_text(pool.tokenizer, ex.prompt, p)
        for ex, p in zip(task.examples, proposals, strict=True)
    ]
    from peft import PeftModel

    tok = AutoTokenizer.from_pretrained(tiny_zoo.base)
    base = AutoModelForCausalLM.from_pretrained(tiny_zoo.base)
    model = PeftModel.from_pretrained(base, tiny_zoo.adapters["add"]).eval()
    rows = Task(
        "add", tuple(Example(i, ex.answer) for i, ex in zip(inputs, task.examples, strict=True))
    )
    expect = Evaluator([rows], tok, padding_side="left").score(model)["add"]
    assert report.answer_loss["add"] == pytest.approx(expect, rel=1e-4)
