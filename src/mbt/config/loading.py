"""YAML files and `--set section.key=value` overrides -> a validated `Config`. One parser for every command.

Errors are one line naming the file or the full key. A YAML file must be a mapping of sections, each a mapping;
a key given twice in one mapping is an error (PyYAML would silently keep the last).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mbt.config.schema import DEFAULT_PRESET, SECTIONS, Config
from mbt.errors import ConfigError
from mbt.model.config import PRESETS, MBTConfig
from mbt.schema import format_error, validate

PACKAGED_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
MANIFEST_KEYS = ("train", "val", "test", "classes")  # data.* paths resolved against the YAML file's folder


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping holding the same key twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (line {seen[key] + 1} and line "
                    f"{key_node.start_mark.line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def parse_value(text: str) -> Any:
    """`--set key=value` values are YAML scalars/lists: 8, 0.5, true, [video, audio], null."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"cannot parse value {text!r}: {problem}") from None


def _known_keys(section: str) -> list[str]:
    keys = sorted(SECTIONS[section].model_fields)
    return sorted([*keys, "preset"]) if section == "model" else keys


def _closest(name: str, choices: list[str], prefix: str = "") -> str:
    """'; did you mean train.lr?' for the choices close to `name`, else the list of choices."""
    close = [prefix + c for c in difflib.get_close_matches(name, choices, n=2, cutoff=0.6)]
    return f"; did you mean {' or '.join(close)}?" if close else f"; known: {', '.join(choices)}"


def split_key(dotted: str) -> tuple[str, str]:
    """'train.lr' -> ('train', 'lr'); a malformed key or an unknown section is a ConfigError."""
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"{dotted.strip()!r}: expected model.<key>, data.<key> or train.<key>")
    if parts[0] not in SECTIONS:
        raise ConfigError(f"{dotted.strip()}: unknown section {parts[0]!r}{_closest(parts[0], list(SECTIONS))}")
    return parts[0], parts[1]


def split_override(item: str) -> tuple[str, str, Any]:
    """'train.lr=0.1' -> ('train', 'lr', 0.1); a malformed item or unknown section is a ConfigError."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    dotted, text = item.split("=", 1)
    section, key = split_key(dotted)
    return section, key, parse_value(text)


def apply_overrides(raw: dict[str, dict[str, Any]], overrides: list[str] | None) -> dict[str, dict[str, Any]]:
    """A copy of the nested sections `raw` with `section.key=value` items applied."""
    merged = {section: dict(values) for section, values in raw.items()}
    for item in overrides or []:
        section, key, value = split_override(item)
        merged.setdefault(section, {})[key] = value
    return merged


def model_config(values: dict[str, Any]) -> tuple[str, MBTConfig]:
    """A model section (`preset` plus field overrides) -> (preset name, MBTConfig)."""
    values = dict(values)
    preset = values.pop("preset", DEFAULT_PRESET)
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    for key in values:
        if key not in MBTConfig.model_fields:
            raise ConfigError(f"model.{key}: unknown key{_closest(key, _known_keys('model'), 'model.')}")
    return preset, MBTConfig.preset(preset, **values)


def build_config(raw: dict[str, Any] | None = None, overrides: list[str] | None = None) -> Config:
    """A validated Config from nested sections (a YAML file's content) and `section.key=value` overrides."""
    raw = raw if raw is not None else {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping with model / data / train sections, got {type(raw).__name__}")
    sections: dict[str, dict[str, Any]] = {}
    for section, values in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"{section}: unknown section{_closest(str(section), list(SECTIONS))}")
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"{section}: must be a mapping of keys to values, got {values!r}")
        sections[section] = values
    sections = apply_overrides(sections, overrides)
    preset, model = model_config(sections.get("model", {}))
    data = validate(SECTIONS["data"], sections.get("data", {}), "data")
    train = validate(SECTIONS["train"], sections.get("train", {}), "train")
    try:
        return Config(model=model, data=data, train=train, preset=preset)
    except ValidationError as e:  # cross-section checks, if any
        raise ConfigError(format_error(e)) from None


def read_yaml(path: Path) -> Any:
    """A YAML file's content; unreadable, undecodable or invalid files are one-line ConfigErrors naming it."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a YAML config file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{line}: {problem}") from None


def resolve_source(source: str | Path) -> tuple[Path, Path]:
    """CONFIG as the CLI takes it -> (YAML file, folder its relative manifest paths start from)."""
    path = Path(str(source))
    if path.exists():
        return path, path.parent  # manifest paths in a user's YAML file are relative to the file
    packaged = PACKAGED_CONFIGS / (path.name if path.suffix else f"{path.name}.yaml")
    if packaged.is_file():
        return packaged, Path.cwd()  # ... and in a packaged recipe, to where the command runs
    recipes = sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))
    raise ConfigError(f"config {str(source)!r}: no such file, packaged recipe ({', '.join(recipes)}) "
                      f"or preset ({', '.join(sorted(PRESETS))})")


def load_config(source: str | Path, overrides: list[str] | None = None) -> Config:
    """CONFIG as the CLI takes it: a YAML path, a packaged recipe name, or a preset name."""
    if str(source) in PRESETS:
        return build_config({"model": {"preset": str(source)}}, overrides)
    path, base = resolve_source(source)
    raw = read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with model / data / train sections, "
                          f"got {type(raw).__name__}")
    data = raw.get("data")
    if isinstance(data, dict):
        data = dict(data)
        for key in MANIFEST_KEYS:
            value = data.get(key)
            # a URL or `pipe:` command of shards is not a path in the YAML file's folder
            if isinstance(value, str) and not Path(value).is_absolute() and not value.startswith("pipe:") \
                    and "://" not in value:
                data[key] = str((base / value).resolve())
        raw = {**raw, "data": data}
    try:
        build_config(raw)  # the file alone: its errors name the file
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return build_config(raw, overrides)  # ... and those of the overrides name the key only
