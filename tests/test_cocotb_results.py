"""Every cocotb entry fails unless its tests ran and passed (``ivhw.hdl.sim.run_cocotb``).

cocotb only warns when a test filter matches nothing and leaves a results file
with no tests, which its runner accepts; these tests prove that a wrong name,
a test that did not run, a failed, errored or skipped one each fail the entry.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import test_hdl_flat

from ivhw.hdl.sim import CocotbResultError, check_results, cocotb_tests

__all__: list[str] = []

TB_DIR = Path(__file__).resolve().parent / "hdl"


@pytest.fixture(autouse=True)
def _testbenches_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TB_DIR))


def test_names_come_from_the_module() -> None:
    assert cocotb_tests("flat_tb") == test_hdl_flat.TESTS
    assert "directed" in cocotb_tests("flat_tb")


def test_a_wrong_name_fails_before_running(tmp_path: Path) -> None:
    # the reproduction: test_flat("icarus", "no_such_test") used to pass
    with pytest.raises(ValueError, match="no cocotb test 'no_such_test' in flat_tb; it has "):
        test_hdl_flat.test_flat("icarus", "no_such_test", tmp_path)


def _results(tmp_path: Path, *cases: str) -> Path:
    xml = tmp_path / "results.xml"
    xml.write_text(
        '<testsuites><testsuite name="all" package="all">'
        + "".join(cases)
        + "</testsuite></testsuites>"
    )
    return xml


def _case(name: str, inner: str = "") -> str:
    return f'<testcase name="{name}" classname="flat_tb" file="x" lineno="1">{inner}</testcase>'


def test_a_passing_test_passes(tmp_path: Path) -> None:
    check_results(_results(tmp_path, _case("directed")), "flat_tb", ["directed"])


@pytest.mark.parametrize(
    ("cases", "message"),
    [
        ((), "directed ran 0 times"),  # the filter matched nothing: cocotb only warns
        ((_case("directed"), _case("directed")), "directed ran 2 times"),
        ((_case("directed", '<failure message="boom" />'),), "directed failure: boom"),
        ((_case("directed", '<error message="crash" />'),), "directed error: crash"),
        ((_case("directed", "<skipped />"),), "directed skipped"),
        ((_case("directed"), _case("other")), "unexpected tests ran: other"),
    ],
)
def test_what_did_not_pass_fails(tmp_path: Path, cases: tuple[str, ...], message: str) -> None:
    with pytest.raises(CocotbResultError, match=message):
        check_results(_results(tmp_path, *cases), "flat_tb", ["directed"])


def test_parametrized_cases_all_count(tmp_path: Path) -> None:
    axi, wb = _case("directed/master=axi"), _case("directed/master=wb")
    check_results(_results(tmp_path, axi, wb), "flat_tb", ["directed"], ["directed"])
    failed = _case("directed/master=wb", '<failure message="bad ack" />')
    with pytest.raises(CocotbResultError, match="directed/master=wb failure: bad ack"):
        check_results(_results(tmp_path, axi, failed), "flat_tb", ["directed"], ["directed"])
    with pytest.raises(CocotbResultError, match="directed ran 0 times"):
        check_results(_results(tmp_path), "flat_tb", ["directed"], ["directed"])
    # a case of a test not declared parametrized is not that test
    with pytest.raises(CocotbResultError, match="directed ran 0 times"):
        check_results(_results(tmp_path, axi), "flat_tb", ["directed"])


def test_a_missing_results_file_fails(tmp_path: Path) -> None:
    with pytest.raises(CocotbResultError, match="no results file"):
        check_results(tmp_path / "results.xml", "flat_tb", ["directed"])


def test_nothing_asked_fails(tmp_path: Path) -> None:
    with pytest.raises(CocotbResultError, match="no cocotb tests asked"):
        check_results(_results(tmp_path), "flat_tb", [])


def _calls_runner_test(path: Path) -> bool:
    """Whether ``path`` calls ``<something>.test(test_module=...)``: a cocotb runner."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "test"
            and any(keyword.arg == "test_module" for keyword in node.keywords)
        ):
            return True
    return False


def test_every_entry_uses_the_helper() -> None:
    """No test or benchmark calls ``runner.test`` itself: all go through ``run_cocotb``."""
    root = Path(__file__).resolve().parent.parent
    callers = [
        path.relative_to(root).as_posix()
        for folder in ("tests", "bench")
        for path in sorted((root / folder).rglob("*.py"))
        if _calls_runner_test(path)
    ]
    assert callers == [], f"these call runner.test directly, not run_cocotb: {callers}"
