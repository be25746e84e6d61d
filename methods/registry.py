"""The method registry: ``@register("name")`` on a ``SparseLayer`` subclass makes it runnable.

Third-party methods plug in through the ``mxbench.methods`` entry-point group (each entry
point names a module to import) or ``--plugin path/to/file.py``; both simply import code
that calls ``register``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

from methods.base import LayerSpec, SparseLayer

ENTRY_POINT_GROUP = "mxbench.methods"


@dataclass(frozen=True)
class RegisteredMethod:
    """A registered name: the class plus the config defaults this name fixes (e.g. rank=4)."""

    name: str
    cls: type[SparseLayer]
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def description(self) -> str:
        return self.cls.description

    def hyperparameters(self) -> dict[str, Any]:
        """Every config field with the default this name gives it (k and expansion included)."""
        values = {f.name: _field_default(f) for f in dataclasses.fields(self.cls.Config)}
        values.update(self.defaults)
        return values


_REGISTRY: dict[str, RegisteredMethod] = {}
# Classes a checkpoint may name that are never trained (``--methods all`` never lists them): layers
# converted from dictionaries trained elsewhere, saved so that later commands (probe, inspect) load them.
_LOAD_ONLY: dict[str, type[SparseLayer]] = {}


def register(name: str, **defaults: Any) -> Callable[[type[SparseLayer]], type[SparseLayer]]:
    """Class decorator: register ``cls`` as ``name``; ``defaults`` override config fields."""

    def decorate(cls: type[SparseLayer]) -> type[SparseLayer]:
        if not (isinstance(cls, type) and issubclass(cls, SparseLayer)):
            raise TypeError(f"@register({name!r}) needs a SparseLayer subclass, got {cls!r}")
        if name in _REGISTRY and not _same_class(_REGISTRY[name].cls, cls):
            raise ValueError(f"method name {name!r} is already registered by {_REGISTRY[name].cls.__qualname__}")
        known = {f.name for f in dataclasses.fields(cls.Config)}
        unknown = set(defaults) - known
        if unknown:
            raise TypeError(f"@register({name!r}): {sorted(unknown)} are not fields of {cls.Config.__name__}")
        _REGISTRY[name] = RegisteredMethod(name, cls, dict(defaults))
        if "name" not in vars(cls):  # own name only: a subclass must not report its parent's name
            cls.name = name
        return cls

    return decorate


def register_load_only(*names: str) -> Callable[[type[SparseLayer]], type[SparseLayer]]:
    """Class decorator: checkpoints whose method is one of ``names`` rebuild as ``cls``; never trainable."""

    def decorate(cls: type[SparseLayer]) -> type[SparseLayer]:
        for name in names:
            if name in _REGISTRY:
                raise ValueError(f"method name {name!r} is a registered, trainable method")
            _LOAD_ONLY[name] = cls
        return cls

    return decorate


def layer_class(name: str) -> type[SparseLayer]:
    """The class a saved layer's method name stands for: a registered method's, or a load-only one."""
    return _LOAD_ONLY[name] if name in _LOAD_ONLY else get_method(name).cls


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def expand_method_names(requested: list[str]) -> list[str]:
    """``["all"]`` means every distinct registered method; otherwise the given names, checked.

    Two names for the same class and settings (``lowrank-moe`` is ``lowrank-moe-r4``) run once,
    under the name that pins its settings explicitly.
    """
    if requested != ["all"]:
        for name in requested:
            get_method(name)
        return list(dict.fromkeys(requested))
    chosen: dict[tuple, str] = {}
    for name in method_names():
        entry = get_method(name)
        identity = (entry.cls, tuple(sorted(entry.hyperparameters().items())))
        current = chosen.get(identity)
        if current is None or len(entry.defaults) > len(get_method(current).defaults):
            chosen[identity] = name
    return sorted(chosen.values())


def get_method(name: str) -> RegisteredMethod:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; registered methods: {', '.join(method_names())}") from None


def create(name: str, spec: LayerSpec, **config: Any) -> SparseLayer:
    """Build the method registered as ``name`` for ``spec``; ``config`` overrides its defaults."""
    entry = get_method(name)
    merged = {**entry.defaults, **config}
    layer = entry.cls(spec, entry.cls.Config(**merged))
    layer.name = name  # variants (e.g. lowrank-moe-r4) share a class but keep their own name
    return layer


def build_from_config(blob: dict[str, Any]) -> SparseLayer:
    """Rebuild a layer from ``SparseLayer.to_config()`` output (checkpoints use this)."""
    layer = layer_class(blob["method"]).from_config(blob)
    layer.name = blob["method"]
    return layer


def load_entry_points() -> list[str]:
    """Import every module advertised in the ``mxbench.methods`` entry-point group."""
    loaded = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()
        loaded.append(ep.name)
    return loaded


def load_plugin(path: str | Path) -> None:
    """Import a single Python file so that its ``@register`` calls run.

    Each file is its own module (named after its stem and a hash of its path), so two plugins
    that share a file name both load; a method name that another file already registered is
    refused, naming both files, instead of one silently replacing the other.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"plugin file {str(path)!r} does not exist")
    digest = hashlib.sha256(str(path).encode("utf-8")).hexdigest()[:12]
    module_name = f"mxbench_plugin_{path.stem}_{digest}"
    loaded = sys.modules.get(module_name)
    if loaded is not None and Path(getattr(loaded, "__file__", "")).resolve() == path:
        return  # already imported: loading twice (e.g. once per cell) is a no-op
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import plugin {str(path)!r}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    registered = dict(_REGISTRY)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        del sys.modules[module_name]
        raise ValueError(f"plugin {path} has a syntax error at line {error.lineno}: {error.msg}") from None
    except ValueError as error:
        del sys.modules[module_name]
        clash = [name for name in registered if f"method name {name!r} is already registered" in str(error)]
        if clash:
            raise ValueError(f"plugin {path} registers method {clash[0]!r}, which "
                             f"{_source_file(registered[clash[0]].cls)} already registers; rename one of them") from None
        raise
    except BaseException:
        del sys.modules[module_name]  # a failed import must not look loaded next time
        raise


def _source_file(cls: type) -> str:
    module = sys.modules.get(cls.__module__)
    return str(getattr(module, "__file__", None) or cls.__module__)


def _same_class(a: type, b: type) -> bool:
    """The same class, or the same class re-imported (module reload, notebook autoreload)."""
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None
