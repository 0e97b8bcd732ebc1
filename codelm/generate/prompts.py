"""What to generate from, laid out in tokens exactly as training laid out documents.

Three modes (see codelm/train/batches.py for the training side); `<bos>` is the
tokenizer's document start (`bos_id`): `<|endoftext|>` for codelm's own tokenizers,
where the end token of the "previous document" marks a beginning of file, as every
training document follows one; `<s>` and the like for Llama-style models:
- plain completion: `<bos> code`;
- fill-in-the-middle, PSM order: `<bos> <|fim_prefix|> prefix <|fim_suffix|>
  suffix <|fim_middle|>`, in the tokenizer's own FIM spellings; the model writes the
  middle and ends it with an end token. A tokenizer without FIM tokens refuses it.
  `fim_order="spm"` gives training's other order, `<bos> <|fim_suffix|> suffix
  <|fim_prefix|> prefix <|fim_middle|>`: there a keystroke at the cursor changes only
  the prompt's end, so the engine's prefix cache reuses all before it (bench/latency.py);
  in PSM the whole suffix after the prefix is prefilled again;
- instruction to code: `<bos> <|instruction|> text <|code|> code-start`. A tokenizer
  without instruction tokens but with a chat template (an imported instruct model,
  tokenizer/chat.py) gets its template: `before text between ```python\n code-start`,
  the text a user's message renders to with the assistant's turn opened and the code's
  fence written; the answer ends at the fence's close (stopping.FenceEnd) or the turn's
  end token. Any other tokenizer without instruction tokens (a pretrained base model)
  gets what base code models understand: `<bos> # text (one comment line per line) \n
  code-start` (`roles.comment_block`). Training's pairs use the same three layouts.
Each text part is encoded on its own, as training encodes each piece on its own.

A prompt longer than the context keeps its most recent tokens (in FIM: the suffix
first, then the end of the prefix) and reports how many it dropped.
`plan` is the one place where a request becomes the ids a model reads: layout,
truncation, the room kept for the completion, and healing (healing.py). The CLI,
`complete`, `generate_batch`, best-of-n, evaluation and the server all call it.
This module does not run the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from codelm.errors import CodelmError
from codelm.generate.healing import Healing, heal
from codelm.tokenizer import CodeTokenizer
from codelm.tokenizer.roles import CODE, FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, INSTRUCTION, comment_block


@dataclass(frozen=True)
class Prompt:
    text: str = ""  # plain: the code to continue; FIM: the prefix; instruction: the code's start
    suffix: str | None = None  # set: fill in the middle between `text` and `suffix`
    instruction: str | None = None  # set: write code for this request
    fim_order: str = "psm"  # "psm" | "spm": the order of prefix and suffix (both trained)
    # A conversation's earlier (role, text) messages before the instruction, for a chat template,
    # which lays them out as turns. Other layouts have no turns: serve/chat.py folds them into
    # the instruction there.
    history: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.fim_order not in ("psm", "spm"):
            raise CodelmError(f"fim order must be psm or spm, got {self.fim_order!r}")
        if self.history and self.instruction is None:
            raise CodelmError("earlier turns of a conversation come with an instruction")
        if self.suffix is not None and self.instruction is not None:
            raise CodelmError("choose fill-in-the-middle (suffix) or an instruction, not both")
        if self.instruction is not None and not self.instruction.strip():
            raise CodelmError("empty instruction")
        if self.suffix is not None and not (self.text or self.suffix):
            raise CodelmError("empty prompt: fill-in-the-middle needs a prefix or a suffix")
        if self.suffix is None and self.instruction is None and not self.text:
            raise CodelmError("empty prompt: give some code to complete")

    @property
    def mode(self) -> str:
        return (
            "fim" if self.suffix is not None else "instruction" if self.instruction is not None else "plain"
        )

    def code(self, completion: str) -> str:
        """The whole code the completion belongs to: what a syntax check parses."""
        return self.text + completion + (self.suffix or "")


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    dropped: int  # prompt tokens left out to fit the context; 0 when it fit


def fenced(tok: CodeTokenizer, prompt: Prompt) -> bool:
    """Whether `prompt` is laid out in the tokenizer's chat template, its code in a fence that
    ends the answer when it closes (stopping.FenceEnd)."""
    return prompt.mode == "instruction" and tok.uses_chat


def as_prompt(prompt: str | Prompt) -> Prompt:
    return prompt if isinstance(prompt, Prompt) else Prompt(prompt)


def prompt_room(block_size: int, max_new_tokens: int) -> int:
    """Most tokens a prompt may take: the rest of the context stays for the completion,
    at least min(max_new_tokens, half the context)."""
    return block_size - min(max_new_tokens, block_size // 2)


def encode_prompt(tok: CodeTokenizer, prompt: Prompt, room: int) -> Encoded:
    """Token ids of `prompt` in its mode's layout, at most `room` of them."""
    s = tok.special
    if prompt.mode == "plain":
        ids = tok.encode(prompt.text)
        if len(ids) + 1 <= room:
            return Encoded([tok.bos_id, *ids], 0)
        # Cut: no beginning-of-file marker, since the file's beginning is gone.
        return Encoded(ids[len(ids) - room :], len(ids) - room)
    left_out = 0  # tokens of a conversation's earlier turns left out (chat templates)
    if prompt.mode == "fim":
        if not tok.has(FIM_PREFIX):
            raise CodelmError("this model's tokenizer has no fill-in-the-middle tokens")
        head, first, second = [tok.bos_id, s[FIM_PREFIX]], prompt.text, prompt.suffix or ""
        mid, tail = [s[FIM_SUFFIX]], [s[FIM_MIDDLE]]
        if prompt.fim_order == "spm":
            head, mid = [tok.bos_id, s[FIM_SUFFIX]], [s[FIM_PREFIX]]
    elif tok.has(INSTRUCTION):
        head, first, second = [tok.bos_id, s[INSTRUCTION]], prompt.instruction or "", prompt.text
        mid, tail = [s[CODE]], []
    elif tok.uses_chat:
        head, mid, left_out = _chat_turns(tok, prompt.history, room)
        first, second, tail = prompt.instruction or "", prompt.text, []
    else:
        head, first, second = [tok.bos_id], comment_block(prompt.instruction or ""), prompt.text
        mid, tail = [], []
    a, b = tok.encode(first), tok.encode(second)
    budget = room - len(head) - len(mid) - len(tail)
    if budget < 2:
        raise CodelmError(f"the context ({room} tokens for the prompt) is too short for this mode")
    ka, kb = _split(len(a), len(b), budget)
    # FIM keeps the suffix's start (next to the hole); an instruction keeps the code's end.
    a_kept = a[len(a) - ka :]
    b_kept = b[:kb] if prompt.mode == "fim" else b[len(b) - kb :]
    if prompt.fim_order == "spm" and prompt.mode == "fim":
        a_kept, b_kept = b_kept, a_kept  # the suffix first; each part keeps what it keeps in PSM
    return Encoded(head + a_kept + mid + b_kept + tail, len(a) - ka + len(b) - kb + left_out)


def _chat_turns(
    tok: CodeTokenizer, history: tuple[tuple[str, str], ...], room: int
) -> tuple[list[int], list[int], int]:
    """A chat template's ids before and after the request, with the conversation's `history`
    rendered as turns; while those ids take more than half of `room`, its oldest exchange (a
    user's message and the answers after it; never a system message) is left out, so the
    turns still alternate. Returns the ids and the count of tokens left out."""
    head, mid = tok.chat_turn_ids(history) if history else tok.chat_ids[:2]  # rendered once
    full = len(head) + len(mid)
    system = [t for t in history if t[0] in ("system", "developer")]
    turns = [t for t in history if t[0] not in ("system", "developer")]
    while len(head) + len(mid) > room // 2 and turns:
        turns = turns[1:]
        while turns and turns[0][0] == "assistant":  # a conversation resumes with a user's message
            turns = turns[1:]
        head, mid = tok.chat_turn_ids((*system, *turns))
    return head, mid, full - len(head) - len(mid)


@dataclass(frozen=True)
class Planned:
    """A prompt as the model reads it."""

    ids: list[int]  # in the mode's layout, fitted to the context, healed
    dropped: int  # prompt tokens left out to fit the context
    healing: Healing | None  # what the first new token must begin with (None: not healed)

    @property
    def healed(self) -> str:
        return self.healing.text if self.healing else ""


def plan(
    tok: CodeTokenizer, prompt: Prompt, block_size: int, max_new_tokens: int, healing: bool = True
) -> Planned:
    """The ids of `prompt` for a model of `block_size` positions, keeping room for
    min(max_new_tokens, half the context) new tokens; healed unless `healing` is off
    (the API turns it off where the prompt's own tokens must be scored)."""
    enc = encode_prompt(tok, prompt, prompt_room(block_size, max_new_tokens))
    ids, healed = heal(tok, enc.ids) if healing else (enc.ids, None)
    return Planned(ids, enc.dropped, healed)


def _split(na: int, nb: int, budget: int) -> tuple[int, int]:
    """Tokens kept of two parts within `budget`: the second (the suffix, or the code) first,
    but the first keeps at least a quarter of the budget when it has that many."""
    if na + nb <= budget:
        return na, nb
    kb = min(nb, budget - min(na, budget // 4))
    return budget - kb, kb
