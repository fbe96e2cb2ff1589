"""Loading runs: the scalars, texts and histograms of TensorBoard event files, and the handlers they describe.

:class:`~ignite_landscape.LandscapeLogHandler` writes, per handler name (see :mod:`ignite_landscape.tensorboard`):

- scalars ``landscape/<name>/<key>`` and ``landscape/epoch`` (the trainer's epoch at each step);
- text ``landscape/<name>/record``: JSON ``{"kind": ..., "definitions": {key: sentence}}``, so the report
  knows what a handler measured whatever the user named it;
- text ``landscape/<name>/data``: JSON ``{curve_key: Curve.to_plain()}`` at each firing with curves.

:class:`RunData` reads them back and finds handlers **by kind** (:meth:`RunData.handlers`). Runs written
before records existed are still read: their handlers' kinds come from the default names and the shape of
their raw curve data, their definitions from the ``landscape/definitions`` table the examples wrote.

Example:
    >>> import numpy as np
    >>> run = RunData("r", Path("r"), scalars={"landscape/curv/lambda_max": Series(np.array([1]), np.array([4.0]))},
    ...               texts={"landscape/curv/record": [(1, '{"kind": "spectrum", "definitions": {}}')]})
    >>> run.handlers("spectrum"), run.kind_of("curv")
    (['curv'], 'spectrum')
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ignite_landscape.results import Curve

__all__ = ["EVENT_FILE_PATTERN", "ReportError", "Series", "RunData", "find_runs", "load_run", "paired", "eigen_tags"]

logger = logging.getLogger(__name__)

EVENT_FILE_PATTERN = "events.out.tfevents.*"

# Kinds of the handlers' default names: how a run written before the records existed is read.
_LEGACY_KINDS = {
    "hessian": "spectrum",
    "layers": "layerwise",
    **{k: k for k in ("trace", "density", "sharpness", "slice1d", "slice2d", "connectivity", "noise_scale")},
    **{k: k for k in ("trajectory", "gradstats", "overlap", "directional", "batch_sharpness", "ggn")},
}
# Texts under landscape/ that are no handler's.
_NOT_HANDLERS = {"summary", "definitions", "epoch"}


class ReportError(Exception):
    """A problem with the user's input (no event files, nothing to plot); the command exits with code 2."""


@dataclass
class Series:
    """One scalar tag of one run: ``values[i]`` logged at ``steps[i]`` (steps ascending, one value each)."""

    steps: np.ndarray
    values: np.ndarray

    def at(self, step: int) -> float:
        """The value logged at ``step`` (NaN if none)."""
        idx = np.nonzero(self.steps == step)[0]
        return float(self.values[idx[0]]) if idx.size else math.nan

    def last(self) -> float:
        """The value at the last logged step (NaN when empty)."""
        return float(self.values[-1]) if self.values.size else math.nan


@dataclass
class RunData:
    """Everything the report uses from one run's event files.

    Attributes:
        name: label in figures and tables (the folder name, made unique).
        path: the folder.
        scalars: tag → :class:`Series`.
        histograms: tag → list of ``(step, bucket_limits, bucket_counts)``.
        texts: tag → list of ``(step, text)`` (records and raw curve data among them).
        tensors: tag → list of ``(step, numpy array)`` (mesh vertices, faces).
    """

    name: str
    path: Path
    scalars: dict[str, Series] = field(default_factory=dict)
    histograms: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = field(default_factory=dict)
    texts: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    tensors: dict[str, list[tuple[int, np.ndarray]]] = field(default_factory=dict)
    # Parsed records and curves by handler name: figures ask for them many times.
    _memo: dict[tuple[str, str], Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def series(self, tag: str) -> Series | None:
        """The scalar series of ``tag`` if it was logged with at least one finite value."""
        s = self.scalars.get(tag)
        return s if s is not None and np.isfinite(s.values).any() else None

    def landscape_tags(self, name: str) -> list[str]:
        """Scalar tags under ``landscape/<name>/``."""
        prefix = f"landscape/{name}/"
        return sorted(t for t in self.scalars if t.startswith(prefix))

    def handler_names(self) -> list[str]:
        """Every handler name the run logged anything for, sorted."""
        names = {
            t.split("/")[1] for t in (*self.scalars, *self.texts) if t.startswith("landscape/") and t.count("/") >= 2
        }
        return sorted(names - _NOT_HANDLERS)

    def record(self, name: str) -> dict[str, Any] | None:
        """The last ``{"kind", "definitions"}`` record handler ``name`` wrote (``None`` for older runs)."""
        if ("record", name) not in self._memo:
            self._memo["record", name] = self._read_record(name)
        return self._memo["record", name]

    def _read_record(self, name: str) -> dict[str, Any] | None:
        entries = _text_entries(self, f"landscape/{name}/record")
        for step, text in reversed(entries):
            parsed = _parse_json(text)
            if isinstance(parsed, dict) and "kind" in parsed:
                return parsed
            logger.warning("%s: could not parse the record of %r at step %d", self.name, name, step)
        return None

    def kind_of(self, name: str) -> str:
        """The result kind of handler ``name``: from its record, else (older runs) from its default name or data."""
        rec = self.record(name)
        if rec is not None:
            return str(rec.get("kind", ""))
        if name in _LEGACY_KINDS:
            return _LEGACY_KINDS[name]
        data = _text_entries(self, f"landscape/{name}/data")
        return _legacy_kind(_parse_json(data[-1][1])) if data else ""

    def handlers(self, kind: str) -> list[str]:
        """Names of the handlers of ``kind``, sorted (the first one fills a summary row)."""
        return [n for n in self.handler_names() if self.kind_of(n) == kind]

    def definitions(self, name: str) -> dict[str, str]:
        """Handler ``name``'s definition of each of its scalars and curves (empty for older runs)."""
        rec = self.record(name) or {}
        return {str(k): str(v) for k, v in dict(rec.get("definitions", {})).items()}

    def definition(self, kind: str, key: str) -> str | None:
        """The first handler of ``kind`` that defines ``key``: its sentence (``None`` when none does)."""
        for name in self.handlers(kind):
            text = self.definitions(name).get(key)
            if text:
                return text
        return None

    def legacy_definition(self, key: str) -> str | None:
        """A row of the ``landscape/definitions`` table older example runs wrote (``None`` when absent)."""
        return _legacy_table(self).get(key.lower())

    def curves(self, name: str) -> list[tuple[int, dict[str, Curve]]]:
        """The curves handler ``name`` logged at each firing, oldest first (old raw-data formats converted)."""
        if ("curves", name) not in self._memo:
            self._memo["curves", name] = self._read_curves(name)
        return self._memo["curves", name]

    def _read_curves(self, name: str) -> list[tuple[int, dict[str, Curve]]]:
        out = []
        for step, text in _text_entries(self, f"landscape/{name}/data"):
            parsed = _parse_json(text)
            if not isinstance(parsed, dict):
                logger.warning("%s: could not parse the data of %r at step %d", self.name, name, step)
                continue
            try:
                curves = _legacy_curves(parsed) if _legacy_kind(parsed) else {
                    str(k): Curve.from_plain(v) for k, v in parsed.items() if isinstance(v, dict) and "kind" in v
                }  # fmt: skip
            except (KeyError, TypeError, ValueError) as exc:
                logger.warning("%s: bad curve data of %r at step %d (%s)", self.name, name, step, exc)
                continue
            if curves:
                out.append((step, curves))
        return out

    def curve_history(self, kind: str, key: str) -> list[tuple[str, list[tuple[int, Curve]]]]:
        """Per handler of ``kind`` (name order): its curve ``key`` at each firing that logged it."""
        out = []
        for name in self.handlers(kind):
            history = [(step, c[key]) for step, c in self.curves(name) if key in c]
            if history:
                out.append((name, history))
        return out


def _text_entries(run: RunData, tag: str) -> list[tuple[int, str]]:
    # tensorboardX appends "/text_summary" to text tags; torch's writer does not.
    return run.texts.get(tag) or run.texts.get(f"{tag}/text_summary") or []


def _parse_json(text: str) -> Any:
    body = text.strip().strip("`").strip()
    body = body.removeprefix("json").strip()  # a fenced ```json block renders as code in TensorBoard
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        return None


def _legacy_kind(data: Any) -> str:
    """The kind of a raw-data dict in the format written before :class:`Curve` (``""`` for any other)."""
    if not isinstance(data, dict):
        return ""
    if data.get("kind") == "trajectory_plane":
        return "trajectory"
    if "dims" in data and "coords" in data:
        return "slice2d" if int(data["dims"]) == 2 else "slice1d"
    if "alphas" in data:
        return "connectivity"
    if "grid" in data and "density" in data:
        return "density"
    return ""


def _legacy_curves(d: dict[str, Any]) -> dict[str, Curve]:
    """A raw-data dict of the older format as the curves the results now give."""
    kind = _legacy_kind(d)
    if kind == "trajectory":
        path = np.asarray(d["path"], dtype=np.float64).reshape(-1, 2)
        extra = {"path_x": path[:, 0], "path_y": path[:, 1], "explained_variance": d["explained_variance"]}
        return {"plane": Curve("path", x=d["coords"][0], y=d["coords"][1], z=d["loss"], extra=extra)}
    if kind == "slice2d":
        extra = {} if d.get("accuracy") is None else {"accuracy": d["accuracy"]}
        return {"slice": Curve("grid", x=d["coords"][0], y=d["coords"][1], z=d["loss"], extra=extra)}
    if kind == "slice1d":
        extra = {} if d.get("accuracy") is None else {"accuracy": d["accuracy"]}
        return {"slice": Curve("line", x=d["coords"][0], y=d["loss"], extra=extra, overlay=True)}
    if kind == "connectivity":
        extra = {"loss_barrier": d.get("loss_barrier", math.nan)}
        if d.get("error") is not None:
            extra["error"] = d["error"]
        return {"interpolation": Curve("line", x=d["alphas"], y=d["loss"], extra=extra, xlabel="α", ylabel="loss")}
    return {"density": Curve("line", x=d["grid"], y=d["density"], xlabel="eigenvalue", ylabel="density")}


def _legacy_table(run: RunData) -> dict[str, str]:
    """``key → value`` rows of the markdown table older example runs logged under ``landscape/definitions``."""
    found: dict[str, str] = {}
    for tag, entries in sorted(run.texts.items()):
        if not tag.startswith("landscape/definitions"):
            continue
        for _, text in entries:
            for line in text.splitlines():
                cells = [c.strip(" *`") for c in line.strip().strip("|").split("|")]
                if len(cells) >= 2 and cells[0] and not set(cells[0]) <= set("-: ") and cells[0] != "definition":
                    found[cells[0].lower()] = " | ".join(cells[1:])
    return found


def paired(run: RunData, geometry: Series, metric: Series) -> tuple[np.ndarray, np.ndarray]:
    """Values of ``geometry`` and ``metric`` at the moments both were logged.

    Same steps first; when a landscape logged at the trainer's iterations meets a metric an evaluator
    logged at epochs, the steps are mapped to epochs through the ``landscape/epoch`` scalar that
    :class:`~ignite_landscape.LandscapeLogHandler` writes, keeping the last firing of each epoch.
    """
    steps = np.intersect1d(geometry.steps, metric.steps)
    direct = (np.array([geometry.at(t) for t in steps]), np.array([metric.at(t) for t in steps]))
    epochs = run.scalars.get("landscape/epoch")
    if epochs is None:
        return direct
    by_epoch: dict[int, float] = {}
    for t, v in zip(geometry.steps.tolist(), geometry.values.tolist()):
        e = epochs.at(t)
        if math.isfinite(e):
            by_epoch[int(e)] = float(v)  # steps ascend: the last firing of an epoch wins
    common = [e for e in sorted(by_epoch) if e in set(metric.steps.tolist())]
    if len(common) <= len(steps):
        return direct
    return np.array([by_epoch[e] for e in common]), np.array([metric.at(e) for e in common])


def _is_run_dir(path: Path) -> bool:
    return any(p.is_file() for p in path.glob(EVENT_FILE_PATTERN))


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """The run folders named by ``paths``.

    A folder with event files is a run; otherwise every folder below it that holds event files (the
    top-most ones) is.

    Raises:
        ReportError: when a path does not exist or holds no event file anywhere below it.
    """
    runs: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ReportError(f"{path} does not exist")
        if path.is_file():
            raise ReportError(f"{path} is a file; pass the run folder that holds the event files")
        if _is_run_dir(path):
            runs.append(path)
            continue
        found = sorted({p.parent for p in path.rglob(EVENT_FILE_PATTERN) if p.is_file()})
        # Keep the top-most run folders (a run's own sub-writers live below it).
        top = [p for p in found if not any(q != p and q in p.parents for q in found)]
        if not top:
            raise ReportError(
                f"no TensorBoard event files ({EVENT_FILE_PATTERN}) in {path} or below it; "
                "pass the folder a TensorboardLogger wrote to (e.g. runs/digits-lr0.2-s0)"
            )
        runs.extend(top)
    unique: list[Path] = []
    for r in runs:
        if r.resolve() not in {u.resolve() for u in unique}:
            unique.append(r)
    return unique


def _tensor_to_numpy(proto: Any) -> np.ndarray:
    from tensorboard.util import tensor_util

    return np.asarray(tensor_util.make_ndarray(proto))


def load_run(path: str | Path, name: str | None = None) -> RunData:
    """Read every scalar, histogram, text and tensor of the event files in ``path``.

    When a run was restarted into the same folder (``--resume`` or a rerun), the same step can appear
    more than once; the value written last (event files are read in the order they were created) wins.
    """
    from tensorboard.backend.event_processing import event_accumulator as ea

    path = Path(path)
    acc = ea.EventAccumulator(
        str(path),
        size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0, ea.TENSORS: 0, ea.IMAGES: 1, ea.COMPRESSED_HISTOGRAMS: 1},
        purge_orphaned_data=False,
    )
    acc.Reload()
    run = RunData(name=name or path.name, path=path)
    tags = acc.Tags()
    for tag in tags.get(ea.SCALARS, []):
        _store_scalars(run, tag, [(e.step, e.value) for e in acc.Scalars(tag)])
    for tag in tags.get(ea.HISTOGRAMS, []):
        last: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
        for e in acc.Histograms(tag):
            h = e.histogram_value
            limits = np.asarray(h.bucket_limit, dtype=np.float64)
            last[e.step] = (e.step, limits, np.asarray(h.bucket, dtype=np.float64))
        run.histograms[tag] = [last[s] for s in sorted(last)]
    for tag in tags.get(ea.TENSORS, []):
        events = acc.Tensors(tag)
        plugin = ""
        try:
            plugin = acc.SummaryMetadata(tag).plugin_data.plugin_name
        except (KeyError, AttributeError):
            pass
        if plugin == "scalars":
            _store_scalars(run, tag, [(e.step, float(_tensor_to_numpy(e.tensor_proto))) for e in events])
        elif plugin == "text":
            texts: dict[int, str] = {}
            for e in events:
                arr = _tensor_to_numpy(e.tensor_proto)
                item = arr.reshape(-1)[0] if arr.size else b""
                texts[e.step] = item.decode("utf-8") if isinstance(item, bytes) else str(item)
            run.texts[tag] = sorted(texts.items())
        else:
            arrays = {e.step: _tensor_to_numpy(e.tensor_proto) for e in events}
            run.tensors[tag] = sorted(arrays.items(), key=lambda kv: kv[0])
    return run


def _store_scalars(run: RunData, tag: str, pairs: list[tuple[int, float]]) -> None:
    last: dict[int, float] = {}
    for step, value in pairs:
        last[int(step)] = float(value)
    steps = np.array(sorted(last), dtype=np.int64)
    run.scalars[tag] = Series(steps, np.array([last[s] for s in steps], dtype=np.float64))


def eigen_tags(run: RunData, name: str) -> list[str]:
    """``landscape/<name>/lambda_1 … lambda_k`` of a spectrum handler, in index order."""
    pattern = re.compile(rf"landscape/{re.escape(name)}/lambda_\d+")
    return sorted((t for t in run.landscape_tags(name) if pattern.fullmatch(t)), key=lambda t: int(t.rsplit("_", 1)[1]))
