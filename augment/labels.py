"""Label sets: the classes to learn tokens for, read from a plain text file and matched to a guide.

File format (manifests/*.txt), one class per line, UTF-8 (a BOM is accepted):

    # a comment                 lines starting with '#' are ignored, as are blank lines
    Black footed Albatross      a class name ...
    0<TAB>Black footed Albatross   ... or an explicit guide index, a TAB, then the name
    Laysan Albatross  # note    whitespace followed by '#' starts a trailing comment

Rules, chosen so that a mistake fails loudly before any GPU time is spent:
- Either every class line has an index or none has; mixing the two is an error, so a half-indexed file
  can never be matched half by index and half by name.
- Only a TAB separates an index from the name: CUB's "1 001.Black_footed_Albatross" is a name (its 1-based
  number is not mistaken for a 0-based index); that "1 001." numbering is ignored when matching.
- Names are stripped; \\n, \\r\\n and \\r line endings are all accepted. Control and invisible characters,
  a '..' path component and a leading '/' or '\\' are refused. Duplicate names (compared with
  `normalise_name`) and duplicate indices are refused.
- The order of lines is the class order (`position`, the `cls` written into shards).
Every problem is reported as a one-line `UserError` naming the file and line.
"""

from __future__ import annotations

import difflib
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from augment.errors import UserError

_NUMBERING = re.compile(r"^\s*(\d+\s+)?\d+\.(?=\D)")  # "001." / "1 001." (classes.txt line) before a name
_SEPARATORS = re.compile(r"[\s_\-]+")
_COMMENT = re.compile(r"\s#")
_BAD_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}  # control, invisible, separators, unassigned
_SLUG_NAME_MAX = 48


@dataclass(frozen=True)
class LabelClass:
    """One class of a label set."""

    position: int  # 0-based order in the label set; the `cls` written into shards
    name: str  # readable class name as written (stripped)
    index: int | None  # explicit guide index from "index<TAB>name", else None
    slug: str  # filesystem-safe, unique within the set, e.g. "017-black-footed-albatross"
    line: int = field(default=0, compare=False)  # 1-based line in the file, for error messages


@dataclass(frozen=True)
class LabelSet:
    """An ordered, validated list of classes read from one file."""

    path: str
    name: str  # file stem, slugified, e.g. "cub200"; used in token names
    classes: tuple[LabelClass, ...]

    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def __len__(self) -> int:
        return len(self.classes)

    def token(self, cls: LabelClass) -> str:
        """The placeholder token learned for `cls`, e.g. "<cub200-017>" (unique within the set)."""
        return f"<{self.name}-{cls.position:0{_width(len(self.classes))}d}>"


def slugify(text: str) -> str:
    """Lowercase ASCII letters, digits and single hyphens only ("T-shirt/top" → "t-shirt-top"); may be ""."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    ascii_text = re.sub(r"['’]", "", ascii_text.lower())
    return re.sub(r"[^a-z0-9]+", "-", ascii_text).strip("-")


def normalise_name(name: str) -> str:
    """Comparison key for names: "001.Black_footed_Albatross", "Black-footed albatross" → "black footed albatross"."""
    name = unicodedata.normalize("NFKC", name)
    name = _NUMBERING.sub("", name, count=1).casefold()
    name = re.sub(r"['’]", "", name)
    return _SEPARATORS.sub(" ", name).strip()


def read_label_set(path: str | os.PathLike) -> LabelSet:
    """Read and fully validate a label file; raises UserError (one line) on any problem."""
    path = str(path)
    text = _decode(path)
    entries: list[tuple[int, int | None, str]] = []  # (line, index, name)
    for line_no, raw in enumerate(re.split(r"\r\n|\r|\n", text), start=1):
        if raw.lstrip().startswith("#"):
            continue
        line = raw if (m := _COMMENT.search(raw)) is None else raw[: m.start() + 1]  # keeps a TAB before '#'
        if not line.strip():
            continue
        entries.append((line_no, *_parse_line(path, line_no, line)))
    if not entries:
        raise UserError(f"{path}: no classes found (only blank lines and comments)")

    with_index = [e for e in entries if e[1] is not None]
    if with_index and len(with_index) != len(entries):
        bare = next(e for e in entries if e[1] is None)
        raise UserError(
            f"{path}:{bare[0]}: line has no 'index<TAB>' but line {with_index[0][0]} has one; "
            f"give every class an index or none"
        )
    seen_index: dict[int, int] = {}
    seen_name: dict[str, int] = {}
    for line_no, index, name in entries:
        if index is not None:
            if index in seen_index:
                raise UserError(f"{path}:{line_no}: index {index} already used on line {seen_index[index]}")
            seen_index[index] = line_no
        key = normalise_name(name)
        if key in seen_name:
            raise UserError(
                f"{path}:{line_no}: class {name!r} duplicates line {seen_name[key]} "
                f"(names are compared ignoring case, '_', '-' and 'NNN.' numbering)"
            )
        seen_name[key] = line_no

    width = _width(len(entries))
    classes = []
    for position, (line_no, index, name) in enumerate(entries):
        stem = slugify(name)[:_SLUG_NAME_MAX].strip("-")
        slug = f"{position:0{width}d}-{stem}" if stem else f"{position:0{width}d}"
        classes.append(LabelClass(position, name, index, slug, line_no))
    _assert_safe_slugs(classes)
    return LabelSet(path=path, name=slugify(Path(path).stem) or "labels", classes=tuple(classes))


def match_to_guide(labels: LabelSet, guide_names: list[str]) -> list[int]:
    """Guide class index for each class of `labels`: its explicit index, else the guide class of the same name.

    Names are compared with `normalise_name`. Raises UserError listing out-of-range indices, or names that
    match no guide class (with the nearest guide names) or several.
    """
    n = len(guide_names)
    out_of_range = [c for c in labels.classes if c.index is not None and not 0 <= c.index < n]
    if out_of_range:
        shown = ", ".join(f"line {c.line} (index {c.index})" for c in out_of_range[:5])
        raise UserError(
            f"{labels.path}: {len(out_of_range)} index(es) outside the guide's 0..{n - 1}: {shown}"
            + _more(out_of_range, 5)
        )
    by_key: dict[str, list[int]] = {}
    for i, guide_name in enumerate(guide_names):
        by_key.setdefault(normalise_name(guide_name), []).append(i)

    result, missing, ambiguous = [], [], []
    for c in labels.classes:
        if c.index is not None:
            result.append(c.index)
            continue
        hits = by_key.get(normalise_name(c.name), [])
        if len(hits) == 1:
            result.append(hits[0])
        else:
            (missing if not hits else ambiguous).append((c, hits))
    if missing:
        keys = list(by_key)
        parts = []
        for c, _ in missing[:5]:
            near = difflib.get_close_matches(normalise_name(c.name), keys, n=3, cutoff=0.6)
            near_names = ", ".join(repr(guide_names[by_key[k][0]]) for k in near) or "none close"
            parts.append(f"line {c.line} {c.name!r} (nearest: {near_names})")
        raise UserError(
            f"{labels.path}: {len(missing)} class name(s) not among the guide's {n} classes: "
            + "; ".join(parts)
            + _more(missing, 5)
            + "; fix the names or use 'index<TAB>name' lines"
        )
    if ambiguous:
        parts = [f"line {c.line} {c.name!r} matches guide classes {hits}" for c, hits in ambiguous[:5]]
        raise UserError(
            f"{labels.path}: {len(ambiguous)} ambiguous class name(s): "
            + "; ".join(parts)
            + _more(ambiguous, 5)
            + "; use 'index<TAB>name' lines"
        )
    return result


def _decode(path: str) -> str:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: label file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a label file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read label file: {e.strerror or e}") from None
    skip = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = skip + e.start
        line = data[:offset].count(b"\n") + 1
        raise UserError(
            f"{path}:{line}: not UTF-8 (byte 0x{data[offset]:02x} at byte offset {offset}); save the file as UTF-8"
        ) from None


def _parse_line(path: str, line_no: int, line: str) -> tuple[int | None, str]:
    """(index or None, name) of one non-comment line."""
    where = f"{path}:{line_no}"
    index = None
    if "\t" in line:
        head, name = line.split("\t", 1)
        head = head.strip(" ")
        if not re.fullmatch(r"[+-]?\d+", head):
            raise UserError(f"{where}: {head!r} before the TAB is not a class index; expected 'index<TAB>name'")
        index = int(head)
        if index < 0:
            raise UserError(f"{where}: negative class index {index}")
        if "\t" in name:
            raise UserError(f"{where}: more than one TAB; expected 'index<TAB>name'")
    else:
        name = line
    name = name.strip()
    if not name:
        raise UserError(f"{where}: empty class name after index {index}")
    for ch in name:
        if unicodedata.category(ch) in _BAD_CATEGORIES:
            raise UserError(f"{where}: class name {name!r} contains a control or invisible character (U+{ord(ch):04X})")
    if name[0] in "/\\" or ".." in re.split(r"[/\\]", name):
        raise UserError(f"{where}: class name {name!r} looks like a path (leading '/' or '\\', or a '..' part)")
    if not normalise_name(name):
        raise UserError(f"{where}: class name {name!r} has no letters or digits")
    return index, name


def _assert_safe_slugs(classes: list[LabelClass]) -> None:
    """Slugs become directory names: they must be unique and unable to leave their parent directory."""
    slugs = [c.slug for c in classes]
    if len(set(slugs)) != len(slugs):
        raise AssertionError(f"duplicate slugs: {slugs}")
    for s in slugs:
        if not s or s.startswith(".") or "/" in s or "\\" in s or "\0" in s or not re.fullmatch(r"[a-z0-9-]+", s):
            raise AssertionError(f"unsafe slug {s!r}")


def _width(count: int) -> int:
    return max(3, len(str(count - 1)))


def _more(items: list, shown: int) -> str:
    return f" and {len(items) - shown} more" if len(items) > shown else ""
