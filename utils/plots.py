"""analyze_rank.py's figures (PNG, ~100 dpi). matplotlib is optional: imported here only, with the Agg
backend; without it `write_plots` writes nothing and says so.

- rank_vs_step.png: one panel per run (rows = groups): the rank at every checkpoint (dots) over the
  training log's denser rank series (thin line), Phase 1 / Phase 2 shaded, the peak and best marked.
- align_uniform.png: one panel per group: each run's path in the (uniformity, alignment) plane over its
  training log's evaluations, coloured by step; start o, rank peak *, best ◆ (lower-left is better on both axes).
- stsb_dev_vs_step.png: STS-B dev at every checkpoint, one line per run, coloured by group.
- groups_overlay.png: rank and STS-B dev of the training logs, mean over each group's seeds with a ± std band.
"""

import os

DPI = 100


def _pyplot():
    """matplotlib.pyplot on the Agg backend, or None where matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(out_dir, runs, rows_by_run, results, rank_key) -> tuple[list, str]:
    """Write the four figures into out_dir. Returns (file names written, a note or None)."""
    plt = _pyplot()
    if plt is None:
        return [], "plots skipped: matplotlib is not installed (`pip install matplotlib`); the tables are complete"
    by_name = {r["name"]: r for r in results["runs"]}
    groups = {}
    for run in runs:
        groups.setdefault(by_name[run["name"]]["group"], []).append(run)
    colours = _colours(plt, groups, results)
    written = []
    for name, draw in (("rank_vs_step.png", _rank_vs_step), ("align_uniform.png", _align_uniform),
                       ("stsb_dev_vs_step.png", _stsb_vs_step), ("groups_overlay.png", _overlay)):
        fig = draw(plt, groups, rows_by_run, by_name, results, rank_key, colours)
        fig.savefig(os.path.join(out_dir, name), dpi=DPI)
        plt.close(fig)
        written.append(name)
    return written, None


def _colours(plt, groups, results) -> dict:
    """{group: colour}: a colour per group; with several methods a colour per method, so that a method's
    baseline and RR groups share it (RR's lines are dashed: `_dashes`)."""
    method = {g["label"]: g.get("method") for g in results["groups"]}
    keys = [method.get(g) for g in groups] if len({method.get(g) for g in groups}) > 1 else list(groups)
    order = list(dict.fromkeys(keys))
    return {g: plt.get_cmap("tab10")(order.index(k) % 10) for g, k in zip(groups, keys)}


def _dashes(results, group, colours) -> str:
    """'--' for an RR group that shares its colour with its method's baseline, else '-'."""
    kind = next((g.get("kind") for g in results["groups"] if g["label"] == group), None)
    return "--" if kind not in (None, "baseline") and list(colours.values()).count(colours[group]) > 1 else "-"


def _grid(plt, nrows, ncols, w=3.0, h=2.3):
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols + 0.6, h * nrows + 0.5), squeeze=False,
                             constrained_layout=True)
    return fig, axes


def _rank_vs_step(plt, groups, rows_by_run, by_name, results, rank_key, colours):
    ncols = max(len(v) for v in groups.values())
    fig, axes = _grid(plt, len(groups), ncols)
    for i, (group, runs) in enumerate(groups.items()):
        for j in range(ncols):
            ax = axes[i][j]
            if j >= len(runs):
                ax.axis("off")
                continue
            run = runs[j]
            rows = rows_by_run[run["name"]]
            ph = by_name[run["name"]]["phases"]
            log = [r for r in run["log"] if r.get(rank_key) is not None]
            if log:
                ax.plot([r["step"] for r in log], [r[rank_key] for r in log], color="0.6", lw=0.8,
                        label="training log")
            ax.plot([r["step"] for r in rows], [r[rank_key] for r in rows], "o-", color=colours[group], ms=3,
                    lw=1.2, label="checkpoints")
            peak, best = ph["peak"]["step"], ph["best"]["step"]
            if peak is not None:
                if "absent" not in ph["phase1"]:
                    ax.axvspan(ph["phase1"]["start_step"], peak, color="tab:blue", alpha=0.08, lw=0)
                if "absent" not in ph["phase2"]:
                    ax.axvspan(peak, best, color="tab:orange", alpha=0.12, lw=0)
                ax.axvline(peak, color="k", ls="--", lw=0.9, label=f"rank peak ({peak})")
            if best is not None:
                ax.axvline(best, color="tab:green", ls=":", lw=1.2, label=f"best STS-B dev ({best})")
            ax.set_title(f"{group}, seed {run['seed']}", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=6, loc="best")
            if j == 0:
                ax.set_ylabel(rank_key, fontsize=8)
            if i == len(groups) - 1:
                ax.set_xlabel("step", fontsize=8)
    fig.suptitle("rank vs step (Phase 1 blue, Phase 2 orange)", fontsize=10)
    return fig


def _align_uniform(plt, groups, rows_by_run, by_name, results, rank_key, colours):
    import matplotlib.colors as mcolors

    paths = {run["name"]: sorted((r for r in run["log"] if r.get("alignment") is not None and r.get("uniformity")
                                  is not None), key=lambda r: r["step"]) for runs in groups.values() for run in runs}
    all_steps = [r["step"] for rows in paths.values() for r in rows] or [0]
    norm = mcolors.Normalize(min(all_steps), max(max(all_steps), 1))
    fig, axes = _grid(plt, 1, len(groups), w=3.6, h=3.0)
    scatter = None
    for ax, (group, runs) in zip(axes[0], groups.items()):
        for run in runs:
            rows = paths[run["name"]]
            ph = by_name[run["name"]]["phases"]
            x, y = [r["uniformity"] for r in rows], [r["alignment"] for r in rows]
            ax.plot(x, y, color="0.7", lw=0.8, zorder=1)
            scatter = ax.scatter(x, y, c=[r["step"] for r in rows], cmap="viridis", norm=norm, s=14, zorder=2)
            marks = {"o": rows[0]["step"] if rows else None, "*": ph["peak"]["step"], "D": ph["best"]["step"]}
            for marker, step in marks.items():
                row = next((r for r in rows if r["step"] == step), None)
                if row is not None:
                    ax.scatter([row["uniformity"]], [row["alignment"]], marker=marker, s=60 if marker == "*" else 30,
                               facecolors="none", edgecolors="k", lw=0.9, zorder=3)
        ax.set_title(group, fontsize=9)
        ax.set_xlabel("uniformity", fontsize=8)
        ax.set_ylabel("alignment", fontsize=8)
        ax.tick_params(labelsize=7)
    if scatter is not None:
        fig.colorbar(scatter, ax=axes[0].tolist(), label="step", shrink=0.9)
    fig.suptitle("alignment vs uniformity over the training log (o start, * rank peak, ◆ best)", fontsize=10)
    return fig


def _stsb_vs_step(plt, groups, rows_by_run, by_name, results, rank_key, colours):
    fig, axes = _grid(plt, 1, 1, w=5.0, h=3.0)
    ax = axes[0][0]
    for group, runs in groups.items():
        for k, run in enumerate(runs):
            rows = [r for r in rows_by_run[run["name"]] if r.get("stsb_dev") is not None]
            ax.plot([r["step"] for r in rows], [r["stsb_dev"] for r in rows], "o", ls=_dashes(results, group, colours),
                    ms=3, lw=1, color=colours[group],
                    alpha=0.85, label=group if k == 0 else None)
            best = by_name[run["name"]]["phases"]["best"]
            if best["step"] is not None:
                ax.scatter([best["step"]], [best["stsb_dev"]], marker="D", s=25, color=colours[group],
                           edgecolors="k", zorder=3)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("STS-B dev (Spearman x 100)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    ax.set_title("STS-B dev vs step (◆ best checkpoint)", fontsize=10)
    return fig


def _overlay(plt, groups, rows_by_run, by_name, results, rank_key, colours):
    fig, axes = _grid(plt, 1, 2, w=4.2, h=3.0)
    for ax, metric, name in ((axes[0][0], rank_key, rank_key), (axes[0][1], "stsb_dev", "STS-B dev")):
        for group, runs in groups.items():
            b = results["bands"][group][metric]
            if not b["steps"]:
                continue
            lo = [m - s for m, s in zip(b["mean"], b["std"])]
            hi = [m + s for m, s in zip(b["mean"], b["std"])]
            ax.plot(b["steps"], b["mean"], color=colours[group], ls=_dashes(results, group, colours), lw=1.5,
                    label=f"{group} (n={len(runs)})")
            ax.fill_between(b["steps"], lo, hi, color=colours[group], alpha=0.2, lw=0)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel(name, fontsize=8)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:  # a log without the metric draws nothing
            ax.legend(fontsize=7)
    fig.suptitle("training log: mean over seeds ± std (steps every run of a group has)", fontsize=10)
    return fig
