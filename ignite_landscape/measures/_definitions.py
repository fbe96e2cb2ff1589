"""Shared wording of the results' definitions (:meth:`~ignite_landscape.results.Result.definitions`).

One place for the phrases many results use (the curvature matrix, a jackknife band, a number), so the
same quantity reads the same whatever measure logged it.

Example:
    >>> curvature_name("ggn")
    'generalised Gauss-Newton matrix JᵀH_out J'
    >>> band_definitions("gsnr", "the GSNR", 10)["gsnr_lo"]
    'gsnr − 2·gsnr_stderr: lower end of the band around the GSNR'
"""

from __future__ import annotations

from ignite_landscape.measures.jackknife import INTERVAL_Z

__all__ = ["curvature_name", "products", "band_definitions", "jackknife_phrase", "num", "ranked"]

_CURVATURE_NAMES = {
    "hessian": "Hessian",
    "ggn": "generalised Gauss-Newton matrix JᵀH_out J",
    "fisher": "Monte-Carlo Fisher (labels drawn from the model's predictions)",
    "empirical_fisher": "empirical Fisher (per-sample gradient outer products, true labels)",
}
_CURVATURE_SHORT = {"hessian": "Hessian", "ggn": "GGN", "fisher": "Fisher", "empirical_fisher": "empirical-Fisher"}


def curvature_name(curvature: str) -> str:
    """The curvature matrix ``curvature`` (``"hessian"``, ``"ggn"``, ...) in words."""
    return _CURVATURE_NAMES.get(curvature, curvature)


def products(curvature: str) -> str:
    """What one product with the curvature matrix is called (``"Hessian-vector products"``)."""
    return f"{_CURVATURE_SHORT.get(curvature, curvature)}-vector products"


def num(value: float) -> str:
    """``value`` with up to 4 significant digits (``0.05``, ``1e-04``, ``inf``)."""
    return f"{value:.4g}"


def ranked(i: int, end: str = "largest") -> str:
    """``"largest"``, ``"2nd largest"``, ``"3rd largest"``, ... (the rank of an eigenvalue from ``end``)."""
    if i == 1:
        return end
    return f"{i}{'th' if 10 <= i % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(i % 10, 'th')} {end}"


def jackknife_phrase(chunks: int) -> str:
    """How a jackknife standard error was computed, with the number of probe chunks when known."""
    over = f"{chunks} leave-one-chunk-out probes" if chunks > 0 else "leave-one-chunk-out probes"
    return f"delete-a-group jackknife standard error over {over} (the probe's sampling noise)"


def band_definitions(key: str, what: str, chunks: int, stderr_key: str | None = None) -> dict[str, str]:
    """Definitions of the ``<key>_stderr``, ``<key>_lo`` and ``<key>_hi`` scalars of a jackknife band.

    Args:
        key: the scalar the band is around (``"value"``, ``"lambda_1"``).
        what: that scalar in words, for the sentences.
        chunks: the jackknife's chunks (0 when unknown).
        stderr_key: the name of the standard-error scalar when it is not ``<key>_stderr``.
    """
    stderr = stderr_key or f"{key}_stderr"
    z = num(INTERVAL_Z)
    return {
        stderr: f"{jackknife_phrase(chunks)} of {what}",
        f"{key}_lo": f"{key} − {z}·{stderr}: lower end of the band around {what}",
        f"{key}_hi": f"{key} + {z}·{stderr}: upper end of the band around {what}",
    }
