"""The CLI as a whole: every command listed, documented with an example, failing with exit codes."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from hub_merge.cli import COMMANDS, cli, main

EXPECTED = [
    "pull",
    "discover",
    "kinship",
    "plan",
    "merge",
    "search",
    "compare",
    "moe",
    "moa",
    "card",
    "push",
    "demo",
    "hub",
    "extension",
]


def test_help_lists_every_command_in_pipeline_order():
    out = CliRunner().invoke(cli, ["--help"]).output
    positions = [out.index(f"  {name} ") for name in EXPECTED]
    assert positions == sorted(positions) and set(COMMANDS) == set(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_every_command_has_help_with_an_example(name):
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output and f"hub-merge {name}" in result.output


def test_usage_errors_and_typed_errors_have_distinct_exit_codes(tmp_path, capsys):
    assert main(["push"]) == 2  # click usage error: RUN and --repo missing
    capsys.readouterr()
    code = main(["push", str(tmp_path), "--repo", "me/x", "--endpoint", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and "not a finished search run" in err  # ConfigError, before any network


def test_search_options_take_several_words_after_one_flag_through_public_click():
    from hub_merge.cli.search import command as search_command

    args = ["--base", "b", "--experts", "a1", "a2", "--experts=a3", "a4", "--tasks", "t.jsonl"]
    ctx = search_command.make_context("search", [*args, "--out", "run", "--experts", "-odd"])
    assert ctx.params["experts"] == ("a1", "a2", "a3", "a4", "-odd")
    assert ctx.params["tasks"] == ("t.jsonl",) and ctx.params["base"] == "b"
