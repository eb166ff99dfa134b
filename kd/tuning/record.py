"""What a study leaves on its parent run: trial counts, the best trial, Optuna's plots."""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

from kd.tracking.runs import TrackedRun
from kd.tuning.storage import import_optuna


def record_study(parent: TrackedRun, study, best, finished: int, n_trials: int) -> None:
    """Best parameters, counts and Optuna's plots on the parent run (tags, being mutable, hold
    what changes as workers finish)."""
    optuna = import_optuna()
    states = {state.name.lower(): len(study.get_trials(deepcopy=False, states=(state,)))
              for state in optuna.trial.TrialState}
    parent.log_metrics({f"trials_{name}": float(count) for name, count in states.items()}, step=finished)
    tags = {"finished_trials": finished, "n_trials": n_trials}
    if best is not None:
        parent.log_metrics({"best_devel_f1": best.value}, step=finished)
        tags.update({"best_trial": best.number, **{f"best.{k}": v for k, v in best.params.items()}})
    parent.set_tags(tags)
    parent.log_json({"best_trial": best.number if best else None, "best_value": best.value if best else None,
                     "best_params": best.params if best else {}, "trials": states}, "best.json")
    if best is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    # Optuna's matplotlib plots are "experimental" and warn on every call; the plots are a side output.
    with tempfile.TemporaryDirectory() as staging, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, plot in (("optimization_history", plots.plot_optimization_history),
                           ("param_importances", plots.plot_param_importances),
                           ("intermediate_values", plots.plot_intermediate_values)):
            try:
                axes = plot(study)
            except Exception:  # e.g. importances need two complete trials with varying parameters
                continue
            figure = (axes if not hasattr(axes, "figure") else axes.figure)
            path = Path(staging) / f"{name}.png"
            figure.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(figure)
            parent.log_artifact(path, "plots")
