"""Split any model at a named module into a lower and an upper part that share the model's modules.

``lower, upper = split_at(model, "layer3")`` gives two modules with ``upper(lower(x))`` equal to ``model(x)``
bit for bit, in train and eval mode alike (the same kernels run in the same order, so batch-norm running
statistics move exactly as under ``model(x)``). The named module *starts the upper part*: ``lower(x)`` is the
input of ``layer3``, ``upper(z)`` runs ``layer3`` on ``z`` and everything after it. That is AR1's convention
(``MobileNetV1``'s ``lat_features`` ends just before ``end_features``; the latents are the input of the first
upper module), so the name given here is the first module whose parameters latent replay trains.

Why torch.fx: the order in which a model calls its children is in the code of ``forward``, not in the module
tree (``ResNet`` registers ``fc`` after ``avgpool`` but calls ``torch.flatten`` between them, and nothing in
``named_children()`` says whether a child's output skips ahead). Tracing records that code as a graph of
calls, so the split can be *checked* instead of assumed, and the two halves are ``fx.GraphModule`` s that
replay exactly the recorded calls on the model's own submodules (no copies). Only the model and the
ancestors of the named module are traced through; every other submodule stays one opaque call, so blocks
with internal skips (a ResNet ``BasicBlock``, a transformer block) are fine on either side of the split.

The split is valid when, in the traced graph cut just before the one call of the named module, no value
computed before the cut is used after it except the input of the named module (attributes such as
``cls_token`` are re-read, not carried). So the upper part may use that input again, e.g. a residual
``x + f(x)`` split at ``f``. Otherwise ``ValueError`` names the module and the reason: a skip connection
across the cut, a model input used after it, the module not called, called more than once or with several
inputs, a ``forward`` that torch.fx cannot trace (control flow on tensor values, type checks of the input),
one whose traced code depends on ``self.training``, or hooks on a traced-through module (a graph cannot keep
them; hooks on the modules it calls run as usual).

Arguments of ``forward`` that have defaults are fixed at their defaults; ``lower`` takes the others.
Splitting at the first module gives a ``lower`` that returns its input; at the last, an ``upper`` that is
that module alone (plus whatever ``forward`` does after it). Parameters keep their names in the model
(``lower.state_dict()`` has ``layer1.0.conv1.weight``). Split after ``model.to(...)``: a plain tensor
attribute that a traced ``forward`` reads directly is held by reference from the split on.
"""

from __future__ import annotations

import difflib
import inspect

from torch import fx, nn

__all__ = ["split_at"]

_VAR_KINDS = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


class _ChainTracer(fx.Tracer):
    """Traces into the given modules only (the ancestors of the split point); every other module is a leaf."""

    def __init__(self, through: set[int]) -> None:
        super().__init__()
        self._through = through

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return id(m) not in self._through


def _suggestions(model: nn.Module, name: str) -> str:
    names = [n for n, _ in model.named_modules() if n]
    close = difflib.get_close_matches(name, names, n=4, cutoff=0.5)
    top = [n for n, _ in model.named_children()][:12]
    hint = f"close matches: {', '.join(map(repr, close))}; " if close else ""
    return f"{hint}top-level modules: {', '.join(map(repr, top))}"


def _resolve(model: nn.Module, name: str) -> tuple[nn.Module, dict[str, nn.Module]]:
    """The named module and its ancestors by name, from the model (``""``) down: the modules to trace through."""
    parts = name.split(".")
    ancestors: dict[str, nn.Module] = {}
    module = model
    for i, part in enumerate(parts):
        ancestors[".".join(parts[:i])] = module
        child = dict(module.named_children()).get(part)
        if child is None:
            where = ".".join(parts[:i]) or type(model).__name__
            raise ValueError(f"split_at: {type(model).__name__} has no module {name!r} ({where!r} has no child "
                             f"{part!r}); {_suggestions(model, name)}")
        module = child
    return module, ancestors


def _in_words(ancestors: dict[str, nn.Module]) -> str:
    return ", ".join(f"{path!r} ({type(m).__name__})" if path else f"the model ({type(m).__name__})"
                     for path, m in ancestors.items())


def _trace(model: nn.Module, name: str, ancestors: dict[str, nn.Module]) -> tuple[fx.Graph, set[fx.Node]]:
    """The traced graph and its specialisation nodes (placeholders of defaulted arguments and their guards)."""
    params = list(inspect.signature(model.forward).parameters.values())
    if any(p.kind in _VAR_KINDS for p in params):
        raise ValueError(f"split_at: cannot split {type(model).__name__} at {name!r}: its forward takes *args or "
                         f"**kwargs, and a split needs named arguments")
    concrete = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    try:
        graph = _ChainTracer({id(m) for m in ancestors.values()}).trace(model, concrete_args=concrete or None)
    except Exception as e:  # any tracing failure means the same thing to the caller: no checked split
        raise ValueError(f"split_at: cannot split {type(model).__name__} at {name!r}: torch.fx cannot trace the "
                         f"forward of {_in_words(ancestors)} ({type(e).__name__}: {e}); a split needs forwards "
                         f"without control flow on tensor values or type checks of their inputs") from e
    # Defaulted arguments were traced as constants; fx still adds a placeholder and a guard for each.
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    fixed = {n for n, p in zip(placeholders, params, strict=True) if p.name in concrete}
    for node in graph.nodes:
        if node.op != "placeholder" and node.all_input_nodes and all(a in fixed for a in node.all_input_nodes):
            fixed.add(node)
    return graph, fixed


def _check_mode_independent(model: nn.Module, name: str, ancestors: dict[str, nn.Module], graph: fx.Graph) -> None:
    """A forward that branches on ``self.training`` would be frozen in today's mode: trace once more with
    every module's mode flipped and require the same graph."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        for m, mode in modes:
            m.training = not mode
        other, _ = _trace(model, name, ancestors)
    finally:
        for m, mode in modes:
            m.training = mode
    if str(other) != str(graph):
        raise ValueError(f"split_at: cannot split {type(model).__name__} at {name!r}: its forward calls different "
                         f"modules in train and eval mode (it branches on self.training), so one graph cannot "
                         f"stand for it")


def _describe(node: fx.Node, *, value: bool = False) -> str:
    """A node in words: what computes it (``value=False``) or the value it is (``value=True``)."""
    if node.op == "placeholder":
        return f"the forward argument {node.target!r}"
    if node.op == "call_module":
        what = f"module {node.target!r}"
    elif node.op == "call_method":
        what = f"method .{node.target}()"
    elif node.op == "call_function":
        what = f"{getattr(node.target, '__name__', node.target)}()"
    else:
        what = f"{node.op} {node.target!r}"
    return f"the output of {what}" if value else what


def _find_call(model: nn.Module, name: str, target: nn.Module, graph: fx.Graph) -> fx.Node:
    calls = [n for n in graph.nodes if n.op == "call_module" and model.get_submodule(n.target) is target]
    where = f"split_at: cannot split {type(model).__name__} at {name!r}"
    if not calls:
        raise ValueError(f"{where}: the traced forward never calls it (it is called only through a method other "
                         f"than forward, or not at all)")
    if len(calls) > 1:
        raise ValueError(f"{where}: the forward calls it {len(calls)} times, so its input is not one latent")
    call = calls[0]
    if len(call.all_input_nodes) != 1:
        raise ValueError(f"{where}: it is called with {len(call.all_input_nodes)} computed inputs; a split point "
                         f"must take exactly one")
    return call


def _check_cut(model: nn.Module, name: str, nodes: list[fx.Node], cut: int) -> None:
    latent = nodes[cut].all_input_nodes[0]
    before = set(nodes[:cut])
    for node in nodes[cut:]:
        for arg in node.all_input_nodes:
            if arg not in before or arg is latent or arg.op == "get_attr":
                continue
            use = "the model's output" if node.op == "output" else _describe(node)
            what = ("a model input is used after the split point" if arg.op == "placeholder"
                    else "a skip connection across the split point")
            raise ValueError(f"split_at: cannot split {type(model).__name__} at {name!r}: {what}: "
                             f"{_describe(arg, value=True)} comes before {name!r} and is used after it by {use}, "
                             f"but only the input of {name!r} can pass from the lower part to the upper part")


def _build(model: nn.Module, nodes: list[fx.Node], cut: int, fixed: set[fx.Node]) -> tuple[fx.Graph, fx.Graph]:
    latent = nodes[cut].all_input_nodes[0]
    lower, env = fx.Graph(), {}
    # Every call before the cut runs, even one the latent does not need: it may update state (BN statistics).
    for node in nodes[:cut]:
        if node not in fixed:
            env[node] = lower.node_copy(node, env.__getitem__)
    lower.output(env[latent])

    upper = fx.Graph()
    up_env: dict[fx.Node, fx.Node] = {latent: upper.placeholder("latent")}

    def arg(a: fx.Node) -> fx.Node:
        if a not in up_env:  # an attribute read before the cut (fx reads each once): read it again here
            assert a.op == "get_attr", a
            up_env[a] = upper.get_attr(a.target)
        return up_env[a]

    for node in nodes[cut:]:
        up_env[node] = upper.node_copy(node, arg)
    return lower, upper


def split_at(model: nn.Module, name: str) -> tuple[fx.GraphModule, fx.GraphModule]:
    """``(lower, upper)`` with ``upper(lower(*args)) == model(*args)`` bitwise; ``name`` starts ``upper``.

    Args:
        model: the network. Its ``forward`` and those of the modules on the dotted path to ``name`` are traced
            with torch.fx (arguments with defaults fixed at them); every other submodule is one call.
        name: a dotted module name as in ``named_modules()`` (``"layer3"``, ``"layer2.1"``,
            ``"encoder.2"``). ``lower`` returns this module's input (the latents), ``upper`` takes it and
            returns what ``model`` returns.

    Both parts are ``fx.GraphModule`` s holding the model's own submodules and parameters (the same objects,
    under the same names), so training either trains the model and ``lower.eval()`` sets the modules it
    calls to eval mode. A module that ``forward`` calls on both sides of the split is in both parts. As in
    ``model``, an in-place module at the split point (``nn.ReLU(inplace=True)``) overwrites ``upper``'s input.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``name`` not a string.
        ValueError: ``name`` is empty or names no module (the message lists some that exist), or the model
            is not a chain at ``name``; the message names the module and the reason (module docstring).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"split_at: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"split_at: name must be a module name (str), got {type(name).__name__}")
    if not name:
        raise ValueError(f"split_at: name must name a submodule, not the model itself; "
                         f"{_suggestions(model, name)}")
    target, ancestors = _resolve(model, name)
    hooked = {path: m for path, m in ancestors.items()
              if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks}
    if hooked:
        raise ValueError(f"split_at: cannot split {type(model).__name__} at {name!r}: {_in_words(hooked)}, traced "
                         f"through to reach it, has hooks, which a traced graph would silently drop")
    graph, fixed = _trace(model, name, ancestors)
    _check_mode_independent(model, name, ancestors, graph)
    nodes = list(graph.nodes)
    cut = nodes.index(_find_call(model, name, target, graph))
    _check_cut(model, name, nodes, cut)
    lower, upper = _build(model, nodes, cut, fixed)
    stem = type(model).__name__
    return (fx.GraphModule(model, lower, class_name=f"{stem}Lower"),
            fx.GraphModule(model, upper, class_name=f"{stem}Upper"))
