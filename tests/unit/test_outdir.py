"""The /out rule both sandbox paths share (adapters/docker/_outdir.judge), on host folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2pmesh.adapters.docker._outdir import OUT_MAX_FILES, judge

CAP = 4096
PLAIN = "not allowed (outputs are plain files and folders)"


def test_plain_tree_exactly_at_the_cap_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "f").write_bytes(b"x" * (CAP - 10))
    (tmp_path / "g").write_bytes(b"y" * 10)
    assert judge(tmp_path, CAP).accepted  # folders cost nothing, only apparent file sizes


def test_one_byte_over_the_cap_is_too_large(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * (CAP + 1))
    assert (judge(tmp_path, CAP).status, judge(tmp_path, CAP).error) == (
        "out_too_large",
        f"/out exceeded {CAP} bytes",
    )


def test_sparse_file_counts_at_its_apparent_size(tmp_path: Path) -> None:
    with open(tmp_path / "s", "wb") as f:
        f.truncate(1 << 30)
    assert judge(tmp_path, CAP).status == "out_too_large"


def test_size_is_judged_before_refused_entries(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * (CAP + 1))
    os.symlink("/etc/passwd", tmp_path / "a")
    assert judge(tmp_path, CAP).status == "out_too_large"


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda p: os.symlink("/etc/passwd", p / "l"), f"/out/l: symbolic link {PLAIN}"),
        (lambda p: os.mkfifo(p / "q"), f"/out/q: FIFO {PLAIN}"),
        (lambda p: os.symlink("d", p / "dl"), f"/out/dl: symbolic link {PLAIN}"),
    ],
    ids=["symlink", "fifo", "link-to-folder"],
)
def test_entries_that_are_not_plain_are_named_with_their_type(
    tmp_path: Path, make: object, error: str
) -> None:
    (tmp_path / "d").mkdir()
    make(tmp_path)  # type: ignore[operator]
    verdict = judge(tmp_path, CAP)
    assert (verdict.status, verdict.error) == ("out_refused", error)


def test_hard_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "b").write_text("x")
    os.link(tmp_path / "b", tmp_path / "c")
    assert judge(tmp_path, CAP).error == f"/out/b: hard link {PLAIN}"


def test_the_first_refused_entry_in_byte_order_is_named(tmp_path: Path) -> None:
    # Created in the reverse order, and nested: the name does not depend on the listing order.
    for name in ("z", "m", "b"):
        os.symlink("x", tmp_path / name)
    (tmp_path / "a" / "b").mkdir(parents=True)
    os.mkfifo(tmp_path / "a" / "b" / "q")
    assert judge(tmp_path, CAP).error == f"/out/a/b/q: FIFO {PLAIN}"


def test_name_that_is_not_utf8_is_refused_and_shown_escaped(tmp_path: Path) -> None:
    (tmp_path / "ok").write_text("x")
    with open(os.fsencode(tmp_path) + b"/bad\xff", "wb"):
        pass
    assert judge(tmp_path, CAP).error == f"/out/bad\\xff: name that is not valid UTF-8 {PLAIN}"


def test_long_paths_are_cut_so_the_error_stays_within_200_characters(tmp_path: Path) -> None:
    os.symlink("x", tmp_path / ("n" * 250))
    error = judge(tmp_path, CAP).error
    assert error == f"/out/{'n' * 99}…: symbolic link {PLAIN}"
    assert len(error) <= 200


def test_more_than_the_most_entries_is_refused_and_the_most_is_kept(tmp_path: Path) -> None:
    for i in range(OUT_MAX_FILES):
        (tmp_path / str(i)).touch()
    assert judge(tmp_path, CAP).accepted
    (tmp_path / "one-more").touch()
    os.symlink("x", tmp_path / "0link")  # the count is judged first
    verdict = judge(tmp_path, CAP)
    assert (verdict.status, verdict.error) == (
        "out_refused",
        f"/out holds more than {OUT_MAX_FILES} entries",
    )
