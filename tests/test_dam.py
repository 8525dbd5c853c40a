"""DAM (Differentiable Adaptive Merging) on the tiny zoo: init = uniform average, training lowers
the KL, the materialised model is the trained module, resume is exact, bad input is refused."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from hub_merge.dam import (
    CHECKPOINT_FILE,
    COEFFICIENTS_FILE,
    DamModel,
    DamSettings,
    DamTrainer,
    load_dam,
    materialise,
    read_coefficients,
    train_dam,
)
from hub_merge.errors import ConfigError, IncompatibleModelsError, TaskFileError
from hub_merge.evaluate import Example, load_task
from hub_merge.merge import MergeSession

FAST = {"lr": 2e-2, "train_batch_size": 4, "max_rows": 16, "max_length": 32}


def _load(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _inputs(n: int = 6, width: int = 12):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 250, (n, width), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -4:] = 0  # one padded row
    return ids, mask


def _prompts(zoo, names):
    return {n: load_task(zoo.train[n]).examples for n in names}


@pytest.fixture(scope="module")
def adapters(tiny_zoo):
    names = sorted(tiny_zoo.adapters)
    return {n: tiny_zoo.adapters[n] for n in names}


@pytest.mark.parametrize("kind", ["adapters", "experts"])
def test_untrained_dam_is_the_uniform_average(tiny_zoo, kind, tmp_path):
    experts = getattr(tiny_zoo, kind)
    names = sorted(experts)
    dam = DamModel([experts[n] for n in names], base=tiny_zoo.base, names=names, device="cpu")
    session = MergeSession(tiny_zoo.base, device="cpu")
    linear = session.merge(
        "linear",
        [str(experts[n]) for n in names],
        model_parameters=[{"weight": 1.0}] * len(names),
        base=None,
    )
    written = _load(dam.save_pretrained(tmp_path / "dam"))
    assert set(written) == set(linear)
    diff = max(float((written[n].float() - linear[n].float()).abs().max()) for n in linear)
    assert diff <= 1e-6
    # the module itself (functional_call) runs as that average
    ids, mask = _inputs()
    with torch.no_grad():
        ours = dam.logits(ids, mask)
        ref = session.to_model(linear)(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_lora_experts_are_held_factored_over_one_base(tiny_zoo, adapters):
    dam = DamModel(list(adapters.values()), base=tiny_zoo.base, names=list(adapters), device="cpu")
    assert dam.params, "the adapters differ, so something must be merged"
    untouched = []
    for p in dam.params.values():
        assert p.kind == "linear" and p.trainable
        assert all(d is None for d in p.dense)  # no dense copy per expert
        assert dam.coefficients[p.name].shape == (4, p.base.shape[1])  # one per input column
        if all(lora is None for lora in p.lora):
            untouched.append(p.name)
        else:
            assert all(lora is not None and lora.left.shape[1] == 8 for lora in p.lora)
    # as the reference: every linear layer has coefficients, lm_head included, although no
    # adapter touches it (the tiny zoo's lm_head is untied): it is the base times Σ_k c_k
    assert untouched == ["lm_head.weight"]
    head = dam.params["lm_head.weight"]
    c = torch.rand(4, head.base.shape[1])
    torch.testing.assert_close(head.merged(c), head.base * c.sum(0))


def test_select_expert_runs_the_expert_itself(tiny_zoo):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    names = ["add", "sort"]
    ids, mask = _inputs()
    full = DamModel([tiny_zoo.experts[n] for n in names], names=names, device="cpu")
    lora = DamModel(
        [tiny_zoo.adapters[n] for n in names], base=tiny_zoo.base, names=names, device="cpu"
    )
    for k, name in enumerate(names):
        expert = AutoModelForCausalLM.from_pretrained(tiny_zoo.experts[name]).eval()
        base = AutoModelForCausalLM.from_pretrained(tiny_zoo.base)
        adapter = PeftModel.from_pretrained(base, tiny_zoo.adapters[name]).eval()
        with torch.no_grad():
            torch.testing.assert_close(
                full.logits(ids, mask, select=k),
                expert(input_ids=ids, attention_mask=mask).logits,
                rtol=0,
                atol=1e-5,
            )
            torch.testing.assert_close(
                lora.logits(ids, mask, select=k),
                adapter(input_ids=ids, attention_mask=mask).logits,
                rtol=1e-5,  # peft computes x·W + (x·A)·B, we x·(W + B·A): rounding differs
                atol=1e-5,
            )


def test_a_few_steps_lower_the_loss_and_train_only_coefficients(tiny_zoo, adapters):
    dam = DamModel(list(adapters.values()), base=tiny_zoo.base, names=list(adapters), device="cpu")
    frozen = {n: p.detach().clone() for n, p in dam.model.named_parameters()}
    trainer = DamTrainer(dam, _prompts(tiny_zoo, adapters), DamSettings(steps=5, **FAST))
    before = trainer.loss()
    trainer.fit(progress=False)
    after = trainer.loss()
    assert len(trainer.history) == 5
    assert after < 0.8 * before, (before, after)
    for n, p in dam.model.named_parameters():
        assert torch.equal(p, frozen[n]), f"{n} changed: only coefficients may train"
    moved = [float((c.detach() - 0.25).abs().max()) for c in dam.coefficients.values()]
    assert max(moved) > 1e-3


def test_materialised_model_reproduces_the_trained_module(tiny_zoo, adapters, tmp_path):
    from transformers import AutoModelForCausalLM

    settings = DamSettings(steps=4, **{**FAST, "lr": 5e-2})
    result = train_dam(
        adapters,
        _prompts(tiny_zoo, adapters),
        tmp_path / "run",
        base=tiny_zoo.base,
        settings=settings,
        device="cpu",
        progress=False,
    )
    assert result.coefficients == tmp_path / "run" / COEFFICIENTS_FILE
    assert result.steps == 4 and len(result.history) == 4
    tensors, meta = read_coefficients(result.coefficients)
    assert any(float((t - 0.25).abs().max()) > 1e-3 for t in tensors.values())
    dam = load_dam(adapters, result.coefficients, base=tiny_zoo.base, device="cpu")
    out = materialise(
        adapters, result.coefficients, tmp_path / "merged", base=tiny_zoo.base, device="cpu"
    )
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    ids, mask = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=ids, attention_mask=mask).logits,
            dam.logits(ids, mask),
            rtol=0,
            atol=1e-5,
        )
        # and it is not the uniform average any more
        uniform = DamModel(
            list(adapters.values()), base=tiny_zoo.base, names=list(adapters), device="cpu"
        ).logits(ids, mask)
        assert float((dam.logits(ids, mask) - uniform).abs().max()) > 1e-3


def test_resume_from_a_checkpoint_ends_where_an_uninterrupted_run_ends(
    tiny_zoo, adapters, tmp_path
):
    prompts = _prompts(tiny_zoo, adapters)
    go = dict(base=tiny_zoo.base, device="cpu", progress=False)
    once = train_dam(
        adapters,
        prompts,
        tmp_path / "once",
        settings=DamSettings(steps=4, checkpoint_every=1, **FAST),
        **go,
    )
    train_dam(
        adapters,
        prompts,
        tmp_path / "twice",
        settings=DamSettings(steps=2, checkpoint_every=1, **FAST),
        **go,
    )
    assert (tmp_path / "twice" / CHECKPOINT_FILE).is_file()
    resumed = train_dam(
        adapters,
        prompts,
        tmp_path / "twice",
        settings=DamSettings(steps=4, checkpoint_every=1, **FAST),
        **go,
    )
    assert resumed.resumed_from == 2 and resumed.steps == 4
    assert resumed.history == pytest.approx(once.history)
    a, _ = read_coefficients(once.coefficients)
    b, _ = read_coefficients(resumed.coefficients)
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=0, atol=1e-7)
    # another setting refuses the checkpoint instead of mixing two trainings
    from hub_merge.errors import SearchStateError

    with pytest.raises(SearchStateError, match="other settings"):
        train_dam(
            adapters,
            prompts,
            tmp_path / "twice",
            settings=DamSettings(steps=5, **{**FAST, "lr": 1e-3}),
            **go,
        )


def test_bad_input_is_refused_before_training(tiny_zoo, tiny_models, adapters, tmp_path):
    prompts = _prompts(tiny_zoo, adapters)
    with pytest.raises(ConfigError, match="steps must be at least 1"):
        DamSettings(steps=0)
    empty = dict(prompts, sort=[])
    with pytest.raises(TaskFileError, match="no prompts for expert 'sort'"):
        train_dam(adapters, empty, tmp_path / "a", base=tiny_zoo.base, device="cpu")
    missing = {k: v for k, v in prompts.items() if k != "add"}
    with pytest.raises(ConfigError, match="'add' matches no task"):
        train_dam(adapters, missing, tmp_path / "b", base=tiny_zoo.base, device="cpu")
    rows = {"x": [Example("p", "a")], "y": [Example("p", "a")]}
    vocab = {"x": tiny_models.experts[0], "y": tiny_models.other_vocab}
    with pytest.raises(IncompatibleModelsError, match="vocab|embed"):
        train_dam(vocab, rows, tmp_path / "c", base=tiny_models.base, device="cpu")
    arch = {"x": tiny_models.adapters[0], "y": tiny_models.other_base_adapter}
    with pytest.raises(IncompatibleModelsError, match="another base"):
        train_dam(arch, rows, tmp_path / "d", base=tiny_models.base, device="cpu")
    assert not any((tmp_path / d).exists() for d in "abcd")


def test_training_objective_is_the_references_t2_kl_plus_similarity(tiny_zoo, adapters):
    # reference dam_trainer.py: KL(teacher/T ‖ student/T) · T², plus 0.01 × mean cosine similarity
    dam = DamModel(list(adapters.values()), base=tiny_zoo.base, names=list(adapters), device="cpu")
    trainer = DamTrainer(dam, _prompts(tiny_zoo, adapters), DamSettings(steps=1, **FAST))
    kl = torch.tensor(0.5)
    sim = float(dam.similarity())
    assert sim > 0
    assert float(trainer.objective(kl)) == pytest.approx(2.0**2 * 0.5 + 0.01 * sim)
    at_three = DamTrainer(
        dam, _prompts(tiny_zoo, adapters), DamSettings(steps=1, temperature=3.0, **FAST)
    )
    assert float(at_three.objective(kl)) == pytest.approx(9 * 0.5 + 0.01 * sim)


def test_the_gradient_norm_is_clipped_at_one_by_default(tiny_zoo, adapters):
    dam = DamModel(list(adapters.values()), base=tiny_zoo.base, names=list(adapters), device="cpu")
    # a similarity weight this large makes the raw gradient far larger than 1
    settings = DamSettings(steps=1, similarity_weight=1e3, optimizer="adamw", **FAST)
    assert settings.max_grad_norm == 1.0 and DamSettings().optimizer == "mofo"
    trainer = DamTrainer(dam, _prompts(tiny_zoo, adapters), settings)
    trainer.train_step()
    grads = [p.grad for p in dam.trainable()]
    assert trainer.grad_norm > 2
    assert float(torch.nn.utils.get_total_norm(grads)) == pytest.approx(1.0, rel=1e-4)
    unclipped = DamModel(
        list(adapters.values()), base=tiny_zoo.base, names=list(adapters), device="cpu"
    )
    off = DamTrainer(
        unclipped,
        _prompts(tiny_zoo, adapters),
        DamSettings(steps=1, similarity_weight=1e3, optimizer="adamw", max_grad_norm=0, **FAST),
    )
    off.train_step()
    assert float(torch.nn.utils.get_total_norm([p.grad for p in unclipped.trainable()])) > 2


def test_mofo_moves_only_the_top_alpha_entries_by_momentum_as_adamw_would():
    from hub_merge.dam.mofo import MoFOAdamW

    g = torch.Generator().manual_seed(0)
    start = torch.randn(4, 10, generator=g)
    grads = [torch.randn(4, 10, generator=g) for _ in range(3)]
    mofo_p = torch.nn.Parameter(start.clone())
    adam_p = torch.nn.Parameter(start.clone())
    mofo = MoFOAdamW([mofo_p], lr=0.1, alpha=0.3, weight_decay=0.01)
    adam = torch.optim.AdamW([adam_p], lr=0.1, weight_decay=0.01)
    for grad in grads:
        before = mofo_p.detach().clone()
        mofo_p.grad, adam_p.grad = grad.clone(), grad.clone()
        mofo.step()
        adam.step()
        momentum = mofo.state[mofo_p]["exp_avg"]
        top = set(momentum.abs().reshape(-1).topk(12).indices.tolist())  # ceil(0.3 · 40)
        moved = (mofo_p.detach() - before * (1 - 0.1 * 0.01)).abs().reshape(-1) > 1e-9
        assert set(moved.nonzero().reshape(-1).tolist()) == top
    # the moments are Adam's for every entry (the filter only masks the update)
    torch.testing.assert_close(mofo.state[mofo_p]["exp_avg"], adam.state[adam_p]["exp_avg"])
    one = torch.nn.Parameter(start.clone())
    full = MoFOAdamW([one], lr=0.1, alpha=1.0, weight_decay=0.01)
    ref = torch.nn.Parameter(start.clone())
    plain = torch.optim.AdamW([ref], lr=0.1, weight_decay=0.01)
    for grad in grads:
        one.grad, ref.grad = grad.clone(), grad.clone()
        full.step()
        plain.step()
    torch.testing.assert_close(one.detach(), ref.detach())  # alpha 1 is AdamW
    # DAM's filter is per expert (row), as the reference's one parameter per expert and layer
    rows = torch.nn.Parameter(start.clone())
    per_row = MoFOAdamW([rows], lr=0.1, alpha=0.3, rows_are_blocks=True)
    rows.grad = grads[0].clone()
    per_row.step()
    moved = (rows.detach() - start).abs() > 1e-9
    assert moved.sum(1).tolist() == [3, 3, 3, 3]  # ceil(0.3 · 10) in every row
    top = grads[0].abs().topk(3, dim=1).indices  # the first momentum is (1 − β1)·g
    assert all(
        set(moved[i].nonzero().reshape(-1).tolist()) == set(top[i].tolist()) for i in range(4)
    )
    with pytest.raises(ConfigError, match="mofo_alpha"):
        DamSettings(mofo_alpha=0)


def test_bias_coefficients_start_at_one_as_in_the_reference(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, attention_bias=True,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    folders = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("bias"):
                    p.normal_()
        model.save_pretrained(tmp_path / f"m{seed}")
        folders.append(tmp_path / f"m{seed}")
    states = [_load(f) for f in folders]
    dam = DamModel(folders, names=["a", "b"], device="cpu")
    name = "model.layers.0.self_attn.q_proj.bias"
    assert dam.params[name].kind == "bias"
    torch.testing.assert_close(dam.coefficients[name], torch.ones(2))
    merged = dam.merged_state_dict()[name]
    torch.testing.assert_close(merged, states[0][name] + states[1][name])  # the reference: Σ b_k
    weight = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(
        dam.merged_state_dict()[weight], (states[0][weight] + states[1][weight]) / 2
    )
    uniform = DamModel(folders, names=["a", "b"], device="cpu", bias_init="uniform")
    torch.testing.assert_close(
        uniform.merged_state_dict()[name], (states[0][name] + states[1][name]) / 2
    )


def test_dam_on_a_sessions_base_shares_it_and_trains_the_same(tiny_zoo, adapters, tmp_path):
    """A search hands DAM its session's base (Workspace.base_state): the module then holds no
    second base, never writes to the session's tensors, and trains exactly as from disk."""
    session = MergeSession(tiny_zoo.base, device="cpu")
    before = {n: t.clone() for n, t in session.base.state.items()}
    ptrs = {t.data_ptr() for t in session.base.state.values()}
    settings = DamSettings(steps=3, **FAST)
    prompts = _prompts(tiny_zoo, adapters)
    runs = {}
    for name, state in (("disk", None), ("shared", session.base.state)):
        runs[name] = train_dam(
            adapters,
            prompts,
            tmp_path / name,
            base=tiny_zoo.base,
            settings=settings,
            device="cpu",
            progress=False,
            base_state=state,
        )
    assert runs["shared"].history == runs["disk"].history
    shared, _ = read_coefficients(runs["shared"].coefficients)
    disk, _ = read_coefficients(runs["disk"].coefficients)
    assert shared.keys() == disk.keys()
    for n, t in disk.items():  # the same coefficients, bit for bit
        assert torch.equal(shared[n], t), n
    dam = load_dam(
        adapters, runs["shared"].coefficients, base=tiny_zoo.base, base_state=session.base.state
    )
    own = [p.data_ptr() for p in dam.model.parameters()]
    assert own and all(p in ptrs for p in own), "the module copied the session's base"
    merged = dam.merged_state_dict()
    from_disk = load_dam(adapters, runs["disk"].coefficients, base=tiny_zoo.base)
    for n, t in from_disk.merged_state_dict().items():
        torch.testing.assert_close(merged[n], t, rtol=0, atol=0)
    for n, t in before.items():
        assert torch.equal(session.base.state[n], t), f"{n}: DAM wrote to the session's base"


def test_a_float16_teacher_cache_is_half_the_size_and_trains_alike(tiny_zoo, adapters):
    """teacher_dtype float16 (the smol demo's): half the cache, the KL still in float32, the
    losses within float16's rounding of float32's; float32 stays the default and out of the
    recipe (recipes made before the setting keep their digests)."""
    prompts = _prompts(tiny_zoo, adapters)
    runs = {}
    for dtype in ("float32", "float16"):
        dam = DamModel(list(adapters.values()), base=tiny_zoo.base, names=list(adapters))
        trainer = DamTrainer(dam, prompts, DamSettings(steps=3, teacher_dtype=dtype, **FAST))
        assert trainer.cache_teacher()
        cached = [t for rows in trainer._teacher for t in rows]
        assert {t.dtype for t in cached} == {getattr(torch, dtype)}
        trainer.fit(progress=False)
        runs[dtype] = (sum(t.numel() * t.element_size() for t in cached), trainer.history)
    assert runs["float16"][0] * 2 == runs["float32"][0]
    assert runs["float16"][1] == pytest.approx(runs["float32"][1], rel=1e-3)
    assert "teacher_dtype" not in DamSettings().recipe_settings()
    assert DamSettings(teacher_dtype="float16").recipe_settings()["teacher_dtype"] == "float16"
    with pytest.raises(ConfigError, match="teacher_dtype"):
        DamSettings(teacher_dtype="int8")


@pytest.mark.parametrize("kind", ["adapters", "experts"])
def test_the_factored_forward_gives_the_dense_merges_logits_and_gradients(tiny_zoo, kind):
    # LoRA experts apply their merge without forming the merged weight; full experts cannot
    experts = getattr(tiny_zoo, kind)
    names = sorted(experts)
    folders = [experts[n] for n in names]

    def run(factored: bool):
        dam = DamModel(folders, base=tiny_zoo.base, names=names, device="cpu", factored=factored)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():  # coefficients away from 1/N, so each expert's terms matter
            for c in dam.trainable():
                c.copy_(torch.rand(c.shape, generator=g) + 0.2)
        ids, mask = _inputs()
        logits = dam.logits(ids, mask)
        (logits.float().pow(2).mean()).backward()
        return dam, logits.detach(), {n: c.grad.clone() for n, c in dam.coefficients.items()
                                      if isinstance(c, torch.nn.Parameter)}  # fmt: skip

    fast, logits, grads = run(True)
    dense, want_logits, want_grads = run(False)
    assert not dense.factored
    if kind == "adapters":  # every linear layer, lm_head included, is factored
        linears = [n for n, p in fast.params.items() if p.kind == "linear"]
        assert sorted(fast.factored) == sorted(linears) and "lm_head.weight" in fast.factored
    else:
        assert not fast.factored
    torch.testing.assert_close(logits, want_logits, rtol=1e-4, atol=1e-5)
    assert grads.keys() == want_grads.keys()
    for name in grads:
        scale = float(want_grads[name].abs().max())  # float32 round-off in another order
        torch.testing.assert_close(grads[name], want_grads[name], rtol=1e-3, atol=1e-4 * scale)
    assert all("forward" not in vars(m) for m in fast.factored.values())  # restored


def test_only_the_loss_positions_are_projected_and_training_is_unchanged(tiny_zoo, adapters):
    """With ``keep`` the merge (and each expert) projects only the kept positions: the same
    logits as projecting every position and picking them, and the same training."""
    from hub_merge.evaluate.scoring import KEEPS_LOGITS

    names = list(adapters)
    ids, mask = _inputs()
    keep = mask.bool().clone()
    keep[:, :3] = False  # the prompt's positions do not count
    runs = []
    for kept in (True, False):
        dam = DamModel(list(adapters.values()), base=tiny_zoo.base, names=names, device="cpu")
        cls = type(dam.model)
        KEEPS_LOGITS[cls] = kept  # False: the fallback, every position projected then picked
        try:
            with torch.no_grad():
                for select in (None, 0):
                    picked = dam.logits(ids, mask, select=select, keep=keep)
                    assert picked.shape == (int(keep.sum()), dam.model.config.vocab_size)
                    full = dam.logits(ids, mask, select=select)[keep]
                    torch.testing.assert_close(picked, full, rtol=0, atol=1e-5)
            assert KEEPS_LOGITS[cls] is kept  # the cheap path ran where the model takes it
            trainer = DamTrainer(
                dam, _prompts(tiny_zoo, names), DamSettings(steps=3, **FAST), seed=0
            )
            runs.append([trainer.train_step() for _ in range(3)])
        finally:
            KEEPS_LOGITS.pop(cls, None)
    assert runs[0] == pytest.approx(runs[1], rel=1e-5)
