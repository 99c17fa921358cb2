"""What every adapter shares: options derived from the core configs, and the core object behind.

The options are declared once, in :mod:`qwen3_rag.core.config`; :func:`options_model` turns the
fields of :class:`~qwen3_rag.core.EmbedderConfig` / :class:`~qwen3_rag.core.RerankerConfig` into
pydantic fields (same types, ``None`` = the core default, descriptions from ``help``), so a new
core option reaches every adapter without an edit here.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

from qwen3_rag.core import (
    EmbedderConfig,
    Qwen3Embedder,
    Qwen3Reranker,
    RerankerConfig,
    RuntimeConfig,
)
from qwen3_rag.core.config import build_config, fields
from qwen3_rag.core.reranker import check_score_threshold
from qwen3_rag.core.runtime import check_positive_int
from qwen3_rag.remote import RemoteEmbedder, RemoteReranker

try:  # pydantic comes with every supported framework (LangChain, LlamaIndex, Chroma)
    from pydantic import (
        BaseModel,
        ConfigDict,
        Field,
        PrivateAttr,
        create_model,
        field_serializer,
        field_validator,
        model_validator,
    )
except ImportError as e:  # pragma: no cover
    raise ImportError('pydantic is missing; install an extra: pip install "qwen3-rag[all]"') from e

CoreObject: TypeAlias = Qwen3Embedder | Qwen3Reranker | RemoteEmbedder | RemoteReranker
_CONFIG_OF: dict[type[Any], type[RuntimeConfig]] = {
    Qwen3Embedder: EmbedderConfig,
    Qwen3Reranker: RerankerConfig,
}
#: The client of a served model that an adapter takes in place of each core class.
_REMOTE_OF: dict[type[Any], type[Any]] = {
    Qwen3Embedder: RemoteEmbedder,
    Qwen3Reranker: RemoteReranker,
}
_BUILT = (Qwen3Embedder, Qwen3Reranker, RemoteEmbedder, RemoteReranker)
#: Options an adapter also passes with every call, so they work with a built core object too.
PER_CALL_OPTIONS = ("instruction",)


def missing_extra(framework: str, extra: str) -> ImportError:
    """The ImportError raised when an adapter's framework is not installed."""
    return ImportError(
        f'{framework} is not installed; install it with: pip install "qwen3-rag[{extra}]"'
    )


def option_names(config_cls: type[RuntimeConfig]) -> tuple[str, ...]:
    """Every option of a core config class, in declaration order."""
    return tuple(f.name for f in fields(config_cls))


def identity_names(config_cls: type[RuntimeConfig]) -> tuple[str, ...]:
    """Options that decide the output besides the model: its revision and the ``persist`` fields.

    These are what a store or a serialized adapter must record (the model name comes first).
    """
    return ("revision", *(f.name for f in fields(config_cls) if f.metadata["persist"]))


def identity(core: CoreObject, instruction: str | None = None) -> dict[str, Any]:
    """Model name and the options that decide ``core``'s output, as in effect.

    ``instruction`` is the adapter's per-call instruction; None means the core's own.
    """
    config = core.config
    out: dict[str, Any] = {"model": core.model_name}
    for name in identity_names(type(config)):
        out[name] = getattr(config, name)
    if instruction is not None and "instruction" in out:
        out["instruction"] = instruction
    return out


def check_model(model: object, core_cls: type[Any]) -> str | CoreObject:
    """Normalise ``model``: a hub id or folder, a built core object, or a served model's client.

    The client (:class:`~qwen3_rag.RemoteEmbedder` / ``RemoteReranker``) has the core object's
    methods, so the adapters use either alike.

    Raises:
        TypeError: For any other type, or an object of the wrong kind.
    """
    if isinstance(model, (core_cls, _REMOTE_OF[core_cls])):
        return typing.cast(CoreObject, model)
    if isinstance(model, _BUILT):
        raise TypeError(
            f"model is a {type(model).__name__}; this adapter needs a {core_cls.__name__} "
            f"or a {_REMOTE_OF[core_cls].__name__}"
        )
    if isinstance(model, os.PathLike):
        return os.fspath(model)  # type: ignore[return-value]
    if not isinstance(model, str):
        raise TypeError(
            f"model must be a hub id, a folder path or a built {core_cls.__name__}, "
            f"got {type(model).__name__}"
        )
    return model


def build_core(core_cls: type[Any], model: object, options: Mapping[str, Any]) -> Any:
    """Return ``model`` itself if it is a built core object, else build one from ``options``.

    ``options`` maps option names to values, None meaning "not set" (the core default). Setting
    options other than the per-call ones together with a built object is an error, since they
    could not take effect.

    Raises:
        ValueError: For options given with a built object, or an invalid value; an out-of-range
            ``dimensions`` is refused before the weights are loaded.
        TypeError: For a bad ``model`` or an unknown option.
    """
    model = check_model(model, core_cls)
    given = {k: v for k, v in options.items() if v is not None}
    if not isinstance(model, str):
        refused = sorted(k for k in given if k not in PER_CALL_OPTIONS)
        if refused:
            raise ValueError(
                f"model is an already-built {core_cls.__name__}, so {', '.join(refused)} "
                f"cannot apply; pass them to the {core_cls.__name__} instead"
            )
        return model
    # The core checks the options against the checkpoint's config.json before any weight loads.
    return core_cls(model, config=build_config(_CONFIG_OF[core_cls], None, given))


def build_embedder(model: object, options: Mapping[str, Any]) -> Qwen3Embedder:
    """:func:`build_core` for a :class:`~qwen3_rag.core.Qwen3Embedder`."""
    return typing.cast(Qwen3Embedder, build_core(Qwen3Embedder, model, options))


class _CoreAdapter(BaseModel):
    """Base of every pydantic adapter: the options, the core object, and their consistency.

    Fields are validated on assignment, and changing a field the core object depends on
    (``model`` or an option) rebuilds it at once, so a field never reports a value that is not in
    effect. Copies share the loaded core object; pickles carry the model name and config, and the
    other side loads (or, in the same process, shares) the same model.
    """

    model_config = ConfigDict(
        extra="forbid",
        arbitrary_types_allowed=True,
        protected_namespaces=(),
        validate_assignment=True,
    )

    core_class: ClassVar[type[Any]]
    #: What an unset (None) option means in this adapter where its framework's convention
    #: differs from the core default (LlamaIndex: no progress bars unless asked).
    unset_options: ClassVar[Mapping[str, Any]] = {}
    if TYPE_CHECKING:  # a field of every subclass (see options_model)
        model: Any
    _core: Any = PrivateAttr(default=None)
    _built_from: Any = PrivateAttr(default=None)

    # -- validation ------------------------------------------------------------------------
    @model_validator(mode="before")
    @classmethod
    def _model_name_is_not_an_option(cls, data: Any) -> Any:
        if isinstance(data, dict) and "model_name" in data and "model_name" not in cls.model_fields:
            raise ValueError(
                f"{cls.__name__} takes the model as model=..., not model_name=...; "
                f"use model={data['model_name']!r}"
            )
        return data

    @field_validator("*", mode="before")
    @classmethod
    def _check_with_the_core(cls, value: Any, info: Any) -> Any:
        """Check options with the core's own rules, before any model is built."""
        name = info.field_name
        if name == "model":
            return check_model(value, cls.core_class)
        if value is None:
            return None
        if name in cls._option_names():
            # The core config normalises (torch.float32 -> "float32", Path -> str) and checks.
            config = build_config(_CONFIG_OF[cls.core_class], None, {name: value})
            return getattr(config, name)
        if name == "top_n":
            return check_positive_int(value, "top_n")
        if name == "score_threshold":
            return check_score_threshold(value)
        return value

    @classmethod
    def _option_names(cls) -> tuple[str, ...]:
        return option_names(_CONFIG_OF[cls.core_class])

    # -- the core object -------------------------------------------------------------------
    def _build_state(self) -> tuple[Any, ...]:
        """What the core object is built from: the model and every option field."""
        return (self.model, *(getattr(self, n) for n in self._option_names()))

    def _sync(self) -> None:
        """(Re)build the core object if ``model`` or an option changed since it was built."""
        state = self._build_state()
        if self._core is not None and _same(state, self._built_from):
            return
        options = {n: getattr(self, n) for n in self._option_names()}
        if isinstance(self.model, str):  # a built core object keeps its own options
            options |= {n: v for n, v in self.unset_options.items() if options[n] is None}
        self._core = build_core(self.core_class, self.model, options)
        self._built_from = state

    def model_post_init(self, context: Any, /) -> None:
        """Build the core object (or adopt the one passed as ``model``)."""
        super().model_post_init(context)
        self._sync()

    @property
    def core(self) -> Any:
        """The core object in effect (rebuilt first if a field changed through a raw copy)."""
        self._sync()
        return self._core

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in ("model", *self._option_names()):
            super().__setattr__(name, value)
            return
        old = self.__dict__.get(name)
        super().__setattr__(name, value)  # validated (validate_assignment)
        try:
            self._sync()
        except BaseException:
            # The new value cannot take effect: keep the one that does.
            self.__dict__[name] = old
            raise

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Any:
        """A copy sharing the loaded model; ``update`` is validated and takes effect at once."""
        copied = super().model_copy(deep=deep)
        for name, value in (update or {}).items():
            setattr(copied, name, value)
        return copied

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Any:
        memo = {} if memo is None else memo
        # Share the core object (and so the weights); everything else is copied as usual.
        for core in (self._core, self.__dict__.get("model")):
            if isinstance(core, _BUILT):
                memo[id(core)] = core
        return super().__deepcopy__(memo)

    def __getstate__(self) -> dict[Any, Any]:
        state = BaseModel.__getstate__(self)
        private = dict(state.get("__pydantic_private__") or {})
        # The core object is rebuilt on the other side (from the fields, or from the pickled
        # core object given as ``model``); the snapshot only matters in this process.
        private["_core"] = None
        private["_built_from"] = None
        state["__pydantic_private__"] = private
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        BaseModel.__setstate__(self, state)
        self._sync()

    # -- serialisation ---------------------------------------------------------------------
    @field_serializer("model", check_fields=False)
    def _serialize_model(self, model: Any) -> str:
        return model if isinstance(model, str) else str(model.model_name)

    def identity(self) -> dict[str, Any]:
        """The model and every option that decides the output, as in effect."""
        return identity(self.core, getattr(self, "instruction", None))


def _serialize_identity(self: _CoreAdapter, value: Any, info: Any) -> Any:
    return self.identity()[info.field_name]


def _same(a: tuple[Any, ...], b: Any) -> bool:
    if not isinstance(b, tuple) or len(a) != len(b):
        return False
    # A built core object is compared by identity (it has no value equality).
    return all(
        x is y if isinstance(x, _BUILT) else type(x) is type(y) and x == y
        for x, y in zip(a, b, strict=True)
    )


def options_model(
    name: str, core_cls: type[Any], model_default: str, model_help: str
) -> type[_CoreAdapter]:
    """A pydantic base class with ``model`` and every option of ``core_cls``'s config as fields.

    Each option field has the config field's type (``None`` allowed: the core default), and
    the config's ``help`` as its description. Values are checked by the core config itself.
    """
    config_cls = _CONFIG_OF[core_cls]
    hints = typing.get_type_hints(config_cls)
    definitions: dict[str, Any] = {
        "model": (
            str | core_cls | _REMOTE_OF[core_cls],
            Field(default=model_default, description=model_help),
        )
    }
    for f in fields(config_cls):
        # A config default of None is explained by the help itself ("None: ...").
        suffix = "" if f.default is None else f" (None: {f.default!r})"
        definitions[f.name] = (
            hints[f.name] | None,
            Field(default=None, description=f"{f.metadata['help']}{suffix}"),
        )
    # Serialized adapters name what decides the output as in effect, also when ``model`` is a
    # built core object whose options are not fields here (caches key on this).
    serializer = field_serializer(*identity_names(config_cls), check_fields=False)(
        _serialize_identity
    )
    model = create_model(
        name,
        __base__=_CoreAdapter,
        __validators__={"_serialize_identity": serializer},
        **definitions,
    )
    model.core_class = core_cls
    return typing.cast(type[_CoreAdapter], model)
