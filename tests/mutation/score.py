"""Per-module mutation score from the results `mutmut run` leaves in ./mutants.

Run after `mutmut run` (``make mutation`` does both). A mutant counts as killed when a test
failed or timed out on it; "no tests" means no selected test reaches the mutated function.
Surviving mutants listed in EQUIVALENT cannot change what the code does (the reason is given
beside each); the score is also shown without them.

    python tests/mutation/score.py [--survivors]
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULES = ["selection", "diagnose", "rundir", "config"]
KILLED = {1, 3, 36, 24, -24, 152, 255}
STATUS = {0: "survived", None: "not checked", 5: "no tests", 33: "no tests", 34: "skipped",
          37: "type check"}

#: mutmut leaves decorated functions alone, so config.py's pydantic validators are never
#: mutated; these are the functions of config.py they call, reported on their own line
VALIDATOR_HELPERS = ("x__check_name_", "x__arg_text_", "x__param_text_", "x__plain_path_",
                     "x__one_shell_line_", "x_fill_args_", "xǁExperimentConfigǁ_check_run_",
                     "xǁExperimentConfigǁstage_run_", "xǁExperimentConfigǁstage_")

#: survivors that behave exactly like the original, by mutant name (without "hpcrun.")
EQUIVALENT: dict[str, str] = {
    "selection.x__from_config__mutmut_3":
        "the source names the file in error messages, which are dropped",
    "selection.x__from_config__mutmut_5":
        "the source names the file in error messages, which are dropped",
    "selection.x__key__mutmut_22":
        "the flag is inverted for every run alike: keys stay as distinct",
    "selection.x_read_config__mutmut_2":
        "the locale's encoding, UTF-8 where the tests run",
    "selection.x_read_config__mutmut_4":
        "another spelling of the same codec",
    "selection.x_read_config__mutmut_6":
        "the source names the file in error messages, which are dropped",
    "selection.x_read_config__mutmut_9":
        "the source names the file in error messages, which are dropped",
    "selection.x_read_selections__mutmut_7":
        "the text is the key only for unreadable YAML, which selects nothing either way",
    "selection.xǁBestRowǁ__init____mutmut_2":
        "the first update resets the state either way",
    "selection.xǁBestRowǁ__init____mutmut_4":
        "the first update resets the state either way",
    "selection.xǁBestRowǁupdate__mutmut_8":
        "rows already seen never beat the best again",
    "selection.xǁBestRowǁupdate__mutmut_14":
        "the value is NaN until a row is best, which improves() reads as none",
    "selection.xǁSelectionǁbest__mutmut_15":
        "best is NaN until an epoch is best, which improves() reads as none",
    "rundir.x_filter_rows__mutmut_10":
        "both branches drop the last element",
    "rundir.x_filter_rows__mutmut_11":
        "both branches drop the last element",
    "rundir.x_filter_rows__mutmut_12":
        "both branches drop the last element",
    "rundir.x_filter_rows__mutmut_13":
        "both branches drop the last element",
    "rundir.x_filter_rows__mutmut_14":
        "both branches drop the last element",
    "rundir.x_filter_rows__mutmut_24":
        "csv.reader yields a row for every line, so the default is never used",
    "rundir.x_filter_rows__mutmut_26":
        "csv.reader yields a row for every line, so the default is never used",
    "rundir.x__complete_rows__mutmut_6":
        "cutting an empty text leaves it empty",
    "rundir.x__complete_rows__mutmut_9":
        "cutting at the last newline leaves a text that ends in one unchanged",
    "rundir.x__umask__mutmut_3":
        "the umask set for the moment is put back",
    "rundir.x_sha256_file__mutmut_8":
        "the block size does not change the digest",
    "rundir.x_sha256_file__mutmut_10":
        "the block size does not change the digest",
    "rundir.x_sha256_file__mutmut_11":
        "the block size does not change the digest",
    "rundir.x_read_rows__mutmut_9":
        "strict=None is falsy like False",
    "rundir.x_read_rows__mutmut_12":
        "zip's default is strict=False",
    "rundir.x_read_rows__mutmut_13":
        "padding a full row adds nothing zip keeps",
    "rundir.x_read_rows__mutmut_15":
        "padding a full row adds nothing zip keeps",
    "rundir.xǁTableǁ__init____mutmut_8":
        "padding a full row adds nothing",
    "rundir.xǁTableǁ__init____mutmut_10":
        "padding a full row adds nothing",
    "rundir.xǁTableǁ__init____mutmut_15":
        "strict=None is falsy like False",
    "rundir.xǁTableǁ__init____mutmut_18":
        "zip's default is strict=False",
    "rundir.xǁTableǁ__init____mutmut_19":
        "strict=None is falsy like False",
    "rundir.xǁTableǁ__init____mutmut_21":
        "zip's default is strict=False",
    "rundir.xǁTableǁrows__mutmut_4":
        "the columns always have equal lengths",
    "rundir.xǁTableǁrows__mutmut_7":
        "the columns always have equal lengths",
    "rundir.xǁTableǁrows__mutmut_8":
        "the columns always have equal lengths",
    "rundir.xǁTableǁrows__mutmut_9":
        "the columns always have equal lengths",
    "rundir.xǁTableǁrows__mutmut_11":
        "the columns always have equal lengths",
    "rundir.xǁTableǁrows__mutmut_13":
        "the columns always have equal lengths",
    "rundir.x_write_json__mutmut_4":
        "sort_keys=None is falsy like False",
    "rundir.x_write_json__mutmut_6":
        "allow_nan=None is falsy like False",
    "rundir.x_write_json__mutmut_9":
        "json.dumps's default is sort_keys=False",
    "rundir.xǁCsvTailǁindex__mutmut_1":
        "a fresh index is the same index, built again from the first row",
    "rundir.xǁCsvTailǁindex__mutmut_2":
        "a fresh index is the same index, built again from the first row",
}


def status(code: int | None) -> str:
    if code in KILLED:
        return "killed"
    return STATUS.get(code, "suspicious")


def line(label: str, codes: dict[str, int | None], show: bool) -> None:
    counts = Counter(status(code) for code in codes.values())
    total = sum(counts.values())
    killed = counts.pop("killed", 0)
    equivalent = sum(1 for name, code in codes.items()
                     if status(code) != "killed" and name.removeprefix("hpcrun.") in EQUIVALENT)
    share = f"{100 * killed / total:.1f} %" if total else "-"
    rest = ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
    adjusted = f"{100 * killed / (total - equivalent):.1f} %" if total > equivalent else "-"
    print(f"{label:<24} {killed:>7} {total:>6} {share:>7}  {equivalent:>5} {adjusted:>8}  {rest}")
    if show:
        for name, code in sorted(codes.items()):
            if status(code) != "killed":
                why = EQUIVALENT.get(name.removeprefix("hpcrun."), "")
                print(f"    {status(code):<12} {name}  {why}")


def main(argv: list[str]) -> int:
    show = "--survivors" in argv
    print(f"{'module':<24} {'killed':>7} {'total':>6} {'score':>7}  {'equiv':>5} "
          f"{'w/o equiv':>8}  not killed")
    for module in MODULES:
        meta = ROOT / "mutants" / "src" / "hpcrun" / f"{module}.py.meta"
        if not meta.exists():
            print(f"{module:<24} (not measured)")
            continue
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if all(code is None for code in codes.values()):
            print(f"{module:<24} (not measured)")
            continue
        line(module, codes, show)
        if module == "config":
            helpers = {name: code for name, code in codes.items()
                       if name.removeprefix("hpcrun.config.").startswith(VALIDATOR_HELPERS)}
            line("  validators' helpers", helpers, show)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
