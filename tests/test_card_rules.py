"""Card metadata rules shared by the local Hub and the card module."""

from __future__ import annotations

import pytest

from hub_merge.card_rules import (
    FrontMatterError,
    base_model_links,
    check_card_metadata,
    check_readme,
    parse_front_matter,
)


def test_front_matter_parsing():
    assert parse_front_matter("# no metadata") is None
    assert parse_front_matter("---\nlicense: mit\n---\nbody") == {"license": "mit"}
    with pytest.raises(FrontMatterError):
        parse_front_matter("---\n- a list\n---\n")
    assert check_readme("---\nkey: [unclosed\n---\n").errors


@pytest.mark.parametrize(
    ("meta", "fragment"),
    [
        ({"base_model": "../etc"}, "base_model"),
        ({"base_model": "a/b", "base_model_relation": "mixed"}, "base_model_relation"),
        ({"base_model_relation": "merge"}, "missing"),
        ({"license": "my-license"}, "license"),
        (
            {
                "model-index": [
                    {"name": "m", "results": [{"task": {}, "dataset": {}, "metrics": []}]}
                ]
            },
            "task",
        ),
        ({"tags": [1, 2]}, "tags"),
    ],
)
def test_bad_metadata_is_named(meta, fragment):
    check = check_card_metadata(meta)
    assert not check.ok and any(fragment in e for e in check.errors), check.errors


def test_good_merge_card_and_model_tree_links():
    meta = {
        "base_model": ["org/a", "org/b"],
        "base_model_relation": "merge",
        "library_name": "transformers",
        "license": "apache-2.0",
        "model-index": [
            {
                "name": "m",
                "results": [
                    {
                        "task": {"type": "text-generation"},
                        "dataset": {"type": "t", "name": "T"},
                        "metrics": [{"type": "accuracy", "value": 0.5}],
                    }
                ],
            }
        ],
    }
    assert check_card_metadata(meta).errors == []
    assert base_model_links(meta) == [("merge", "org/a"), ("merge", "org/b")]
    assert base_model_links({"base_model": "org/a", "library_name": "peft"}) == [
        ("adapter", "org/a")
    ]
    assert base_model_links({"base_model": "org/a"}) == [("finetune", "org/a")]
    assert check_card_metadata({}).warnings
