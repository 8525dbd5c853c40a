"""mergekit's tokenizer settings (tokenizer_source, tokenizer, chat_template) against mergekit-yaml.

The configs live in tests/data/mergekit_examples/tokenizer/, model names as placeholders filled
here with tiny Llamas whose vocabularies differ (``tokenizer_models``): the output must have
mergekit-yaml's tensors, vocabulary, vocab_size and chat template.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hub_merge.cli import main
from hub_merge.errors import ConfigError
from hub_merge.merge import MergeRecipe, merge_to_folder
from tests.fixtures.merge import load_folder, run_mergekit_yaml

EXAMPLES = Path(__file__).parent / "data" / "mergekit_examples" / "tokenizer"
FILES = sorted(EXAMPLES.glob("*.yml"))
# mergekit numbers a union's new plain words in a Rust HashMap's order (another one each run);
# hub-merge by id: the same rows for the same tokens, under ids that may differ.
RANDOM_IDS = {"tokens"}


def _config(path: Path, models, root: Path) -> Path:
    text = path.read_text()
    for key in ("base", "extended", "other", "same", "adapter"):
        text = text.replace("{" + key + "}", str(getattr(models, key)))
    out = root / path.name
    out.write_text(text)
    return out


def _vocab(folder: Path) -> dict[str, int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder).get_vocab()


def test_the_tokenizer_examples_are_there():
    assert [p.stem for p in FILES] == [
        "chat_auto",
        "lora_union",
        "slices_union",
        "source_base",
        "source_model",
        "tokens",
        "union",
    ]
    assert all("expect: mergekit" in p.read_text().splitlines()[0] for p in FILES)


@pytest.fixture(scope="module")
def mergekit_tokenizer_outputs(tokenizer_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("mk_tokenizer")
    configs = {p.stem: _config(p, tokenizer_models, root) for p in FILES}
    jobs = [(str(c), str(root / f"out_{n}")) for n, c in configs.items()]
    run_mergekit_yaml(jobs, extra=("--lora-merge-cache", str(root / "lora_cache")))
    return configs, {n: root / f"out_{n}" for n in configs}


@pytest.mark.slow
@pytest.mark.parametrize("name", [p.stem for p in FILES])
def test_tokenizer_examples_give_mergekit_yaml_tensors_and_tokenizer(
    name, mergekit_tokenizer_outputs, tmp_path
):
    configs, outputs = mergekit_tokenizer_outputs
    recipe = MergeRecipe.from_yaml(configs[name])
    out = merge_to_folder(recipe, tmp_path / "ours", device="cpu", progress=False)
    ours, theirs = load_folder(out), load_folder(outputs[name])
    v_ours, v_theirs = _vocab(out), _vocab(outputs[name])
    assert set(ours) == set(theirs)
    assert set(v_ours) == set(v_theirs)
    cfg_ours = json.loads((out / "config.json").read_text())
    cfg_theirs = json.loads((outputs[name] / "config.json").read_text())
    assert cfg_ours["vocab_size"] == cfg_theirs["vocab_size"] == ours["lm_head.weight"].shape[0]
    for side in ("tokenizer_config.json", "tokenizer.json"):  # the files as mergekit saves them
        if side == "tokenizer.json" and name in RANDOM_IDS:
            continue
        theirs_file = json.loads((outputs[name] / side).read_text())
        assert json.loads((out / side).read_text()) == theirs_file, side
    template = outputs[name] / "chat_template.jinja"  # where transformers 5 saves it
    if template.exists():
        assert (out / "chat_template.jinja").read_text() == template.read_text()
    else:
        assert not (out / "chat_template.jinja").exists()
    for tensor in theirs:
        a, b = ours[tensor], theirs[tensor]
        assert a.dtype == b.dtype and a.shape == b.shape, tensor
        if name not in RANDOM_IDS or tensor not in ("lm_head.weight", "model.embed_tokens.weight"):
            assert name in RANDOM_IDS or v_ours == v_theirs
            torch.testing.assert_close(a, b, rtol=0, atol=0)
            continue
        # the same row for each token. The padding rows are each input's mean token row, summed
        # in another order (mergekit's own varies by run): a last-bit difference, which ties'
        # magnitude ranking may turn into another choice for an element or two
        for token, i in v_ours.items():
            assert torch.equal(a[i], b[v_theirs[token]]), (tensor, token)
        pad_a, pad_b = a[len(v_ours) :], b[len(v_theirs) :]
        assert pad_a.shape[0] == 6
        assert (~torch.isclose(pad_a, pad_b, rtol=1e-5, atol=1e-6)).float().mean() < 0.05


def test_a_union_adds_the_inputs_tokens_with_their_own_rows(tokenizer_models, tmp_path):
    config = _config(EXAMPLES / "tokens.yml", tokenizer_models, tmp_path)
    out = merge_to_folder(MergeRecipe.from_yaml(config), tmp_path / "m", progress=False)
    vocab, merged = _vocab(out), load_folder(out)
    base_vocab = _vocab(tokenizer_models.base)
    assert {"<|im_start|>", "<|im_end|>", "<tool>", "<new>", "x0", "x5"} <= set(vocab)
    assert len(vocab) == 106 and merged["model.embed_tokens.weight"].shape == (112, 32)
    extended = load_folder(tokenizer_models.extended)
    im_start = _vocab(tokenizer_models.extended)["<|im_start|>"]
    # one model has it: every input's row is the extended model's, so the merge gives it back
    torch.testing.assert_close(
        merged["model.embed_tokens.weight"][vocab["<|im_start|>"]],
        extended["model.embed_tokens.weight"][im_start],
    )
    assert not merged["model.embed_tokens.weight"][vocab["<new>"]].any()  # kind: zero
    assert all(vocab[t] == i for t, i in base_vocab.items())  # the base's tokens keep their ids


def test_the_union_is_the_same_every_time(tokenizer_models, tmp_path):
    """mergekit-yaml's union ids follow a Rust HashMap's order, new with every tokenizer loaded
    (and every process); hub-merge's follow the inputs' ids."""
    from transformers import AutoTokenizer

    from hub_merge.merge.vocab import build_vocabulary

    orders = {
        tuple(AutoTokenizer.from_pretrained(tokenizer_models.other).get_vocab()) for _ in "ab"
    }
    assert len(orders) == 2  # what mergekit's union reads: another order at each load
    recipe = MergeRecipe.from_yaml(_config(EXAMPLES / "tokens.yml", tokenizer_models, tmp_path))
    inputs = [recipe.base] + [e.model for e in recipe.models]
    vocabs = [
        build_vocabulary(recipe.tokenizer, recipe.base, inputs, recipe.base).tokenizer.get_vocab()
        for _ in range(3)
    ]
    assert vocabs[0] == vocabs[1] == vocabs[2]
    assert [vocabs[0][f"x{i}"] for i in range(6)] == list(range(96, 102))


def test_chat_template_alone_saves_the_donors_tokenizer_with_it(tokenizer_models, tmp_path):
    b, s = tokenizer_models.base, tokenizer_models.same
    recipe = MergeRecipe.from_yaml(
        f"merge_method: linear\nmodels:\n  - {{model: {b}, parameters: {{weight: 0.5}}}}\n"
        f"  - {{model: {s}, parameters: {{weight: 0.5}}}}\nchat_template: chatml\n"
    )
    out = merge_to_folder(recipe, tmp_path / "m", progress=False)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert "<|im_start|>" in tok.chat_template
    assert tok.get_vocab() == _vocab(b)
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 96


def test_tokenizer_settings_are_refused_in_one_line_when_wrong(tokenizer_models, tmp_path):
    b, e = tokenizer_models.base, tokenizer_models.extended
    head = f"merge_method: linear\nmodels:\n  - {{model: {b}, parameters: {{weight: 1}}}}\n"
    cases = [
        ("tokenizer_source: union\ntokenizer: {source: base}\n", "not both"),
        ("chat_template: nosuchtemplate\n", "nosuchtemplate"),
        ("tokenizer:\n  tokens:\n    a: {source: {kind: nope}}\n", "tokens['a']"),
        ("tokenizer:\n  pad_to_multiple_of: 0\n", "pad_to_multiple_of"),
        (f"tokenizer:\n  tokens:\n    a: {{source: {e}}}\n", "not an input of the merge"),
        (
            f"tokenizer:\n  tokens:\n    a: {{source: {{kind: model_token, model: {b}, "
            "token: nope}}\n",
            "has no such token",
        ),
        ("tokenizer:\n  tokens:\n    brand_new: {}\n", "needs a `source`"),
    ]
    for tail, words in cases:
        with pytest.raises(ConfigError) as err:
            recipe = MergeRecipe.from_yaml(head + tail)
            merge_to_folder(recipe, tmp_path / "out", progress=False)
        assert words in str(err.value) and "\n" not in str(err.value), tail
        assert not (tmp_path / "out").exists()


def test_a_model_without_tokenizer_files_is_refused_by_name(tiny_models, tmp_path):
    b, e = tiny_models.base, tiny_models.experts[0]
    recipe = MergeRecipe.from_yaml(
        f"merge_method: linear\nmodels:\n  - {{model: {b}, parameters: {{weight: 0.5}}}}\n"
        f"  - {{model: {e}, parameters: {{weight: 0.5}}}}\ntokenizer_source: union\n"
    )
    with pytest.raises(ConfigError, match="tokenizer files"):
        merge_to_folder(recipe, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_the_recipe_exports_its_tokenizer_to_mergekit_yaml(tokenizer_models, tmp_path):
    recipe = MergeRecipe.from_yaml(_config(EXAMPLES / "tokens.yml", tokenizer_models, tmp_path))
    again = MergeRecipe.from_yaml(recipe.to_mergekit_yaml())
    assert again.tokenizer == recipe.tokenizer and again.chat_template == "chatml"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_plan_accepts_each_tokenizer_example(path, tokenizer_models, tmp_path, capsys):
    assert main(["plan", str(_config(path, tokenizer_models, tmp_path)), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert not [i for i in plan["issues"] if i.get("blocking", True)]


def test_plan_refuses_a_union_whose_inputs_lack_tokenizers(tiny_models, tmp_path, capsys):
    b, e = tiny_models.base, tiny_models.experts[0]
    config = tmp_path / "c.yml"
    config.write_text(
        f"merge_method: linear\nmodels:\n  - {{model: {b}, parameters: {{weight: 0.5}}}}\n"
        f"  - {{model: {e}, parameters: {{weight: 0.5}}}}\ntokenizer_source: union\n"
    )
    assert main(["plan", str(config), "--json"]) != 0
    issues = json.loads(capsys.readouterr().out)["issues"]
    assert any(i["what"] == "tokenizer" and "tokenizer files" in i["detail"] for i in issues)


def test_plan_and_merge_cli_accept_a_union(tokenizer_models, tmp_path, capsys):
    config = _config(EXAMPLES / "tokens.yml", tokenizer_models, tmp_path)
    assert main(["plan", str(config), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert not [i for i in plan["issues"] if i.get("blocking", True)]
    assert main(["merge", str(config), "--out", str(tmp_path / "m")]) == 0
    tensors = load_folder(tmp_path / "m")
    written = sum(t.numel() * t.element_size() for t in tensors.values())
    # the estimate counts the 112-row embeddings and head, not the base's 96 rows
    assert tensors["lm_head.weight"].shape[0] == 112
    assert plan["estimates"]["output_bytes"] == written


def test_the_cli_pulls_the_models_the_tokenizer_settings_name(
    local_hub, tokenizer_models, tmp_path, capsys
):
    from hub_merge.hub import get_api

    api = get_api(local_hub.endpoint, local_hub.token)
    refs = {}
    for key in ("base", "extended", "other"):
        repo_id = f"{local_hub.user}/tok-{key}"
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=getattr(tokenizer_models, key))
        refs[key] = repo_id
    text = (EXAMPLES / "tokens.yml").read_text()
    for key, repo_id in refs.items():
        text = text.replace("{" + key + "}", repo_id)
    config = tmp_path / "hub.yml"
    config.write_text(text)
    hub = ["--endpoint", local_hub.endpoint, "--token", local_hub.token]
    assert main(["plan", str(config), "--json", *hub]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert not [i for i in plan["issues"] if i.get("blocking", True)]
    assert main(["merge", str(config), "--out", str(tmp_path / "out"), *hub]) == 0
    local = _config(EXAMPLES / "tokens.yml", tokenizer_models, tmp_path)
    mine = merge_to_folder(MergeRecipe.from_yaml(local), tmp_path / "local", progress=False)
    pulled, here = load_folder(tmp_path / "out"), load_folder(mine)
    assert _vocab(tmp_path / "out") == _vocab(mine)
    assert set(pulled) == set(here) and all(torch.equal(pulled[k], here[k]) for k in here)
