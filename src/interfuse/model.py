"""``MultimodalModel``: encoders → unimodal and interaction blocks → MNL head, with relevance.

Data flow: inputs ``{modality: x_m}`` → encoders ``h_m = f_m(x_m) ∈ R^{d_m}`` →
unimodal blocks ``z_m = vBN(h_m)`` and interaction blocks ``z_S = vBN(:⊗_{m∈S} g_m:)`` with
``g_m = center(P_m h_m) ∈ R^r`` → ``ŷ = Σ_t W_t z_t + b``. Relevance of each term comes from the
norms of the ``W_t`` (see :mod:`interfuse.fusion.mnl`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import warnings
from collections.abc import Iterator, Mapping
from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .fusion.fast import FusionPlan, apply_updates, fast_fuse, pairwise_fuse
from .fusion.interactions import InteractionFactors, IterBN, outer_products, term_presence
from .fusion.mnl import MNLFusion, Relevance, check_p
from .fusion.norm import VectorBatchNorm, distributed
from .terms import InteractionSpec, Term, resolve_interactions, term_name, validate_modality_names

_DIM_ATTRIBUTES = ("output_dim", "out_features", "out_dim")


class FusionOutput(NamedTuple):
    """What :class:`MultimodalModel` returns.

    ``prediction``: ``(B, C)``; ``blocks``: ``{term name: (B, D_t)}`` as seen by the head (a
    read-only mapping; after a training step of the one-Function head it computes the blocks
    when first read, see :class:`~interfuse.fusion.pairwise.StepBlocks`);
    ``embeddings``: ``{modality: (B, d_m)}`` encoder outputs; ``present``: ``{modality: bool (B,)}``
    when masks were given (even all-True ones), else ``None``.
    """

    prediction: Tensor
    blocks: Mapping[str, Tensor]
    embeddings: dict[str, Tensor]
    present: dict[str, Tensor] | None = None


def encoder_output_dim(name: str, encoder: nn.Module) -> int:
    """An encoder's output size, read from ``output_dim``/``out_features``/``out_dim``."""
    for attribute in _DIM_ATTRIBUTES:
        value = getattr(encoder, attribute, None)
        if isinstance(value, int):
            return value
    raise ValueError(
        f"cannot tell the output size of the encoder for modality {name!r} "
        f"({type(encoder).__name__}); pass encoder_dims={{{name!r}: d}} or give the encoder an "
        f"`output_dim` attribute"
    )


class MultimodalModel(nn.Module):
    """Interpretable multimodal model: MNL fusion over unimodal and interaction terms.

    Args:
        encoders: ``{modality name: nn.Module}`` mapping ``x_m`` to ``(B, d_m)``; the declaration
            order fixes the canonical order inside interaction terms.
        interactions: ``"none"``, ``"pairs"``, ``"all"``, a maximal order, or a list of terms
            (tuples of modality names or ``"a*b"`` strings).
        rank: r, the size of each modality's interaction factor (a term of order k has r^k
            coordinates).
        num_outputs: C, outputs of the head.
        p: lp-norm parameter (p ≥ 1) of the relevance weights and of :meth:`regularizer`.
        iterbn: Wick-normalise interaction products (IterBN, with centred factors). ``False`` gives
            the naive tensor fusion of uncentred affine factors, which suffers degree inflation.
        vbn: vector-wise batch norm on every block. ``False`` feeds raw blocks to the head.
        encoder_dims: output sizes of the encoders, if they lack an ``output_dim`` attribute.
        momentum: momentum of all running statistics, in [0, 1] (``running ← (1 − momentum) ·
            running + momentum · batch``; ``None``, BatchNorm's cumulative average, is not
            supported).
        check_inputs: validate keys, batch sizes and finiteness of inputs on every forward pass.
        compile: compile the fusion head's training step (no masks) with ``torch.compile`` on
            first use. It needs a working compiler toolchain (a C++ compiler on CPU); without
            one, or if compilation fails, the model warns once and runs the eager fast path,
            which computes the same values. The first compiled step takes tens of seconds (15–41
            s measured on 2 cores), and a new batch size compiles again (the last, smaller batch
            of an epoch: once). Masked steps (modality dropout included) and evaluation run the
            eager fast path. On CPU the compiled head is not faster than the eager one
            (BENCHMARKS.md §3); on a GPU it has not been measured yet.
    """

    def __init__(
        self,
        encoders: Mapping[str, nn.Module],
        interactions: InteractionSpec = "pairs",
        rank: int = 8,
        num_outputs: int = 1,
        p: float = 2.0,
        iterbn: bool = True,
        vbn: bool = True,
        encoder_dims: Mapping[str, int] | None = None,
        momentum: float = 0.1,
        check_inputs: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.modalities = validate_modality_names(encoders)
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"interaction rank must be an integer >= 1, got {rank!r}")
        check_p(p)
        if (
            isinstance(momentum, bool)
            or not isinstance(momentum, (int, float))
            or not (0 <= momentum <= 1)
        ):
            raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
        dims = {
            m: int(encoder_dims[m])
            if encoder_dims and m in encoder_dims
            else encoder_output_dim(m, encoders[m])
            for m in self.modalities
        }
        self._dims = dims
        self.encoders = nn.ModuleDict({m: encoders[m] for m in self.modalities})
        self.interaction_terms: list[Term] = resolve_interactions(interactions, self.modalities)
        self.terms: list[Term] = [(m,) for m in self.modalities] + self.interaction_terms
        self.rank = rank
        self.iterbn = iterbn
        self.vbn = vbn
        self.check_inputs = check_inputs
        self._skip_finite = False  # see finite_inputs()

        in_interactions = [
            m for m in self.modalities if any(m in t for t in self.interaction_terms)
        ]
        self.factors = InteractionFactors(
            {m: dims[m] for m in in_interactions}, rank, center=iterbn, momentum=momentum
        )
        self.wick = (
            IterBN(self.interaction_terms, rank, momentum, centred_factors=True) if iterbn else None
        )
        block_dims = {
            term_name(t): dims[t[0]] if len(t) == 1 else rank ** len(t) for t in self.terms
        }
        self.norms = nn.ModuleDict(
            {t: VectorBatchNorm(d, momentum=momentum) for t, d in block_dims.items()} if vbn else {}
        )
        self.head = MNLFusion(block_dims, num_outputs, p=p)
        self._plan: FusionPlan | None = None
        self.fusion_plan()
        self.compile_fusion = bool(compile)
        # batch moments over all processes of a process group (fusion.set_sync_stats)
        self.sync_stats = False
        self._compiled_fuse = None  # built on first use; None after a fallback as well
        self._compile_failed = False

    def fusion_plan(self) -> FusionPlan:
        """The fast path's index bookkeeping for this model's terms (built once).

        It also records the momentum shared by the head's running statistics and whether every vBN
        has the same ``eps`` (the fast path uses one of each) at construction; after changing a
        submodule's ``momentum`` or ``eps``, set ``model._plan = None`` to rebuild it.
        """
        if self._plan is None:
            self._plan = FusionPlan(
                self.modalities,
                self._dims,
                self.interaction_terms,
                list(self.factors.projections),
                self.rank,
            )
            # the fusion head's own running statistics only: an encoder's BatchNorm keeps its
            # own momentum and updates itself, it has no say in the head's path
            fusion = (self.factors, self.wick, self.norms)
            momenta = {
                m.momentum
                for part in fusion
                if part is not None
                for m in part.modules()
                if hasattr(m, "momentum")
            }
            self._plan.momentum = momenta.pop() if len(momenta) == 1 else None
            self._plan.one_eps = len({norm.eps for norm in self.norms.values()}) <= 1
        return self._plan

    def _compiled_step(self, embeddings: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The fast path through ``torch.compile`` (see ``compile``), or eager after a fallback."""
        if self._compile_failed:
            return fast_fuse(self, embeddings)
        if self._compiled_fuse is None:
            problem = compiler_problem()
            if problem is not None:
                self._fall_back(problem)
                return fast_fuse(self, embeddings)
            self._compiled_fuse = torch.compile(partial(fast_fuse, plain=True, defer_updates=True))
        try:
            prediction, blocks, updates = self._compiled_fuse(self, embeddings)
        except Exception as error:  # noqa: BLE001 (any compiler failure: run eagerly)
            self._fall_back(f"{type(error).__name__}: {str(error).splitlines()[0][:300]}")
            return fast_fuse(self, embeddings)
        apply_updates(updates, self.fusion_plan().momentum)
        return prediction, blocks

    def _fall_back(self, reason: str) -> None:
        self._compile_failed = True
        self._compiled_fuse = None
        warnings.warn(
            f"MultimodalModel(compile=True): the fusion head runs without torch.compile "
            f"({reason}); results are the same, only slower. Install a C++ compiler (e.g. g++) "
            f"to compile, or pass compile=False (--no-compile) to silence this warning.",
            RuntimeWarning,
            stacklevel=_caller_stacklevel(),
        )

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 (nn.Module's signature)
        """``.to()``, ``.double()``, …: the fast path's cached tensor lists must be rebuilt."""
        self._forget_cached_tensors()
        return super()._apply(fn, recurse)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # noqa: ANN001, ANN201
        """:meth:`torch.nn.Module.load_state_dict` (``assign=True`` replaces tensors: the fast
        path's cached tensor lists are rebuilt)."""
        self._forget_cached_tensors()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _forget_cached_tensors(self) -> None:
        plan = self.__dict__.get("_plan")
        if plan is not None:
            plan.pairwise_cache = None

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_compiled_fuse"] = None  # compiled code is not copied or pickled; rebuilt on use
        return state

    def uses_fast_path(self, masks: Mapping[str, Tensor] | None = None) -> bool:
        """Whether :meth:`fuse` takes the stacked fast path (see :mod:`interfuse.fusion.fast`).

        It does for models with IterBN and vBN on, interaction orders ≤ 4, one momentum for
        all the head's running statistics (an encoder's BatchNorm does not count) and one ``eps``
        for all vBNs; otherwise the module-by-module path runs. Training with statistics
        synchronised across processes (``sync_stats`` in a process group) also runs the
        module-by-module path, whose moments are all-reduced.
        """
        if self.sync_stats and self.training and distributed():
            return False
        if not (self.iterbn and self.vbn):
            return False
        plan = self.fusion_plan()
        return plan.supported and plan.momentum is not None and plan.one_eps

    @property
    def term_names(self) -> list[str]:
        return [term_name(t) for t in self.terms]

    @property
    def p(self) -> float:
        return self.head.p

    def encode(
        self, inputs: Mapping[str, Tensor], masks: Mapping[str, Tensor | bool] | None = None
    ) -> dict[str, Tensor]:
        """Encoder outputs ``{modality: (B, d_m)}``; rows of missing samples are 0.

        A modality missing for the whole batch (absent from ``inputs``, mask ``False``) is not
        encoded at all. Inputs of missing samples never reach the encoder (they are zeroed
        first), so they may hold anything, NaN included.
        """
        present = self.presence(inputs, masks)
        if self.check_inputs:
            self._validate(inputs, present, finite=not self._skip_finite)
        batch = _batch_size(inputs)
        embeddings = {}
        for m, encoder in self.encoders.items():
            if m not in inputs:
                embeddings[m] = self.head.blocks[m].weight.new_zeros(batch, self._dims[m])
                continue
            x = inputs[m]
            keep = present.get(m) if present else None
            if keep is not None:
                x = torch.where(keep.reshape(-1, *([1] * (x.dim() - 1))), x, torch.zeros_like(x))
            try:
                h = encoder(x)
            except RuntimeError as error:
                if x.is_floating_point():
                    raise
                first = str(error).splitlines()[0]
                raise ValueError(
                    f"modality {m!r}: its encoder cannot take {x.dtype} input ({first}); pass "
                    f"floating-point inputs (x.float()) or an encoder that takes {x.dtype}"
                ) from None
            if not isinstance(h, Tensor) or h.dim() != 2 or h.shape[0] != batch:
                shape = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
                raise ValueError(
                    f"the encoder of modality {m!r} must return a (batch, features) tensor with "
                    f"batch {batch}, got {shape}"
                )
            if h.shape[1] != self._dims[m]:
                raise ValueError(
                    f"the encoder of modality {m!r} returned {h.shape[1]} features per sample, but "
                    f"the model was built for {self._dims[m]} (encoder_dims or the encoder's "
                    f"output_dim); build the model with encoder_dims={{{m!r}: {h.shape[1]}}}"
                )
            embeddings[m] = h if keep is None else torch.where(keep[:, None], h, 0.0)
        return embeddings

    def fuse(
        self, embeddings: Mapping[str, Tensor], masks: Mapping[str, Tensor | bool] | None = None
    ) -> FusionOutput:
        """Blocks and prediction from encoder outputs ``{modality: (B, d_m)}``.

        ``masks`` (``{m: bool (B,)}`` or a Python bool, True = present; see :meth:`presence`)
        replace the block of a missing modality, and of every interaction containing it, by its
        expectation 0; batch statistics then use present samples only. A mask of an unknown
        modality, or one that is not a bool of shape ``(B,)``, is an error naming the modality.

        Under mixed precision (autocast) the encoders run in the low precision and the fusion
        (batch statistics, IterBN, vBN, the head) in float32, as batch norm does.
        """
        return self._fuse(embeddings, self._fuse_masks(embeddings, masks) if masks else masks)

    def _fuse(
        self, embeddings: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None
    ) -> FusionOutput:
        """:meth:`fuse` with ``masks`` already checked (by :meth:`presence` in a forward pass,
        so that a training step checks them once, not once per call)."""
        device = next(iter(embeddings.values())).device.type
        if torch.is_autocast_enabled(device):
            with torch.autocast(device, enabled=False):
                return self._fuse({m: e.float() for m, e in embeddings.items()}, masks)
        if self.uses_fast_path(masks):
            if self.training and not masks:
                if self.compile_fusion:
                    prediction, blocks = self._compiled_step(embeddings)
                    return FusionOutput(prediction, blocks, dict(embeddings), masks)
                if self._plan.pairwise:  # the one-Function head: its blocks when read
                    step = pairwise_fuse(self, embeddings)
                    return FusionOutput(step.prediction, step.blocks, dict(embeddings), masks)
            prediction, blocks = fast_fuse(self, embeddings, masks or None)
            return FusionOutput(prediction, blocks, dict(embeddings), masks)
        raw: dict[Term, Tensor] = {(m,): embeddings[m] for m in self.modalities}
        if self.interaction_terms:
            factors = self.factors(embeddings, masks)
            if self.wick is not None:
                products = self.wick(factors, masks)
            else:
                products = outer_products(factors, self.interaction_terms)
            for t in self.interaction_terms:
                raw[t] = products[t].flatten(start_dim=1)
        blocks = {}
        for t, z in raw.items():
            name = term_name(t)
            present = term_presence(t, masks)
            if self.vbn:
                z = self.norms[name](z, present)
            blocks[name] = z if present is None else torch.where(present[:, None], z, 0.0)
        return FusionOutput(self.head(blocks), blocks, dict(embeddings), masks)

    def _fuse_masks(
        self, embeddings: Mapping[str, Tensor], masks: Mapping[str, Tensor | bool]
    ) -> dict[str, Tensor]:
        """``masks`` of :meth:`fuse` checked (names, bool dtype, shape ``(B,)``; metadata only,
        no device sync), a Python bool expanded to the batch."""
        unknown = [m for m in masks if m not in self.modalities]
        if unknown:
            raise ValueError(
                f"masks for unknown modalities {unknown}; the model expects {list(self.modalities)}"
            )
        first = next(iter(embeddings.values()))
        return {m: _batch_mask(m, mask, first.shape[0], first.device) for m, mask in masks.items()}

    def forward(
        self, inputs: Mapping[str, Tensor], masks: Mapping[str, Tensor | bool] | None = None
    ) -> FusionOutput:
        """Predict from ``{modality: x_m}``; see :meth:`presence` for missing modalities."""
        present = self.presence(inputs, masks)
        return self._fuse(self.encode(inputs, present), present)

    def regularizer(self, p: float | None = None) -> Tensor:
        """Ω_p of the head's weight blocks; add ``λ·regularizer()`` to the task loss."""
        return self.head.regularizer(p)

    def relevance(self, p: float | None = None) -> Relevance:
        """Relevance β and shares of every term (detached)."""
        return self.head.relevance(p)

    def presence(
        self, inputs: Mapping[str, Tensor], masks: Mapping[str, Tensor | bool] | None = None
    ) -> dict[str, Tensor] | None:
        """Per-sample presence ``{m: bool (B,)}`` of every modality, or ``None`` if all present.

        ``masks[m]`` is a bool tensor of shape ``(B,)`` (True = present) or a Python bool for the
        whole batch. A modality may be left out of ``inputs`` only if its mask says it is
        missing for every sample.
        """
        if not isinstance(inputs, Mapping):
            raise TypeError(
                f"inputs must be a dict {{modality name: tensor}}, got {type(inputs).__name__}"
            )
        unknown = [k for k in inputs if k not in self.modalities]
        unknown += [k for k in (masks or {}) if k not in self.modalities and k not in unknown]
        not_given = [m for m in self.modalities if m not in inputs]
        undeclared = [m for m in not_given if m not in (masks or {})]
        if unknown or undeclared:
            parts = [f"unknown modalities {unknown}"] if unknown else []
            if undeclared:
                parts.append(
                    f"missing modalities {undeclared} (pass masks={{name: False}} to mark a "
                    f"modality as missing for the whole batch)"
                )
            raise ValueError(f"{'; '.join(parts)}; the model expects {list(self.modalities)}")
        if not inputs:
            raise ValueError("no modality is present in the inputs; at least one is needed")
        if not masks:
            return None
        first = next(iter(inputs.values()))
        batch, device = _batch_size(inputs), first.device
        present = {}
        for m in self.modalities:
            mask = _batch_mask(m, masks.get(m, True), batch, device)
            if m not in inputs and bool(mask.any()):
                raise ValueError(
                    f"modality {m!r} is marked present for some samples but not in the inputs"
                )
            present[m] = mask.to(device)
        return present

    def check_data(
        self, inputs: Mapping[str, Tensor], masks: Mapping[str, Tensor | bool] | None = None
    ) -> None:
        """Run the input checks of a forward pass once on a whole data split.

        ``inputs`` (``{m: (N, …)}``) and ``masks`` as for :meth:`forward`. It raises the error
        a forward pass on a batch of this split would raise (unknown or missing modalities,
        batch sizes, non-finite values in present samples), so that a training loop over
        batches of the split may skip the per-batch scan for non-finite values, the one check
        whose cost grows with the data (``fit`` does; see
        :class:`~interfuse.train.module.FusionModule`). The dtype is left to the per-batch
        checks: a precision setting may convert model and batches after this call.
        """
        self._validate(inputs, self.presence(inputs, masks), dtype=False)

    @contextlib.contextmanager
    def finite_inputs(self) -> Iterator[None]:
        """Inside: forward passes skip the scan of their inputs for non-finite values (the
        other input checks still run). For batches of data that :meth:`check_data` passed."""
        self._skip_finite = True
        try:
            yield
        finally:
            self._skip_finite = False

    def _validate(
        self,
        inputs: Mapping[str, Tensor],
        present: Mapping[str, Tensor] | None,
        finite: bool = True,
        dtype: bool = True,
    ) -> None:
        sizes = {}
        for m, x in inputs.items():
            if not isinstance(x, Tensor):
                raise TypeError(f"modality {m!r}: expected a torch.Tensor, got {type(x).__name__}")
            if x.dim() == 0:
                raise ValueError(f"modality {m!r}: expected a batch, got a scalar tensor")
            sizes[m] = x.shape[0]
        if len(set(sizes.values())) > 1:
            raise ValueError(f"modalities have different batch sizes: {sizes}")
        parameter = next(self.head.parameters())
        if parameter.device.type == "meta":
            raise ValueError(
                "the model is on the meta device (built without weights); load its weights first "
                "(e.g. load_state_dict(state, assign=True)) or build it on a real device"
            )
        model_dtype = parameter.dtype
        for m, x in inputs.items():
            if x.device.type == "meta":
                raise ValueError(
                    f"modality {m!r}: the input is on the meta device (it holds no data)"
                )
            if dtype and x.is_floating_point() and x.dtype != model_dtype:
                raise ValueError(
                    f"modality {m!r}: input dtype {x.dtype} differs from the model's "
                    f"{model_dtype}; convert the input (e.g. x.to({model_dtype})) or the model"
                )
            if finite and x.is_floating_point():
                rows = x if not present else x[present[m]]
                if not _all_finite(rows):
                    bad = int((~torch.isfinite(rows)).sum())
                    raise ValueError(
                        f"modality {m!r}: input has {bad} non-finite values (NaN or inf) in "
                        f"present samples"
                    )
        batch = next(iter(sizes.values()))
        if batch == 0:
            raise ValueError("empty batch: every modality has 0 samples")
        if self.training and batch < 2:
            raise ValueError(
                "a batch of 1 sample cannot be used in training mode (batch statistics are "
                "undefined); use batches of >= 2 samples or call model.eval() for inference"
            )

    def extra_repr(self) -> str:
        return (
            f"modalities={list(self.modalities)}, "
            f"interactions={self.term_names[len(self.modalities) :]}, "
            f"rank={self.rank}, iterbn={self.iterbn}, vbn={self.vbn}"
        )


def _batch_mask(modality: str, mask: Tensor | bool, batch: int, device: torch.device) -> Tensor:
    """A presence mask as a bool tensor ``(batch,)`` (a Python bool for the whole batch), or
    one line naming the modality and what was given instead."""
    if isinstance(mask, bool):
        return torch.full((batch,), mask, dtype=torch.bool, device=device)
    if not isinstance(mask, Tensor) or mask.shape != (batch,) or mask.dtype != torch.bool:
        described = (
            f"{mask.dtype} tensor of shape {tuple(mask.shape)}"
            if isinstance(mask, Tensor)
            else type(mask).__name__
        )
        raise ValueError(
            f"mask of modality {modality!r} must be a bool tensor of shape ({batch},) or a "
            f"Python bool, got {described}"
        )
    return mask


def _caller_stacklevel() -> int:
    """``stacklevel`` for ``warnings.warn`` that names the first frame outside interfuse and torch
    (the user's call, however deep the module call chain between them)."""
    skip = tuple(
        os.path.dirname(m.__file__ or "") + os.sep for m in (sys.modules[__package__], torch)
    )
    frame, level = sys._getframe(1), 1  # level 1: the function that calls warnings.warn
    while frame.f_back is not None and frame.f_code.co_filename.startswith(skip):
        frame, level = frame.f_back, level + 1
    return level


def compiler_problem() -> str | None:
    """Why ``torch.compile`` cannot run the fusion head here, or ``None`` if it can.

    On CPU, TorchInductor builds C++ code: it needs a C++ compiler (``$CXX``, ``c++``, ``g++`` or
    ``clang++``) on the ``PATH``.
    """
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    candidates = [os.environ.get("CXX"), "c++", "g++", "clang++"]
    if not any(c and shutil.which(c) for c in candidates):
        return "no C++ compiler found (looked for $CXX, c++, g++, clang++)"
    return None


def _all_finite(x: Tensor) -> bool:
    """Whether every value of ``x`` is finite. A NaN or ±inf anywhere makes the sum NaN or ±inf,
    so a finite sum proves it in one cheap reduction (~14× faster than ``isfinite(x).all()`` on
    a batch); only a non-finite sum (a bad value, or finite values whose sum overflows) needs
    the elementwise test."""
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def _batch_size(inputs: Mapping[str, Tensor]) -> int:
    return next(iter(inputs.values())).shape[0]
