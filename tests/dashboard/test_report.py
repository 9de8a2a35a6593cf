"""The self-contained run report: every section, nothing external, the CLI's bad inputs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.synthetic import build_synthetic_store
from xaidash.api import write_report
from xaidash.cli import main
from xaidash.dashboard.report.build import SECTIONS, build_report
from xaidash.errors import UserError
from xaidash.store import open_store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report-store")
    build_synthetic_store(path, n_val=150, n_train=60, runs=1, seed=5, emb_dim=16, trust=True)
    return path


@pytest.fixture(scope="module")
def old_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run from before the calibration tables, without trust tables either."""
    path = tmp_path_factory.mktemp("report-old")
    build_synthetic_store(path, n_val=40, n_train=20, runs=1, seed=6, emb_dim=8, ranking=False)
    return path


def test_report_holds_every_section(store: Path) -> None:
    with open_store(store) as reader:
        rep = build_report(reader, "latest", top_errors=7)
    doc = rep.html
    for sid in SECTIONS:
        assert f'<section id="section-{sid}">' in doc, sid
    for needle in (
        "Confusion matrix",
        "Per-class metrics",
        "ECE",
        "MCE",
        "Top-3 accuracy",
        "Macro ROC AUC",
        "Average Drop",
        "Sanity check",
        "ROAD",
        "Likely mislabelled",
        "Precision",
        "Device",
    ):
        assert needle in doc, needle
    assert rep.errors_shown == 7 and doc.count('class="xd-error"') == 7
    errors = doc[doc.index('<section id="section-errors">') :]
    assert errors.count("data:image/jpeg;base64,") == 7 * 4  # four maps each
    assert "Twins" in errors
    # one plotly.js, every figure drawn by it; nothing refers outside the file
    assert doc.count("Plotly.newPlot") >= 7
    head, body = doc.split("</head>", 1)
    assert head.count("<script>") == 1  # the inline plotly.js (its own link texts are not requests)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", body)
    assert "@import" not in head and not re.search(r"url\(\s*['\"]?https?:", head)


def test_old_run_renders_without_new_sections(old_store: Path) -> None:
    with open_store(old_store) as reader:
        doc = build_report(reader, None, top_errors=3).html
    assert "No calibration or ranking scores" in doc and "No trust checks" in doc
    assert all(f'<section id="section-{s}">' in doc for s in SECTIONS)


def test_cli_writes_the_file(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    assert main(["report", "latest", "--store", str(store), "--out", str(out), "--errors", "2"]) == 0
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and out.stat().st_mode & 0o044  # readable like any file


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope-run"], "no run 'nope-run'"),
        (["latest", "--errors", "-1"], "between 0 and"),
    ],
)
def test_bad_run_or_option_is_one_line(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    rc = main(["report", args[0], "--store", str(store), "--out", str(tmp_path / "r.html"), *args[1:]])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and message in err and len(err.splitlines()) == 1


def test_unwritable_out_and_missing_chromium(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UserError, match="does not exist"):
        write_report(store, "latest", tmp_path / "missing" / "r.html")
    with pytest.raises(UserError, match="is a directory"):
        write_report(store, "latest", tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        import os

        if os.access(ro, os.W_OK):  # root ignores the mode bits
            pytest.skip("running as root: a read-only folder is writable")
        with pytest.raises(UserError, match="not writable"):
            write_report(store, "latest", ro / "r.html")
    finally:
        ro.chmod(0o700)
    monkeypatch.setenv("XAIDASH_CHROMIUM", str(tmp_path / "no-chromium"))
    with pytest.raises(UserError, match="--pdf needs Chromium"):
        write_report(store, "latest", tmp_path / "r.html", pdf=True, top_errors=1)


def test_paths_by_name_unless_asked(store: Path) -> None:
    from dataclasses import replace

    from xaidash.dashboard.report.build import run_header
    from xaidash.dashboard.report.static_html import Renderer

    with open_store(store) as reader:
        info = replace(
            reader.run(str(reader.latest_run_id())),
            checkpoint_path="/secret/dir/model.pt",  # type: ignore[type-var]
            checkpoint_sha256="ab" * 32,
            dataset_spec="imagefolder:/secret/data/pets",
        )
    hidden = Renderer().render(run_header(info))
    assert (
        "/secret" not in hidden
        and "model.pt (sha256 abababababab)" in hidden
        and "imagefolder:pets" in hidden
    )
    shown = Renderer().render(run_header(info, show_paths=True))
    assert "/secret/dir/model.pt" in shown and "imagefolder:/secret/data/pets" in shown
