"""The job files are the code's defaults, written out and documented: every setting stated, each equal to its default
(rigpose.config), and every setting of the config classes described once (a Field description or a section)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from rigpose_testing import REPO

from rigpose.config import EvaluateJob, RetrainJob, Strict, TrainJob, load_config


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        return {k: v for key, child in node.items() for k, v in _flat(child, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def _sections(cls: type[BaseModel]) -> list[type[BaseModel]]:
    out = [cls]
    for field in cls.model_fields.values():
        if isinstance(field.annotation, type) and issubclass(field.annotation, Strict):
            out += _sections(field.annotation)
    return out


JOBS = [("train.yaml", TrainJob), ("evaluate.yaml", EvaluateJob), ("retrain.yaml", RetrainJob)]


@pytest.mark.parametrize(("name", "cls"), JOBS, ids=[n for n, _ in JOBS])
def test_job_file_states_every_setting_at_its_code_default(name: str, cls: type[Strict]) -> None:
    stated = _flat(yaml.safe_load((REPO / "jobs" / name).read_text()))
    defaults = _flat(cls().model_dump())
    assert sorted(set(defaults) - set(stated)) == [], f"jobs/{name} does not state these settings"
    assert sorted(set(stated) - set(defaults)) == [], f"jobs/{name} states settings the code does not have"
    differ = {k: (stated[k], defaults[k]) for k in defaults if stated[k] != defaults[k]}
    assert differ == {}, f"jobs/{name}: (file, code default) differ"
    assert load_config(cls, REPO / "jobs" / name) == cls()


@pytest.mark.parametrize(("name", "cls"), JOBS, ids=[n for n, _ in JOBS])
def test_every_setting_is_described_once_in_its_config_class(name: str, cls: type[Strict]) -> None:
    for section in _sections(cls):
        assert section.__doc__, f"{section.__name__} has no docstring"
        for key, field in section.model_fields.items():
            is_section = isinstance(field.annotation, type) and issubclass(field.annotation, Strict)
            assert is_section or field.description, f"{section.__name__}.{key} has no description"


def test_command_line_options_override_set_which_overrides_the_file(tmp_path: Any) -> None:
    path = tmp_path / "eval.yaml"
    path.write_text("split: val\nmulti_view: {method: fusion, refine_steps: 5}\n")
    job = load_config(EvaluateJob, path, ["multi_view.refine_steps=7", "split=train"], options={"split": "test"})
    assert (job.split, job.multi_view.method, job.multi_view.refine_steps) == ("test", "fusion", 7)
    with pytest.raises(ValueError, match=r"field multi_view\.method"):
        load_config(EvaluateJob, None, ["multi_view.method=median"])


def test_adaptation_defaults_to_its_steps_only_where_it_is_asked_for() -> None:
    from rigpose.config import ADAPTATION_STEPS, MultiViewConfig

    assert MultiViewConfig(method="adaptation").steps_to_adapt() == ADAPTATION_STEPS
    assert MultiViewConfig(method="adaptation").steps_to_adapt(multi=False) == 0
    assert MultiViewConfig(method="adaptation", adapt_steps=3).steps_to_adapt() == 3
    assert MultiViewConfig(method="fusion", adapt_steps=3).steps_to_adapt(multi=False) == 3
    assert MultiViewConfig().steps_to_adapt() == 0
