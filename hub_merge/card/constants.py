"""What every card module shares: the template, the images, the methods' plain words and papers."""

from __future__ import annotations

from ..merge.registry import method_for  # light: hub-merge's own methods describe themselves

TEMPLATE_NAME = "model_card_template.md"
IMAGES = ("fitness.png", "family_tree.png", "kinship.png", "dam_coefficients.png")
DEPENDENCIES = ("torch", "transformers", "peft", "mergekit", "huggingface_hub", "safetensors")

# Plain-words description and paper of mergekit's methods a card may name (hub-merge's own
# methods carry theirs in their registry entry, see method_words); unknown methods still render.
METHODS: dict[str, tuple[str, str, str | None]] = {
    "slerp": (
        "SLERP",
        "blends two models along the arc between their weights instead of a straight line, "
        "which keeps the size of the weights intact",
        "https://dl.acm.org/doi/10.1145/325165.325242",
    ),
    "linear": (
        "weighted average",
        "averages the models' weights (a 'model soup')",
        "https://arxiv.org/abs/2203.05482",
    ),
    "task_arithmetic": (
        "task arithmetic",
        "adds up what each model changed relative to the base model (its 'task vector')",
        "https://arxiv.org/abs/2212.04089",
    ),
    "ties": (
        "TIES",
        "keeps each model's largest changes, settles sign disagreements by a vote, then adds them",
        "https://arxiv.org/abs/2306.01708",
    ),
    "dare_ties": (
        "DARE-TIES",
        "randomly drops most of each model's changes, rescales the rest, then merges them as TIES",
        "https://arxiv.org/abs/2311.03099",
    ),
    "dare_linear": (
        "DARE",
        "randomly drops most of each model's changes, rescales the rest, then adds them",
        "https://arxiv.org/abs/2311.03099",
    ),
    "breadcrumbs": (
        "Model Breadcrumbs",
        "drops both the tiniest and the largest changes before adding them",
        "https://arxiv.org/abs/2312.06795",
    ),
    "della": (
        "DELLA",
        "drops changes with a probability that falls with their size, then adds the rest",
        "https://arxiv.org/abs/2406.11617",
    ),
    "model_stock": (
        "Model Stock",
        "picks how far to move from the base using the angle between the models' changes",
        "https://arxiv.org/abs/2403.19522",
    ),
}
KINSHIP_PAPER = "https://arxiv.org/abs/2410.12613"


def method_words(method: str) -> tuple[str, str, str | None]:
    """A method's title, plain words and paper: its registry entry's, else mergekit's table."""
    words = method_for(method).words
    if words is not None:
        return words.title, words.plain, words.paper
    return METHODS.get(method, (method, "a mergekit merge method", None))


# --- license ------------------------------------------------------------------------------------
