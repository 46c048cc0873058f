"""The energy report: per-layer rows, totals, and its renderings (terminal table, CSV, JSON, bar chart)."""
from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import validate
from .hardware import HardwareProfile


@dataclass
class LayerReport:
    """One module's counts over the profiled forward pass (all calls of the module added up).

    ``in_rate`` / ``out_rate``: fraction of nonzero elements (the firing rate when the tensor is spikes); None when
    not measured (``in_numel`` / ``out_numel`` count only the elements whose counts were read; see ``rates`` in
    :class:`~neurosim.energy.EnergyMeter`). For a layer of two operands (a product, a sum) the input counted is its
    spike operand: the first, unless only the second is binary (real attention scores x spike V: V's firing rate).
    ``sparsity`` is ``1 - in_rate`` exactly (the fraction of zero inputs): the CSV and JSON give it, the terminal
    table leaves it out as redundant with its "in rate" column. ``in_spikes``: the input was read and binary on
    every call (either operand, for two). ``counted=False`` marks a module no counter knows: its operations are
    missing from the totals.

    ``dense``: the operations the ANN of the same shape does in this layer, MACs when ``dense_is_mac``, else
    additions; ``dense_other``: those it also does of the other kind (a transformer layer's GELU beside its
    residual additions, a mask added to attention scores). The same-shape ANN's energy prices both. ``ann_macs`` /
    ``ann_acs`` give them by kind (the table's "ANN MACs" and "ANN ACs" columns, the totals' keys of those names).
    """

    name: str
    type: str
    calls: int = 0
    counted: bool = True
    dense: int = 0
    dense_is_mac: bool = True
    dense_other: int = 0  # the same-shape ANN's operations of the other kind (ACs when dense_is_mac, else MACs)
    macs: int = 0
    synops: int = 0
    acs: int = 0
    neuron_updates: int = 0
    synops_paper: float = 0.0
    in_numel: int = 0
    in_nnz: int = 0
    out_numel: int = 0
    out_nnz: int = 0
    in_spikes: bool = False
    energy_pj: float = 0.0
    energy_paper_pj: float = 0.0
    note: str = ""
    info: dict = field(default_factory=dict)  # facts from the layer's counter summary (e.g. a spike mask's state)

    @property
    def ann_macs(self) -> int:
        """The same-shape ANN's multiply-accumulates in this layer (``dense`` or ``dense_other``, by kind)."""
        return self.dense if self.dense_is_mac else self.dense_other

    @property
    def ann_acs(self) -> int:
        """The same-shape ANN's additions in this layer (a residual sum, a bag's sum, a mask added to scores)."""
        return self.dense_other if self.dense_is_mac else self.dense

    @property
    def in_rate(self) -> float | None:
        return self.in_nnz / self.in_numel if self.in_numel else None

    @property
    def out_rate(self) -> float | None:
        return self.out_nnz / self.out_numel if self.out_numel else None

    @property
    def sparsity(self) -> float | None:
        return 1.0 - self.in_nnz / self.in_numel if self.in_numel else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(ann_macs=self.ann_macs, ann_acs=self.ann_acs, in_rate=self.in_rate, out_rate=self.out_rate,
                 sparsity=self.sparsity)
        return d


COLUMNS = ("name", "type", "calls", "counted", "dense", "dense_is_mac", "dense_other", "ann_macs", "ann_acs", "macs",
           "synops", "acs",
           "neuron_updates", "in_rate", "out_rate", "sparsity", "in_spikes", "synops_paper", "energy_pj",
           "energy_paper_pj", "note", "info", "hardware", "row")
# CSV columns the totals row fills (the sums of the layers' values; the JSON's "totals" under the same keys)
_CSV_TOTALS = ("dense", "dense_other", "ann_macs", "ann_acs", "macs", "synops", "acs", "neuron_updates", "synops_paper",
               "energy_pj", "energy_paper_pj")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path, write, mode: str = "w") -> Path:
    """Write a file at ``path`` whole or not at all: ``write(f)`` fills a temporary file beside it, which then
    replaces ``path`` (with the permissions a new file gets, not the temporary's private ones). A failure names
    ``path``, not the temporary."""
    path = Path(path)
    problem = validate.output_problem(path)
    if problem:
        raise OSError(errno.EINVAL, f"cannot write {str(path)!r}: {problem}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    except OSError as err:
        raise type(err)(err.errno, f"cannot write {str(path)!r}: {err.strerror or err}") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **({"newline": ""} if "b" not in mode else {})) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise type(err)(err.errno, f"cannot write {str(path)!r}: {err.strerror or err}") from None
        raise
    return path


def _fmt_int(v) -> str:
    return f"{int(v):,}"


def _fmt_rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.3f}"


_AUDIT_PREFIX = "arithmetic in this module's forward that no counter counts: "  # (audit.describe's notes)


def _not_counted_reason(r: "LayerReport") -> str:
    """A not-counted row's reason, short enough for its table row: the operations the audit found in plain torch
    calls (without their element counts, which the CSV and JSON keep), or the first clause of the layer's note."""
    note = r.note or "no counter registered for this module type"
    if r.type == "functional" and note.startswith(_AUDIT_PREFIX):
        ops = re.sub(r" \([\d,]+ elements?\)", "", note[len(_AUDIT_PREFIX):])
        return f"{ops} in plain torch calls"
    return re.split(r"[:;]", note, maxsplit=1)[0].strip()


def _fmt_energy(pj: float) -> str:
    for unit, scale in (("J", 1e12), ("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3)):
        if abs(pj) >= scale:
            return f"{pj / scale:.3f} {unit}"
    return f"{pj:.3f} pJ"


@dataclass
class EnergyReport:
    """Result of :func:`neurosim.energy.profile`. Counts are for the whole batch that was profiled."""

    hardware: HardwareProfile
    layers: list[LayerReport]
    batch_size: int | None = None
    notes: list[str] = field(default_factory=list)
    # how the per-tensor counts were computed: "kernel" (Triton, one read per tensor), "interpreter" or "torch"
    counting: str = ""
    # whether the functional audit ran (profile(..., audit=True)): arithmetic in plain torch calls outside every
    # counted layer is then listed as "not counted" rows; False: it was not checked (the report says so); None: unknown
    audited: bool | None = None

    # -------------------------------------------------------------------------------------------- totals
    def layer(self, name: str) -> LayerReport:
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(f"no layer named {name!r}; layers: {', '.join(r.name for r in self.layers)}")

    @property
    def not_counted(self) -> list[str]:
        return [r.name for r in self.layers if not r.counted]

    def totals(self) -> dict:
        t = {k: sum(getattr(r, k) for r in self.layers)
             for k in ("dense", "dense_other", "ann_macs", "ann_acs", "macs", "synops", "acs", "neuron_updates",
                       "synops_paper", "energy_pj", "energy_paper_pj")}
        hw = self.hardware
        ann = None
        if hw.e_mac_pj is not None:
            ann = sum(r.ann_macs * hw.e_mac_pj + r.ann_acs * hw.e_ac_pj for r in self.layers)
        t["ann_energy_pj"] = ann
        t["energy_ratio_vs_ann"] = (t["energy_pj"] / ann) if ann else None
        if self.batch_size:
            t["energy_per_sample_pj"] = t["energy_pj"] / self.batch_size
        t["not_counted"] = self.not_counted
        return t

    @property
    def audit_note(self) -> str:
        """What the report says about arithmetic outside modules: checked (``audit=True``) or not, and how to check it
        ("" when unknown). In the terminal footer, the JSON (``audit_note``) and the CSV's totals row."""
        if self.audited is None:
            return ""
        if not self.audited:
            return ("NOT CHECKED: arithmetic in plain torch calls outside modules (e.g. an inline residual x + f(x)) "
                    "is neither counted nor listed; profile(..., audit=True) lists it as not counted (neurosim energy "
                    "does unless --no-audit)")
        found = sum(r.type == "functional" and not r.counted for r in self.layers)
        return ("audit on: arithmetic in plain torch calls outside counted layers was checked: "
                + (f"found in {found} module(s), the '(functional)' rows not counted" if found else "none found"))

    def _summary_lines(self) -> list[str]:
        """The report's lines about what is missing or notable (not counted, audit, the counters' notes): the end of
        the terminal footer and the note of the CSV's totals row."""
        missing = self.not_counted
        lines = ["NOT COUNTED (no counter; missing from totals): " + ", ".join(missing)] if missing else []
        if self.audit_note:
            lines.append(self.audit_note)
        return lines + list(self.notes)

    # ----------------------------------------------------------------------------------------- renderings
    def to_dict(self) -> dict:
        return {"hardware": self.hardware.to_dict(), "batch_size": self.batch_size,
                "layers": [r.to_dict() for r in self.layers], "totals": self.totals(), "notes": list(self.notes),
                "audited": self.audited, "audit_note": self.audit_note}

    def to_json(self, path=None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            _atomic_write(path, lambda f: f.write(text + "\n"))
        return text

    def to_csv(self, path=None) -> str:
        """One row per layer (``row`` = "layer"), then one totals row (``row`` = "total", ``name`` "TOTAL"): the sums
        of the count and energy columns (the JSON's "totals"); its ``counted`` is False when a layer is missing from
        them, its ``note`` the report's lines (not counted, audit, counters' notes) and its ``info`` the JSON
        totals' other keys. Every row's ``hardware`` names the profile its energy columns are priced on. Plain CSV:
        ``csv.DictReader`` / ``pandas.read_csv`` read it as it is (filter ``row == "layer"`` before summing)."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(COLUMNS)
        hw = self.hardware.name
        for r in self.layers:
            d = r.to_dict()
            d["info"] = json.dumps(d["info"]) if d["info"] else ""
            d.update(hardware=hw, row="layer")
            w.writerow(["" if d[c] is None else d[c] for c in COLUMNS])
        t = self.totals()
        d = {k: t[k] for k in _CSV_TOTALS}
        extra = {k: t.get(k) for k in ("ann_energy_pj", "energy_ratio_vs_ann", "energy_per_sample_pj", "not_counted")}
        d.update(name="TOTAL", counted=not t["not_counted"], note="; ".join(self._summary_lines()),
                 info=json.dumps({"batch_size": self.batch_size, **extra, "audited": self.audited}), hardware=hw,
                 row="total")
        w.writerow(["" if d.get(c) is None else d[c] for c in COLUMNS])
        text = buf.getvalue()
        if path is not None:
            _atomic_write(path, lambda f: f.write(text))
        return text

    def _rows(self):
        """The table's head and rows (the last one TOTAL). A not-counted row is three cells: its name, type and
        "not counted: <reason>", which spans the count columns (they are empty for it)."""
        head = ["layer", "type", "ANN MACs", "ANN ACs", "MACs", "SynOps", "ACs", "neuron upd", "in rate", "out rate",
                "energy"]
        rows = []
        for r in self.layers:
            if not r.counted:
                rows.append([r.name, r.type, f"not counted: {_not_counted_reason(r)}"])
                continue
            star = "" if r.in_spikes or r.in_rate is None else "*"
            rows.append([r.name, r.type, _fmt_int(r.ann_macs), _fmt_int(r.ann_acs), _fmt_int(r.macs),
                         _fmt_int(r.synops), _fmt_int(r.acs), _fmt_int(r.neuron_updates),
                         _fmt_rate(r.in_rate) + star, _fmt_rate(r.out_rate), _fmt_energy(r.energy_pj)])
        t = self.totals()
        rows.append(["TOTAL", "", _fmt_int(t["ann_macs"]), _fmt_int(t["ann_acs"]), _fmt_int(t["macs"]),
                     _fmt_int(t["synops"]), _fmt_int(t["acs"]), _fmt_int(t["neuron_updates"]), "", "",
                     _fmt_energy(t["energy_pj"])])
        return head, rows

    def _footer(self) -> list[str]:
        t = self.totals()
        hw = self.hardware
        lines = [f"hardware: {hw.name} ({hw.source.strip() or 'source not given'})",
                 "ANN MACs / ANN ACs: what an ANN of the same shape computes (dense, every input a real value)",
                 "* input not binary on every call: counted as the same-shape ANN's operations, not as SynOps",
                 "in rate: nonzero fraction of the input (of a product's or sum's spike operand); "
                 "sparsity = 1 - in rate",
                 "rate -: not measured (tensors are read where a count needs them; rates='all' reads every layer)"]
        if t["ann_energy_pj"] is not None:
            lines.append(f"same-shape ANN: {_fmt_energy(t['ann_energy_pj'])}; SNN/ANN energy ratio: "
                         f"{t['energy_ratio_vs_ann']:.4f}" if t["ann_energy_pj"] else "same-shape ANN: 0 pJ")
        lines.append(f"papers' estimate (rate x dense): {_fmt_int(round(t['synops_paper']))} SynOps, "
                     f"{_fmt_energy(t['energy_paper_pj'])}")
        if self.batch_size:
            lines.append(f"batch size {self.batch_size}: {_fmt_energy(t['energy_per_sample_pj'])} per sample")
        return lines + self._summary_lines()

    def table(self) -> str:
        """Plain-text table (what ``print(report)`` shows)."""
        head, rows = self._rows()
        full = [r for r in rows if len(r) == len(head)]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *full)]
        for r in rows:  # (a not-counted row's name and type; its reason spans the count columns)
            if len(r) < len(head):
                widths[:2] = [max(w, len(str(c))) for w, c in zip(widths[:2], r[:2])]

        def line(cells):
            if len(cells) < len(head):
                return "  ".join([str(c).ljust(w) for c, w in zip(cells[:2], widths)] + [str(cells[2])])
            return "  ".join(str(c).rjust(w) if i >= 2 else str(c).ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths)))

        out = [line(head), "-" * (sum(widths) + 2 * (len(widths) - 1))]
        out += [line(r) for r in rows[:-1]]
        out += ["-" * (sum(widths) + 2 * (len(widths) - 1)), line(rows[-1])]
        return "\n".join(out + self._footer())

    __str__ = table

    def print(self, rich: bool | None = None, file=None) -> None:
        """Print the table, with ``rich`` when it is installed (``rich=False`` forces plain text)."""
        if rich is not False:
            try:
                from rich.console import Console
                from rich.table import Table
            except ImportError:
                if rich:
                    raise
            else:
                head, rows = self._rows()
                tab = Table(title=f"neurosim energy ({self.hardware.name})")
                for i, h in enumerate(head):
                    tab.add_column(h, justify="right" if i >= 2 else "left")
                for r in rows:
                    tab.add_row(*[str(c) for c in r] + [""] * (len(head) - len(r)), end_section=r is rows[-2])
                con = Console(file=file)
                con.print(tab)
                for ln in self._footer():
                    con.print(ln, markup=False)
                return
        print(self.table(), file=file)

    def figure(self):
        """The bar chart :meth:`plot` saves, as a :class:`matplotlib.figure.Figure` (not attached to pyplot: nothing
        to close, no backend changed). Top: operations per layer (log scale) by kind, neuron updates included;
        bottom: energy per layer, split by kind. A layer that was not counted (no counter, or arithmetic the audit
        found outside modules) keeps its place, with an empty bar, a grey band and the label "not counted"."""
        import numpy as np
        from matplotlib.figure import Figure

        rows = [r for r in self.layers
                if not r.counted or r.dense or r.macs or r.synops or r.acs or r.neuron_updates]
        names = [r.name if r.counted else f"{r.name} (not counted)" for r in rows]
        x = np.arange(len(rows))
        hw = self.hardware
        fig = Figure(figsize=(max(6, 0.6 * len(rows) + 2), 8))
        ax1, ax2 = fig.subplots(2, 1, sharex=True)
        kinds = (("ann_macs", "ANN MACs"), ("ann_acs", "ANN ACs"), ("macs", "MACs"), ("synops", "SynOps"),
                 ("acs", "ACs"), ("neuron_updates", "neuron updates"))
        w = 0.8 / len(kinds)
        for i, (key, label) in enumerate(kinds):
            ax1.bar(x + (i - (len(kinds) - 1) / 2) * w, [max(getattr(r, key), 0) if r.counted else 0 for r in rows],
                    w, label=label)
        ax1.set_yscale("symlog")
        ax1.set_ylabel("operations")
        ax1.set_title(f"Operations per layer (batch {self.batch_size or '?'})")
        ax1.legend(fontsize=8)
        e_mac = hw.e_mac_pj or 0.0
        parts = [("MAC", [r.macs * e_mac for r in rows]),
                 ("SynOp/AC", [(r.synops + r.acs) * hw.e_ac_pj for r in rows]),
                 ("neuron update", [r.neuron_updates * hw.e_neuron_pj for r in rows])]
        bottom = np.zeros(len(rows))
        for label, vals in parts:
            vals = np.asarray([v if r.counted else 0.0 for v, r in zip(vals, rows)], dtype=float) / 1e6
            ax2.bar(x, vals, 0.6, bottom=bottom, label=label)
            bottom += vals
        for i, r in enumerate(rows):
            if not r.counted:
                for ax in (ax1, ax2):
                    ax.axvspan(i - 0.45, i + 0.45, color="0.85", zorder=0)
                    ax.text(i, 0.03, "not counted", transform=ax.get_xaxis_transform(), rotation=90, ha="center",
                            va="bottom", fontsize=8, color="0.3")
        ax2.set_ylabel("energy (uJ)")
        ax2.set_xlabel("layer")
        ax2.set_title(f"Energy per layer on {hw.name}")
        ax2.legend(fontsize=8)
        ax2.set_xticks(x)
        ax2.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        fig.tight_layout()
        return fig

    def plot(self, path) -> Path:
        """Save :meth:`figure` (operations and energy per layer, not-counted layers marked). The file type follows the
        suffix of ``path`` (``.png``, ``.pdf``, ``.svg``...; PNG when it has none)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        fmt = Path(path).suffix[1:].lower() or "png"
        types = FigureCanvasAgg.get_supported_filetypes()
        if fmt not in types:
            raise ValueError(f"path: cannot plot to a {fmt!r} file; the suffix must be one of "
                             f"{', '.join('.' + t for t in sorted(types))}")
        fig = self.figure()
        return _atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=120), mode="wb")
