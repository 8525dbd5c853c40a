"""transformers and peft load a model and a LoRA adapter by repo id from the local Hub."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import torch
from huggingface_hub import HfApi
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM


def _tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg)


def test_model_and_adapter_load_by_repo_id(local_hub, tmp_path):
    api = HfApi(endpoint=local_hub.endpoint, token=local_hub.token)
    base = _tiny_llama()
    base.save_pretrained(tmp_path / "base")
    (tmp_path / "base" / "README.md").write_text(
        "---\nlibrary_name: transformers\nlicense: mit\n---\n"
    )
    api.create_repo("alice/base")
    api.upload_folder(folder_path=tmp_path / "base", repo_id="alice/base")
    peft_model = get_peft_model(_tiny_llama(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.fill_(0.1)  # non-zero delta so the adapter changes the output
    peft_model.peft_config["default"].base_model_name_or_path = "alice/base"
    peft_model.save_pretrained(tmp_path / "ad")
    (tmp_path / "ad" / "README.md").write_text(
        "---\nbase_model: alice/base\nbase_model_relation: adapter\nlibrary_name: peft\n---\n"
    )
    api.create_repo("alice/ad")
    api.upload_folder(folder_path=tmp_path / "ad", repo_id="alice/ad")
    assert [m.id for m in api.list_models(filter="base_model:adapter:alice/base")] == ["alice/ad"]

    script = textwrap.dedent(
        """
        import torch
        from transformers import AutoModelForCausalLM
        from peft import PeftModel
        base = AutoModelForCausalLM.from_pretrained("alice/base")
        x = torch.tensor([[1, 2, 3]])
        y0 = base(x).logits
        model = PeftModel.from_pretrained(base, "alice/ad")
        y1 = model(x).logits
        assert not torch.allclose(y0, y1), "adapter had no effect"
        print("LOADED", tuple(y1.shape))
        """
    )
    env = {
        **os.environ,
        "HF_ENDPOINT": local_hub.endpoint,
        "HF_TOKEN": local_hub.read_token,
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_DISABLE_XET": "1",
    }
    env.pop("HF_HUB_OFFLINE", None)
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "LOADED (1, 3, 300)" in out.stdout


def test_concurrent_commits_never_lose_a_file(local_hub):
    api = HfApi(endpoint=local_hub.endpoint, token=local_hub.token)
    api.create_repo("alice/busy")
    errors: list[BaseException] = []

    def push(i: int) -> None:
        try:
            api.upload_file(
                path_or_fileobj=str(i).encode(), path_in_repo=f"f{i}.txt", repo_id="alice/busy"
            )
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=push, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    files = set(api.list_repo_files("alice/busy"))
    assert {f"f{i}.txt" for i in range(8)} <= files
    assert len(api.list_repo_commits("alice/busy")) == 9
