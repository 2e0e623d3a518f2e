"""Forget subspaces from feature statistics (pure maths: no model code).

Features are rows (n x d). Everything is computed from Gram matrices X^T X so that callers can
accumulate statistics batch by batch with memory bounded by d^2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "Gram",
    "Subspace",
    "as_gram",
    "forget_basis",
    "rayleigh_basis",
    "numerical_rank",
    "head_rows_subspace",
    "protected_rows_subspace",
    "balanced_rayleigh_subspace",
    "regression_subspace",
    "protected_statistics",
    "energy_basis",
    "private_basis",
    "complement_basis",
    "gram_without",
    "with_cut",
    "mean_outer_sum",
]


@dataclass
class Gram:
    """Second-moment statistics of n feature rows: ``matrix = X^T X`` (d x d, float64)."""

    matrix: Tensor
    n: int
    rows: Tensor | None = None  # the n x d rows themselves, kept when n < d (fewer rows than dims)
    # Factorisations of this Gram reused across fits (retain statistics cached for many erasures).
    cache: dict = field(default_factory=dict, repr=False, compare=False)
    # Retain statistics only: each retain concept's rows and the statistics shared by all, for a
    # fit that protects every concept (``balanced_rayleigh_subspace``) instead of their average.
    parts: list[Tensor] | None = field(default=None, repr=False, compare=False)
    shared: Gram | None = field(default=None, repr=False, compare=False)

    @property
    def dim(self) -> int:
        return self.matrix.shape[-1]

    def covariance(self) -> Tensor:
        """Uncentred second moment ``X^T X / n``."""
        return self.matrix / max(self.n, 1)

    def __add__(self, other: Gram) -> Gram:
        """The statistics of both sets of rows (rows kept while still fewer than dims)."""
        if not isinstance(other, Gram) or other.dim != self.dim:
            return NotImplemented
        n = self.n + other.n
        both = self.rows is not None and other.rows is not None and n < self.dim
        return Gram(self.matrix + other.matrix, n, torch.cat([self.rows, other.rows]) if both else None)


@dataclass
class Subspace:
    """A rank-k edit ``W -> W - W @ dual @ diag(eta) @ basis.T``.

    ``dual`` is None for an orthogonal projection (dual = basis). The Rayleigh variant uses the
    oblique dual ``C_rr @ basis``, which makes ``dual @ basis.T`` idempotent.
    """

    basis: Tensor  # d x k
    eta: Tensor  # k
    dual: Tensor | None = None  # d x k
    spectrum: Tensor | None = None  # all eigenvalues, descending (diagnostics)

    @property
    def k(self) -> int:
        return self.basis.shape[1]


def _check_finite(t: Tensor, what: str) -> None:
    if not torch.isfinite(t).all():
        raise ValueError(
            f"{what} contain NaN or Inf values; check the input data and the model's weights "
            "(a diverged model or unnormalised inputs are the usual causes)."
        )


def as_gram(X: Tensor | Gram, what: str = "forget features") -> Gram:
    """Turn feature rows (n x d) or a :class:`Gram` into a validated float64 Gram."""
    if isinstance(X, Gram) and X.matrix.dtype == torch.float64 and (X.rows is None or X.rows.dtype == torch.float64):
        g = X  # already validated-shape float64: keep the object, and with it its cached factorisations
    elif isinstance(X, Gram):
        g = Gram(X.matrix.to(torch.float64), int(X.n), None if X.rows is None else X.rows.to(torch.float64))
    elif isinstance(X, Tensor):
        if X.ndim != 2:
            raise ValueError(f"{what} must be a 2-D tensor of rows (n x d); got shape {tuple(X.shape)}")
        _check_finite(X, what)
        x = X.to(torch.float64)
        g = Gram(x.T @ x, X.shape[0], x if X.shape[0] < X.shape[1] else None)
    else:
        raise TypeError(f"{what} must be a Tensor (n x d) or a Gram; got {type(X).__name__}")
    if g.n == 0:
        raise ValueError(f"{what} are empty (0 samples): pass at least one sample.")
    if g.matrix.ndim != 2 or g.matrix.shape[0] != g.matrix.shape[1]:
        raise ValueError(f"Gram matrix of {what} must be square; got {tuple(g.matrix.shape)}")
    _check_finite(g.matrix, what)
    return g


def _eigh_desc(m: Tensor) -> tuple[Tensor, Tensor]:
    m = (m + m.T) / 2  # symmetrise away accumulation round-off
    vals, vecs = torch.linalg.eigh(m)
    return vals.flip(0), vecs.flip(1)


def _factor_eig_desc(f: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Eigenpairs of ``f @ f.T`` (d x d) from the thin SVD of ``f`` (d x n, n < d): O(d n^2) instead
    of O(d^3). Eigenvalues are padded with zeros to ``dim``; only the first n vectors are returned."""
    u, s, _ = torch.linalg.svd(f, full_matrices=False)
    vals = torch.zeros(dim, dtype=f.dtype)
    vals[: s.numel()] = s**2
    return vals, u


def numerical_rank(eigvals: Tensor, dim: int) -> int:
    """Rank of a PSD matrix from its eigenvalues (descending), with LAPACK's usual tolerance."""
    top = float(eigvals[0]) if eigvals.numel() else 0.0
    if top <= 0:
        return 0
    tol = top * dim * torch.finfo(torch.float64).eps * 10
    return int((eigvals > tol).sum())


def forget_basis(
    X: Tensor | Gram,
    k: int | None = None,
    energy: float | None = None,
    tail_beta: float | None = None,
    sv_ratio: float | None = None,
) -> Tensor:
    """Orthonormal basis (d x k) of the forget subspace of ``X``.

    At most one selector applies: ``k`` top right singular vectors; or the smallest k whose
    singular values hold an ``energy`` fraction of sum(s_i^2); or every direction with
    ``s_i >= sv_ratio * s_max``; or the tail, the directions with ``0 < s_i / s_max < tail_beta``
    (for random/instance forgetting). With none given, k=1.
    """
    return forget_subspace(X, k=k, energy=energy, tail_beta=tail_beta, sv_ratio=sv_ratio).basis


def forget_subspace(
    X: Tensor | Gram,
    k: int | None = None,
    energy: float | None = None,
    tail_beta: float | None = None,
    sv_ratio: float | None = None,
) -> Subspace:
    """Like :func:`forget_basis`, returning a :class:`Subspace` (eta = 1) with its spectrum."""
    options = (("k", k), ("energy", energy), ("tail_beta", tail_beta), ("sv_ratio", sv_ratio))
    chosen = [name for name, v in options if v is not None]
    if len(chosen) > 1:
        raise ValueError(f"pass only one of k, energy, tail_beta, sv_ratio (got {', '.join(chosen)})")
    g = as_gram(X)
    # Few rows (e.g. a concept's tokens): the SVD of the rows gives the same eigenpairs far faster.
    vals, vecs = _factor_eig_desc(g.rows.T, g.dim) if g.rows is not None else _eigh_desc(g.matrix)
    vals = vals.clamp_min(0)
    rank = numerical_rank(vals, g.dim)
    if rank == 0:
        raise ValueError("forget features are all zero: there is no subspace to remove.")
    if tail_beta is not None:
        if not 0 < tail_beta < 1:
            raise ValueError(f"tail_beta must be in (0, 1); got {tail_beta}")
        s = vals[:rank].sqrt()
        idx = torch.nonzero(s / s[0] < tail_beta).flatten()
        if idx.numel() == 0:
            raise ValueError(
                f"no singular value of the forget features is below tail_beta={tail_beta} times the "
                "largest; raise tail_beta or use more forget samples."
            )
        return Subspace(vecs[:, idx], torch.ones(idx.numel(), dtype=vals.dtype), spectrum=vals)
    if sv_ratio is not None:
        if not 0 < sv_ratio <= 1:
            raise ValueError(f"sv_ratio must be in (0, 1]; got {sv_ratio}")
        k = int((vals[:rank].sqrt() >= sv_ratio * vals[0].sqrt()).sum())
    if energy is not None:
        if not 0 < energy <= 1:
            raise ValueError(f"energy must be in (0, 1]; got {energy}")
        frac = vals.cumsum(0) / vals.sum()
        k = min(int((frac < energy - 1e-12).sum()) + 1, rank)
    k = 1 if k is None else int(k)
    _check_k(k, g.dim, rank)
    return Subspace(vecs[:, :k], torch.ones(k, dtype=vals.dtype), spectrum=vals)


def _check_k(k: int, dim: int, rank: int) -> None:
    if k < 1:
        raise ValueError(f"k must be a positive integer; got {k}")
    if k > dim:
        raise ValueError(f"k={k} exceeds the feature dimension {dim}; choose k <= {dim}.")
    if k > rank:
        raise ValueError(
            f"k={k} exceeds the rank ({rank}) of the forget features; choose k <= {rank} "
            "or pass more (and more varied) forget samples."
        )


def rayleigh_basis(
    Xf: Tensor | Gram,
    Xr: Tensor | Gram,
    k: int,
    ridge: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """Generalised Rayleigh-quotient basis (d x k) and ``eta_i = min(1, R(u_i))``.

    Solves ``C_ff u = lambda C_rr u`` with ``C_rr`` regularised by ``ridge * trace(C_rr) / d``.
    The basis satisfies ``U^T C_rr U = I`` (it is not orthonormal); see :func:`rayleigh_subspace`
    for the oblique dual that turns it into a projection.
    """
    sub = rayleigh_subspace(Xf, Xr, k, ridge=ridge)
    return sub.basis, sub.eta


def rayleigh_subspace(
    Xf: Tensor | Gram, Xr: Tensor | Gram, k: int, ridge: float = 0.1, clip_k: bool = False
) -> Subspace:
    """The Rayleigh subspace with its oblique dual ``C_rr U`` (so the edit is a true projection).

    ``clip_k`` lowers k to the rank of the forget features instead of raising an error.
    """
    gf, gr = as_gram(Xf, "forget features"), as_gram(Xr, "retain features")
    if gf.dim != gr.dim:
        raise ValueError(f"forget and retain features differ in dimension ({gf.dim} vs {gr.dim})")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0; got {ridge}")
    d = gf.dim
    if int(k) > d or int(k) < 1:
        _check_k(int(k), d, d)
    c_rr, L = _regularised_retain(gr, ridge)
    # A = L^-1 C_ff L^-T, eigenvectors Q, U = L^-T Q
    c_ff = gf.covariance()
    if gf.rows is not None:  # A = Y Y^T with Y = L^-1 X_f^T / sqrt(n): a thin SVD suffices
        y = torch.linalg.solve_triangular(L, gf.rows.T / gf.n**0.5, upper=False)
        vals, q = _factor_eig_desc(y, d)
    else:
        a = torch.linalg.solve_triangular(L, c_ff, upper=False)
        a = torch.linalg.solve_triangular(L, a.T, upper=False).T
        vals, q = _eigh_desc(a)
    # C_rr is positive definite, so rank(A) = rank(C_ff): no second eigendecomposition needed.
    rank = numerical_rank(vals.clamp_min(0), d)
    k = min(int(k), max(rank, 1)) if clip_k else int(k)
    _check_k(k, d, rank)
    u = torch.linalg.solve_triangular(L.T, q[:, :k], upper=True)
    eta = vals[:k].clamp(min=0, max=1)  # R(u_i) = lambda_i for generalised eigenvectors
    return Subspace(basis=u, eta=eta, dual=c_rr @ u, spectrum=vals.clamp_min(0))


def head_rows_subspace(
    Xf: Tensor | Gram,
    weight: Tensor,
    forget_rows: Sequence[int],
    ridge: float = 0.1,
    k: int | None = None,
    energy: float | None = None,
    tail_beta: float | None = None,
    sv_ratio: float | None = None,
) -> Subspace:
    """The forget subspace taken out of a classifier head's forget-class rows only.

    ``weight`` is the head (C x d, one row per class), ``forget_rows`` the classes to erase (F);
    the other rows (R) are protected. ``U`` is the forget subspace (selectors as in
    :func:`forget_subspace`). The dual ``V = M^-1 W_F^T (W_F M^-1 W_F^T)^+ W_F U``, with the head's
    own retain statistic ``M = W_R^T W_R + ridge * trace/d * I``, gives ``W V = W_F U`` on the
    forget rows, so ``W* = W - W V U^T`` leaves ``W_F (I - U U^T)`` there, and the smallest change
    to the protected rows that ``M`` allows (none when C <= d and ridge -> 0): the other classes'
    logits keep reading what they read.
    """
    sub = forget_subspace(Xf, k=k, energy=energy, tail_beta=tail_beta, sv_ratio=sv_ratio)
    if weight.ndim != 2 or weight.shape[1] != sub.basis.shape[0]:
        raise ValueError(
            f"the head weight must be (classes x {sub.basis.shape[0]}) to match the forget features; "
            f"got {tuple(weight.shape)}"
        )
    # The Gram of the rows runs in the weight's precision (at least float32), as edits do
    # (projection.edit_factor): in float64 it would be most of the fit's time on an ImageNet head.
    w = weight.detach().to("cpu", torch.promote_types(weight.dtype, torch.float32))
    _check_finite(w, "head weights")
    forget = sorted({int(c) for c in forget_rows})
    if not forget or forget[0] < 0 or forget[-1] >= w.shape[0]:
        raise ValueError(f"forget classes must be class indices in [0, {w.shape[0]}); got {list(forget_rows)}.")
    keep = torch.ones(w.shape[0], dtype=torch.bool)
    keep[forget] = False
    if not keep.any():
        raise ValueError("every class of the head is a forget class: there is no class left to protect.")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0; got {ridge}")
    w_f, w_r = w[forget].to(torch.float64), w[keep]
    if w_r.any():
        _, L = _regularised_retain(Gram((w_r.T @ w_r).to(torch.float64), 1), ridge)
    else:  # zero rows (a zero-initialised head) read nothing: any metric protects them
        L = torch.eye(w.shape[1], dtype=torch.float64)
    m_inv_wf = torch.cholesky_solve(w_f.T, L)  # d x |F|
    s = torch.linalg.pinv(w_f @ m_inv_wf, hermitian=True)  # pinv: a zero forget row gets no edit
    dual = m_inv_wf @ (s @ (w_f @ sub.basis))
    return Subspace(basis=sub.basis, eta=sub.eta, dual=dual, spectrum=sub.spectrum)


def _regularised_retain(gr: Gram, ridge: float) -> tuple[Tensor, Tensor]:
    """``C_rr + ridge * trace(C_rr)/d * I`` and its Cholesky factor, cached on the Gram."""
    key = ("cholesky", float(ridge), gr.n, gr.matrix.data_ptr(), gr.matrix._version)
    if key in gr.cache:
        return gr.cache[key]
    d = gr.dim
    c_rr = gr.covariance()
    scale = float(torch.trace(c_rr)) / d
    if scale <= 0:
        raise ValueError("retain features are all zero: pass real retain samples or omit them.")
    c_rr = c_rr + (ridge * scale + 1e-12 * scale) * torch.eye(d, dtype=c_rr.dtype)
    try:
        L = torch.linalg.cholesky((c_rr + c_rr.T) / 2)
    except RuntimeError as err:  # pragma: no cover - ridge > 0 keeps C_rr positive definite
        raise ValueError("retain covariance is not positive definite; increase ridge.") from err
    gr.cache[key] = (c_rr, L)
    return c_rr, L


def balanced_rayleigh_subspace(
    Xf: Tensor | Gram,
    parts: list[Tensor],
    k: int,
    *,
    shared: Gram | None = None,
    ridge: float = 0.1,
    rounds: int = 1,
    step: float = 4.0,
    clip_k: bool = False,
    contrast: float = 0.0,
    fragility: float = 0.0,
) -> tuple[Subspace, Tensor, Tensor]:
    """The Rayleigh subspace against retain concepts weighed so that the worst-protected one decides.

    ``parts``: each retain concept's feature rows (n_j x d); ``shared``: statistics every prompt
    shares (e.g. context). C_rr is the weighted mean of the concepts' second moments plus the
    shared one scaled to the same trace (the shared statistics weigh as much as all concepts
    together, whatever their norms). Round by round, each concept's
    weight in C_rr grows with the share of its features the edit would remove (multiplicative
    weights on the maximum damage). Returns the subspace, the final weights and each concept's
    damage: ``||X_j dual diag(eta) basis^T||^2 / ||X_j||^2`` per part, i.e. the fraction of its
    feature energy the edit changes.

    ``contrast``: the scatter of the concepts' mean features about their centre (the directions
    that tell the retain concepts apart, which the uncentred second moments, dominated by what all
    prompts share, underweight) joins C_rr with this many times C_rr's trace. ``fragility``: each
    concept starts with weight ``lambda_j ** -fragility``, lambda_j the top generalised eigenvalue
    of its second moment against the others' (how separable it is from them): the concepts hardest
    to tell apart from the rest, which a nearby edit disturbs first, are protected most.
    """
    if not parts:
        raise ValueError("balanced_rayleigh_subspace needs at least one retain concept's rows")
    xs = [p.to(torch.float64) for p in parts]
    for x in xs:
        _check_finite(x, "retain features")
    covs = [x.T @ x / max(x.shape[0], 1) for x in xs]
    energy = torch.stack([x.pow(2).sum() for x in xs]).clamp_min(1e-300)
    base = shared.covariance() if shared is not None and shared.n else None
    if contrast < 0 or fragility < 0:
        raise ValueError(f"contrast and fragility must be >= 0; got {contrast} and {fragility}")
    means = torch.stack([x.mean(0) for x in xs])
    means = means - means.mean(0)
    scatter = means.T @ means / len(xs)

    def mixed(w: Tensor) -> Tensor:
        c = sum(wi * ci for wi, ci in zip(w.tolist(), covs)) / float(w.sum())
        if base is not None:  # as much energy as the concepts together (outlier tokens, e.g. CLIP's
            c = c + base * (torch.trace(c) / torch.trace(base).clamp_min(1e-300))  # start token, cannot swamp it)
        if contrast > 0 and float(torch.trace(scatter)) > 0:
            c = c + scatter * (contrast * torch.trace(c) / torch.trace(scatter))
        return c

    w = torch.ones(len(xs), dtype=torch.float64)
    if fragility > 0 and len(xs) > 1:
        lam = []
        for j in range(len(xs)):
            others = torch.ones(len(xs), dtype=torch.float64)
            others[j] = 0
            lam.append(float(rayleigh_subspace(Gram(covs[j], 1), Gram(mixed(others), 1), 1, ridge=ridge).spectrum[0]))
        w = torch.tensor(lam, dtype=torch.float64).clamp_min(1e-12).pow(-float(fragility))
        w = w / w.mean()
    sub, damage = None, None
    for r in range(max(int(rounds), 1)):
        sub = rayleigh_subspace(Xf, Gram(mixed(w), 1), k, ridge=ridge, clip_k=clip_k)
        edit = sub.dual * sub.eta
        damage = torch.stack([((x @ sub.basis) @ edit.T).pow(2).sum() for x in xs]) / energy
        if float(damage.max()) <= 0 or r == rounds - 1:
            break
        w = w * torch.exp(step * damage / damage.max())
        w = w / w.mean()
    return sub, w, damage


def regression_subspace(
    Xf: Tensor | Gram,
    Xr: Tensor | Gram,
    k: int,
    *,
    retain_weight: float = 0.5,
    ridge: float = 0.1,
    clip_k: bool = False,
) -> Subspace:
    """The least-squares edit that takes the forget features' top-k directions out and keeps the
    retain features: the input map ``M`` minimising

        E_f || M f - (I - V V^T) f ||^2  +  retain_weight * E_r || M r - r ||^2

    (V: the top-k eigenvectors of the forget second moment C_ff; C_rr: the retain second moment, or
    with per-concept ``parts`` their balanced mean, see :func:`protected_statistics`) is
    ``M = I - V V^T C_ff A^-1`` with ``A = C_ff + retain_weight * C_rr + ridge * trace/d * I``: the
    ridge also penalises changing directions no feature occupies (without it the edit's weights grow
    without bound there, for nothing).
    As a :class:`Subspace`: ``dual = V``, ``basis = A^-1 C_ff V``, ``eta = 1``; a strength s scales
    it to the target ``(I - s V V^T) f`` (s = 2: reflected). Unlike the Rayleigh projection, whose
    oblique dual can move a retain feature far along a direction it barely touches, the change of
    every retain feature is itself the penalised quantity (docs/defaults.md).
    """
    gf = as_gram(Xf, "forget features")
    c_rr = protected_statistics(Xr)
    d = gf.dim
    if c_rr.shape != (d, d):
        raise ValueError(f"forget and retain features differ in dimension ({d} vs {c_rr.shape[-1]})")
    if isinstance(retain_weight, bool) or not float(retain_weight) > 0:
        raise ValueError(f"retain_weight must be > 0; got {retain_weight!r}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0; got {ridge}")
    # Coordinates no forget or retain feature occupies (SD3 pads its CLIP features with zeros to
    # T5's width) decouple: A is only the ridge there and C_ff V is zero, so the edit is zero there.
    # Solving on the occupied coordinates gives the same edit, at a fraction of the cost.
    on = (torch.diagonal(gf.matrix) > 0) | (torch.diagonal(c_rr) > 0)
    full = bool(on.all())
    idx = None if full else on.nonzero().squeeze(1)
    c_ff_s = (gf.matrix if full else gf.matrix[idx][:, idx]) / max(gf.n, 1)
    c_rr_s = c_rr if full else c_rr[idx][:, idx]
    if gf.rows is not None:
        vals, vecs = _factor_eig_desc((gf.rows if full else gf.rows[:, idx]).T / gf.n**0.5, d)
    else:
        vals, vecs = _eigh_desc(c_ff_s)
        vals = torch.cat([vals, vals.new_zeros(d - vals.numel())])
    vals = vals.clamp_min(0)
    rank = numerical_rank(vals, d)
    k = min(int(k), max(rank, 1)) if clip_k else int(k)
    _check_k(k, d, rank)
    a = c_ff_s + float(retain_weight) * c_rr_s
    a = (a + a.T) / 2 + (float(ridge) + 1e-9) * float(torch.trace(a)) / d * torch.eye(a.shape[0], dtype=a.dtype)
    v = vecs[:, :k]
    basis = torch.linalg.solve(a, c_ff_s @ v)
    if not full:
        basis = basis.new_zeros(d, k).index_copy_(0, idx, basis)
        v = v.new_zeros(d, k).index_copy_(0, idx, v)
    return Subspace(basis=basis, eta=torch.ones(k, dtype=torch.float64), dual=v, spectrum=vals)


# The exact protection needs a part of the forget rows that the protected rows cannot see; the edit
# grows as that part shrinks (1 / its share of the rows' norm), and with it the float32 rounding of
# the edited weight: below this share the ridge fit is used (a numerical guard, not a tuned value:
# the bundled tiny CLIP's digits are far above it).
EXACT_MIN_SHARE = 1e-3


def protected_rows_subspace(
    forget: Tensor | Gram,
    rows: Tensor,
    forget_rows: Sequence[int],
    ridge: float = 0.1,
    **selectors: Any,
) -> tuple[Subspace, str]:
    """The head variant's edit with the other classes' rows kept exactly when they can be.

    ``rows`` (C x d): what each class's logit reads from the edited layer's input (a zero-shot
    head's text embeddings times the projection); ``U``: the forget subspace of ``forget``
    (``selectors`` as :func:`forget_subspace`). The dual ``V = N W_F^T (W_F N W_F^T)^+ W_F U``, ``N`` the projector onto what the
    protected rows ``W_R`` cannot see (the orthogonal complement of their span), gives
    ``W_R V = 0`` (their logits do not change) and ``W_F V = W_F U`` (the forget rows lose ``U``):
    the limit of :func:`head_rows_subspace` as its ridge goes to 0. When the
    protected rows span (all but ``EXACT_MIN_SHARE`` of) every direction the forget rows read, e.g.
    more classes than dimensions, that limit does not exist (or is ill-conditioned) and
    ``head_rows_subspace`` with ``ridge`` is used. Returns the subspace
    and ``"exact"`` or ``"ridge"``.
    """
    sub = forget_subspace(forget, **selectors)
    w = rows.detach().to("cpu", torch.float64)
    if w.ndim != 2 or w.shape[1] != sub.basis.shape[0]:
        raise ValueError(f"the rows must be (classes x {sub.basis.shape[0]}); got {tuple(w.shape)}")
    forget_rows = sorted({int(c) for c in forget_rows})
    if not forget_rows or forget_rows[0] < 0 or forget_rows[-1] >= w.shape[0]:
        raise ValueError(f"forget classes must be class indices in [0, {w.shape[0]}); got {forget_rows}.")
    keep = torch.ones(w.shape[0], dtype=torch.bool)
    keep[forget_rows] = False
    if not keep.any():
        raise ValueError("every class is a forget class: there is no class left to protect.")
    w_f, w_r = w[forget_rows], w[keep]
    q, s, _ = torch.linalg.svd(w_r.T, full_matrices=False)
    q = q[:, s > s[0] * max(w.shape) * torch.finfo(torch.float64).eps * 10] if s.numel() and s[0] > 0 else q[:, :0]
    w_fn = w_f - (w_f @ q) @ q.T  # the part of the forget rows the protected rows cannot see
    if float(w_fn.norm()) <= EXACT_MIN_SHARE * float(w_f.norm()):
        return head_rows_subspace(forget, rows, forget_rows, ridge=ridge, **selectors), "ridge"
    dual = w_fn.T @ (torch.linalg.pinv(w_fn @ w_fn.T, hermitian=True) @ (w_f @ sub.basis))
    return Subspace(basis=sub.basis, eta=sub.eta, dual=dual, spectrum=sub.spectrum), "exact"


# ----------------------------------------------------------------------------------------------
# closing what an edit leaves reachable (the robust Unlink)


def mean_outer_sum(parts: Sequence[Tensor]) -> Tensor:
    """``sum_j X_j^T X_j / n_j`` (d x d, float64) over row blocks ``X_j`` (n_j x d): one matrix
    product over the stacked, rescaled rows (summing one d x d product per block costs several
    times as much at SD3's d = 4096)."""
    if not parts:
        raise ValueError("need at least one block of rows")
    y = torch.cat([p.to(torch.float64) / max(p.shape[0], 1) ** 0.5 for p in parts])
    return y.T @ y


def protected_statistics(retain: Tensor | Gram) -> Tensor:
    """The second moment (d x d) of what an edit must keep: a retain :class:`Gram`'s covariance, or,
    when it carries each concept's rows (``parts``) and shared statistics (``shared``), the mean of
    the concepts' second moments plus the shared one scaled to the same trace (as
    :func:`balanced_rayleigh_subspace` weighs them)."""
    g = as_gram(retain, "retain features") if not isinstance(retain, Gram) or retain.parts is None else retain
    if g.parts is None:
        return g.covariance()
    xs = [p.to(torch.float64) for p in g.parts]
    for x in xs:
        _check_finite(x, "retain features")
    c = mean_outer_sum(xs) / len(xs)
    if g.shared is not None and g.shared.n:
        base = g.shared.covariance()
        c = c + base * (torch.trace(c) / torch.trace(base).clamp_min(1e-300))
    return c


def energy_basis(matrix: Tensor, energy: float) -> Tensor:
    """Orthonormal basis (d x r) of the top eigenvectors of a PSD ``matrix`` that hold an
    ``energy`` share of its trace (the smallest such r, at most its numerical rank)."""
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1]; got {energy}")
    _check_finite(matrix, "statistics")
    vals, vecs = _eigh_desc(matrix.to(torch.float64))
    vals = vals.clamp_min(0)
    rank = numerical_rank(vals, matrix.shape[-1])
    if rank == 0:
        raise ValueError("the statistics are all zero: there is no subspace to keep.")
    frac = vals[:rank].cumsum(0) / vals[:rank].sum()
    r = min(int((frac < energy - 1e-12).sum()) + 1, rank)
    return vecs[:, :r]


def complement_basis(keep: Tensor) -> Tensor:
    """Orthonormal basis (d x (d - r)) of the orthogonal complement of the span of ``keep`` (d x r, orthonormal)."""
    if keep.ndim != 2 or keep.shape[1] > keep.shape[0]:
        raise ValueError(f"keep must be a d x r basis with r <= d; got shape {tuple(keep.shape)}")
    k = keep.to(torch.float64)
    d, r = k.shape
    vals, vecs = _eigh_desc(torch.eye(d, dtype=torch.float64) - k @ k.T)
    return vecs[:, : d - r]


def private_basis(forget: Tensor | Gram, keep: Tensor, ratio: float = 0.5) -> tuple[Tensor, float]:
    """The forget features' private directions: the part of them outside the span of ``keep`` (an
    orthonormal d x r basis, e.g. :func:`energy_basis` of what an edit must keep), as an orthonormal
    basis (d x q) of its singular directions with singular value at least ``ratio`` times the largest,
    and that part's share of the forget features' energy. An edit that removes them (not reflects:
    removal leaves no input that reaches them) costs the kept features nothing."""
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1]; got {ratio}")
    g = as_gram(forget)
    if keep.ndim != 2 or keep.shape[0] != g.dim:
        raise ValueError(f"keep must be a {g.dim} x r basis; got shape {tuple(keep.shape)}")
    k = keep.to(torch.float64)
    total = float(torch.trace(g.matrix))
    if g.rows is not None:
        y = g.rows.T - k @ (k.T @ g.rows.T)  # d x n: the rows' parts outside span(keep)
        u, s, _ = torch.linalg.svd(y, full_matrices=False)
        vals, vecs = s**2, u
    else:
        m = g.matrix - k @ (k.T @ g.matrix)
        m = m - (m @ k) @ k.T
        vals, vecs = _eigh_desc(m)
        vals = vals.clamp_min(0)
    share = float(vals.sum()) / total if total > 0 else 0.0
    rank = numerical_rank(vals, g.dim)
    if rank == 0 or share <= 1e-12:
        return torch.zeros(g.dim, 0, dtype=torch.float64), 0.0
    q = int((vals[:rank].sqrt() >= ratio * vals[0].sqrt()).sum())
    return vecs[:, :q], share


def gram_without(g: Tensor | Gram, cut: Tensor) -> Gram:
    """The statistics of the same feature rows with the directions ``cut`` (orthonormal d x q)
    removed: rows ``X (I - cut cut^T)``, Gram ``(I - cut cut^T) X^T X (I - cut cut^T)``."""
    g = as_gram(g)
    if cut.ndim != 2 or cut.shape[0] != g.dim:
        raise ValueError(f"cut must be a {g.dim} x q basis; got shape {tuple(cut.shape)}")
    if cut.shape[1] == 0:
        return g
    q = cut.to(torch.float64)
    m = g.matrix - q @ (q.T @ g.matrix)
    m = m - (m @ q) @ q.T
    rows = None if g.rows is None else g.rows - (g.rows @ q) @ q.T
    return Gram((m + m.T) / 2, g.n, rows)


def with_cut(sub: Subspace, cut: Tensor) -> Subspace:
    """One edit doing ``sub`` after removing the directions ``cut`` (orthonormal d x q): the input map
    ``(I - dual diag(eta) basis^T)(I - cut cut^T)`` as ``I - dual' diag(eta') basis'^T`` with
    ``basis' = [cut, (I - cut cut^T) basis]``, ``dual' = [cut, dual]``, ``eta' = [1, eta]``, so a
    layer ``W`` becomes ``W - W dual' diag(eta') basis'^T`` (a :class:`Subspace` of rank q + k; its
    basis is not orthonormal). With no cut (q = 0) it is ``sub``."""
    d = sub.basis.shape[0]
    if cut.ndim != 2 or cut.shape[0] != d:
        raise ValueError(f"cut must be a {d} x q basis; got shape {tuple(cut.shape)}")
    if cut.shape[1] == 0:
        return sub
    q = cut.to(torch.float64)
    b = sub.basis.to(torch.float64)
    dual = b if sub.dual is None else sub.dual.to(torch.float64)
    eta = torch.cat([torch.ones(q.shape[1], dtype=torch.float64), sub.eta.to(torch.float64)])
    return Subspace(
        basis=torch.cat([q, b - q @ (q.T @ b)], dim=1),
        eta=eta,
        dual=torch.cat([q, dual], dim=1),
        spectrum=sub.spectrum,
    )
