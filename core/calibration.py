"""Measured link figures from a `pypto check-comm --json` report (schema pypto.commcheck/v1):
the alpha-beta terms the cost model prices communication with, fitted per link kind and op.

Each report row is one op over one group at one size, timed (the slowest rank's median).
Its time is fitted to the cost model's own ring formula, time = terms(n) x alpha +
factor(n) x bytes / bandwidth (cost_model.ring_terms), by a Theil-Sen line over the sizes
(medians of pairwise slopes: robust to the calls a busy host times far too slow).
Pure Python: no torch, no jsonschema.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .comm_report import SCHEMA as COMMCHECK_SCHEMA
from .config_files import ConfigFileError, parse_text, read_text
from .cost_model import LinkModel, ring_terms
from .hardware import HardwareSpec, LinkSpec

MAX_REPORT_BYTES = 64 << 20
OPS = {"all_reduce": ("all_reduce",), "all_gather": ("all_gather",),
       "reduce_scatter": ("reduce_scatter",), "all_to_all": ("all_to_all",),
       "broadcast": ("broadcast",), "send_recv": ("send", "recv")}


class CalibrationError(ValueError):
    """A calibration file that is not a usable check-comm report; the message says why."""


def _counted_bytes(op: str, nbytes: float, n: int) -> float:
    """nccl-tests' buffer (all_gather: the output) as CommStats counts it (the input)."""
    return nbytes / n if op == "all_gather" else nbytes


def _line(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Theil-Sen line t = a + b x through (x, t): b the median of the pairwise slopes, a the
    median of t - b x. A busy host times some calls many times too slow; a median shrugs
    them off where least squares would follow them. Both clamped at >= 0."""
    slopes = [(tj - ti) / (xj - xi) for i, (xi, ti) in enumerate(points)
              for xj, tj in points[i + 1:] if xj != xi]
    if not slopes:
        return None
    slope = max(statistics.median(slopes), 0.0)
    return max(statistics.median(t - slope * x for x, t in points), 0.0), slope


def _fit(points: list[tuple[float, float, float]]) -> tuple[float, float] | None:
    """(alpha, 1 / bandwidth) of t = a x alpha + b x inv_bw over (a, b, t): a line per
    distinct `a` (one op at one group size), then the medians over them."""
    by_terms: dict[float, list[tuple[float, float]]] = {}
    for a, b, t in points:
        by_terms.setdefault(a, []).append((b, t))
    alphas, inv_bws = [], []
    for a, pts in by_terms.items():
        line = _line(pts)
        if line is not None:
            alphas.append(line[0] / a if a else 0.0)
            inv_bws.append(line[1])
    if not inv_bws:
        return None
    return statistics.median(alphas), statistics.median(inv_bws)


def read_report(path: Path) -> dict[str, Any]:
    """A check-comm report, read within bounds (core/config_files.py: a regular file, so a
    FIFO cannot block; at most MAX_REPORT_BYTES; nesting and duplicate keys checked)."""
    try:
        text = read_text(path, MAX_REPORT_BYTES)
    except ConfigFileError as e:
        raise CalibrationError(str(e)) from None
    try:
        doc = parse_text(text, "json")
    except ConfigFileError as e:
        raise CalibrationError(f"not JSON ({e}); give the output of `pypto check-comm "
                               "--json`") from None
    if not isinstance(doc, dict) or doc.get("schema") != COMMCHECK_SCHEMA:
        got = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise CalibrationError(f"schema is {got!r}, not {COMMCHECK_SCHEMA!r}; give the "
                               "output of `pypto check-comm --json`")
    if not isinstance(doc.get("results"), list):
        raise CalibrationError("has no 'results' list")
    return doc


def calibrate(paths: Sequence[Path], hw: HardwareSpec) -> tuple[LinkModel, dict[str, Any]]:
    """The link model fitted to the reports at `paths` (ranks mapped to `hw`'s nodes): per
    link kind, op and group size measured; per link kind and op over every size; and per
    link kind over every op (for ops no report has). With a summary for the document."""
    per = hw.devices_per_node
    points: dict[tuple[str, str, int], list[tuple[float, float, float]]] = {}
    meta = []
    for path in paths:
        try:
            doc = read_report(path)
        except CalibrationError as e:
            raise CalibrationError(f"{path}: {e}") from None
        meta.append({"file": str(path), "world_size": doc.get("world_size"),
                     "platform": doc.get("platform")})
        for row in doc["results"]:
            try:
                op, ranks, nbytes, t_us = row["op"], row["ranks"], row["bytes"], row["time_us"]
                wrong = row.get("wrong", 0)
            except (KeyError, TypeError):
                raise CalibrationError(f"{path}: a result row lacks op, ranks, bytes or "
                                       "time_us") from None
            if op not in OPS or len(ranks) < 2 or wrong or not t_us or t_us <= 0:
                continue
            n = len(ranks)
            link = "inter_node" if len({r // per for r in ranks}) > 1 else "intra_node"
            alpha_terms, factor = ring_terms(OPS[op][0], n)
            counted = _counted_bytes(op, float(nbytes), n)
            points.setdefault((link, op, n), []).append(
                (alpha_terms, factor * counted, t_us * 1e-6))
    if not points:
        raise CalibrationError("no usable timed result (every row was a barrier, one rank, "
                               "wrong or untimed)")
    per_size: dict[tuple[str, str, int], LinkSpec] = {}
    per_op: dict[tuple[str, str], LinkSpec] = {}
    fits = []
    by_op: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    by_link: dict[str, list[tuple[float, float, float]]] = {}
    for (link, op, n), pts in sorted(points.items()):
        by_op.setdefault((link, op), []).extend(pts)
        by_link.setdefault(link, []).extend(pts)
        spec = _spec(pts, hw.link(link))
        if spec is None:
            continue
        for cost_op in OPS[op]:
            per_size[(link, cost_op, n)] = spec
        fits.append({"link": link, "op": op, "ranks": n, "latency_us": spec.latency_us,
                     "bandwidth_gbps": spec.bandwidth_gbps, "points": len(pts)})
    for (link, op), pts in by_op.items():
        spec = _spec(pts, hw.link(link))
        if spec is not None:
            for cost_op in OPS[op]:
                per_op[(link, cost_op)] = spec
    links = {"intra_node": hw.links.intra_node, "inter_node": hw.links.inter_node}
    for link, pts in by_link.items():
        spec = _spec(pts, hw.link(link))
        if spec is not None:
            links[link] = spec
    summary = {"file": ", ".join(m["file"] for m in meta), "schema": COMMCHECK_SCHEMA,
               "reports": meta, "fits": fits,
               "links": {k: {"latency_us": v.latency_us, "bandwidth_gbps": v.bandwidth_gbps}
                         for k, v in links.items()}}
    return LinkModel(links, per_op, per_size), summary


def _spec(points: list[tuple[float, float, float]], fallback: LinkSpec) -> LinkSpec | None:
    """The fitted link; where the sizes showed no cost per byte (all latency), the
    bandwidth stays the profile's."""
    fit = _fit(points)
    if fit is None:
        return None
    bandwidth = 1.0 / fit[1] / 1e9 if fit[1] > 0 else fallback.bandwidth_gbps
    return LinkSpec(latency_us=fit[0] * 1e6, bandwidth_gbps=bandwidth)


def _ranks(values: Sequence[float]) -> list[float]:
    """Average ranks (1-based), ties sharing the mean of their positions."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson's of the average ranks); None if undefined."""
    if len(xs) != len(ys) or len(xs) < 2:
        return None
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    vy = math.sqrt(sum((b - my) ** 2 for b in ry))
    if vx == 0 or vy == 0:
        return None
    return cov / (vx * vy)
