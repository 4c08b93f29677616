"""What a new user hit, silently, in the example system: each now fails loudly or does the right
thing. (Bad arguments of every kind are rows of tests/test_fuzz.py; these are the behaviours.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from examples import corpus
from examples.config import apply_overrides, load_config, parse_args, preset
from examples.data import read_documents
from examples.evaluate import main as evaluate_main
from examples.tokenizer import load_tokenizer
from examples.train import configure_threads, train
from tests.helpers import make_corpus, tiny_config


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A two-step Duo run on the helpers' corpus (its alphabet: lower-case words and digits)."""
    root = tmp_path_factory.mktemp("teacher")
    out = root / "duo"
    train(tiny_config(make_corpus(root / "corpus"), out, **{"train.steps": 2,
                                                               "train.eval_every": 2}))
    return out


def _student_overrides(out: Path) -> dict:
    return {"train.out_dir": str(out), "train.batch_size": 4, "train.eval_sequences": 4,
            "train.progress": False, "train.tensorboard": False, "train.device": "cpu",
            "dcd.rounds": 1, "dcd.steps_per_round": 1, "dcd.T": 8}  # fmt: skip


def test_dcd_takes_its_teachers_data_unless_told_otherwise(teacher, tmp_path):
    base = ["--train.objective", "dcd", "--dcd.teacher", str(teacher),
            "--train.out_dir", str(tmp_path / "student")]  # fmt: skip
    cfg = parse_args(base)
    assert cfg.data == load_config(teacher).data  # not the preset's shakespeare / char
    assert cfg.data.source != preset("cpu-demo").data.source
    explicit = parse_args([*base, "--data.val_fraction", "0.3"])
    assert explicit.data.val_fraction == 0.3 and explicit.data.source == cfg.data.source


def test_dcd_trains_on_its_teachers_tokenizer(teacher, tmp_path):
    other = tmp_path / "other.txt"  # another alphabet: a char tokenizer built here would differ
    other.write_text("ZYXWVUTSRQ PONMLKJIHG FEDCBA!?\n" * 40)
    cfg = parse_args(["--train.objective", "dcd", "--dcd.teacher", str(teacher)])
    cfg = apply_overrides(cfg, {**_student_overrides(tmp_path / "student"),
                                "data.source": str(other), "data.seq_len": 16})  # fmt: skip
    train(cfg)
    assert load_tokenizer(tmp_path / "student").to_dict() == load_tokenizer(teacher).to_dict()


def test_dcd_refuses_another_tokenizer_than_its_teachers(teacher, tmp_path):
    cfg = parse_args(["--train.objective", "dcd", "--dcd.teacher", str(teacher),
                      "--data.tokenizer", "byte"])  # fmt: skip
    cfg = apply_overrides(cfg, _student_overrides(tmp_path / "student"))
    with pytest.raises(ValueError, match="--data.tokenizer byte.*tokenizer of the DCD teacher"):
        train(cfg)


@pytest.mark.parametrize("objective", ["ar", "mdlm"])
def test_dcd_refuses_a_teacher_that_is_not_uniform_state(teacher, tmp_path, objective, capsys):
    other = tmp_path / objective  # the teacher's config, relabelled
    other.mkdir()
    text = (teacher / "config.json").read_text()
    assert text.count('"objective": "duo"') == 1
    (other / "config.json").write_text(text.replace('"objective": "duo"',
                                                    f'"objective": "{objective}"'))
    with pytest.raises(SystemExit):
        parse_args(["--train.objective", "dcd", "--dcd.teacher", str(other)])
    err = capsys.readouterr().err
    assert f"--dcd.teacher {other} holds a run of objective '{objective}'" in err
    student = tiny_config(teacher.parent / "corpus", tmp_path / "s",
                          **{"train.objective": "dcd", "dcd.teacher": str(other)})  # fmt: skip
    with pytest.raises(ValueError, match="--dcd.teacher"):
        train(student)


def test_resume_into_an_empty_directory_is_an_error(tmp_path):
    cfg = tiny_config(tmp_path / "corpus", tmp_path / "typo", **{"train.resume": True})
    with pytest.raises(FileNotFoundError, match="typo.*holds no checkpoint"):
        train(cfg)
    assert not (tmp_path / "typo").exists()  # nothing was started there


def test_progress_without_a_terminal_is_plain_lines(tmp_path, capsys):
    cfg = tiny_config(make_corpus(tmp_path / "corpus"), tmp_path / "run", **{
        "train.progress": True, "train.progress_every": 2, "train.steps": 4,
        "train.eval_every": 4})  # fmt: skip
    train(cfg)
    err = capsys.readouterr().err  # not a terminal under capsys: no bar
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("step ")]
    assert [line.split(":")[0].split(" (")[0] for line in lines] == [
        "step 2/4", "step 4/4", "step 4"
    ]  # fmt: skip
    assert "validation NELBO" in lines[-1]


def test_progress_false_is_silent(tmp_path, capsys):
    train(tiny_config(make_corpus(tmp_path / "corpus"), tmp_path / "run"))
    assert capsys.readouterr().err == ""


def test_threads_are_kept_to_the_available_cores(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    try:
        torch.set_num_threads(3)
        advice = configure_threads()
        assert torch.get_num_threads() == 1  # 2 cores shared by 2 processes
        assert advice is not None and "OMP_NUM_THREADS" in advice and "\n" not in advice
        assert configure_threads() is None  # nothing more to say
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        torch.set_num_threads(3)
        assert configure_threads() is None and torch.get_num_threads() == 3  # the user's choice
    finally:
        torch.set_num_threads(before)


def _unboxed(text: str) -> str:
    """tyro's help without its boxes' sides, on one line."""
    return " ".join(text.replace("\u2502", " ").split())


def test_help_describes_every_flag_with_its_real_default(capsys, monkeypatch):
    from dataclasses import fields, is_dataclass

    from examples.config import Config

    monkeypatch.setenv("COLUMNS", "80")  # one column of flags
    with pytest.raises(SystemExit):
        parse_args(["--help"], prog="python -m examples.train")
    out = capsys.readouterr().out
    words = [line.split() for line in out.replace("\u2502", " ").splitlines()]
    flags = {w[0] for w in words if w and w[0].startswith("--")}
    for section in fields(Config):
        if is_dataclass(section.default_factory):
            assert {f"--{section.name}.{f.name}" for f in fields(section.default_factory)} <= flags
    assert "(default: None)" not in out  # optional fields read "none", as they are typed
    text = _unboxed(out)
    assert "Optimizer steps" in text and "(default: 600)" in text  # the cpu-demo preset's
    assert "Continue the run in out_dir from its checkpoint" in text  # the field's docstring
    with pytest.raises(SystemExit):
        parse_args(["--preset", "owt", "--help"])
    assert "(default: 1000000)" in _unboxed(capsys.readouterr().out)


def test_abbreviated_flags_are_not_guessed(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--train.lr_sched", "cosine"])
    assert "--train.lr_sched" in capsys.readouterr().err


def test_evaluate_no_val_reads_no_corpus(teacher, tmp_path, monkeypatch):
    assert load_config(teacher).data.zero_shot == "milton"  # a built-in corpus, never fetched

    def refuse(*args, **kwargs):
        raise AssertionError("evaluate --no-val fetched a corpus")

    monkeypatch.setattr(corpus, "fetch_sdist", refuse)
    res = evaluate_main([str(teacher), "--no-val", "--out", str(tmp_path / "eval.json")])
    assert "validation" not in res and "zero_shot" not in res


def test_evaluate_num_samples_zero_is_an_error(teacher, capsys):
    with pytest.raises(SystemExit):
        evaluate_main([str(teacher), "--no-val", "--gen-ppl", "--num-samples", "0"])
    assert "--num-samples" in capsys.readouterr().err


def test_text_is_read_as_before_and_non_text_is_refused(tmp_path):
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"line one\r\nline two\rline three\n")
    assert read_documents(str(crlf))[0].text == crlf.read_text(encoding="utf-8")
    lines = tmp_path / "docs.jsonl"
    lines.write_bytes(b'{"text": "a"}\r\n\r\n{"text": "b"}\n')
    assert [d.name for d in read_documents(str(lines))] == ["docs.jsonl:0", "docs.jsonl:2"]
    binary = tmp_path / "model.safetensors"
    binary.write_bytes(b"\x00\x01" * 100)
    with pytest.raises(ValueError, match="model.safetensors is not a text file"):
        read_documents(str(binary))


def _make_rules(text: str) -> dict[str, tuple[str, list[str]]]:
    """The Makefile's rules: target -> (prerequisites, recipe lines)."""
    rules: dict[str, tuple[str, list[str]]] = {}
    target = None
    for line in text.splitlines():
        if line.startswith("\t") and target is not None:
            rules[target][1].append(line.strip())
        elif ":" in line and not line.startswith(("#", " ")) and ":=" not in line \
                and "?=" not in line:  # fmt: skip
            target, _, prereqs = line.partition(":")
            rules[target.strip()] = (prereqs.strip(), [])
        else:
            target = None if not line.strip() else target
    return rules


def test_make_docs_installs_the_docs_extra_only():
    """`make docs` builds its own virtualenv with `.[docs]`, not the full `[dev]` environment
    (lm-eval, triton, ...) that `make test` needs; `make test` keeps the dev one."""
    root = Path(__file__).resolve().parent.parent
    rules = _make_rules((root / "Makefile").read_text())
    stamp, docs = rules["docs"]
    assert stamp == "$(DOCS_STAMP)" and any("docs/build.py" in c for c in docs)
    assert all(c.startswith("$(DOCS_VENV)/bin/python") for c in docs)
    installs = [c for c in rules["$(DOCS_STAMP)"][1] if "pip install" in c and " -e " in c]
    assert installs == ["$(DOCS_VENV)/bin/python -m pip install -q -e '.[docs]'"]
    assert not any("[dev]" in c for c in rules["$(DOCS_STAMP)"][1])
    assert rules["test"][0] == "$(STAMP)"
    assert any("'.[dev]'" in c for c in rules["$(STAMP)"][1])
