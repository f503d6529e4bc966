"""Space files: YAML → SearchSpace (every problem one line naming file, key and rule), the stored copy, diffs.

A space file is checked whole before anything starts: its sections by the schema, then the
cross-section rules (rules.check_space). The resolved copy beside a study is written by dump_space.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Callable

import yaml
from pydantic import ValidationError

from ..errors import UserError, did_you_mean
from ..strict import describe_error, format_validation_error
from ..training.config import DataConfig
from .rules import check_space
from .schema import (PARAM_TYPES, Budget, Constraints, Resources, SamplerConfig, SearchSpace,
                     SpaceObjective)

SPACE_FILE = "space.yaml"   # the resolved copy of the space, beside the study

# Keys that may change between runs of one study: where and how wide it runs, how many trials, and which sampler
# proposes the next ones (a study started with `type: tpe` continues under the default, EHVI, and back), and where
# it is tracked.
MAY_CHANGE = ("resources.", "budget.max_concurrent_trials", "budget.num_samples", "sampler.type", "tracking.")


class SpaceError(UserError, ValueError):
    """A search-space file that breaks a rule: `file: key: rule`, one line."""


_YAML11_ONLY = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
                "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value")


class _Loader(yaml.SafeLoader):
    """Safe YAML with YAML 1.2's core schema and duplicate keys refused.

    YAML 1.2, not PyYAML's 1.1: `1e-4` and `2.0e6` are numbers, only true/false are booleans
    (`off`, `yes`, `no` are strings), `010` is ten, dates stay strings. Space files and `--set` values
    (cli/app.py) are read with it.
    """

    yaml_implicit_resolvers = {first: [(tag, rx) for tag, rx in resolvers if tag not in _YAML11_ONLY]
                               for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml12_int(self, node: yaml.ScalarNode) -> int:
        text = str(self.construct_scalar(node)).replace("_", "")
        if text.startswith(("0o", "0x")):
            return int(text[2:], 8 if text[1] == "o" else 16)
        return int(text, 10)


_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:int",
                              re.compile(r"^(?:[-+]?[0-9][0-9_]*|0o[0-7]+|0x[0-9a-fA-F]+)$"),
                              list("-+0123456789"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml12_int)


class _Dumper(yaml.SafeDumper):
    """Lists of scalars on one line (`[6, 12, 24, 16]`), as people write them."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence(
    "tag:yaml.org,2002:seq", v, flow_style=all(not isinstance(x, (list, dict)) for x in v)))


def load_yaml(text: str) -> Any:
    """YAML text as Python values, read as YAML 1.2 (see _Loader); yaml.YAMLError if it isn't YAML."""
    return yaml.load(text, Loader=_Loader)


def load_space(path: str | Path, *, rules: bool = True) -> SearchSpace:
    """Read and validate a space file; SpaceError (one line: file, key, rule) if anything is wrong.

    rules=False skips the cross-section rules (rules.check_space, up to MAX_PROBES resolves): for the
    copy stored beside a study, which was checked when the study started.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpaceError(f"{path}: no such file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise SpaceError(f"{path}: can't read ({e.__class__.__name__})") from None
    return parse_space(text, source=str(path), rules=rules)


def parse_space(text: str, source: str = "<space>", *, rules: bool = True) -> SearchSpace:
    """Validate a space given as YAML text; `source` names it in errors."""
    try:
        raw = load_yaml(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark else ""
        problem = " ".join(str(e.problem or e.context or "syntax error").split())
        raise SpaceError(f"{source}{line}: YAML: {problem}") from None
    except yaml.YAMLError as e:
        raise SpaceError(f"{source}: YAML: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise SpaceError(f"{source}: expected a mapping with keys {', '.join(SearchSpace.model_fields)}")
    try:
        space = SearchSpace.model_validate(raw)
        if rules:
            check_space(space)
    except ValidationError as e:
        raise SpaceError(format_validation_error(e, source, describe=_describe)) from None
    except ValueError as e:      # the rules' `key: rule`
        raise SpaceError(f"{source}: {e}") from None
    return space


def dump_space(space: SearchSpace) -> str:
    """The resolved YAML copy (defaults written out) that is stored beside a study."""
    d = space.model_dump(mode="json")
    d["params"] = {k: p.model_dump(mode="json", exclude_none=True) for k, p in space.params.items()}
    return yaml.dump(d, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


def diff_spaces(a: SearchSpace, b: SearchSpace) -> list[str]:
    """Human-readable differences, one per changed key: `budget.max_epochs: 300 → 200`."""
    fa, fb = flatten_keys(yaml.safe_load(dump_space(a))), flatten_keys(yaml.safe_load(dump_space(b)))
    out = []
    for key in list(fa) + [k for k in fb if k not in fa]:
        va, vb = fa.get(key, "(absent)"), fb.get(key, "(absent)")
        if va != vb:
            out.append(f"{key}: {va} → {vb}")
    return out


def flatten_keys(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as {dotted.key: leaf}; an empty dict is a leaf."""
    if not isinstance(d, dict) or not d:
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten_keys(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


# --- one-line errors -----------------------------------------------------------------------

_SECTIONS = {"budget": Budget, "resources": Resources, "sampler": SamplerConfig,
             "constraints": Constraints, "data": DataConfig, "objectives": SpaceObjective}


def _describe(e: dict) -> str:
    """A space's error: params' tagged-union cases here, the rest as strict.describe_error."""
    loc = [str(p) for p in e["loc"]]
    tag = loc.pop(2) if len(loc) >= 3 and loc[0] == "params" and loc[2] in PARAM_TYPES else None
    where, kind = ".".join(loc), e["type"]
    if kind == "union_tag_not_found":
        return f"{where}: missing `type` (int, float or categorical)"
    if kind == "union_tag_invalid":
        t = (e.get("ctx") or {}).get("tag", "")
        return f"{where}.type: {t!r} is not int, float or categorical{did_you_mean(t, PARAM_TYPES)}"
    if kind == "model_attributes_type" and loc[0] == "params" and len(loc) == 2:
        return f"{where}: expected a spec like {{type: int, low: 1, high: 8}} (a single value goes under `fixed`)"
    return describe_error({**e, "loc": loc}, fields_at=lambda at: _fields_at(at, tag))


def _fields_at(loc: list[str], tag: str | None) -> list[str]:
    if len(loc) == 1:
        return list(SearchSpace.model_fields)
    if loc[0] == "params" and tag:
        return list(PARAM_TYPES[tag].model_fields)
    model = _SECTIONS.get(loc[0])
    return list(model.model_fields) if model else []


def refuse_different_space(old: SearchSpace, space: SearchSpace, where: str, advice: str) -> None:
    """UserError naming the first difference, if `space` differs from the one a study (`where`) was started
    with in what is searched or how it's judged (MAY_CHANGE may differ)."""
    diffs = [d for d in diff_spaces(old, space) if not d.startswith(MAY_CHANGE)]
    if diffs:
        more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
        raise UserError(f"{where} was started with a different space: {diffs[0]}{more}; {advice}")


def check_same_space(space: SearchSpace, stored: Path) -> None:
    """Refuse to continue a study with a space that differs from its space.yaml (see refuse_different_space)."""
    refuse_different_space(load_space(stored, rules=False), space, str(stored.parent),
                           "use the same space, or a new --study-dir")


def read_stored_space(study_dir: Path | None, url: str | None = None, name: str | None = None) -> SearchSpace | None:
    """The space a study was started with: the space.yaml beside it, else the copy stored in the study itself.

    The local STUDY_DIR/space.yaml counts if it is study `name`'s (or no name is given); else, given the
    storage `url` and the study `name`, the resolved YAML that `dsearch run` stored in the study when it
    created it (record.SPACE_ATTR), so a study in a shared database is readable without its folder. None if
    neither is there; an unreadable copy → a warning on stderr and None. The cross-section rules are not run
    again: the copy was checked when the study started.
    """
    from .record import stored_space_text

    if study_dir is not None and (Path(study_dir) / SPACE_FILE).is_file():
        local = _read_space_copy(lambda: load_space(Path(study_dir) / SPACE_FILE, rules=False))
        if local is not None and (name is None or local.name == name):
            return local
    if url is None or name is None:
        return None
    text = stored_space_text(url, name)
    if text is None:
        return None
    from .storage import display_url

    return _read_space_copy(lambda: parse_space(text, f"the space stored in study {name!r} ({display_url(url)})",
                                                rules=False))


def _read_space_copy(read: Callable[[], SearchSpace]) -> SearchSpace | None:
    try:
        return read()
    except UserError as e:
        print(f"dsearch: warning: {e}; going on without it (no paper points, default reference)",
              file=sys.stderr)
        return None


def open_study_with_space(study_dir: Path | None, storage: str | None = None,
                          name: str | None = None) -> tuple[Any, SearchSpace | None]:
    """The optuna.Study to read (record.open_study: by --study, the local space's name, or the only one in
    the database) and the space it was started with (read_stored_space)."""
    from .record import open_study
    from .storage import storage_url

    local = read_stored_space(study_dir) if study_dir is not None else None
    study = open_study(study_dir, storage, local, name)
    if local is not None and local.name == study.study_name:
        return study, local
    return study, read_stored_space(None, storage_url(study_dir, storage), study.study_name)
