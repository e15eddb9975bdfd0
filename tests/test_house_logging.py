"""One reporting channel: library code logs with levels (medseg.logs), the console shows them by level."""

import ast
import logging
from pathlib import Path

from medseg.logs import FLAG, REFUSED, log_to_console

ROOT = Path(__file__).resolve().parents[1]
PREFIXES = ("error:", "warning:", "flag:", "refused:")


def _first_text(call: ast.Call) -> str:
    if not call.args:
        return ""
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return str(arg.values[0].value)
    return ""


def test_library_code_reports_through_logging_levels_not_text_prefixes():
    """No function takes an ``echo`` callback, and no log call spells its severity in the text."""
    found = []
    for path in sorted((ROOT / "medseg").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names = [a.arg for a in node.args.args + node.args.kwonlyargs]
                found += [f"{path.name}:{node.lineno} parameter echo" for n in names if n == "echo"]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("debug", "info", "warning", "error", "log"):
                if _first_text(node).lower().startswith(PREFIXES):
                    found.append(f"{path.name}:{node.lineno} severity in the text")
    assert found == []


def test_console_routes_by_level(capsys):
    log = logging.getLogger("medseg.test")
    try:
        log_to_console()
        log.debug("detail")
        log.info("epoch 1 done")
        log.warning("odd header")
        log.warning("case_1: volume unlike training", extra=FLAG)
        log.error("case_2 (CT): no slices", extra=REFUSED)
        log.error("case_3: cannot read")
        out, err = capsys.readouterr()
        assert out == "epoch 1 done\n"
        assert err.splitlines() == ["warning: odd header", "flag: case_1: volume unlike training",
                                    "refused: case_2 (CT): no slices", "error: case_3: cannot read"]
        log_to_console(quiet=True)  # replaces the previous setting: no stdout, stderr unchanged
        log.info("epoch 2 done")
        log.warning("still shown")
        out, err = capsys.readouterr()
        assert out == "" and err == "warning: still shown\n"
        log_to_console(verbose=True)
        log.debug("detail")
        assert capsys.readouterr().out == "detail\n"
    finally:
        log_to_console()
