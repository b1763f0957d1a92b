"""What may be stored as a model: a state dict that ``torch.load(weights_only=True)`` reads back.

:func:`state_dict_problem` says, in one line, why a value is not one, so that a model is refused when it is
saved rather than when it is loaded.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

_PLAIN = (bool, int, float, complex, str, bytes, type(None))
"""Leaf values a weights-only load reads back besides tensors (exact types: a subclass pickles its class)."""


def state_dict_problem(value: Any) -> str | None:
    """Why ``value`` cannot be stored as a model, in one line; ``None`` when it is a state dict.

    A state dict is a mapping (``dict`` or ``OrderedDict``, as ``Module.state_dict()`` returns) whose
    values are tensors, plain numbers, strings, ``None``, ``torch.Size`` / ``dtype`` / ``device``,
    or lists, tuples, sets and mappings of those (an optimizer's state, metadata): what
    ``torch.load(weights_only=True)`` reads back. Anything else would only be refused when loaded.
    """
    import sys

    torch = sys.modules.get("torch")  # torch not imported: nothing in ``value`` can be a torch object
    if torch is not None and isinstance(value, torch.nn.Module):
        return f"it is a torch.nn.Module ({type(value).__name__}), not its weights: store model.state_dict()"
    if type(value) not in (dict, OrderedDict):
        return (f"a model must be a state dict (a mapping of names to tensors, e.g. model.state_dict()), "
                f"got {_type_name(value)}")
    return _entry_problem(value, "model", torch, 0)


def _entry_problem(value: Any, where: str, torch: Any, depth: int) -> str | None:
    if depth > 64:
        return f"{where} is nested more than 64 levels deep"
    if type(value) in _PLAIN:
        return None
    if torch is not None and isinstance(value, torch.Tensor | torch.Size | torch.dtype | torch.device):
        return None
    if torch is not None and isinstance(value, torch.nn.Module):
        return f"{where} is a torch.nn.Module ({type(value).__name__}); store its state_dict() instead"
    items: list[tuple[str, Any]] = []
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            items += [(f"a key of {where}", key), (f"{where}[{key!r}]", item)]
    elif type(value) in (list, tuple, set, frozenset):
        items = [(f"{where}[{index}]", item) for index, item in enumerate(value)]
    else:
        hint = (" (convert it with torch.from_numpy)" if type(value).__name__ == "ndarray" else
                " (convert it with float() or int())") if type(value).__module__ == "numpy" else ""
        return f"{where} is {_type_name(value)}, not a tensor or a plain value{hint}"
    for place, item in items:
        problem = _entry_problem(item, place, torch, depth + 1)
        if problem is not None:
            return problem
    return None


def _type_name(value: Any) -> str:
    kind = type(value)
    name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
