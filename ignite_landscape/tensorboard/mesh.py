"""A ``grid`` curve (the 2D loss slice) as a 3D mesh: ``landscape/<name>/<curve_key>_surface``.

Example:
    >>> import numpy as np
    >>> from ignite_landscape.results import Curve
    >>> c = np.linspace(-1, 1, 5)
    >>> v, col, f, cfg = grid_mesh(Curve("grid", x=c, y=c, z=1 + c[:, None] ** 2 + c[None, :] ** 2))
    >>> v.shape, f.shape, cfg["camera"]["cls"]
    (torch.Size([1, 25, 3]), torch.Size([1, 32, 3]), 'PerspectiveCamera')
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine

from ignite_landscape.results import Curve
from ignite_landscape.tensorboard.base import LandscapeWriter
from ignite_landscape.tensorboard.common import Fresh

__all__ = ["MeshWriter", "grid_mesh", "slice_mesh", "MAX_MESH_VERTICES"]

# The mesh viewer stores face indices as 16-bit integers, so a mesh must have fewer than 65536 vertices.
MAX_MESH_VERTICES = 65535

# The viewer centres the geometry at the origin; look at it from above one corner, far enough that the whole
# 2 × 1 × 2 box is in view (the default camera is a top-down close-up). side=2 is THREE.DoubleSide: the
# surface stays visible from below.
MESH_CONFIG: dict[str, Any] = {
    "camera": {"cls": "PerspectiveCamera", "fov": 50, "near": 0.01, "far": 100, "position": [2.4, 1.9, 2.4],
               "lookAt": [0.0, -0.15, 0.0]},
    "lights": [
        {"cls": "AmbientLight", "color": "#ffffff", "intensity": 0.7},
        {"cls": "DirectionalLight", "color": "#ffffff", "intensity": 0.6, "position": [2, 4, 3]},
    ],
    "material": {"cls": "MeshStandardMaterial", "color": "#ffffff", "roughness": 1, "metalness": 0, "side": 2},
}  # fmt: skip


def grid_mesh(
    curve: Curve, *, max_faces: int = 20000, log_scale: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """A ``grid`` curve as a triangle mesh for ``SummaryWriter.add_mesh``.

    The plane is drawn on ``[-1, 1]²`` (x: the curve's ``x``, z: its ``y``) and the values as height ``y``
    in ``[0, 1]`` (coloured as every loss grid is, :func:`~ignite_landscape.plots.loss_scale`), so the
    bounding box is 2 × 1 × 2 whatever the numbers; the colours (viridis) carry the loss. The grid is
    subsampled when it would need more than ``max_faces`` triangles.

    Returns:
        ``(vertices (1, N, 3) float32, colors (1, N, 3) uint8, faces (1, F, 3) int32, config_dict)``.

    Raises:
        ValueError: if ``curve`` is not a grid (or path) or ``max_faces < 2``.
    """
    import matplotlib

    from ignite_landscape.plots import loss_scale

    if curve.kind not in ("grid", "path"):
        raise ValueError(f"grid_mesh needs a grid curve, got a {curve.kind!r} curve")
    if max_faces < 2:
        raise ValueError(f"max_faces must be at least 2, got {max_faces}")
    h, _ = loss_scale(curve.z, log_scale)
    x, y = curve.x, curve.y
    nx, ny = h.shape
    # Largest grid within the face budget: (sx - 1)(sy - 1) cells, two triangles each.
    cells = max(1, int(math.floor(math.sqrt(max_faces / 2))))
    cells = min(cells, int(math.sqrt(MAX_MESH_VERTICES)) - 1)
    ix = np.unique(np.linspace(0, nx - 1, min(nx, cells + 1)).round().astype(int))
    iy = np.unique(np.linspace(0, ny - 1, min(ny, cells + 1)).round().astype(int))
    h, x, y = h[np.ix_(ix, iy)], x[ix], y[iy]
    sx, sy = len(ix), len(iy)
    lo, hi = float(h.min()), float(h.max())
    height = (h - lo) / (hi - lo) if hi > lo else np.zeros_like(h)

    def unit(c: np.ndarray) -> np.ndarray:
        return 2 * (c - c[0]) / (c[-1] - c[0]) - 1 if c[-1] > c[0] else np.zeros_like(c)

    X, Y = np.meshgrid(unit(x), unit(y), indexing="ij")
    # three.js is y-up: the plane is x-z and the loss is the height.
    vertices = np.stack([X.ravel(), height.ravel(), Y.ravel()], axis=1).astype(np.float32)
    colors = (matplotlib.colormaps["viridis"](height.ravel())[:, :3] * 255).round().astype(np.uint8)
    idx = np.arange(sx * sy).reshape(sx, sy)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, 1:].ravel()
    faces = np.concatenate([np.stack([a, c, b], 1), np.stack([b, c, d], 1)]).astype(np.int32)
    return (
        torch.from_numpy(vertices)[None],
        torch.from_numpy(colors)[None],
        torch.from_numpy(faces)[None],
        copy.deepcopy(MESH_CONFIG),
    )


def slice_mesh(
    result: Any, *, max_faces: int = 20000, log_scale: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The mesh of a result's first ``grid`` curve (a 2D slice): :func:`grid_mesh` on ``result.curves()``.

    Raises:
        ValueError: if the result has no grid curve, or on ``max_faces < 2``.
    """
    grids = [c for c in result.curves().values() if c.kind == "grid"]
    if not grids:
        raise ValueError("slice_mesh needs a result with a grid curve (a 2D slice)")
    return grid_mesh(grids[0], max_faces=max_faces, log_scale=log_scale)


class MeshWriter(LandscapeWriter):
    """Writes every ``grid`` curve as a 3D mesh at ``landscape/<name>/<key>_surface``.

    Args:
        names: only these handler names (default: all).
        global_step_transform: ``f(engine, event_name) -> int`` (default: the trainer's iteration).
        max_mesh_faces: triangle budget of a mesh.
        log_scale: mesh height ``log10(loss)`` (when positive).

    Raises:
        ValueError: on ``max_mesh_faces < 2``.
    """

    def __init__(
        self,
        names: Sequence[str] | None = None,
        *,
        global_step_transform: Callable[[Engine, Any], int] | None = None,
        max_mesh_faces: int = 20000,
        log_scale: bool = True,
    ) -> None:
        super().__init__(names, global_step_transform=global_step_transform)
        if isinstance(max_mesh_faces, bool) or not isinstance(max_mesh_faces, int) or max_mesh_faces < 2:
            raise ValueError(f"max_mesh_faces must be an int of at least 2, got {max_mesh_faces!r}")
        self.max_mesh_faces = max_mesh_faces
        self.log_scale = log_scale

    def write(self, writer: Any, engine: Engine, fresh: list[Fresh], step: int) -> None:
        """Add the mesh of each grid curve of ``fresh`` at ``step``."""
        for f in fresh:
            for key, curve in f.curves.items():
                if curve.kind == "grid":
                    self.guarded(
                        f"{f.name}/{key}", self._mesh, writer, f"landscape/{f.name}/{key}_surface", curve, step
                    )

    def _mesh(self, writer: Any, tag: str, curve: Curve, step: int) -> None:
        vertices, colors, faces, config = grid_mesh(curve, max_faces=self.max_mesh_faces, log_scale=self.log_scale)
        writer.add_mesh(tag, vertices=vertices, colors=colors, faces=faces, config_dict=config, global_step=step)
