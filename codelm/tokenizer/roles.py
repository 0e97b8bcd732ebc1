"""codelm's token roles and how each tokenizer family spells them.

codelm lays documents out with seven roles: end of text (EOT), padding (PAD), the
three fill-in-the-middle markers (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE) and the two
instruction markers (INSTRUCTION, CODE). A codelm tokenizer has all seven under
these names; a pretrained model's tokenizer.json has its own spellings, or none:

- end of text: `<|endoftext|>` (codelm, GPT-2, SmolLM2, StarCoder2, Qwen2.5),
  `<｜end▁of▁sentence｜>` (DeepSeek-Coder), `</s>` (Llama-2, CodeLlama, Mistral),
  `<|end_of_text|>` (Llama 3), `<eos>`;
- padding: `<|pad|>` (codelm), `<pad>`, `<|padding|>`; StarCoder's `<fim_pad>` pads
  a fill-in-the-middle hole, not a batch, so it is no padding role;
- fill in the middle: `<|fim_prefix|>` `<|fim_suffix|>` `<|fim_middle|>` (codelm,
  Qwen2.5-Coder), `<fim_prefix>` `<fim_suffix>` `<fim_middle>` (StarCoder,
  StarCoder2, SmolLM2), `<｜fim▁begin｜>` `<｜fim▁hole｜>` `<｜fim▁end｜>` (DeepSeek-Coder),
  `▁<PRE>` `▁<SUF>` `▁<MID>` (CodeLlama: vocabulary strings, added or not);
- instruction and code: codelm's own `<|instruction|>` `<|code|>` only.

In each list the first spelling the tokenizer knows wins. FIM counts only when one
family's three markers are all there, INSTRUCTION and CODE only as a pair.

The document start (`bos`) is not a spelling but a rule of the file: a
`TemplateProcessing` post-processor that puts a special token before a single
sequence (Llama, CodeLlama, DeepSeek-Coder: `<s>`, `<｜begin▁of▁sentence｜>`) names
it; without one, documents are separated by end-of-text alone (GPT-2 style, codelm).

A generated token ends the text when the file marks it special, when it holds a
role, or when it is CodeLlama's `▁<EOT>` (END_SPELLINGS), which ends an infilled
middle whether the file marks it or not.

A tokenizer without instruction markers still serves instructions the way base
code models read them: as a comment block above the code (`comment_block`).
"""

from __future__ import annotations

from collections.abc import Callable

from codelm.errors import CodelmError

EOT = "<|endoftext|>"
PAD = "<|pad|>"
FIM_PREFIX = "<|fim_prefix|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_MIDDLE = "<|fim_middle|>"
INSTRUCTION = "<|instruction|>"
CODE = "<|code|>"
SPECIAL_TOKENS = [EOT, PAD, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, INSTRUCTION, CODE]  # codelm's, in id order

EOT_SPELLINGS = (EOT, "<｜end▁of▁sentence｜>", "</s>", "<|end_of_text|>", "<eos>")
PAD_SPELLINGS = (PAD, "<pad>", "<|padding|>")
FIM_SPELLINGS = (
    (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE),
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
    ("▁<PRE>", "▁<SUF>", "▁<MID>"),
)
INSTRUCTION_SPELLINGS = ((INSTRUCTION, CODE),)
# Tokens that end a text even where the file does not mark them special: CodeLlama
# ends an infilled middle with `▁<EOT>`.
END_SPELLINGS = ("▁<EOT>",)


def find_roles(token_to_id: Callable[[str], int | None]) -> dict[str, int]:
    """Role -> id for the roles a tokenizer has (EOT always); CodelmError without end-of-text."""
    roles: dict[str, int] = {}
    eot = _first(token_to_id, EOT_SPELLINGS)
    if eot is None:
        raise CodelmError(f"tokenizer.json has no end-of-text token (looked for {', '.join(EOT_SPELLINGS)})")
    roles[EOT] = eot
    pad = _first(token_to_id, PAD_SPELLINGS)
    if pad is not None:
        roles[PAD] = pad
    groups = (
        ((FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE), FIM_SPELLINGS),
        ((INSTRUCTION, CODE), INSTRUCTION_SPELLINGS),
    )
    for names, table in groups:
        for spellings in table:
            ids = [token_to_id(s) for s in spellings]
            if None not in ids:
                roles.update(zip(names, ids, strict=True))
                break
    return roles


def end_ids(token_to_id: Callable[[str], int | None]) -> set[int]:
    """Ids of END_SPELLINGS the tokenizer has."""
    return {i for s in END_SPELLINGS if (i := token_to_id(s)) is not None}


def prepended_id(spec: dict) -> int | None:
    """The id of the special token a tokenizer.json's post-processor puts before a single
    sequence (a `TemplateProcessing`, alone or in a `Sequence`), or None."""
    post = spec.get("post_processor") or {}
    steps = post.get("processors", []) if post.get("type") == "Sequence" else [post]
    for step in steps:
        if step.get("type") != "TemplateProcessing":
            continue
        single = step.get("single") or []
        if single and "SpecialToken" in single[0] and any("Sequence" in p for p in single[1:]):
            name = single[0]["SpecialToken"]["id"]
            ids = (step.get("special_tokens") or {}).get(name, {}).get("ids") or [None]
            return ids[0]
    return None


def comment_block(instruction: str) -> str:
    """An instruction as base code models read it: `# line` per line, then a blank line."""
    return "".join(f"# {line}".rstrip() + "\n" for line in instruction.splitlines()) + "\n"


def _first(token_to_id: Callable[[str], int | None], spellings: tuple[str, ...]) -> int | None:
    return next((i for s in spellings if (i := token_to_id(s)) is not None), None)
