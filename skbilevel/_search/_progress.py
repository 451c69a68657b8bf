"""Progress of a search: one bar per search, one line per outer step.

With ``verbose=1`` a single tqdm bar (``tqdm.auto``: a widget in a notebook,
text in a terminal) counts the hypergradient runs completed, with the best
validation loss so far and the outer step of the run in progress; with
``verbose=2`` each outer step also prints one line (its outer loss, i.e. the
validation loss, and the values of the scalar hyperparameters; an array is
summarized by its size and range, never printed whole).

The bar and the lines live in the parent process only. A run executed in the
parent (sequentially, or in a thread) reports each outer step as it is taken;
a run executed in a joblib worker process reports nothing there (its hook
arrives unpickled as a no-op) and the parent reports its steps when it
completes, so the output of concurrent runs never interleaves.
"""

import math
import warnings

import numpy as np
from tqdm import TqdmWarning

with warnings.catch_warnings():
    # In a notebook without ipywidgets, tqdm.auto falls back to its text bar
    # (which a notebook shows well) with a warning about the missing widget.
    warnings.filterwarnings("ignore", "IProgress not found", TqdmWarning)
    from tqdm.auto import tqdm


def describe(params):
    """``name=value`` for each scalar, ``name[size] in [min, max]`` for arrays."""
    parts = []
    for name, value in params.items():
        value = np.asarray(value)
        if value.ndim == 0:
            parts.append(f"{name}={float(value):.4g}")
        elif value.size:
            parts.append(
                f"{name}[{value.size}] in [{value.min():.3g}, {value.max():.3g}]"
            )
    return ", ".join(parts)


def step_line(prefix, run, entry):
    """The line of one outer step (numbered as in ``history_``)."""
    values = describe(entry["params"])
    return (
        f"[{prefix}] step {entry['step']}: {values + ', ' if values else ''}"
        f"outer loss {entry['outer_loss']:.6g}, hypergradient norm "
        f"{entry['hypergradient_norm']:.3g}, run {run + 1}, {entry['time']:.1f}s"
    )


class StepHook:
    """Called by a run after each outer step; a no-op once pickled.

    Parameters
    ----------
    progress : SearchProgress or None
        The parent's progress; None makes the hook a no-op.
    run : int
        The number of the run, counted from 0.
    """

    def __init__(self, progress, run):
        self.progress = progress
        self.run = run

    def __call__(self, entry):
        if self.progress is not None:
            self.progress.step(self.run, entry)

    def __reduce__(self):
        # In a worker process the parent's bar is out of reach: report
        # nothing there, the parent reports the run's steps on completion.
        return (StepHook, (None, self.run))


class SearchProgress:
    """The progress bar and step lines of one search.

    Parameters
    ----------
    verbose : int
        0 silent, 1 a bar, 2 and above a bar and one line per outer step.
    n_runs : int
        Number of hypergradient runs of the search.
    prefix : str, default="BilevelSearchCV"
        Name shown on the bar and at the start of each line.
    """

    def __init__(self, verbose, n_runs, prefix="BilevelSearchCV"):
        self.verbose = int(verbose)
        self.n_runs = n_runs
        self.prefix = prefix
        self.best = math.inf
        self.live = set()
        self.bar = None

    def hook(self, run):
        """The step hook of run ``run`` (a no-op when silent)."""
        return StepHook(self if self.verbose > 0 else None, run)

    def start(self):
        """Show the bar, when not silent."""
        if self.verbose > 0:
            self.bar = tqdm(total=self.n_runs, desc=self.prefix, unit="run")

    def _show(self, step=None):
        postfix = {}
        if math.isfinite(self.best):
            postfix["best loss"] = f"{self.best:.4g}"
        if step is not None:
            postfix["step"] = step
        self.bar.set_postfix(postfix, refresh=False)

    def step(self, run, entry):
        """Report one outer step of a run executed in this process."""
        if self.bar is None:
            return
        self.live.add(run)
        self.best = min(self.best, entry["outer_loss"])
        self._show(entry["step"] + 1)
        if self.verbose > 1:
            tqdm.write(step_line(self.prefix, run, entry))
        self.bar.update(0)

    def done(self, run, history):
        """Report a completed run: its steps, if not yet reported, then +1."""
        if self.bar is None:
            return
        losses = [entry["outer_loss"] for entry in history]
        self.best = min([self.best, *losses])
        if self.verbose > 1 and run not in self.live:
            for entry in history:
                tqdm.write(step_line(self.prefix, run, entry))
        self._show()
        self.bar.update(1)

    def close(self):
        """Close the bar (its last state stays on the screen)."""
        if self.bar is not None:
            self.bar.close()
