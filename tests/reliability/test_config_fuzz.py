"""Property-based fuzzing of the config loader and the name checks (hypothesis). CI runs a few
hundred examples; `python scripts/fuzz_config.py` runs 10,000 or more with the same property.
"""

from __future__ import annotations

import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mamoru.config import load_config
from mamoru.config.names import SITE_NAME, NameError_, check_site_name, normalize_domain
from mamoru.errors import ConfigError, ConfigProblem
from tests.reliability.fuzzing import HOSTILE_NAMES, SAFE_DOMAIN, check_config_text, inputs

CI_EXAMPLES = 300
CI = settings(max_examples=CI_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@CI
@given(inputs)
def test_config_text_gives_settings_or_located_config_errors(text: str) -> None:
    check_config_text(text)


@settings(max_examples=100, deadline=None, database=None, derandomize=True)
@given(st.binary(max_size=400) | st.builds(lambda s: s.encode("utf-8", "surrogatepass"),
                                           st.text(max_size=200)))
def test_config_file_bytes_give_settings_or_config_errors(data: bytes) -> None:
    with tempfile.NamedTemporaryFile("wb", suffix=".yaml", delete=False) as handle:
        handle.write(data)
    try:
        load_config(handle.name)
    except ConfigError as error:
        assert all(p.file == handle.name and p.message for p in error.problems)
    finally:
        os.unlink(handle.name)


names = st.one_of(st.sampled_from(HOSTILE_NAMES), st.text(max_size=80),
                  st.text(alphabet=st.sampled_from(list("aZ09-.*_/\\:@ \x00\u0430\u30af")),
                          max_size=80))


@CI
@given(names)
def test_a_domain_is_a_safe_a_label_name_or_a_plain_error(raw: str) -> None:
    try:
        domain = normalize_domain(raw)
    except NameError_ as error:
        assert str(error) and "\n" not in str(error).strip()
        return
    assert SAFE_DOMAIN.match(domain) and len(domain) <= 253, domain
    assert all(len(label) <= 63 for label in domain.split("."))


@CI
@given(names)
def test_a_site_name_is_a_safe_path_component_or_a_plain_error(raw: str) -> None:
    try:
        name = check_site_name(raw)
    except NameError_:
        return
    assert SITE_NAME.match(name) and "/" not in name and not name.startswith(".")


def test_the_property_fails_when_a_problem_loses_its_line_or_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The property itself can fail: a problem rendered without its line, or without its key,
    is caught (a user could not find the place in the file)."""
    text = "acme: {timeout: yes}\nsites: {}\n"
    check_config_text(text)
    renderings = {
        "without the line": lambda p: f"{p.file}: {p.path}: {p.message}",
        "without the path": lambda p: f"{p.file}:{p.line}: {p.message}",
    }
    for what, render in renderings.items():
        monkeypatch.setattr(ConfigProblem, "__str__", render)
        with pytest.raises(AssertionError):
            check_config_text(text)
            pytest.fail(f"a problem rendered {what} passed the property")
        monkeypatch.undo()
