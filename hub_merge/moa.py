"""Mixture-of-agents (Wang et al. 2024, https://arxiv.org/abs/2406.04692): an inference baseline.

Every query goes through ``layers`` rounds of proposers (the experts): in round 1 each answers the
prompt; in later rounds each answers again with the previous round's answers in the *system
message* (the paper's aggregate-and-synthesize prompt followed by the numbered answers), as the
reference (togethercomputer/MoA, ``inject_references_to_messages``) passes them. An aggregator
(the base, or a chosen model) then writes the final answer from the last round's answers the
same way. Nothing is merged: the cost is ``proposers * layers + 1`` model calls per query,
reported beside the score so MoA can be weighed against a merge or a MoE.

As the reference by default: sampling at temperature 0.7 with up to 2048 new tokens per call
(pure temperature sampling: no top-k or top-p cut; seeded). Ours, documented: round 1 gives the
experts the raw prompt they were fine-tuned on (the reference's API models get a chat message);
without a chat template the system message is plain text before the prompt. Scoring: the final
text's answer is extracted first (the text after the last "Answer:", else its first non-empty
line, stripped) and compared by exact match; the strict whole-text match is reported beside it;
and the aggregator's answer-token loss given the proposals (the rows' answers scored as
``hub_merge.evaluate`` scores them, after the aggregator's input) gives MoA the loss column every
other row has.

LoRA experts share one base model in memory (peft adapters switched per call); full experts are
loaded each on their own. Generation is batched over the queries of one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError
from .evaluate import Evaluator, Example, Task
from .tensors import is_adapter_folder, resolve_device

# Table 1 of the paper ("Aggregate-and-Synthesize" prompt), verbatim.
AGGREGATE_PROMPT = (
    "You have been provided with a set of responses from various open-source models to the "
    "latest user query. Your task is to synthesize these responses into a single, high-quality "
    "response. It is crucial to critically evaluate the information provided in these responses, "
    "recognizing that some of it may be biased or incorrect. Your response should not simply "
    "replicate the given answers but should offer a refined, accurate, and comprehensive reply "
    "to the instruction. Ensure your response is well-structured, coherent, and adheres to the "
    "highest standards of accuracy and reliability.\n\nResponses from models:"
)


REFERENCE_TEMPERATURE = 0.7  # togethercomputer/MoA's default for every call
REFERENCE_MAX_TOKENS = 2048


@dataclass(frozen=True)
class MoaSettings:
    layers: int = 1  # proposer rounds before the aggregator
    # new tokens per call: the reference's 2048; None: the longest answer's tokens + 2 (cheap)
    max_new_tokens: int | None = REFERENCE_MAX_TOKENS
    batch_size: int = 16
    chat_template: bool = True  # the system message through the tokenizer's chat template
    temperature: float = REFERENCE_TEMPERATURE  # 0: greedy
    seed: int = 0  # the sampling's seed

    def check(self) -> None:
        if self.layers < 1:
            raise ConfigError(f"--layers must be at least 1; got {self.layers}.")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1; got {self.batch_size}.")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1; got {self.max_new_tokens}.")
        if self.temperature < 0:
            raise ConfigError(f"--temperature must be >= 0; got {self.temperature}.")


@dataclass
class MoaReport:
    """Score and cost of one MoA run. Costs are per query, averaged over the rows scored."""

    exact_match: dict[str, float]  # of the extracted answer
    mean_exact_match: float
    calls_per_query: float
    generated_tokens_per_query: float
    queries: int
    proposers: list[str]
    aggregator: str
    settings: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)
    exact_match_strict: dict[str, float] = field(default_factory=dict)  # whole text, stripped
    # the aggregator's mean answer-token loss (EOS included) given the proposals; lower is better
    answer_loss: dict[str, float] = field(default_factory=dict)
    mean_answer_loss: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class ModelPool:
    """The base, its LoRA adapters (one peft model, switched per call) and full models, by name."""

    def __init__(self, base: Path, models: dict[str, Path], device: str = "auto") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = resolve_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(base)
        self.tokenizer.padding_side = "left"
        self.eos = self.tokenizer.eos_token_id
        self.pad = (
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos
        )
        load = {"dtype": torch.float32}
        self.base = AutoModelForCausalLM.from_pretrained(base, **load).to(self.device).eval()
        self.adapters: dict[str, str] = {}
        self.full: dict[str, Any] = {}
        peft_model = None
        for name, folder in models.items():
            if is_adapter_folder(folder):
                from peft import PeftModel

                key = "".join(c if c.isalnum() else "_" for c in name)  # peft: no "." in names
                if peft_model is None:
                    peft_model = PeftModel.from_pretrained(self.base, folder, adapter_name=key)
                else:
                    peft_model.load_adapter(folder, adapter_name=key)
                self.adapters[name] = key
            else:
                model = AutoModelForCausalLM.from_pretrained(folder, **load)
                self.full[name] = model.to(self.device).eval()
        self.peft = peft_model.to(self.device).eval() if peft_model is not None else None

    def _model(self, name: str):
        if name in self.full:
            return self.full[name], None
        if name in self.adapters:
            assert self.peft is not None
            self.peft.set_adapter(self.adapters[name])
            return self.peft, None
        if name == "base":
            return (self.peft, "off") if self.peft is not None else (self.base, None)
        raise ConfigError(
            f"No model {name!r}; known: base, {', '.join([*self.full, *self.adapters])}."
        )

    @torch.inference_mode()
    def generate(
        self, name: str, texts: Sequence[str], budget: int, batch: int, temperature: float = 0.0
    ) -> tuple[list[str], int]:
        """Answers to each text (sampled at ``temperature``; 0: greedy) and tokens generated."""
        model, mode = self._model(name)
        sampling: dict[str, Any] = {"do_sample": False}
        if temperature > 0:  # pure temperature sampling, as the reference's API calls
            sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        answers: list[str] = []
        generated = 0
        for start in range(0, len(texts), batch):
            chunk = list(texts[start : start + batch])
            enc = self.tokenizer(chunk, return_tensors="pt", padding=True)
            kwargs = dict(
                input_ids=enc["input_ids"].to(self.device),
                attention_mask=enc["attention_mask"].to(self.device),
                max_new_tokens=budget,
                **sampling,
                pad_token_id=self.pad,
                eos_token_id=self.eos,
            )
            if mode == "off":
                with model.disable_adapter():
                    out = model.generate(**kwargs)
            else:
                out = model.generate(**kwargs)
            for row in out[:, enc["input_ids"].shape[1] :].tolist():
                if self.eos in row:
                    row = row[: row.index(self.eos) + 1]
                generated += len(row)
                answers.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return answers, generated

    def answer_loss(self, name: str, tasks: Sequence[Task]) -> dict[str, float]:
        """Per task, model ``name``'s mean answer-token loss (``hub_merge.evaluate``'s rule)."""
        model, mode = self._model(name)
        evaluator = Evaluator(list(tasks), self.tokenizer, device=self.device, padding_side="left")
        if mode == "off":
            with model.disable_adapter():
                return evaluator.score(model)
        return evaluator.score(model)


def extract_answer(text: str) -> str:
    """The answer in a generated text: after the last "Answer:", else the first non-empty line.

    Stripped of surrounding whitespace; matched case-insensitively on "answer:".
    """
    low = text.lower()
    at = low.rfind("answer:")
    if at >= 0:
        return text[at + len("answer:") :].strip()
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return text.strip()


def aggregate_text(
    tokenizer: Any, prompt: str, responses: Sequence[str], *, chat: bool = True
) -> str:
    """The aggregator's (or a later-round proposer's) input: the answers in the system message.

    As the reference's ``inject_references_to_messages``: a system message with the
    aggregate-and-synthesize prompt and the numbered answers, then the user's query; through
    the tokenizer's chat template when it has one, else as plain text before the query.
    """
    listing = "\n".join(f"{i + 1}. {r}" for i, r in enumerate(responses))
    system = f"{AGGREGATE_PROMPT}\n{listing}"
    if chat and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{system}\n\n{prompt}"


def _encode_len(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def run_moa(
    pool: ModelPool,
    tasks: Sequence[Task],
    proposers: Sequence[str],
    aggregator: str = "base",
    settings: MoaSettings | None = None,
    *,
    samples: int = 3,
) -> MoaReport:
    """Run MoA on every row of ``tasks``; score extracted answers by exact match, and the loss.

    Exact match: :func:`extract_answer` of the final text equals the row's answer, both
    stripped (the strict whole-text match is reported too). Loss: the aggregator's answer-token
    loss on each row's answer given its input with the proposals.
    """
    settings = settings or MoaSettings()
    settings.check()
    torch.manual_seed(settings.seed)  # the sampling's draws
    if not proposers:
        raise ConfigError("MoA needs at least one proposer.")
    rows = [(t.name, ex) for t in tasks for ex in t.examples]
    if not rows:
        raise ConfigError("No rows to run MoA on.")
    budget = settings.max_new_tokens or 2 + max(
        _encode_len(pool.tokenizer, ex.answer) for _, ex in rows
    )
    prompts = [ex.prompt for _, ex in rows]
    calls, tokens = 0, 0
    answers: list[list[str]] = []
    for layer in range(settings.layers):
        if layer == 0:
            inputs = prompts  # round 1: the expert sees the prompt as it was trained on it
        else:
            inputs = [  # the previous round in the system message, as the reference
                aggregate_text(
                    pool.tokenizer, p, [a[i] for a in answers], chat=settings.chat_template
                )
                for i, p in enumerate(prompts)
            ]
        round_answers = []
        for name in proposers:
            out, n = pool.generate(name, inputs, budget, settings.batch_size, settings.temperature)
            round_answers.append(out)
            calls += len(rows)
            tokens += n
        answers = round_answers
    final_inputs = [
        aggregate_text(pool.tokenizer, p, [a[i] for a in answers], chat=settings.chat_template)
        for i, p in enumerate(prompts)
    ]
    final, n = pool.generate(
        aggregator, final_inputs, budget, settings.batch_size, settings.temperature
    )
    calls += len(rows)
    tokens += n
    correct: dict[str, list[int]] = {}
    strict: dict[str, list[int]] = {}
    for (task, ex), got in zip(rows, final, strict=True):
        correct.setdefault(task, []).append(int(extract_answer(got) == ex.answer.strip()))
        strict.setdefault(task, []).append(int(got.strip() == ex.answer.strip()))
    em = {t: sum(v) / len(v) for t, v in correct.items()}
    given: dict[str, list[Example]] = {}
    for (task, ex), text in zip(rows, final_inputs, strict=True):
        given.setdefault(task, []).append(Example(text, ex.answer))
    loss = pool.answer_loss(aggregator, [Task(t, tuple(v)) for t, v in given.items()])
    shown = [
        {
            "task": rows[i][0],
            "prompt": prompts[i],
            "answer": rows[i][1].answer,
            "proposals": [a[i] for a in answers],
            "final": final[i],
            "extracted": extract_answer(final[i]),
        }
        for i in range(min(samples, len(rows)))
    ]
    return MoaReport(
        exact_match=em,
        mean_exact_match=sum(em.values()) / len(em),
        calls_per_query=calls / len(rows),
        generated_tokens_per_query=tokens / len(rows),
        queries=len(rows),
        proposers=list(proposers),
        aggregator=aggregator,
        settings={**asdict(settings), "budget": budget},
        samples=shown,
        exact_match_strict={t: sum(v) / len(v) for t, v in strict.items()},
        answer_loss=loss,
        mean_answer_loss=sum(loss.values()) / len(loss),
    )


def moa(
    base: str | Path,
    experts: dict[str, str | Path],
    tasks: Sequence[Task],
    *,
    proposers: Sequence[str] | None = None,
    aggregator: str | Path = "base",
    settings: MoaSettings | None = None,
    device: str = "auto",
    endpoint: str | None = None,
    token: str | None = None,
) -> MoaReport:
    """Resolve models (Hub refs or folders), load them once, run :func:`run_moa`.

    ``aggregator``: ``"base"``, an expert's name, or another model ref (full model or an adapter
    of the base).
    """
    from .hub import pull

    (settings or MoaSettings()).check()
    chosen = list(proposers or experts)
    unknown = [p for p in chosen if p not in experts]
    if unknown:
        raise ConfigError(f"Unknown proposers {unknown}; experts are {sorted(experts)}.")
    hub = {"endpoint": endpoint, "token": token}
    base_path = pull(base, **hub).path
    folders = {n: pull(ref, **hub).path for n, ref in experts.items() if n in chosen}
    agg = str(aggregator)
    if agg != "base" and agg not in experts:
        folders["aggregator"] = pull(aggregator, **hub).path
        agg = "aggregator"
    elif agg in experts and agg not in folders:
        folders[agg] = pull(experts[agg], **hub).path
    pool = ModelPool(base_path, folders, device)
    report = run_moa(pool, tasks, chosen, agg, settings)
    report.aggregator = str(aggregator)
    return report
