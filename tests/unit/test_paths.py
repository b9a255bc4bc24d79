"""digits.paths.confine: user paths stay inside DIGITS_DATA_ROOTS."""

from __future__ import annotations

import os

import pytest

from digits.paths import PathNotAllowed, confine, is_within


@pytest.fixture
def root(tmp_path):
    data = tmp_path / "data"
    (data / "cats").mkdir(parents=True)
    (data / "cats" / "a.png").write_bytes(b"x")
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "key.txt").write_text("s3cr3t")
    return data


def test_path_inside_a_root_is_resolved(root):
    got = confine(str(root / "cats" / "a.png"), [str(root)])
    assert got == (root / "cats" / "a.png").resolve()
    assert confine(str(root), [str(root)]) == root.resolve()
    assert confine(str(root / "cats" / "not-yet"), [str(root)]).name == "not-yet"


def test_path_outside_the_roots_is_refused(root, tmp_path):
    target = str(tmp_path / "secret" / "key.txt")
    with pytest.raises(PathNotAllowed, match="outside the data roots") as info:
        confine(target, [str(root)])
    assert target in str(info.value) and str(root.resolve()) in str(info.value)


def test_dotdot_tricks_are_refused(root):
    sneaky = os.path.join(str(root), "cats", "..", "..", "secret", "key.txt")
    with pytest.raises(PathNotAllowed, match="secret"):
        confine(sneaky, [str(root)])


def test_prefix_sibling_is_not_inside(root, tmp_path):
    sibling = tmp_path / "data2"
    sibling.mkdir()
    with pytest.raises(PathNotAllowed):
        confine(str(sibling / "x.png"), [str(root)])


def test_symlink_pointing_out_is_refused(root, tmp_path):
    (root / "link.txt").symlink_to(tmp_path / "secret" / "key.txt")
    (root / "linkdir").symlink_to(tmp_path / "secret")
    with pytest.raises(PathNotAllowed, match="key.txt"):
        confine(str(root / "link.txt"), [str(root)])
    with pytest.raises(PathNotAllowed):
        confine(str(root / "linkdir" / "key.txt"), [str(root)])


def test_symlink_staying_inside_is_allowed(root):
    (root / "alias.png").symlink_to(root / "cats" / "a.png")
    assert confine(str(root / "alias.png"), [str(root)]) == (root / "cats" / "a.png").resolve()


def test_symlinked_root_accepts_its_target(root, tmp_path):
    link = tmp_path / "rootlink"
    link.symlink_to(root)
    assert confine(str(root / "cats" / "a.png"), [str(link)]).name == "a.png"


def test_any_of_several_roots(root, tmp_path):
    roots = [str(tmp_path / "elsewhere"), str(root)]
    assert confine(str(root / "cats"), roots) == (root / "cats").resolve()


def test_no_roots_configured(root):
    with pytest.raises(PathNotAllowed, match="DIGITS_DATA_ROOTS is not set"):
        confine(str(root / "cats"), [])
    with pytest.raises(PathNotAllowed, match="DIGITS_DATA_ROOTS is not set"):
        confine(str(root / "cats"), ["", "  "])


@pytest.mark.parametrize("bad", ["", "cats/a.png", "./cats", "a\x00b"])
def test_empty_relative_and_nul_paths_are_refused(root, bad):
    with pytest.raises(PathNotAllowed):
        confine(bad, [str(root)])


def test_is_within(root, tmp_path):
    assert is_within(root / "cats", [str(root)])
    assert not is_within(tmp_path / "secret", [str(root)])
