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
MAX_LABEL_FILE_BYTES = 16 << 20  # a label file's size at most (iNat-2021's 10,000 classes: under 1 MiB)
MAX_NAME_CHARS = 512  # a class name's length at most (the text encoder reads 77 tokens of a prompt in any case)


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


MATCH_MODES = ("check", "by-index", "by-name")
_GENERIC = re.compile(r"^(label|class)[\s_-]*\d+$", re.IGNORECASE)  # transformers' LABEL_0, our class_0
_PUNCTUATION = re.compile(r"[^\w\s]")


def match_key(name: str) -> str:
    """`normalise_name` without punctuation: "Forster's Tern", "Forsters_Tern", "forsters tern." agree."""
    return " ".join(_PUNCTUATION.sub(" ", normalise_name(name)).split())


def names_agree(name: str, guide_label: str, shared_first: bool = False) -> bool:
    """Does a label set's class name name the guide's class? Compared with `match_key`: equal to the guide's
    label or to one of its comma-separated synonyms ("tench, Tinca tinca"); and, where the guide gives the same
    first name to several classes (`shared_first`: ImageNet's two "crane"s), more specific than it by trailing
    words ("crane bird"), which a name must be to tell them apart."""
    key = match_key(name)
    synonyms = [match_key(part) for part in guide_label.split(",") if match_key(part)]
    if key == match_key(guide_label) or key in synonyms:
        return True
    return shared_first and bool(synonyms) and key.startswith(synonyms[0] + " ")


def _first_names(guide_names: list[str]) -> dict[str, int]:
    """How many guide classes start with each first synonym."""
    counts: dict[str, int] = {}
    for label in guide_names:
        first = match_key(label.split(",")[0])
        counts[first] = counts.get(first, 0) + 1
    return counts


def has_names(guide_names: list[str]) -> bool:
    """False when a guide's labels are placeholders (LABEL_0, class_0, ...) rather than class names."""
    return bool(guide_names) and not all(_GENERIC.match(n.strip()) for n in guide_names)


@dataclass(frozen=True)
class GuideMatch:
    """Each class's guide index, how they were found, and a note for the user when something was trusted."""

    indices: list[int]
    mode: str
    note: str | None = None


def match_to_guide(labels: LabelSet, guide_names: list[str], mode: str = "check") -> GuideMatch:
    """The guide's class index for each class of `labels`, before any learning.

    - "check" (default): an explicit index ("index<TAB>name") is taken only if the guide's label at that index
      names the same class (`names_agree`); a file without indices is matched by name. A guide whose labels
      are placeholders cannot be checked: indices (or positions) are trusted, and the note says so.
    - "by-index": explicit indices (else positions) trusted as they are: the file is right, the names differ.
    - "by-name": every class found by name among the guide's labels, whatever indices the file holds.
    Raises UserError (one line) naming the first few classes that do not fit."""
    if mode not in MATCH_MODES:
        raise UserError(f"label match must be one of {', '.join(MATCH_MODES)}, got {mode!r}")
    n = len(guide_names)
    named = has_names(guide_names)
    if mode == "by-name":
        if not named:
            raise UserError(
                f"the guide's {n} labels are placeholders ({guide_names[0]!r}, ...): it cannot be matched by name"
            )
        return GuideMatch(_by_name(labels, guide_names, labels.classes), mode)
    indexed = all(c.index is not None for c in labels.classes)
    if mode == "check" and named and not indexed:
        return GuideMatch(_by_name(labels, guide_names, labels.classes), "by-name")
    indices = [c.index if c.index is not None else c.position for c in labels.classes]
    out_of_range = [c for c, i in zip(labels.classes, indices) if not 0 <= i < n]
    if out_of_range:
        shown = ", ".join(
            f"line {c.line} (index {c.index if c.index is not None else c.position})" for c in out_of_range[:5]
        )
        raise UserError(
            f"{labels.path}: {len(out_of_range)} index(es) outside the guide's 0..{n - 1}: {shown}"
            + _more(out_of_range, 5)
        )
    if mode == "by-index":
        return GuideMatch(indices, mode)
    if not named:
        how = "the file's indices" if indexed else "the classes' positions in the file"
        return GuideMatch(
            indices,
            "by-index",
            f"the guide's labels are placeholders ({guide_names[0]!r}, ...): {how} are trusted as its class indices",
        )
    firsts = _first_names(guide_names)
    wrong = [
        (c, i)
        for c, i in zip(labels.classes, indices)
        if not names_agree(c.name, guide_names[i], firsts[match_key(guide_names[i].split(",")[0])] > 1)
    ]
    if wrong:
        shown = "; ".join(f"line {c.line} {c.name!r} is the guide's {i} {guide_names[i]!r}" for c, i in wrong[:3])
        raise UserError(
            f"{labels.path}: {len(wrong)} class(es) do not match the guide's label at their index: {shown}"
            + _more(wrong, 3)
            + "; fix the file, or --label-match by-name (find each class among the guide's labels) or by-index "
            "(trust the file's indices)"
        )
    return GuideMatch(indices, "check")


def _by_name(labels: LabelSet, guide_names: list[str], classes) -> list[int]:
    """Each class found among the guide's labels by name (`match_key`, or one of a label's synonyms);
    UserError listing names that match none (with the nearest) or several."""
    n = len(guide_names)
    by_key: dict[str, list[int]] = {}
    for i, guide_name in enumerate(guide_names):
        keys = {match_key(guide_name)} | {match_key(p) for p in guide_name.split(",") if match_key(p)}
        for key in keys:
            by_key.setdefault(key, []).append(i)
    exact: dict[str, list[int]] = {}
    for i, guide_name in enumerate(guide_names):
        exact.setdefault(match_key(guide_name), []).append(i)
    result, missing, ambiguous = [], [], []
    for c in classes:
        key = match_key(c.name)
        hits = exact.get(key, []) if len(exact.get(key, [])) == 1 else by_key.get(key, [])
        if len(hits) == 1:
            result.append(hits[0])
        else:
            (missing if not hits else ambiguous).append((c, hits))
    if missing:
        keys = list(by_key)
        parts = []
        for c, _ in missing[:5]:
            near = difflib.get_close_matches(match_key(c.name), keys, n=3, cutoff=0.6)
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
    first: dict[int, LabelClass] = {}
    for c, i in zip(classes, result):  # two names for one guide class ("tench" and "Tinca tinca")
        if i in first:
            raise UserError(
                f"{labels.path}: line {first[i].line} {first[i].name!r} and line {c.line} {c.name!r} both name the "
                f"guide's class {i} {guide_names[i]!r}"
            )
        first[i] = c
    return result


def _decode(path: str) -> str:
    try:
        if Path(path).exists() and not Path(path).is_file() and not Path(path).is_dir():
            raise UserError(f"{path}: not a regular file (a label file is a text file)")
        if Path(path).is_file() and Path(path).stat().st_size > MAX_LABEL_FILE_BYTES:
            raise UserError(f"{path}: a label file is at most {MAX_LABEL_FILE_BYTES >> 20} MiB")
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
        if not re.fullmatch(r"[+-]?[0-9]+", head):
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
    if len(name) > MAX_NAME_CHARS:
        raise UserError(f"{where}: class name of {len(name)} characters; at most {MAX_NAME_CHARS}")
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


def as_label_set(labels: str | Path | LabelSet) -> LabelSet:
    """A LabelSet as it is, or the label file at a path read into one (the library calls take either)."""
    return labels if isinstance(labels, LabelSet) else read_label_set(labels)
