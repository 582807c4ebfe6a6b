"""UCF-101 split lists: parsing (tolerant, with a reason for every rejected line) and writing.

Official formats (CRLF line endings in the release; both endings are accepted):
  classInd.txt      "1 ApplyEyeMakeup"                                  (1-based index)
  trainlistNN.txt   "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"     (1-based class index)
  testlistNN.txt    "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"       (no index)
Labels in this project are 0-based (classInd index - 1).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

CLASS_INDEX_FILE = "classInd.txt"
TEST_GROUPS_PER_FOLD = 7  # fold k tests on groups 7(k-1)+1 .. 7k


@dataclass(frozen=True)
class SplitEntry:
    rel_path: str        # POSIX path relative to the raw root, as listed
    video_id: str        # file stem, e.g. v_ApplyEyeMakeup_g08_c01
    class_name: str
    label: int           # 0-based
    split: str           # "train" or "test"
    listed_in: str       # "trainlist01.txt:12"


@dataclass(frozen=True)
class Problem:
    path: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


def split_file_names(split: int) -> dict[str, str]:
    return {"train": f"trainlist{split:02d}.txt", "test": f"testlist{split:02d}.txt"}


def _lines(path: Path) -> list[str]:
    # utf-8-sig: tolerate a BOM; splitlines handles CRLF and LF.
    return path.read_bytes().decode("utf-8-sig", errors="replace").splitlines()


def parse_class_index(path: str | Path) -> tuple[dict[str, int], list[Problem]]:
    """classInd.txt -> {class_name: 1-based index}, plus a Problem per line that does not parse."""
    path = Path(path)
    classes: dict[str, int] = {}
    used: dict[int, str] = {}
    problems: list[Problem] = []
    for no, line in enumerate(_lines(path), start=1):
        text = line.strip()
        if not text:
            continue
        where = f"{path.name}:{no}"
        parts = text.split()
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) < 1:
            problems.append(Problem(where, f"cannot parse class line {text!r}; expected '<index> <ClassName>'"))
            continue
        idx, name = int(parts[0]), parts[1]
        if name in classes or idx in used:
            problems.append(Problem(where, f"duplicate class entry {text!r}"))
            continue
        classes[name] = idx
        used[idx] = name
    return classes, problems


def _safe_relative(rel: str) -> str | None:
    """Normalised POSIX relative path, or None if it is absolute or escapes the root."""
    rel = rel.replace("\\", "/")
    if rel.startswith("/") or PurePosixPath(rel).is_absolute():
        return None
    norm = posixpath.normpath(rel)
    if norm == "." or norm.startswith("../") or norm == "..":
        return None
    return norm


def parse_split(splits_dir: str | Path, split: int) -> tuple[list[SplitEntry], list[Problem]]:
    """Entries of fold `split` (train then test) and the problems met while reading them.

    Raises FileNotFoundError when classInd.txt or a split file is absent (that is not a per-file
    problem: the whole fold is unusable).
    """
    splits_dir = Path(splits_dir)
    classes, problems = parse_class_index(splits_dir / CLASS_INDEX_FILE)
    entries: list[SplitEntry] = []
    seen_paths: dict[str, str] = {}
    seen_ids: dict[str, str] = {}
    for split_name, file_name in split_file_names(split).items():
        for no, line in enumerate(_lines(splits_dir / file_name), start=1):
            text = line.strip()
            if not text:
                continue
            where = f"{file_name}:{no}"
            parts = text.split()
            if len(parts) not in (1, 2) or (len(parts) == 2 and not parts[1].lstrip("-").isdigit()):
                problems.append(Problem(where, f"cannot parse split line {text!r}; expected '<Class>/<file> [index]'"))
                continue
            rel = _safe_relative(parts[0])
            if rel is None:
                problems.append(Problem(parts[0], f"path escapes the dataset root (listed at {where})"))
                continue
            if "/" not in rel:
                problems.append(Problem(rel, f"path has no class folder (listed at {where})"))
                continue
            class_name = rel.split("/", 1)[0]
            if class_name not in classes:
                problems.append(Problem(rel, f"class folder {class_name!r} is not in {CLASS_INDEX_FILE} (listed at {where})"))
                continue
            if len(parts) == 2 and int(parts[1]) != classes[class_name]:
                problems.append(Problem(rel, f"class index {parts[1]} disagrees with {CLASS_INDEX_FILE} "
                                             f"({class_name} = {classes[class_name]}) (listed at {where})"))
                continue
            if rel in seen_paths:
                problems.append(Problem(rel, f"duplicate: already listed at {seen_paths[rel]} (again at {where})"))
                continue
            video_id = PurePosixPath(rel).stem
            if video_id in seen_ids:
                problems.append(Problem(rel, f"duplicate video id {video_id!r}: already listed at {seen_ids[video_id]} "
                                             f"(again at {where})"))
                continue
            seen_paths[rel] = where
            seen_ids[video_id] = where
            entries.append(SplitEntry(rel, video_id, class_name, classes[class_name] - 1, split_name, where))
    return entries, problems


def fold_test_groups(split: int) -> range:
    """Groups held out for testing in fold `split` (1: g01-g07, 2: g08-g14, 3: g15-g21)."""
    start = TEST_GROUPS_PER_FOLD * (split - 1) + 1
    return range(start, start + TEST_GROUPS_PER_FOLD)


def format_class_index(class_names: list[str]) -> str:
    return "".join(f"{i} {name}\r\n" for i, name in enumerate(class_names, start=1))


def format_trainlist(items: list[tuple[str, int]]) -> str:
    """items: (rel_path, 1-based class index)."""
    return "".join(f"{rel} {idx}\r\n" for rel, idx in items)


def format_testlist(rel_paths: list[str]) -> str:
    return "".join(f"{rel}\r\n" for rel in rel_paths)
