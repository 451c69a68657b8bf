"""Every snippet of README.rst and doc/*.rst runs.

Python blocks (``.. code-block:: python``, ``.. plot::`` and literal ``::``
blocks that parse as Python) run in order, one namespace per file, after the
setup below, which gives the data a snippet leaves to the reader (``X``,
``y``...). Where a snippet's sizes would take minutes (Omniglot, an hour of
meta-training), a listed replacement shrinks them; each replacement must
match the text, so an edit of the docs cannot silently skip it. Doctests
(``>>>``) run with :mod:`doctest`. Shell blocks (``pip``, ``python``
commands) are checked to name files that exist; CI runs them (``.ci/run``).
No warning of a dependency may reach the reader: the only warnings allowed
are skbilevel's own (a run that stops at ``max_iter``, for instance).
"""

import doctest
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.rst", *sorted((ROOT / "doc").glob("*.rst"))]
DIRECTIVE = re.compile(r"^(\s*)\.\. (code-block|code|sourcecode|plot)::\s*(\S*)\s*$")

# Run before the n-th Python block of a file: the data the text leaves to the
# reader.
SETUP = {
    ("README.rst", 0): """
from sklearn.datasets import make_classification
X, y = make_classification(n_samples=120, n_features=5, random_state=0)
""",
    ("README.rst", 1): """
import torch
from sklearn.datasets import load_diabetes
Xd, yd = load_diabetes(return_X_y=True)
Xd, yd = (Xd - Xd.mean(0)) / Xd.std(0), (yd - yd.mean()) / yd.std()
X, X_val = torch.as_tensor(Xd[:300]), torch.as_tensor(Xd[300:])
y, y_val = torch.as_tensor(yd[:300]), torch.as_tensor(yd[300:])
d = X.shape[1]
""",
    ("bilevel_search.rst", 0): """
from sklearn.datasets import make_classification
X, y = make_classification(n_samples=150, n_features=5, random_state=0)
X_test = X[:10]
""",
    ("neural_network.rst", 0): """
import numpy as np
import torch
from sklearn.datasets import make_classification
from skbilevel.neural_network import TorchMLPClassifier
from skbilevel.problems import fold_data
X, y = make_classification(n_samples=60, n_features=4, n_informative=3,
                           n_redundant=0, random_state=0)
""",
    ("neural_network.rst", 1): """
estimator = TorchMLPClassifier((8,), solver="sgd", max_iter=10, random_state=0,
                               dtype="float64")
splits = [(np.arange(0, 60, 2), np.arange(1, 60, 2)),
          (np.arange(1, 60, 2), np.arange(0, 60, 2))]
_, data = fold_data(estimator, X, y, splits, None, "cpu", "float64")
hparams = {"learning_rate": torch.full((10,), 0.01, dtype=torch.float64)}
""",
    ("meta_learning.rst", 0): """
import numpy as np
import skbilevel.datasets
from sklearn.utils import Bunch

def load_omniglot(path):
    # 40 characters of 20 drawings stand in for Omniglot's 1,623.
    rng = np.random.RandomState(0)
    character = np.repeat(np.arange(40), 20)
    return Bunch(
        images=rng.randint(0, 256, (800, 28, 28)).astype(np.uint8),
        character=character, alphabet=character // 10,
        background=character < 30,
    )

skbilevel.datasets.load_omniglot = load_omniglot
""",
}

# (file, text in a snippet, replacement): smaller sizes for the test run.
REPLACE = [
    (
        "neural_network.rst",
        "max_iter=100, random_state=0",
        "max_iter=10, random_state=0",
    ),
    ("neural_network.rst", "n_blocks=10", "n_blocks=2"),
    (
        "meta_learning.rst",
        'load_omniglot("/path/to/data"))',
        'load_omniglot("/path/to/data"), n_train=20, n_val=8)',
    ),
    ("meta_learning.rst", "max_time=3600", "max_time=3600, max_iter=2"),
    ("meta_learning.rst", "meta_batch_size=16", "meta_batch_size=2"),
    ("meta_learning.rst", "n_episodes=600", "n_episodes=3"),
]


def blocks(path):
    """The (kind, code) of each block of ``path``: python, shell or other."""
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        line = lines[i]
        match = DIRECTIVE.match(line)
        literal = line.rstrip().endswith("::") and not line.lstrip().startswith("..")
        if not (match or literal):
            i += 1
            continue
        indent = len(match.group(1)) if match else len(line) - len(line.lstrip())
        body, i = [], i + 1
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent
        ):
            body.append(lines[i])
            i += 1
        text = [b for b in body if not re.match(r"^\s+:[\w-]+:", b)]
        code = _dedent("\n".join(text))
        if not code.strip():
            continue
        language = match.group(3) if match and match.group(2) != "plot" else ""
        found.append(
            (_kind(language, code, bool(match and match.group(2) == "plot")), code)
        )
    return found


def _dedent(text):
    import textwrap

    return textwrap.dedent(text).strip("\n")


def _kind(language, code, plot):
    if plot or language == "python":
        return "python"
    if language in ("bash", "shell", "console"):
        return "shell"
    if language:
        return "other"
    # A literal block is Python unless it is shell commands: one that fails
    # to parse fails the test rather than being skipped.
    return "shell" if _is_shell(code) else "python"


def _is_shell(code):
    commands = [line.split("#")[0].strip() for line in code.splitlines()]
    commands = [c for c in commands if c]
    return bool(commands) and all(
        c.split()[0] in ("pip", "python", "cd") for c in commands
    )


def _replaced(name, code, used):
    for file, old, new in REPLACE:
        if file == name and old in code:
            code = code.replace(old, new)
            used.add((file, old))
    return code


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_snippets_run(path, monkeypatch, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    found = blocks(path)
    namespace, used, n_python = {"__name__": "__snippet__"}, set(), 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for kind, code in found:
            if kind == "shell":
                _check_shell(code)
            elif kind == "python":
                exec(SETUP.get((path.name, n_python), ""), namespace)
                n_python += 1
                code = _replaced(path.name, code, used)
                exec(compile(code, f"{path.name} snippet", "exec"), namespace)
        plt.close("all")
    assert [_own(w) for w in caught] == [True] * len(caught), [
        f"{w.category.__name__} at {w.filename}: {w.message}" for w in caught
    ]
    expected = {(f, old) for f, old, _ in REPLACE if f == path.name}
    assert used == expected, f"replacements that matched no snippet: {expected - used}"


def _own(caught):
    """A warning of skbilevel's own (a run stopping at max_iter, say), not one
    of a dependency's, which must not reach the reader."""
    own_file = Path(caught.filename).resolve().is_relative_to(ROOT / "skbilevel")
    return own_file and issubclass(caught.category, (ConvergenceWarning, UserWarning))


def _check_shell(code):
    for line in code.splitlines():
        for word in line.split("#")[0].split():
            if word.endswith(".py") and "/" in word:
                assert (ROOT / word).is_file(), f"{word} does not exist"


@pytest.mark.parametrize(
    "path", [p for p in FILES if ">>>" in p.read_text()], ids=lambda p: p.name
)
def test_doctests_pass(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = doctest.testfile(
            str(path),
            module_relative=False,
            optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        )
    assert result.attempted > 0 and result.failed == 0


def test_the_runner_finds_every_kind_of_block(tmp_path):
    page = tmp_path / "page.rst"
    page.write_text(
        "Text::\n\n    x = 1\n\n.. code-block:: python\n\n   y = x + 1\n\n"
        ".. plot::\n   :context: reset\n\n   z = 2\n\n"
        ".. code-block:: bash\n\n   pip install .\n\nShell::\n\n    python -m pytest\n"
    )
    assert blocks(page) == [
        ("python", "x = 1"),
        ("python", "y = x + 1"),
        ("python", "z = 2"),
        ("shell", "pip install ."),
        ("shell", "python -m pytest"),
    ]
    assert np.isfinite(len(FILES)) and len(FILES) > 5
