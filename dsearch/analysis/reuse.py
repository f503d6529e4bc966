"""Feature reuse of a trained DenseNet: the paper's Fig. 5 heatmaps, three numbers for its three findings, CSV, HTML.

Pixel (s, ℓ) of dense block b is the mean absolute weight of target ℓ's first convolution over the input maps
that come from source s (mean over output channels × those input maps × kernel positions: the paper's "average
L1 norm, normalised by the number of input feature maps"). Source 0 is the block's input (the stem, or the
previous transition's ⌊θ·m⌋ maps), source s ≥ 1 the k maps that layer s adds. The targets are layers 1..n
(conv1: the 1×1 bottleneck in B variants, the 3×3 conv otherwise), then the transition's 1×1 conv after the
block ("T"), or after the last block the classifier ("C", Linear: mean over classes × the source's maps; it sees
norm5's output, the same concatenation of sources 0..n). Layer ℓ sees sources 0..ℓ-1; the transition and the
classifier see 0..n (θ < 1 compresses a transition's output, not its input).

Data first, rendering second (as plots.py): `compute_reuse` returns plain NamedTuples; `reuse_findings`,
`csv_text`, `html_text` read them; `write_reuse` writes both files for a model. torch + numpy + plotly only.
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ..errors import UserError

if TYPE_CHECKING:
    import plotly.graph_objects as go
    import torch

    from ..net.config import ModelConfig

LAYER, TRANSITION, CLASSIFIER = "layer", "transition", "classifier"
REUSE_DIR = "reuse"          # a study's folder of reuse figures: STUDY_DIR/reuse/trial-N.{csv,html}
PLOTLY_JS = "plotly.min.js"  # written once into that folder for the pages `dsearch pareto` links
CSV_COLUMNS = ("block", "source", "target", "target_kind", "mean_abs_weight")
NEAREST = 3                 # finding (a): the sources a layer's "local" connections count
FIGURE_ID = "reuse-block-{}"
FINDINGS_ID = "reuse-findings"


class BlockReuse(NamedTuple):
    """One dense block's Fig. 5 panel: `matrix[s, j]` = mean |w| from source s (rows 0..n) to target j.

    Columns 0..n-1 are layers 1..n, column n is the transition ("T") or, for the last block, the classifier
    ("C"); NaN where there is no connection (s ≥ ℓ). Units: weight magnitude (the weights' own units).
    """

    block: int                  # 1-based, as denseblockB
    num_layers: int             # n
    input_maps: int             # m0: the maps of source 0
    growth_rate: int            # k: the maps of each source s ≥ 1
    matrix: np.ndarray          # (n+1) × (n+1), float64
    targets: tuple[str, ...]    # "1".."n", then "T" or "C"

    @property
    def last_kind(self) -> str:
        return CLASSIFIER if self.targets[-1] == "C" else TRANSITION


class ReuseFindings(NamedTuple):
    """The paper's three findings as numbers (definitions in `reuse_findings`); None where undefined."""

    spread: float | None
    spread_if_uniform: float | None   # what `spread` would be with equal pixels (the no-preference baseline)
    transition_row: float | None
    classifier_focus: float
    classifier_layers: int            # c: the final layers whose maps `classifier_focus` is about


class ReuseResult(NamedTuple):
    blocks: tuple[BlockReuse, ...]
    findings: ReuseFindings


# --------------------------------------------------------------------------------------------- the matrices

def _per_input_map(weight: "torch.Tensor") -> np.ndarray:
    """Mean |w| for each input map (dim 1), over output channels and kernel positions; float64."""
    import torch

    w = weight.detach().to("cpu", torch.float64).abs()
    dims = [d for d in range(w.dim()) if d != 1]
    return w.mean(dim=dims).numpy()


def _source_means(per_map: np.ndarray, m0: int, k: int, sources: int) -> np.ndarray:
    """The mean of per-map means over each source's maps (sources 0..sources-1); all maps have equal weight counts."""
    out = [per_map[:m0].mean()]
    out += [per_map[m0 + (s - 1) * k: m0 + s * k].mean() for s in range(1, sources)]
    return np.asarray(out, dtype=np.float64)


def _state_of(source: "torch.nn.Module | Mapping[str, torch.Tensor]") -> Mapping[str, "torch.Tensor"]:
    return source.state_dict() if hasattr(source, "state_dict") else source


def compute_reuse(source: "torch.nn.Module | Mapping[str, torch.Tensor]",
                  config: "ModelConfig | None" = None) -> ReuseResult:
    """Fig. 5's matrices and the three findings of a DenseNet (module, or state dict with torchvision's names).

    The structure (blocks, layers, input maps, growth rates) is read from the weights' shapes; a `config`
    (or the module's own) is checked against it. UserError if the weights aren't a DenseNet's.
    """
    state = _state_of(source)
    config = config if config is not None else getattr(source, "config", None)
    key = "features.denseblock{}.denselayer{}.conv1.weight".format
    blocks: list[BlockReuse] = []
    b = 1
    while key(b, 1) in state:
        n = 1
        while key(b, n + 1) in state:
            n += 1
        convs = [state[key(b, ell)] for ell in range(1, n + 1)]
        m0 = int(convs[0].shape[1])
        transition = state.get(f"features.transition{b}.conv.weight")
        last = transition if transition is not None else state.get("classifier.weight")
        if last is None:
            raise UserError(f"dense block {b} is followed by neither features.transition{b}.conv nor a classifier; "
                            "expected a DenseNet state dict (torchvision's module names)")
        total = int(last.shape[1])
        k = (total - m0) // n
        widths = [int(w.shape[1]) for w in convs]
        if k < 1 or m0 + n * k != total or widths != [m0 + i * k for i in range(n)]:
            raise UserError(f"dense block {b}: input widths {widths + [total]} don't grow by a constant k "
                            "from the block input; not a DenseNet's weights")
        matrix = np.full((n + 1, n + 1), np.nan)
        for ell, w in enumerate(convs, start=1):
            matrix[:ell, ell - 1] = _source_means(_per_input_map(w), m0, k, ell)
        matrix[:, n] = _source_means(_per_input_map(last), m0, k, n + 1)
        label = "T" if transition is not None else "C"
        blocks.append(BlockReuse(b, n, m0, k, matrix, tuple(str(i) for i in range(1, n + 1)) + (label,)))
        if transition is None:
            break
        b += 1
    if not blocks:
        raise UserError("no features.denseblock1.denselayer1.conv1.weight: not a DenseNet state dict "
                        "(torchvision's module names)")
    if blocks[-1].last_kind != CLASSIFIER:
        raise UserError(f"transition{blocks[-1].block} is followed by no dense block; not a DenseNet's weights")
    if config is not None:
        layers = tuple(blk.num_layers for blk in blocks)
        ks = tuple(blk.growth_rate for blk in blocks)
        if layers != tuple(config.block_layers) or ks != tuple(config.growth_rates) \
                or blocks[0].input_maps != config.init_features:
            raise UserError(f"the weights have blocks {list(layers)}, growth rates {list(ks)}, "
                            f"{blocks[0].input_maps} stem maps; the config says {list(config.block_layers)}, "
                            f"{list(config.growth_rates)}, {config.init_features}")
    blocks_t = tuple(blocks)
    return ReuseResult(blocks_t, reuse_findings(blocks_t))


# --------------------------------------------------------------------------------------------- the findings

def classifier_layers(n: int) -> int:
    """c = ⌈n/4⌉: the final quarter of the last block's layers (at least one)."""
    return max(1, math.ceil(n / 4))


def _spread(blocks: Sequence[BlockReuse], uniform: bool) -> float | None:
    shares = []
    for blk in blocks:
        for ell in range(NEAREST + 1, blk.num_layers + 1):
            pixels = np.ones(ell) if uniform else blk.matrix[:ell, ell - 1]
            mass = pixels.sum()
            if mass > 0:
                shares.append(pixels[:ell - NEAREST].sum() / mass)
    return float(np.mean(shares)) if shares else None


def reuse_findings(blocks: Sequence[BlockReuse]) -> ReuseFindings:
    """The paper's three findings (§5, Fig. 5) as numbers. All use pixel values: per-map means, as the figure.

    (a) spread: for each dense layer ℓ with more than 3 sources (ℓ ≥ 4), the share of its column's mass
        (the sum of its pixels over sources 0..ℓ-1) on sources other than its 3 nearest (ℓ-1, ℓ-2, ℓ-3), i.e. on
        0..ℓ-4; the mean over those layers of every block (layers with all-zero weights skipped). Per-map means,
        not raw L1 sums: the block input's many maps don't count more for being many. None if no block has
        ≥ 4 layers. Equal pixels give (ℓ-3)/ℓ per layer (`spread_if_uniform`); the paper finds layers spread
        their weight over many inputs, including early ones.
    (b) transition_row: for blocks 2..B, the mean of the source-0 row (the previous transition's outputs) over
        the dense-layer targets 1..n, divided by the mean of all the block's dense-layer pixels (s < ℓ ≤ n; the
        T/C column left out); the mean over blocks 2..B. None with one block. Paper: < 1 (transition outputs
        get little weight: they are redundant, which supports compressing them).
    (c) classifier_focus: the classifier's mean |w| over the maps of the last block's final c layers
        (c = ⌈n/4⌉, the last c·k input maps) divided by its mean |w| over all its input maps. 1 is no
        preference; the paper finds > 1 (the classifier concentrates on the final, high-level maps).
    """
    if not blocks:
        raise ValueError("reuse_findings: no blocks")
    rows = []
    for blk in blocks[1:]:
        n = blk.num_layers
        dense = blk.matrix[:, :n]
        overall = np.nanmean(dense)
        if overall > 0:
            rows.append(dense[0].mean() / overall)
    last = blocks[-1]
    c = classifier_layers(last.num_layers)
    # The classifier column holds per-source means of equal-sized sources 1..n, so the mean over the final
    # c·k maps is the mean of the final c pixels; the mean over all maps weights source 0 by its m0 maps.
    col = last.matrix[:, last.num_layers]
    sizes = np.array([last.input_maps] + [last.growth_rate] * last.num_layers, dtype=np.float64)
    everything = float((col * sizes).sum() / sizes.sum())
    focus = float(col[-c:].mean() / everything) if everything > 0 else math.nan
    return ReuseFindings(
        spread=_spread(blocks, uniform=False), spread_if_uniform=_spread(blocks, uniform=True),
        transition_row=float(np.mean(rows)) if rows else None,
        classifier_focus=focus, classifier_layers=c)


def finding_lines(findings: ReuseFindings) -> list[str]:
    """The three numbers, one line each, read against the paper's finding."""
    f = findings
    if f.spread is None:
        spread = "spread: n/a (needs ≥ 4 layers per block)"
    else:
        spread = (f"spread: {f.spread:.2f} of each layer's weight reaches beyond its {NEAREST} nearest sources "
                  f"(equal weights would give {f.spread_if_uniform:.2f}; paper: weights spread over many inputs, "
                  "early ones included)")
    if f.transition_row is None:
        row = "transition row: n/a (needs ≥ 2 blocks)"
    else:
        row = (f"transition row: {f.transition_row:.2f} × the block's mean weight on the previous "
               "transition's outputs (paper: < 1: little weight, so they can be compressed)")
    layers = "layer's" if f.classifier_layers == 1 else f"{f.classifier_layers} layers'"
    focus = (f"classifier focus: {f.classifier_focus:.2f} × its mean weight on the last block's final {layers} "
             "maps (paper: > 1, it concentrates on the final maps)")
    return [spread, row, focus]


# --------------------------------------------------------------------------------------------- CSV

def csv_text(blocks: Sequence[BlockReuse]) -> str:
    """Tidy CSV, one row per connection: block, source, target (1..n, n+1 for T/C), target_kind, mean_abs_weight.

    Values are written with repr (shortest round-trip), so `read_csv` gives the same floats back.
    """
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for blk in blocks:
        n = blk.num_layers
        for j in range(n + 1):
            kind = LAYER if j < n else blk.last_kind
            for s in range(j + 1 if j < n else n + 1):
                w.writerow((blk.block, s, j + 1, kind, repr(float(blk.matrix[s, j]))))
    return out.getvalue()


def read_csv(text: str) -> dict[int, np.ndarray]:
    """Block number → its (n+1) × (n+1) matrix (NaN where no row), from `csv_text`'s output."""
    rows = list(csv.DictReader(io.StringIO(text)))
    sizes: dict[int, int] = {}
    for r in rows:
        sizes[int(r["block"])] = max(sizes.get(int(r["block"]), 0), int(r["target"]))
    out = {b: np.full((n, n), np.nan) for b, n in sizes.items()}
    for r in rows:
        out[int(r["block"])][int(r["source"]), int(r["target"]) - 1] = float(r["mean_abs_weight"])
    return out


# --------------------------------------------------------------------------------------------- HTML

def build_block_figure(blk: BlockReuse) -> "go.Figure":
    """One Fig. 5 panel: x = target layer (T/C boxed), y = source layer (0 at top), per-block colour scale."""
    import plotly.graph_objects as go

    n = blk.num_layers
    sources = [str(s) for s in range(n + 1)]
    hover = [["" if math.isnan(v) else repr(float(v)) for v in row] for row in blk.matrix]
    last = "transition" if blk.last_kind == TRANSITION else "classifier"
    fig = go.Figure(go.Heatmap(
        z=blk.matrix, x=list(blk.targets), y=sources, text=hover, hoverongaps=False, colorscale="Jet",
        colorbar=dict(title=dict(text="mean |w|")),
        hovertemplate="source %{y} → target %{x}<br>mean |w| = %{text}<extra></extra>"))
    # The T/C column boxed, as the paper's black rectangles: it isn't a dense layer.
    fig.add_shape(type="rect", xref="x", yref="y", x0=n - 0.5, x1=n + 0.5, y0=-0.5, y1=n + 0.5,
                  line=dict(color="black", width=3))
    side = min(640, 260 + 24 * (n + 1))     # about square cells; three small blocks fit side by side
    fig.update_layout(
        title=f"Dense block {blk.block} ({n} layer{'s' if n != 1 else ''})", width=side + 50, height=side,
        xaxis=dict(title=f"target layer (ℓ; {blk.targets[-1]} = {last})", type="category", constrain="domain"),
        yaxis=dict(title="source layer (s)", type="category", autorange="reversed", scaleanchor="x"),
        plot_bgcolor="white", margin=dict(l=60, r=10, t=70, b=55))
    return fig


def html_text(result: ReuseResult, title: str = "Feature reuse (DenseNet Fig. 5)",
              include_plotlyjs: bool | str = True) -> str:
    """One page: the findings as text, then one heatmap per block in div `reuse-block-B`; plotly.js inline."""
    divs = [build_block_figure(blk).to_html(full_html=False, include_plotlyjs=include_plotlyjs if i == 0 else False,
                                            div_id=FIGURE_ID.format(blk.block), config={"displaylogo": False})
            for i, blk in enumerate(result.blocks)]
    items = "\n".join(f"<li>{html.escape(line)}</li>" for line in finding_lines(result.findings))
    what = ("Pixel (s, ℓ): mean absolute weight of target ℓ's first convolution over the input maps from "
            "source s (0 = the block's input). T: the transition after the block; C: the classifier.")
    # Side by side, as the paper's panels, wrapping when the window is narrow.
    body = "\n".join(f'<section class="figure" style="display:inline-block;vertical-align:top">\n{div}\n</section>'
                     for div in divs)
    t = html.escape(title)
    return ("<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{t}</title>\n</head>\n<body>\n<h1>{t}</h1>\n<p>{html.escape(what)}</p>\n"
            f'<ul id="{FINDINGS_ID}">\n{items}\n</ul>\n{body}\n</body>\n</html>\n')


# --------------------------------------------------------------------------------------------- files

def write_reuse(model: "torch.nn.Module | Mapping[str, torch.Tensor]", out_dir: Path, stem: str = "reuse",
                title: str | None = None, include_plotlyjs: bool | str = True) -> tuple[Path, Path, ReuseResult]:
    """Write OUT_DIR/STEM.csv and OUT_DIR/STEM.html for a model (or state dict); returns both paths and the data.

    Everything is computed first; UserError (nothing written) if the folder can't be made or written.
    """
    result = compute_reuse(model)
    csv_path, html_path = write_result(result, out_dir, stem, title, include_plotlyjs)
    return csv_path, html_path, result


def write_result(result: ReuseResult, out_dir: Path, stem: str = "reuse", title: str | None = None,
                 include_plotlyjs: bool | str = True) -> tuple[Path, Path]:
    """OUT_DIR/STEM.csv and OUT_DIR/STEM.html of a computed result; UserError if the folder can't be written."""
    texts = [(Path(out_dir) / f"{stem}.csv", csv_text(result.blocks)),
             (Path(out_dir) / f"{stem}.html",
              html_text(result, title or f"Feature reuse (DenseNet Fig. 5): {stem}", include_plotlyjs))]
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a directory (the CSV and HTML go in a folder)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for path, text in texts:
            path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise UserError(f"{out_dir}: can't write ({e.strerror or e.__class__.__name__})") from None
    return texts[0][0], texts[1][0]


def write_plotly_js(out_dir: Path) -> Path:
    """plotly.js as OUT_DIR/plotly.min.js, for pages written with include_plotlyjs="directory" (one copy, not
    4.8 MB per page); skipped when the same file is already there."""
    from plotly.offline import get_plotlyjs

    path = Path(out_dir) / PLOTLY_JS
    text = get_plotlyjs()
    if not (path.is_file() and path.stat().st_size == len(text.encode("utf-8"))):
        path.write_text(text, encoding="utf-8")
    return path
