"""Best-of-n rankings (generate/rerank.py): the Reviewer's layout, its scores, the choice."""

import pytest
import torch

from codelm.generate import Prompt, SamplingConfig
from codelm.generate.best import best_of, choose
from codelm.generate.generator import Completion
from codelm.generate.rerank import RANKS, description, reviewer_text, scores_of, span_logprobs
from codelm.model import ModelConfig, Transformer

PROMPT = 'def multiply(a, b):\n    """Return the product\n    of a and b."""\n'


def _cand(text: str, prompt: Prompt, logprobs=(-1.0, -2.0)) -> Completion:
    return Completion(text, "end_of_text", [1] * len(logprobs), list(logprobs), prompt)


def test_the_description_is_the_docstring_and_the_code_goes_without_it():
    code, desc = description(_cand("    return a * b\n", Prompt(PROMPT)))
    assert desc == "Return the product\nof a and b."
    assert code == "def multiply(a, b):\n    return a * b\n"
    context, scored = reviewer_text(code, desc)
    assert context.endswith("    return a * b\n\n")
    assert scored == "# Return the product\n# of a and b.\n\n"


def test_the_completed_function_is_the_one_reviewed_not_an_earlier_one():
    prompt = Prompt('def f():\n    """Other."""\n    return 1\n\n\ndef g(x):\n    """Twice x."""\n')
    code, desc = description(_cand("    return 2 * x\n", prompt))
    assert desc == "Twice x." and '"""Other."""' in code and "Twice" not in code


def test_an_instruction_is_its_own_description():
    prompt = Prompt("def f(x):\n", instruction="double x")
    assert description(_cand("    return 2 * x\n", prompt)) == ("def f(x):\n    return 2 * x\n", "double x")


@pytest.mark.parametrize("prompt", [Prompt("def f(x):\n"), Prompt("x = 1\n")])
def test_nothing_to_review_without_a_docstring(prompt):
    assert description(_cand("    return x\n", prompt)) is None


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=32)).eval()


def test_span_logprobs_match_one_sequence_scored_alone(model, tokenizer):
    pairs = [("def f(x):\n    return x\n\n", "# Return x.\n\n"), ("y = 2\n", "# two, and more words\n")]
    batch = span_logprobs(model, tokenizer, pairs)
    for (context, scored), got in zip(pairs, batch, strict=True):
        ctx, part = tokenizer.encode(context), tokenizer.encode(scored)
        ids = torch.tensor([[tokenizer.bos_id, *ctx, *part]])
        with torch.no_grad():
            logp = model(ids)[0].log_softmax(-1)
        want = [logp[len(ctx) + i, t].item() for i, t in enumerate(part)]
        assert got == pytest.approx(want, abs=1e-4)


def test_each_ranking_scores_as_documented(model, tokenizer):
    cands = [_cand("    return a\n", Prompt(PROMPT), (-0.5,)), _cand("    return a * b\n", Prompt(PROMPT))]
    review = span_logprobs(model, tokenizer, [reviewer_text(*description(c)) for c in cands])
    assert scores_of(model, tokenizer, cands, "likelihood") == [-0.5, -1.5]
    summed = scores_of(model, tokenizer, cands, "coder-reviewer")
    assert summed == pytest.approx([-0.5 + sum(review[0]), -3.0 + sum(review[1])])
    normed = scores_of(model, tokenizer, cands, "n-coder-reviewer")
    assert normed == pytest.approx(
        [-0.5 + sum(review[0]) / len(review[0]), -1.5 + sum(review[1]) / len(review[1])]
    )
    with pytest.raises(ValueError):
        scores_of(model, tokenizer, cands, "shortest")


@pytest.mark.parametrize("rank", RANKS)
def test_choose_drops_what_does_not_parse_and_orders_the_rest_by_score(model, tokenizer, rank):
    texts = ["    return a\n", "    return a * b\n", "    return (a\n", "    x = a * b\n    return x\n"]
    cands = [_cand(t, Prompt(PROMPT), (-0.3 * (i + 1),) * (i + 1)) for i, t in enumerate(texts)]
    best, report = choose(model, tokenizer, cands, rank)
    assert [c.text for c, _ in report.dropped] == ["    return (a\n"]
    assert len(report.ranked) == 3
    scores = scores_of(model, tokenizer, report.ranked, rank)
    assert scores == sorted(scores, reverse=True) and best is report.ranked[0]


def test_best_of_is_reproducible_under_a_seed(model, tokenizer):
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=12, seed=0)
    first, _ = best_of(model, tokenizer, PROMPT, 6, cfg)
    again, _ = best_of(model, tokenizer, PROMPT, 6, cfg)
    assert (again.text, again.tokens) == (first.text, first.tokens)


def test_the_cli_offers_the_rankings_default_first():
    from codelm.cli import RANK_CHOICES
    from codelm.generate.rerank import DEFAULT_RANK

    assert sorted(RANK_CHOICES) == sorted(RANKS) and RANK_CHOICES[0] == DEFAULT_RANK
