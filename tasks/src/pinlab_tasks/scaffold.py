"""`pinlab new`: working skeletons of a recommender, a loader or a metric, wired in everywhere.

A skeleton is real code (a model that learns, a loader that reads JSON Lines, a metric) with
its tests, written in every place the house rules ask for, so the gates pass on it at once and
the contract suite covers a new model. The templates are in `scaffold_templates/`.

Everything is computed in memory first, every Python file compiled, and only then written
(each file atomically): a refusal or a broken template writes nothing. Blocks and rows go just
above marker comments (`MARKERS`) in the files they extend; imports and `__all__` are edited
through `ast` and kept in the order ruff's isort and RUF022 check.
"""

from __future__ import annotations

import ast
import keyword
import re
import textwrap
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from pinlab_data import write_bytes_atomic

RecommenderKind = Literal["epochs", "item-item", "closed-form"]
RECOMMENDER_KINDS: tuple[str, ...] = get_args(RecommenderKind)

NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
MAX_NAME = 32
"""Longer names would push generated lines past the line length."""
LINE_LENGTH = 100
"""ruff's line length (pyproject.toml)."""
TEMPLATES = Path(__file__).parent / "scaffold_templates"

MODELS = "packages/models/src/pinlab_models"
MODEL_TESTS = "packages/models/tests"
DATA = "packages/data/src/pinlab_data"
DATA_TESTS = "packages/data/tests"
EVAL = "packages/eval/src/pinlab_eval"
EVAL_TESTS = "packages/eval/tests"
DATA_COMMANDS = "tasks/src/pinlab_tasks/commands/data.py"
CONTRACT_SUITE = f"{MODEL_TESTS}/test_models_recommenders.py"
REGISTRY = f"{MODELS}/registry.py"


@dataclass(frozen=True)
class Marker:
    """A line that says where `pinlab new` adds a kind of block: just above it."""

    file: str
    text: str
    where: str
    """Where the line belongs, for the error when it is gone."""


CONFIGS = Marker(
    f"{MODELS}/contracts.py",
    "pinlab new: recommender configs go above this line",
    "a comment at the end of the file",
)
REGISTRATIONS = Marker(
    REGISTRY,
    "pinlab new: recommender registrations go above this line",
    "a comment at the end of the file",
)
CANDIDATES = Marker(
    CONTRACT_SUITE,
    "pinlab new: candidate scorers go above this line",
    "a comment closing the CANDIDATE_SCORERS set",
)
LOADER_KINDS = Marker(
    f"{DATA}/contracts.py",
    "pinlab new: loader kinds go above this line",
    "a comment closing the LoaderKind literal",
)
LOADER_COMMANDS = Marker(
    DATA_COMMANDS,
    "pinlab new: loader commands go above this line",
    "a comment after the last `pinlab data load` command",
)
README_COMMANDS = Marker(
    "README.md",
    "pinlab new: loader commands go above this line",
    "a comment after `pinlab data load sequences` in the command list",
)
README_RECOMMENDERS = Marker(
    "README.md",
    "pinlab new: recommender rows go above this line",
    "an HTML comment under the recommender table",
)
README_METRICS = Marker(
    "README.md",
    "pinlab new: metric rows go above this line",
    "an HTML comment under the list in 'Protocols and metrics'",
)
AGENTS_COMMANDS = Marker(
    "AGENTS.md",
    "pinlab new: loader rows go above this line",
    "an HTML comment under the command table",
)
AGENTS_RECOMMENDERS = Marker(
    "AGENTS.md",
    "pinlab new: recommender rows go above this line",
    "an HTML comment under the recommender table",
)
AGENTS_METRICS = Marker(
    "packages/eval/AGENTS.md",
    "pinlab new: metric rows go above this line",
    "an HTML comment under the table of metrics from `pinlab new metric`",
)
MARKERS = (
    CONFIGS,
    REGISTRATIONS,
    CANDIDATES,
    LOADER_KINDS,
    LOADER_COMMANDS,
    README_COMMANDS,
    README_RECOMMENDERS,
    README_METRICS,
    AGENTS_COMMANDS,
    AGENTS_RECOMMENDERS,
    AGENTS_METRICS,
)

GATES = "uv run ruff check && uv run ruff format --check && uv run mypy (`just check`: every gate)"


class ScaffoldError(ValueError):
    """Bad input to `pinlab new`: a bad or taken name, a checkout without its markers. The CLI
    prints it and exits 2; nothing has been written."""


@dataclass(frozen=True)
class Names:
    """One name in the spellings the code needs."""

    name: str
    """As typed, e.g. `mult-vae`: the registry name, CLI kind or metric name."""
    snake: str
    """`mult_vae`: modules, functions, tests, metric keys."""
    camel: str
    """`MultVae`: classes."""


def names(name: str, what: str) -> Names:
    if len(name) > MAX_NAME or not NAME_PATTERN.fullmatch(name):
        raise ScaffoldError(
            f"{what} name {name!r} will not do: use lower-case letters and digits, words joined "
            f"by single dashes, a letter first, {MAX_NAME} characters at most (e.g. mult-vae)"
        )
    camel = "".join(part.capitalize() for part in name.split("-"))
    if keyword.iskeyword(camel):
        raise ScaffoldError(f"{what} name {name!r} would name a class {camel}; pick another")
    return Names(name, name.replace("-", "_"), camel)


def render(template: str, n: Names) -> str:
    """A template with its names filled in and its imports in ruff's order."""
    text = (TEMPLATES / template).read_text(encoding="utf-8")
    for key, value in (("name", n.name), ("snake", n.snake), ("camel", n.camel)):
        text = text.replace("{{" + key + "}}", value)
    if "{{" in text:
        raise ScaffoldError(f"template {template} has an unknown placeholder; fix the template")
    return tidy_imports(text)


@dataclass
class Plan:
    """The files one `pinlab new` creates and edits, with their new text, before any write."""

    root: Path
    what: str
    texts: dict[str, str] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    edited: list[str] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)

    def read(self, rel: str) -> str:
        """The text of `rel` as this plan leaves it so far."""
        if rel not in self.texts:
            path = self.root / rel
            if not path.is_file():
                raise ScaffoldError(
                    f"{path} is missing: is {self.root} a pinlab checkout (--root)?"
                )
            self.texts[rel] = path.read_text(encoding="utf-8")
        return self.texts[rel]

    def create(self, rel: str, text: str) -> None:
        if (self.root / rel).exists():
            raise ScaffoldError(f"{rel} exists already; pick another name (nothing was written)")
        self.texts[rel] = text
        self.created.append(rel)

    def edit(self, rel: str, change: Callable[[str], str]) -> None:
        text = change(self.read(rel))
        if text != self.texts[rel] and rel not in self.created and rel not in self.edited:
            self.edited.append(rel)
        self.texts[rel] = text

    def insert(self, marker: Marker, block: str) -> None:
        """`block` (whole lines) just above the line holding `marker`."""
        lines = self.read(marker.file).splitlines(keepends=True)
        found = [i for i, line in enumerate(lines) if marker.text in line]
        if len(found) != 1:
            raise ScaffoldError(
                f"{marker.file} has {len(found) or 'no'} line(s) with {marker.text!r} "
                f"({marker.where}); `pinlab new` adds its block there: restore exactly one"
            )
        at = found[0]
        self.edit(marker.file, lambda _: "".join([*lines[:at], block, *lines[at:]]))

    def check(self) -> None:
        """Every Python file this plan writes must compile: a template error writes nothing."""
        for rel in [*self.created, *self.edited]:
            if rel.endswith(".py"):
                try:
                    compile(self.texts[rel], rel, "exec", dont_inherit=True)
                except SyntaxError as exc:
                    raise ScaffoldError(
                        f"{rel} would not compile ({exc.msg}, line {exc.lineno}); nothing was "
                        "written: fix the template or the marker's surroundings"
                    ) from exc

    def write(self) -> None:
        for rel in [*self.created, *self.edited]:
            write_bytes_atomic(self.root / rel, self.texts[rel].encode("utf-8"))

    def payload(self, dry_run: bool) -> dict[str, Any]:
        return {
            "what": self.what,
            "root": str(self.root),
            "dry_run": dry_run,
            "created": self.created,
            "edited": self.edited,
            "next": self.next_steps,
        }


# --- the three scaffolds ------------------------------------------------------------------

_RECOMMENDER_DOCS: dict[str, tuple[str, str]] = {
    "epochs": ("user and item embeddings, softmax over the catalogue", "dim, lr, l2, temperature"),
    "item-item": ("asymmetric cosine item-item neighbours", "alpha, shrink, neighbours"),
    "closed-form": ("low-rank ridge on popularity-scaled items, closed form", "dim, l2, beta"),
}


def plan_recommender(root: Path, name: str, kind: str) -> Plan:
    """A recommender of `kind`: its module, config, registration with a search space, test,
    contract-suite entry and doc rows. The contract suite runs it at once."""
    if kind not in RECOMMENDER_KINDS:
        raise ScaffoldError(f"unknown kind {kind!r}; choose {', '.join(RECOMMENDER_KINDS)}")
    n = names(name, "recommender")
    plan = Plan(root, f"recommender {name} ({kind})")
    if name in registered_recommenders(plan.read(REGISTRY)):
        raise ScaffoldError(f"recommender {name!r} is registered already in {REGISTRY}")
    config = f"{n.camel}Config"
    taken = exported(plan.read(f"{MODELS}/__init__.py")) | class_names(
        plan.read(f"{MODELS}/contracts.py")
    )
    for cls in (n.camel, config):
        if cls in taken:
            raise ScaffoldError(f"pinlab_models has a {cls} already; pick another name")
    slug = kind.replace("-", "_")
    module = f"{MODELS}/_{n.snake}.py"
    test = f"{MODEL_TESTS}/test_models_{n.snake}.py"
    plan.create(module, render(f"recommender_{slug}.py.tmpl", n))
    plan.create(test, render("test_recommender.py.tmpl", n))
    plan.insert(CONFIGS, render(f"config_{slug}.py.tmpl", n) + "\n\n")
    plan.insert(REGISTRATIONS, render(f"register_{slug}.py.tmpl", n))
    plan.edit(REGISTRY, lambda text: add_import(text, "pinlab_models.contracts", config))
    exports = [("pinlab_models.contracts", config)]
    if kind == "item-item":
        weights = f"{n.snake}_weights"
        plan.edit(REGISTRY, lambda text: add_import(text, "pinlab_models._linear", "add_item_item"))
        plan.edit(REGISTRY, lambda text: add_import(text, f"pinlab_models._{n.snake}", weights))
    else:
        plan.edit(REGISTRY, lambda text: add_import(text, f"pinlab_models._{n.snake}", n.camel))
        plan.insert(CANDIDATES, f'    "{name}",\n')
        exports.append((f"pinlab_models._{n.snake}", n.camel))
    for source, member in exports:
        _export(plan, f"{MODELS}/__init__.py", source, member)
    what, searched = _RECOMMENDER_DOCS[kind]
    epochs = "; epochs" if kind == "epochs" else ""
    plan.insert(
        README_RECOMMENDERS,
        f"| `{name}` | {what} (a `pinlab new` start, `_{n.snake}.py`) | {searched}{epochs} |\n",
    )
    plan.insert(AGENTS_RECOMMENDERS, f"| `{name}` | `_{n.snake}.py` | {what} |\n")
    plan.next_steps = [
        f"make it yours: the model in {module}, {config} in {MODELS}/contracts.py, its "
        f"search space in {REGISTRY}; keep the rows in README.md and AGENTS.md true",
        "to score sessions (a visitor's history alone), implement HistoryScorer "
        f"(history_window, score_histories) and name it in HISTORY_SCORERS in {CONTRACT_SUITE}",
        f"uv run pytest {test} {CONTRACT_SUITE} tests/test_docs.py -q",
        GATES,
        f"uv run pinlab train recommender --data DIR --model {name}",
    ]
    plan.check()
    return plan


def plan_loader(root: Path, kind: str) -> Plan:
    """`pinlab data load KIND`: a JSON Lines loader, its export, command, test and doc rows."""
    n = names(kind, "loader kind")
    plan = Plan(root, f"loader {kind}")
    function = f"load_{n.snake}"
    if function in exported(plan.read(f"{DATA}/__init__.py")):
        raise ScaffoldError(f"pinlab_data has a {function} already; pick another kind")
    if kind in load_commands(plan.read(DATA_COMMANDS)):
        raise ScaffoldError(f"`pinlab data load {kind}` exists already in {DATA_COMMANDS}")
    module = f"{DATA}/_{n.snake}_loader.py"
    test = f"{DATA_TESTS}/test_data_{n.snake}_loader.py"
    plan.create(module, render("loader.py.tmpl", n))
    plan.create(test, render("test_loader.py.tmpl", n))
    plan.insert(LOADER_KINDS, f'    "{kind}",\n')
    _export(plan, f"{DATA}/__init__.py", f"pinlab_data._{n.snake}_loader", function)
    plan.insert(LOADER_COMMANDS, render("loader_command.py.tmpl", n) + "\n\n")
    plan.edit(DATA_COMMANDS, lambda text: add_import(text, "pinlab_data", function))
    command = f"pinlab data load {kind} FILE --out DIR"
    plan.insert(README_COMMANDS, f"{command:<44} # JSON Lines: user, item, time, rating\n")
    plan.insert(
        AGENTS_COMMANDS,
        f"| load {kind} data | `uv run {command}` (`{function}`, a `pinlab new loader` start: "
        "JSON Lines) |\n",
    )
    plan.next_steps = [
        f"make it read your format: {module} (now JSON Lines), its test {test} on a tiny file "
        f"in that exact format, the command in {DATA_COMMANDS}, the rows in README.md and "
        "AGENTS.md",
        f"uv run pytest {test} tests/test_docs.py -q",
        GATES,
        f"uv run {command} && uv run pinlab data validate DIR",
    ]
    plan.check()
    return plan


def plan_metric(root: Path, name: str) -> Plan:
    """`NAME_at_k(ranked, relevant)` in pinlab_eval: module, export, tests and doc rows.

    `user_metrics` has no table of metrics to register it in (`_per_user` lists its metrics in
    code), so the metric is not in eval output until someone adds it there."""
    n = names(name, "metric")
    plan = Plan(root, f"metric {name}")
    function = f"{n.snake}_at_k"
    if function in exported(plan.read(f"{EVAL}/__init__.py")):
        raise ScaffoldError(f"pinlab_eval has a {function} already; pick another name")
    module = f"{EVAL}/_{n.snake}.py"
    test = f"{EVAL_TESTS}/test_eval_{n.snake}.py"
    plan.create(module, render("metric.py.tmpl", n))
    plan.create(test, render("test_metric.py.tmpl", n))
    _export(plan, f"{EVAL}/__init__.py", f"pinlab_eval._{n.snake}", function)
    what = "relevant items in the top k over min(k, relevant items)"
    bullet = (
        f"- `{n.snake}@k` (`pinlab_eval.{function}`, a `pinlab new metric` start): {what}, per "
        "user; not in `user_metrics`' output."
    )
    plan.insert(README_METRICS, textwrap.fill(bullet, 96, subsequent_indent="  ") + "\n")
    plan.insert(AGENTS_METRICS, f"| `{n.snake}@k` | `{function}` | `_{n.snake}.py` | {what} |\n")
    plan.next_steps = [
        f"make it compute what {name} means: {module}, with the hand computation and the "
        f"properties in {test}; keep the rows in README.md and packages/eval/AGENTS.md true",
        f"to report it in eval and bench output, add it to `_per_user` in {EVAL}/_ranking.py",
        f"uv run pytest {test} -q",
        GATES,
    ]
    plan.check()
    return plan


def _export(plan: Plan, init: str, module: str, member: str) -> None:
    plan.edit(init, lambda text: add_import(text, module, member))
    plan.edit(init, lambda text: add_to_all(text, member))


# --- where the checkout is ----------------------------------------------------------------


def find_root(start: Path) -> Path:
    """The pinlab checkout at or above `start`: the folder whose pyproject.toml holds the uv
    workspace of the packages."""
    for folder in [start, *start.parents]:
        if _is_checkout(folder):
            return folder
    raise ScaffoldError(
        f"no pinlab checkout at or above {start} (a pyproject.toml with the uv workspace); "
        "run inside the repository or pass --root"
    )


def check_root(root: Path) -> Path:
    if not _is_checkout(root):
        raise ScaffoldError(
            f"{root} is not a pinlab checkout (its pyproject.toml has no uv workspace with "
            "packages/models); pass the repository's root"
        )
    return root


def _is_checkout(folder: Path) -> bool:
    pyproject = folder / "pyproject.toml"
    if not pyproject.is_file():
        return False
    try:
        config = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError:
        return False
    members = config.get("tool", {}).get("uv", {}).get("workspace", {}).get("members", [])
    return "packages/models" in members


# --- what is taken --------------------------------------------------------------------------


def registered_recommenders(registry: str) -> set[str]:
    """The `name=` of every `RecommenderSpec(...)` in registry.py."""
    return {
        keyword_.value.value
        for node in ast.walk(ast.parse(registry))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "RecommenderSpec"
        for keyword_ in node.keywords
        if keyword_.arg == "name"
        and isinstance(keyword_.value, ast.Constant)
        and isinstance(keyword_.value.value, str)
    }


def exported(init: str) -> set[str]:
    node = _all_node(ast.parse(init))
    return {str(item.value) for item in node.elts if isinstance(item, ast.Constant)}


def class_names(text: str) -> set[str]:
    return {node.name for node in ast.parse(text).body if isinstance(node, ast.ClassDef)}


def load_commands(text: str) -> set[str]:
    """The names of `@load_app.command("NAME")` functions: the `pinlab data load` kinds."""
    found = set()
    for node in ast.parse(text).body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            if (
                isinstance(decorator, ast.Call)
                and isinstance(decorator.func, ast.Attribute)
                and isinstance(decorator.func.value, ast.Name)
                and decorator.func.value.id == "load_app"
                and decorator.args
                and isinstance(decorator.args[0], ast.Constant)
            ):
                found.add(str(decorator.args[0].value))
    return found


# --- imports and __all__, as ruff orders them ----------------------------------------------


def natural(text: str) -> tuple[tuple[int, int, str], ...]:
    """natord's order, which ruff sorts by: runs of digits compare as numbers, other runs as
    text (a digit sorts before any letter or underscore, so a run of digits comes first)."""
    return tuple(
        (0, int(run), "") if run.isdigit() else (1, 0, run) for run in re.findall(r"\d+|\D+", text)
    )


def _member_type(name: str) -> int:
    """isort's (and RUF022's) kinds of names: CONSTANTS, then Classes, then the rest."""
    if len(name) > 1 and name.isupper():
        return 0
    return 1 if name[0].isupper() else 2


def member_key(name: str) -> tuple[Any, ...]:
    """Order of the names in one `from m import ...` (ruff's isort: by kind, case-blind)."""
    return (_member_type(name), natural(name.lower()), natural(name))


def all_key(name: str) -> tuple[Any, ...]:
    """Order of `__all__` (RUF022: by kind, then case-sensitive natural order)."""
    return (_member_type(name), natural(name))


def module_key(module: str) -> tuple[Any, ...]:
    return (natural(module.lower()), natural(module))


def render_import(module: str, members: list[str], expanded: bool) -> str:
    """`from module import ...` as ruff formats it: one line if it fits and was not expanded
    (a magic trailing comma keeps it so), else one name a line."""
    ordered = sorted(set(members), key=member_key)
    line = f"from {module} import {', '.join(ordered)}"
    if not expanded and len(line) <= LINE_LENGTH:
        return line + "\n"
    return f"from {module} import (\n" + "".join(f"    {m},\n" for m in ordered) + ")\n"


def _top_imports(tree: ast.Module) -> list[ast.ImportFrom]:
    return [
        node
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
    ]


def _span(node: ast.stmt) -> tuple[int, int]:
    """The statement's lines as a slice of `splitlines()`."""
    assert node.end_lineno is not None
    return node.lineno - 1, node.end_lineno


def add_import(text: str, module: str, name: str) -> str:
    """`text` importing `name` from `module`: added to the statement that imports from it, or
    a new statement among the imports of the same package, where isort puts it."""
    lines = text.splitlines(keepends=True)
    imports = _top_imports(ast.parse(text))
    same = next((node for node in imports if node.module == module), None)
    if same is not None:
        members = [alias.name for alias in same.names]
        if name in members:
            return text
        start, end = _span(same)
        if any(alias.asname for alias in same.names) or "#" in "".join(lines[start:end]):
            raise ScaffoldError(
                f"`from {module} import ...` has an alias or a comment that `pinlab new` would "
                f"lose; add {name} to it yourself"
            )
        statement = render_import(module, [*members, name], expanded=end - start > 1)
        return "".join([*lines[:start], statement, *lines[end:]])
    package = module.partition(".")[0]
    siblings = [node for node in imports if str(node.module).partition(".")[0] == package]
    if not siblings:
        raise ScaffoldError(f"no `from {package}... import` to put `from {module}` beside")
    later = [node for node in siblings if module_key(str(node.module)) > module_key(module)]
    at = _span(later[0])[0] if later else _span(siblings[-1])[1]
    statement = render_import(module, [name], expanded=False)
    return "".join([*lines[:at], statement, *lines[at:]])


def _all_node(tree: ast.Module) -> ast.List:
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and [getattr(t, "id", None) for t in node.targets] == ["__all__"]
            and isinstance(node.value, ast.List)
        ):
            return node.value
    raise ScaffoldError("no `__all__ = [...]` list to export from")


def add_to_all(text: str, name: str) -> str:
    tree = ast.parse(text)
    listed = _all_node(tree)
    statement = next(node for node in tree.body if getattr(node, "value", None) is listed)
    members = {str(item.value) for item in listed.elts if isinstance(item, ast.Constant)}
    if len(members) != len(listed.elts):
        raise ScaffoldError(f"`__all__` holds more than strings; add {name!r} to it yourself")
    body = "".join(f'    "{m}",\n' for m in sorted(members | {name}, key=all_key))
    start, end = _span(statement)
    lines = text.splitlines(keepends=True)
    return "".join([*lines[:start], f"__all__ = [\n{body}]\n", *lines[end:]])


def tidy_imports(text: str) -> str:
    """Every `from m import a, b` of a rendered template in ruff's order and wrapping, which
    depend on the names filled in."""
    lines = text.splitlines(keepends=True)
    for node in reversed(_top_imports(ast.parse(text))):
        start, end = _span(node)
        members = [alias.name for alias in node.names]
        if any(alias.asname for alias in node.names) or "#" in "".join(lines[start:end]):
            continue
        lines[start:end] = [render_import(str(node.module), members, expanded=end - start > 1)]
    return "".join(lines)
