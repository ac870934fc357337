"""Prompts → token ids, in token space: the one renderer that training, sampling, decoding and evaluation share.

``Renderer(tokenizer)`` decides once per tokenizer what the ids of a prompt are:

- a conversation (a list of ``{"role", "content"}`` messages) goes through the chat template with
  ``add_generation_prompt=True`` and is tokenized by the template call itself (``tokenize=True``), so the ids are
  exactly the template's, turn markers and all, with nothing added;
- a plain string is tokenized with special tokens off (a tokenizer that appends EOS by default cannot end a
  prompt with it), and BOS is put in front by hand when the tokenizer adds one by default.

Training splits a row with ``renderer(where, prompt, completions)`` (the prompt's ids must be an exact prefix of
prompt+completion's; see ``data.encode``). Sampling renders a plain prompt string plus an optional system text
with ``renderer.sampling_prompt``, which is ``renderer.prompt`` of the row ``renderer.prompt_row`` builds, so the
ids a sampler continues are the ids a trainer puts before the same completion:

- chat (the tokenizer has a chat template, or ``chat=True``): ``[system turn,] user turn``; a template that rejects
  the system role gets the system text in front of the user turn instead (``"system\\n\\nprompt"``);
- plain (no template, or ``chat=False``): ``system + "\\n\\n" + prompt`` as one string.

Every failure is a one-line ``UserError`` naming the row or prompt.
"""

from __future__ import annotations

from collections.abc import Mapping

from prefalign.errors import UserError


def prompt_row(prompt, system: str | None = None, chat: bool = True):
    """The training row's prompt for a sampling prompt (a string, or a conversation) and an optional system text:
    messages ``[system turn,] user turn`` when ``chat``, else the string ``system + "\\n\\n" + prompt``. A
    conversation that already opens with a system turn keeps its own; a conversation with ``chat`` off raises."""
    if isinstance(prompt, list):
        if not chat:
            raise UserError("prompt", "the prompt is a conversation (a list of messages) but chat rendering is off",
                            "give the prompt as a plain string, or let the chat template render it")
        if system is None or (prompt and prompt[0].get("role") == "system"):
            return list(prompt)
        return [{"role": "system", "content": system}, *prompt]
    if not chat:
        return prompt if system is None else f"{system}\n\n{prompt}"
    head = [{"role": "system", "content": system}] if system is not None else []
    return [*head, {"role": "user", "content": prompt}]


def fold_system(messages: list[dict]) -> list[dict] | None:
    """``[system s, user u, …]`` → ``[user "s\\n\\nu", …]`` (for templates without a system role); None if the
    conversation does not open with a system turn followed by a user turn."""
    if len(messages) < 2 or messages[0].get("role") != "system" or messages[1].get("role") != "user":
        return None
    merged = {**messages[1], "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}
    return [merged, *messages[2:]]


class Renderer:
    """Renders prompts (and prompt + completions) to token ids; holds what is decided once per tokenizer."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.eos = tokenizer.eos_token_id
        # Plain strings are tokenized with special tokens off, so that a tokenizer that appends EOS by default
        # cannot end the prompt's ids with it; BOS is then put back by hand if the tokenizer adds one by default.
        bos = tokenizer.bos_token_id
        with_specials = _ids(tokenizer("a"))[:1]
        without = _ids(tokenizer("a", add_special_tokens=False))[:1]
        self.bos = [bos] if bos is not None and with_specials == [bos] and without != [bos] else []
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        self._system_ok: bool | None = None  # does the template take a system turn? (learnt on first use)

    # -- training: a row's prompt and completions -------------------------------------------------------------------

    def prompt(self, where: str, prompt) -> list[int]:
        """A prompt's ids: a conversation with the generation prompt, or BOS (when the tokenizer adds one) + text."""
        if isinstance(prompt, list):
            return self._chat(where, prompt, add_generation_prompt=True)
        return self.bos + _ids(self.tok(prompt, add_special_tokens=False))

    def __call__(self, where: str, prompt, completions: dict) -> tuple[list[int], list[list[int]]]:
        """Prompt ids (rendered once, shared by the completions) and each completion's ids."""
        chat = isinstance(prompt, list)
        p = self.prompt(where, prompt)
        comps = []
        for name, completion in completions.items():
            if chat:
                full = self._chat(where, prompt + completion, add_generation_prompt=False)
            else:
                full = self.bos + _ids(self.tok(prompt + completion, add_special_tokens=False))
            if full[: len(p)] != p:
                raise self._not_a_prefix(where, name, chat, p, full)
            comp = full[len(p):]
            if not comp:
                raise UserError(f"{where}: field '{name}'", "the completion renders to no tokens",
                                "check the chat template (does it drop the assistant turn?)")
            if not chat and self.eos is not None and comp[-1] != self.eos:
                comp.append(self.eos)  # plain text has no end marker: teach the model to stop (TRL does the same)
            comps.append(comp)
        return p, comps

    def conversation(self, where: str, messages: list[dict]) -> list[int]:
        """A whole conversation's ids (no generation prompt), e.g. a user turn + an assistant turn to score."""
        return self._chat(where, messages, add_generation_prompt=False)

    def conversation_text(self, where: str, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The template's text of a conversation (for display; ``conversation`` gives the ids)."""
        return self._template(where, messages, add_generation_prompt, tokenize=False)

    # -- sampling: a plain prompt + an optional system text ---------------------------------------------------------

    def uses_chat(self, chat: bool | None = None) -> bool:
        """Whether sampling prompts are rendered with the chat template: ``chat``, or (None) when there is one."""
        return self.has_template if chat is None else bool(chat)

    def prompt_row(self, prompt, system: str | None = None, chat: bool | None = None, where: str = "prompt"):
        """The training row's prompt whose ids ``sampling_prompt`` gives: see the module docstring. With a system
        text and a template that rejects the system role, the system text is folded into the first user turn."""
        use_chat = self.uses_chat(chat)
        try:
            row = prompt_row(prompt, system, use_chat)
        except UserError as e:
            raise UserError(where, e.what, e.todo) from None
        own_system = isinstance(prompt, list) and bool(prompt) and prompt[0].get("role") == "system"
        folded = fold_system(row) if use_chat and system is not None and not own_system else None
        if folded is None or self._system_ok:
            return row  # only a system turn added here is folded; a row's own is rendered as training renders it
        if self._system_ok is None:
            self._system_ok = self._renders(row)
            if not self._system_ok and not self._renders(folded):
                self._system_ok = None  # neither renders: this prompt is the problem, not the system turn
                return row  # rendering it raises the template's own error, naming the prompt
        return row if self._system_ok else folded

    def sampling_prompt(self, prompt, system: str | None = None, chat: bool | None = None,
                        where: str = "prompt") -> list[int]:
        """The ids a sampler continues for ``prompt`` (a string or a conversation) with an optional system text:
        ``prompt(where, prompt_row(...))``, the very ids training puts before a completion of that row."""
        return self.prompt(where, self.prompt_row(prompt, system, chat, where))

    def sampling_text(self, prompt, system: str | None = None, chat: bool | None = None,
                      where: str = "prompt") -> str:
        """The text of ``sampling_prompt`` (the template's output, or the plain string), for display."""
        row = self.prompt_row(prompt, system, chat, where)
        return row if not isinstance(row, list) else self.conversation_text(where, row, add_generation_prompt=True)

    # -- internals ---------------------------------------------------------------------------------------------------

    def _renders(self, messages: list[dict]) -> bool:
        try:
            self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception:  # noqa: BLE001 — jinja raises its own error types for "system role not supported"
            return False
        return True

    def _chat(self, where: str, messages: list[dict], add_generation_prompt: bool) -> list[int]:
        return _ids(self._template(where, messages, add_generation_prompt, tokenize=True))

    def _template(self, where: str, messages: list[dict], add_generation_prompt: bool, tokenize: bool):
        if not self.has_template:
            raise UserError(where, "rows are conversations but the model folder has no chat template",
                            "use a chat model's tokenizer (tokenizer_config.json 'chat_template'), set --tokenizer "
                            "to one, or give prompt and completions as plain strings")
        try:
            return self.tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                tokenize=tokenize)
        except Exception as e:  # noqa: BLE001 — templates raise anything (jinja errors, raise_exception(...))
            raise UserError(where, f"the chat template failed on this row: {str(e).strip()[:200]}",
                            "fix the messages (many templates require alternating user/assistant turns)") from None

    def _not_a_prefix(self, where: str, name: str, chat: bool, p: list[int], full: list[int]) -> UserError:
        i = next((i for i, (a, b) in enumerate(zip(p, full)) if a != b), min(len(p), len(full)))
        show = lambda ids: repr(self.tok.decode(ids[max(0, i - 4): i + 6]))
        details = [f"{where}: field '{name}': first different token is #{i}; prompt alone renders {show(p)}",
                   f"{where}: field '{name}': ... while prompt+completion renders {show(full)}"]
        if chat:
            return UserError(f"{where}: field '{name}'", "the chat template does not render the prompt as a token "
                             "prefix of prompt+completion: cannot split prompt and completion safely",
                             "use a chat template that renders the prompt (with add_generation_prompt) as the "
                             "start of the whole conversation, or give the rows as plain strings", details)
        return UserError(f"{where}: field '{name}'", "the prompt's tokens are not a prefix of the tokens of prompt+"
                         "completion (a token spans the boundary): cannot split prompt and completion safely",
                         "end the prompt on a token boundary, e.g. start the completion with a space "
                         "('Question?' + ' Answer') or end the prompt with a newline", details)


def _ids(out) -> list[int]:
    """transformers 5 returns a BatchEncoding from tokenize=True; older versions a plain list."""
    ids = out["input_ids"] if isinstance(out, Mapping) else out
    return list(ids[0] if len(ids) and isinstance(ids[0], list) else ids)
