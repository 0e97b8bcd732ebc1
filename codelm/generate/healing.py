"""Token healing: the first generated token may re-spell the prompt's last token.

BPE cuts a prompt that ends inside a piece differently from the way it cut the
training text. A prompt ending in `def f(x):\n` ends on the token `\n`, while in
training a newline comes together with the next line's indentation, as one token
`\n    ` (pretokenize.py): after a lone `\n` the model has learned that the next
line starts at column 0. A prompt ending in `foo(` ends on `(`, which training text
mostly continued inside `()` or `('`. Healing (as in Microsoft's `guidance` library)
takes the prompt's last token off and lets the first new token be only one whose
bytes begin with the removed token's bytes, so the model picks a spelling it
learned (`\n    `, `()`). The completion's text starts after the removed text, as
if nothing had been removed.

It does not heal a prompt that ends with a special token (fill-in-the-middle, an
instruction with no code start, a lone document start) or holds a single token, nor one whose last token
begins no longer token (nothing to gain), nor one whose last token is not whole
UTF-8 (a character cut in two: its text is not exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from codelm.tokenizer import CodeTokenizer


@dataclass(frozen=True)
class Healing:
    text: str  # the removed token's text: the completion's first token begins with it
    size: int  # its length in bytes
    allowed: torch.Tensor  # (vocab,) bool: the tokens the first new token may be


def heal(tok: CodeTokenizer, ids: list[int]) -> tuple[list[int], Healing | None]:
    """`ids` without their last token, and what the first new token must begin with;
    or `ids` unchanged and None where healing does not apply."""
    if len(ids) < 2 or ids[-1] in tok.stop_ids:
        return ids, None
    table = tok.token_bytes
    last = table[ids[-1]]
    try:
        text = last.decode("utf-8")
    except UnicodeDecodeError:  # a token cut inside a character: its text is not exact
        return ids, None
    # A special token's spelled-out name may begin with the removed text (`<` before
    # `<fim_prefix>`), but the model would end the text there, not write it.
    allowed = [i not in tok.stop_ids and b.startswith(last) for i, b in enumerate(table)]
    if sum(allowed) < 2:  # only the token itself: the model already sees the right spelling
        return ids, None
    return ids[:-1], Healing(text, len(last), torch.tensor(allowed))
