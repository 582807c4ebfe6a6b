from pathlib import Path

import pytest

from components.data.ucf101 import (
    fold_test_groups, format_class_index, format_testlist, format_trainlist, parse_class_index, parse_split,
)
from conftest import SHARED

OFFICIAL = SHARED / "ucf101" / "ucfTrainTestlist"


@pytest.mark.skipif(not OFFICIAL.is_dir(), reason="../shared/ucf101 is not beside the repository")
@pytest.mark.parametrize("split,n_train,n_test", [(1, 9537, 3783), (2, 9586, 3734), (3, 9624, 3696)])
def test_official_lists_parse_completely(split, n_train, n_test):
    classes, problems = parse_class_index(OFFICIAL / "classInd.txt")
    assert len(classes) == 101 and classes["ApplyEyeMakeup"] == 1 and classes["YoYo"] == 101
    entries, problems = parse_split(OFFICIAL, split)
    assert problems == []
    assert sum(e.split == "train" for e in entries) == n_train
    assert sum(e.split == "test" for e in entries) == n_test
    assert len({e.video_id for e in entries}) == 13320
    groups = {int(e.video_id.split("_g")[1][:2]) for e in entries if e.split == "test"}
    assert groups == set(fold_test_groups(split))
    first = entries[0]
    assert first.class_name == "ApplyEyeMakeup" and first.label == 0 and first.split == "train"
    # The official quirk: folder HandstandPushups, files v_HandStandPushups_*; labels come from the folder.
    hs = [e for e in entries if e.class_name == "HandstandPushups"]
    assert hs and all(e.video_id.startswith("v_HandStandPushups_") and e.label == classes["HandstandPushups"] - 1
                      for e in hs)


def _write(d: Path, classind: str, train: str, test: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "classInd.txt").write_text(classind)
    (d / "trainlist01.txt").write_text(train)
    (d / "testlist01.txt").write_text(test)
    return d


def test_bad_lines_are_reported_not_fatal(tmp_path: Path):
    d = _write(tmp_path / "s", "1 Alpha\r\n2 Beta\r\nnot a line at all\r\n3\r\n",
               "Alpha/v_Alpha_g08_c01.avi 1\n"
               "Alpha/v_Alpha_g08_c01.avi 1\n"            # duplicate path
               "Beta/v_Beta_g08_c01.avi 1\n"              # index disagrees with classInd
               "../outside/v_x_g08_c01.avi 1\n"           # escapes the root
               "/etc/passwd 1\n"                          # absolute
               "Gamma/v_Gamma_g08_c01.avi 3\n"            # unknown class
               "Alpha/v_Alpha_g09_c01.avi one\n"          # index does not parse
               "v_NoFolder_g08_c01.avi\n"                 # no class folder
               "\n",
               "Beta/v_Beta_g01_c01.avi\nAlpha/sub/../v_Alpha_g08_c01.avi\n")
    entries, problems = parse_split(d, 1)
    assert [e.rel_path for e in entries] == ["Alpha/v_Alpha_g08_c01.avi", "Beta/v_Beta_g01_c01.avi"]
    reasons = " | ".join(f"{p.path}: {p.reason}" for p in problems)
    for fragment in ["classInd.txt:3: cannot parse class line", "classInd.txt:4: cannot parse class line",
                     "duplicate: already listed at trainlist01.txt:1",
                     "class index 1 disagrees with classInd.txt (Beta = 2)",
                     "../outside/v_x_g08_c01.avi: path escapes the dataset root",
                     "/etc/passwd: path escapes the dataset root",
                     "class folder 'Gamma' is not in classInd.txt",
                     "trainlist01.txt:7: cannot parse split line",
                     "path has no class folder",
                     "Alpha/v_Alpha_g08_c01.avi: duplicate: already listed at trainlist01.txt:1 (again at testlist01.txt:2)"]:
        assert fragment in reasons, fragment
    assert len(problems) == 10


def test_missing_split_file_raises(tmp_path: Path):
    d = tmp_path / "s"
    d.mkdir()
    (d / "classInd.txt").write_text("1 A\n")
    with pytest.raises(FileNotFoundError):
        parse_split(d, 1)


def test_writers_match_official_format_and_parse_back(tmp_path: Path):
    classes = ["Alpha", "Beta"]
    train = [("Alpha/v_Alpha_g08_c01.avi", 1), ("Beta/v_Beta_g09_c02.avi", 2)]
    test = ["Alpha/v_Alpha_g01_c01.avi"]
    assert format_class_index(classes) == "1 Alpha\r\n2 Beta\r\n"
    assert format_trainlist(train) == "Alpha/v_Alpha_g08_c01.avi 1\r\nBeta/v_Beta_g09_c02.avi 2\r\n"
    assert format_testlist(test) == "Alpha/v_Alpha_g01_c01.avi\r\n"
    d = _write(tmp_path / "s", format_class_index(classes), format_trainlist(train), format_testlist(test))
    entries, problems = parse_split(d, 1)
    assert problems == []
    assert [(e.rel_path, e.label, e.split) for e in entries] == [
        ("Alpha/v_Alpha_g08_c01.avi", 0, "train"), ("Beta/v_Beta_g09_c02.avi", 1, "train"),
        ("Alpha/v_Alpha_g01_c01.avi", 0, "test")]


def test_fold_test_groups():
    assert list(fold_test_groups(1)) == [1, 2, 3, 4, 5, 6, 7]
    assert list(fold_test_groups(3)) == list(range(15, 22))
