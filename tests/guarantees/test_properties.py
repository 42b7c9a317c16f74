"""Property-based tests (hypothesis): config and manifest parsing accept good input and refuse anything
else with a UserError naming the source, never another exception; accepted manifest paths stay inside
the data root."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from medmae.config import from_dict, known_keys, load_config, validate
from medmae.data.manifests import read_datalist
from medmae.errors import DataError, UserError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


KEYS = sorted(known_keys())


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)


values = st.one_of(scalars, st.lists(scalars, max_size=4))


relative_parts = st.lists(
    st.sampled_from(["imagesTr", "labelsTr", "a.nii.gz", "..", ".", "x", "b c.nii", "C:", "\\", "~"]),
    min_size=1,
    max_size=4,
)


paths = st.one_of(
    relative_parts.map("/".join),
    relative_parts.map(lambda p: "/" + "/".join(p)),
    st.text(max_size=8),
    st.integers(),
    st.none(),
)


entries = st.one_of(
    paths, st.dictionaries(st.sampled_from(["image", "label", "other"]), paths, max_size=3), st.integers()
)


manifests = st.one_of(
    st.fixed_dictionaries(
        {"training": st.lists(entries, max_size=5)},
        optional={
            "validation": st.lists(entries, max_size=3),
            "test": st.one_of(st.lists(entries, max_size=3), scalars),
        },
    ),
    values,
)


@SETTINGS
@given(text=st.text(max_size=40))
def test_any_set_text_is_a_config_or_a_user_error(text):
    try:
        cfg = load_config("pretrain", "demo", overrides=[text])
    except UserError as error:
        assert str(error)
    else:
        validate(cfg)


@SETTINGS
@given(key=st.sampled_from(KEYS), value=values)
def test_any_value_for_any_key_is_accepted_and_round_trips_or_refused_by_name(key, value):
    try:
        cfg = load_config(
            "finetune", "demo", overrides=[f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"]
        )
    except UserError as error:
        assert key in str(error) or "--set" in str(error) or "invalid config" in str(error)
        return
    section, name = key.split(".")
    stored = getattr(getattr(cfg, section), name)
    if not (isinstance(stored, float) and math.isnan(stored)):
        assert from_dict(cfg.to_dict(), "round trip") == cfg


@SETTINGS
@given(
    document=st.recursive(values, lambda inner: st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
)
def test_any_yaml_config_file_is_a_config_or_a_user_error_naming_it(tmp_path, document):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        load_config("pretrain", "demo", config_files=path)
    except UserError as error:
        assert str(path) in str(error)


@SETTINGS
@given(manifest=manifests)
@example(manifest={"training": ["imagesTr"], "validation": ["imagesTr"]})  # one unlabelled image in two parts
def test_any_manifest_is_cases_inside_the_root_or_a_data_error_naming_it(tmp_path, manifest):
    root = tmp_path / "data"
    root.mkdir(exist_ok=True)
    path = root / "dataset.json"
    path.write_text(json.dumps(manifest))
    try:
        parts = read_datalist(path, root)
    except DataError as error:
        assert str(error).startswith(str(path))
        return
    for case in (c for part in parts.values() for c in part):
        for file in (case.image, case.label):
            if file is not None:
                assert Path(file).resolve().is_relative_to(root.resolve()), file
    ids = [(key, c.id) for key, part in parts.items() for c in part]
    assert len(ids) == len(set(ids)), "a case twice in one part"


@pytest.mark.parametrize(
    "manifest, problem",
    [
        ({"validation": []}, "needs a 'training' list"),
        ({"training": [{"label": "labelsTr/a.nii.gz"}]}, "an entry needs an 'image'"),
        ({"training": ["imagesTr/a.nii.gz", "imagesTr/a.nii.gz"]}, "case a is listed twice in 'training'"),
        ({"training": [{"image": "/etc/passwd"}]}, "must be relative to the data root"),
        ({"training": [{"image": "../../secret.nii.gz"}]}, "must be relative to the data root"),
        (
            {"training": [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}, {"image": "other/a.nii.gz"}]},
            "case id a names two different files",
        ),
    ],
)
def test_manifest_problems_are_named(tmp_path, manifest, problem):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=problem) as error:
        read_datalist(path, tmp_path)
    assert str(error.value).startswith(str(path))
