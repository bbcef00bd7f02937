"""What keeps an unloaded model alive, and how to let it go.

An unload drops the manager's references; the model's memory comes back only if nothing else refers to it. Two
things did, both found with the probe below (``held_by``) on the CPU, and checked on an H200
(results/gpu-h200-memory-return):

* **Exceptions kept in module globals.** Optional-import guards store the ``ImportError`` they caught (gptqmodel
  7.6's ``nn_modules/qlinear/gguf_cpp.py`` keeps ``_LLAMA_CPP_IMPORT_ERROR``). The exception's traceback holds
  the frame of every function on the stack when the import ran, and a frame keeps its locals after it returns:
  gptqmodel is first imported inside a model load, so the first GPTQ/AWQ model loaded in a process (all its
  4-bit weights, 3.9 GB for a 6B model) stayed in memory for the life of the process. ``drop_stored_tracebacks``
  clears those tracebacks (the message stays) at every unload, before the garbage collection.
* **Frames of a compile failure.** An exception raised while compiling (the fast decoder's full-graph attempt
  falling back to graph breaks) carries frames whose locals include the model; ``forget_frames`` clears them
  before the exception is dropped. The issue's int8 + fast decode leak (a whole model per cycle on an H200) is
  gone with these two changes (``tests/gpu``: the allocator back to the MB); which of the two fixed it was not
  isolated on the GPU.

``held_by`` walks ``gc.get_referrers`` from a leaked object to the first owner that explains it (a module global, a
traceback, a class attribute) and says so in one line: the Models tab shows it for a model whose unload could not
return its memory, instead of keeping the memory silently.
"""
from __future__ import annotations

import gc
import sys
import types


def _clear_exception(exc: BaseException, seen: set[int]) -> int:
    n = 0
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if exc.__traceback__ is not None:
            forget_frames(exc)
            exc.__traceback__ = None
            n += 1
        if exc.__cause__ is not None:
            n += _clear_exception(exc.__cause__, seen)
        exc = exc.__context__
    return n


def drop_stored_tracebacks() -> int:
    """Clear the traceback of every exception held in a module's globals; returns how many were cleared."""
    seen: set[int] = set()
    n = 0
    for mod in list(sys.modules.values()):
        namespace = getattr(mod, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for value in list(namespace.values()):
            if issubclass(type(value), BaseException):     # type(): no lazy module attribute is touched
                n += _clear_exception(value, seen)
    return n


def forget_frames(exc: BaseException) -> None:
    """Clear the locals of the (finished) frames in ``exc``'s traceback, so that it keeps no model alive."""
    import traceback
    if exc.__traceback__ is not None:
        traceback.clear_frames(exc.__traceback__)


def _describe(obj) -> str:
    if isinstance(obj, types.ModuleType):
        return f"module {obj.__name__}"
    if isinstance(obj, types.FrameType):
        return f"frame of {obj.f_code.co_name} ({obj.f_code.co_filename.rsplit('/', 1)[-1]}:{obj.f_lineno})"
    if isinstance(obj, types.TracebackType):
        return "a traceback"
    if isinstance(obj, BaseException):
        return f"{type(obj).__name__}({str(obj)[:80]!r})"
    if isinstance(obj, types.FunctionType):
        return f"function {obj.__qualname__}"
    return type(obj).__qualname__


def held_by(obj, max_nodes: int = 20000) -> str:
    """One line saying what keeps ``obj`` alive: the path from the first module (or class) that owns it, found by
    a breadth-first walk over ``gc.get_referrers``; or that no Python owner was found (then the holder is C++
    state, such as a compiled graph or a CUDA graph pool).

    One ``gc.get_referrers`` call per level of the walk, for all of that level's objects at once (each call scans
    the whole heap), and the walk's own bookkeeping holds ids, not objects, except in ``seen``, which it skips.
    It used to keep ``(parent, object)`` tuples: each was a new referrer of the object it held, so the walk went
    on through its own tuples up to ``max_nodes``, one heap scan each: 190 s for a model with 3,000 referrers
    held from C, on a 300k-object heap."""
    me = sys._getframe()
    start = id(obj)
    seen: dict[int, object] = {start: obj}       # id -> object, the one container of the walk's objects
    up: dict[int, int] = {}                      # id -> the id of the object it refers to, one level down
    queue = [obj]
    found = None
    while queue and len(up) < max_nodes and found is None:
        level = {id(node) for node in queue}
        args = tuple(queue)        # passed as is (f(*tuple) reuses it): the call's own tuple refers to the level
        nxt = []
        for ref in gc.get_referrers(*args):
            if ref is me or ref is queue or ref is nxt or ref is seen or ref is args or id(ref) in seen:
                continue
            if isinstance(ref, types.FrameType) and ref.f_code is held_by.__code__:
                continue
            via = next((id(r) for r in gc.get_referents(ref) if id(r) in level), None)
            if via is None:      # refers to this level only through something get_referents does not list
                continue
            seen[id(ref)], up[id(ref)] = ref, via
            if isinstance(ref, dict):
                owner = next((m for m in list(sys.modules.values())
                              if getattr(m, "__dict__", None) is ref), None)
                if owner is not None:
                    found = (id(ref), owner)
                    break
            if isinstance(ref, type):
                found = (id(ref), ref)
                break
            nxt.append(ref)
            if len(up) >= max_nodes:
                break
        del args
        queue = nxt
    if found is None:
        return "no Python owner found (held by C++ state: a compiled graph, a CUDA graph pool or a library cache)"
    chain = [_describe(found[1])]
    key = found[0]
    while key != start:
        ref = seen[key]
        if not isinstance(ref, (dict, list, tuple, types.CellType)) or isinstance(ref, BaseException):
            chain.append(_describe(ref))
        key = up[key]
    chain.append(type(obj).__name__)
    parts = list(dict.fromkeys(chain))
    if len(parts) > 7:          # import machinery in between says nothing: keep the owner and the model's end
        parts = parts[:3] + ["…"] + parts[-3:]
    out = " → ".join(parts)
    del seen, queue
    return out
