"""Issue 25's probe (eval/probe_faults.py): its classification, and a handful of its cheapest cases
run through the same functions. The whole probe (every case, a few minutes on one core) is
``python -m compressmamba.eval.probe_faults --out DIR``; docs/robustness.md holds its last table."""

import pytest
from compressmamba.eval import probe_faults as pf

# refused before any data is read or model built: a few seconds each
CHEAP = [
    "expand_abc",
    "section_scalar",
    "yaml_syntax_error",
    "train_bad_seeds",
    "study_bad_seeds",
    "convert_missing_folder",
]


def test_the_probe_holds_the_issues_cases_and_more():
    names = [c.name for c in pf.CASES]
    assert len(names) == len(set(names)) >= 43
    assert {c.expect for c in pf.CASES} <= {"refused", "succeeds", "either"}
    issue = {  # issue 25's defects and weak spots, each a case
        "rerun_finished_no_resume",
        "overwrite_finished",
        "ckpt_overwritten_same_size",
        "ckpt_truncated",
        "model_pickle_payload_bin",
        "tokens_overwritten_in_vocab",
        "tokens_overwritten_out_of_vocab",
        "expand_abc",
        "expand_zero",
        "section_scalar",
        "yaml_syntax_error",
        "fp16_cpu",
        "binary_corpus",
        "lr_divergent",
        "sigkill_then_resume",
    }
    assert issue <= set(names) and set(CHEAP) <= {c.name for c in pf.CASES if c.cheap}


def _case(expect="refused", needles=("model.expand",)):
    return pf.Case("c", expect, "what", lambda pr, d: None, needles)


@pytest.mark.parametrize(
    "expect,rc,stderr,outcome,why",
    [
        ("refused", 2, "compressmamba train: error: model.expand = 'abc': expected ...", "OK", ""),
        ("refused", 0, "", "BAD", "accepted in silence"),
        ("refused", 1, "Traceback (most recent call last):\n  ...\nValueError: model.expand", "BAD", "traceback"),
        ("refused", 2, "compressmamba train: error: invalid literal for int()", "BAD", "does not name"),
        ("succeeds", 2, "compressmamba train: error: x", "BAD", "expected success"),
        ("succeeds", None, "", "BAD", "timed out"),
        ("either", 0, "", "OK", ""),
    ],
)
def test_classify(expect, rc, stderr, outcome, why):
    got, said = pf.classify(_case(expect), pf.Outcome(rc, "", stderr), None)
    assert got == outcome and why in said


def test_a_needle_in_the_case_folder_path_does_not_count(tmp_path):
    """The case folder is named after the case (out_dir_is_file): the message must name the key itself."""
    d = tmp_path / "cases" / "model.expand_case"
    msg = f"compressmamba train: error: [Errno 17] File exists: '{d}/a_file'"
    assert pf.classify(_case(), pf.Outcome(2, "", msg), None, d)[0] == "BAD"
    assert pf.classify(_case(), pf.Outcome(2, "", msg), None)[0] == "OK"  # without the folder: fooled


def test_an_extra_check_makes_a_success_bad():
    assert pf.classify(_case("succeeds"), pf.Outcome(0, "", ""), "the finished run changed") == (
        "BAD",
        "the finished run changed",
    )


@pytest.mark.slow
def test_the_cheapest_cases_are_ok(tmp_path):
    pr = pf.Probe(tmp_path)
    by_name = {c.name: c for c in pf.CASES}
    results = [pf.run_case(pr, by_name[n]) for n in CHEAP]
    assert all(r.outcome == "OK" for r in results), pf.table(results)
