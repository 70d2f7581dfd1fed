from dataclasses import dataclass, field

import pytest

from speechae.config import ConfigError, apply_overrides, from_dict, load_yaml, resolve_choice, to_dict
from speechae.utils.io import atomic_path, read_lines


@dataclass
class Inner:
    kind: str = "sigreg"
    weight: float = 0.02


@dataclass
class Outer:
    dims: list[int] = field(default_factory=lambda: [1, 2])
    inner: Inner = field(default_factory=Inner)
    steps: int = 10
    flag: bool = False
    name: str | None = None


def test_from_dict_strict_and_typed():
    cfg = from_dict(Outer, {"dims": [3, 4], "inner": {"weight": 1}, "steps": 5})
    assert cfg.dims == [3, 4] and cfg.inner.weight == 1.0 and isinstance(cfg.inner.weight, float)
    assert to_dict(cfg)["inner"] == {"kind": "sigreg", "weight": 1.0}
    with pytest.raises(ConfigError, match=r"config.inner: unknown key\(s\) \['wieght'\]"):
        from_dict(Outer, {"inner": {"wieght": 1}})
    with pytest.raises(ConfigError, match="config.steps: expected an integer"):
        from_dict(Outer, {"steps": "ten"})
    with pytest.raises(ConfigError, match="config.flag: expected true/false"):
        from_dict(Outer, {"flag": 1})


def test_yaml_base_chain_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("steps: 3\ninner:\n  kind: kl\n  weight: 0.5\n")
    (tmp_path / "arm.yaml").write_text("base: base.yaml\ninner:\n  weight: 0.1\n")
    data = apply_overrides(load_yaml(tmp_path / "arm.yaml"), ["steps=7", "inner.kind=sigreg", "dims=[5]"])
    cfg = from_dict(Outer, data)
    assert (cfg.steps, cfg.inner.kind, cfg.inner.weight, cfg.dims) == (7, "sigreg", 0.1, [5])
    assert apply_overrides({}, ["inner.weight=1e-3", "name=abc"]) == {"inner": {"weight": 1e-3}, "name": "abc"}
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["steps"])
    with pytest.raises(ConfigError, match="no such config file"):
        load_yaml(tmp_path / "missing.yaml")


def test_resolve_choice():
    assert resolve_choice("regularizer", "a", {"a": 1}) == 1
    with pytest.raises(ConfigError, match="unknown regularizer 'b'; choose one of \\['a'\\]"):
        resolve_choice("regularizer", "b", {"a": 1})


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.jsonl.gz"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.name.endswith(".jsonl.gz") and tmp.parent == tmp_path
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl.gz"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_atomic_dir(tmp_path):
    target = tmp_path / "corpus"
    with atomic_path(target, is_dir=True) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1"
    with atomic_path(target, is_dir=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]


def test_read_lines_names_bad_utf8(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes("ভালো\n\n".encode() + b"\xff\xfe bad\n")
    with pytest.raises(ValueError, match=r"t.txt:3: not valid UTF-8"):
        read_lines(p)
