"""A Chat conversation as data: the context meter, export (JSON with every reply's settings and stats, and
Markdown), import (validated: size, schema, one clear line per problem) and editing an earlier user message.

The conversation is the Chat tab's ``history`` state: ``{"role", "content"}`` dicts; a reply also carries its
``badge`` (the line under it), ``stats`` (``ReplyStats.to_dict()``) and ``settings`` (model, variant and
generation parameters it was made with).
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from ..engine import build_prompt
from ..errors import PlaygroundError
from ..manager import LoadedModel

FORMAT = "quant-playground-conversation"
VERSION = 1
MAX_IMPORT_BYTES = 2 * 1024 * 1024        # the same limit as the shared app's uploads
MAX_MESSAGES = 2000
MAX_MESSAGE_CHARS = 1_000_000


class ImportProblem(PlaygroundError):
    """A conversation file that cannot be imported (too big, not JSON, not a conversation)."""


# ---- the context meter ------------------------------------------------------------------------------------------
def conversation_tokens(lm: LoadedModel, history: list[dict], system: str | None) -> int:
    """Tokens the conversation so far takes in the next prompt (the system prompt and every turn, templated)."""
    msgs = [{"role": m["role"], "content": m["content"]} for m in history or []]
    if msgs:
        return len(build_prompt(lm, msgs, system)[0])
    if not (system or "").strip():
        return 0
    if lm.has_chat_template:
        ids = lm.tokenizer.apply_chat_template([{"role": "system", "content": system}], tokenize=True,
                                               return_dict=False)
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        return len(ids[0] if ids and isinstance(ids[0], list) else ids)
    return len(lm.tokenizer(system.strip(), add_special_tokens=True)["input_ids"])


def meter_text(lm: LoadedModel | None, history: list[dict], system: str | None, max_new_tokens, *,
               endpoint: bool = False) -> str:
    """ "context 312 + 256 of 8192 tokens": the conversation so far + the reply's budget, of the model's context."""
    if endpoint:
        return "context: counted by the server"
    if lm is None or lm.tokenizer is None:
        return "context: load the model to count tokens"
    try:
        budget = int(max_new_tokens)
    except (TypeError, ValueError, OverflowError):
        budget = 0
    try:
        used = conversation_tokens(lm, history, system)
    except Exception as exc:        # a conversation the engine refuses: the reply will say why
        return f"context: cannot count ({type(exc).__name__})"
    total = lm.context_length
    line = f"context {used} + {budget} of {total} tokens"
    if used >= total:
        return f"⚠ {line}: the conversation is longer than the context; Undo or Clear"
    if used + budget > total:
        return f"⚠ {line}: the reply will be cut to {total - used} tokens"
    return line


# ---- export -----------------------------------------------------------------------------------------------------
def export_data(history: list[dict], system: str | None, model: str, variant: str, params: dict) -> dict:
    return {"format": FORMAT, "version": VERSION, "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": model, "variant": variant, "system_prompt": system or "", "params": dict(params),
            "messages": [dict(m) for m in history or []]}


def export_markdown(history: list[dict], system: str | None, model: str, variant: str) -> str:
    lines = [f"# Conversation with {model} [{variant}]", ""]
    if (system or "").strip():
        lines += ["**System prompt:** " + system.strip(), ""]
    for m in history or []:
        if m["role"] == "user":
            lines += ["## User", "", m["content"], ""]
        else:
            settings = m.get("settings") or {}
            who = f" ({settings.get('model')} [{settings.get('variant')}])" if settings.get("model") else ""
            lines += [f"## Assistant{who}", "", m["content"], ""]
            if m.get("badge"):
                lines += [f"> {m['badge']}", ""]
    return "\n".join(lines)


def write_export(history: list[dict], system: str | None, model: str, variant: str, params: dict,
                 kind: str) -> str:
    """The file to download (in a fresh temporary folder): ``kind`` "json" or "md"."""
    folder = Path(tempfile.mkdtemp(prefix="playground-chat-"))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if kind == "json":
        path = folder / f"conversation-{stamp}.json"
        path.write_text(json.dumps(export_data(history, system, model, variant, params), ensure_ascii=False,
                                   indent=2), encoding="utf-8")
    else:
        path = folder / f"conversation-{stamp}.md"
        path.write_text(export_markdown(history, system, model, variant), encoding="utf-8")
    return str(path)


# ---- import -----------------------------------------------------------------------------------------------------
def read_import(path: str | Path) -> dict:
    """A conversation file → {"messages", "system_prompt", "model", "variant", "params"}; raises ImportProblem with
    one line naming the problem."""
    path = Path(path)
    name = path.name
    try:
        size = path.stat().st_size
    except OSError:
        raise ImportProblem(f"cannot read {name}") from None
    if size > MAX_IMPORT_BYTES:
        raise ImportProblem(f"{name} is {size / 1e6:.1f} MB: a conversation file may be at most "
                            f"{MAX_IMPORT_BYTES // (1024 * 1024)} MB")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ImportProblem(f"{name} is not UTF-8 text: export a conversation as JSON to import it") from None
    except json.JSONDecodeError as exc:
        raise ImportProblem(f"{name} is not JSON ({exc.msg} at line {exc.lineno}): choose a file made by "
                            f"Export JSON") from None
    if isinstance(data, list):                       # a bare list of messages is fine too
        data = {"messages": data}
    if not isinstance(data, dict) or "messages" not in data:
        raise ImportProblem(f"{name} is not a conversation: expected an object with \"messages\"")
    if data.get("format", FORMAT) != FORMAT:
        raise ImportProblem(f"{name} is a {str(data.get('format'))[:60]!r} file, not a {FORMAT}")
    messages = data["messages"]
    if not isinstance(messages, list):
        raise ImportProblem(f"{name}: \"messages\" must be a list")
    if len(messages) > MAX_MESSAGES:
        raise ImportProblem(f"{name} has {len(messages)} messages: at most {MAX_MESSAGES}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise ImportProblem(f"{name}: message {i + 1} must have the role \"user\" or \"assistant\"")
        content = m.get("content")
        if not isinstance(content, str):
            raise ImportProblem(f"{name}: message {i + 1} has no text content")
        if len(content) > MAX_MESSAGE_CHARS:
            raise ImportProblem(f"{name}: message {i + 1} is longer than {MAX_MESSAGE_CHARS} characters")
        if out and out[-1]["role"] == m["role"]:
            raise ImportProblem(f"{name}: messages {i} and {i + 1} are both from the {m['role']}: turns must "
                                f"alternate")
        entry = {"role": m["role"], "content": content}
        for key, kind in (("badge", str), ("stats", dict), ("settings", dict)):
            if m["role"] == "assistant" and isinstance(m.get(key), kind):
                entry[key] = m[key]
        out.append(entry)
    if out and out[0]["role"] != "user":
        raise ImportProblem(f"{name}: the first message must be the user's")
    system = data.get("system_prompt", "")
    if not isinstance(system, str):
        raise ImportProblem(f"{name}: \"system_prompt\" must be text")
    return {"messages": out, "system_prompt": system, "model": data.get("model"),
            "variant": data.get("variant"), "params": data.get("params") if isinstance(data.get("params"), dict)
            else {}}


# ---- editing --------------------------------------------------------------------------------------------------------
def branch_at(history: list[dict], index, new_text) -> list[dict]:
    """The conversation up to the user message ``index`` (an index into the shown messages, the same as into
    ``history``), with that message's text replaced: the branch the reply is then generated for."""
    if isinstance(index, (list, tuple)):
        index = index[0]
    if not isinstance(index, int) or not 0 <= index < len(history) or history[index]["role"] != "user":
        raise PlaygroundError("only a user message of this conversation can be edited")
    if isinstance(new_text, list):        # the Chatbot's normalized content: [{"type": "text", "text": ...}]
        new_text = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in new_text)
    elif isinstance(new_text, dict):
        new_text = new_text.get("text", "")
    if not isinstance(new_text, str) or not new_text.strip():
        raise PlaygroundError("the edited message is empty: type something, or Undo to take it back")
    return [dict(m) for m in history[:index]] + [{"role": "user", "content": new_text}]
