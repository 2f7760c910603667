"""Label sets: shipped manifests, every malformed-file case, matching names to a guide, slugs and tokens."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from augment.errors import UserError
from augment.labels import LabelSet, match_to_guide, names_agree, normalise_name, read_label_set, slugify

MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"
CUB_CLASSES_TXT = Path(__file__).resolve().parent / "data" / "cub200_classes.txt"
SAFE_SLUG = re.compile(r"[a-z0-9][a-z0-9-]*")


def write(tmp_path: Path, content: str | bytes, name: str = "labels.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def fails(tmp_path: Path, content: str | bytes, *fragments: str) -> str:
    """Reading `content` raises a one-line UserError naming the file and containing every fragment."""
    path = write(tmp_path, content)
    with pytest.raises(UserError) as info:
        read_label_set(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def assert_safe(labels: LabelSet) -> None:
    slugs = [c.slug for c in labels.classes]
    tokens = [labels.token(c) for c in labels.classes]
    assert len(set(slugs)) == len(slugs) and len(set(tokens)) == len(tokens)
    for slug in slugs:
        assert SAFE_SLUG.fullmatch(slug), slug
    for token in tokens:
        assert re.fullmatch(r"<[a-z0-9-]+>", token), token


# --- shipped manifests ---------------------------------------------------------------------------------


def test_cub200_manifest():
    labels = read_label_set(MANIFESTS / "cub200.txt")
    assert labels.name == "cub200" and len(labels) == 200
    assert labels.classes[0].name == "Black footed Albatross" and labels.classes[0].index == 0
    assert labels.classes[-1].name == "Common Yellowthroat" and labels.classes[-1].index == 199
    assert [c.index for c in labels.classes] == list(range(200))
    assert labels.classes[16].name == "Cardinal" and labels.classes[16].slug == "016-cardinal"
    assert labels.token(labels.classes[17]) == "<cub200-017>"
    assert_safe(labels)


def test_cub200_matches_official_folder_names_by_name():
    labels = read_label_set(MANIFESTS / "cub200.txt")
    unindexed = LabelSet(
        labels.path, labels.name, tuple(type(c)(c.position, c.name, None, c.slug, c.line) for c in labels.classes)
    )
    folders = [f"{i + 1:03d}.{c.name.replace(' ', '_')}" for i, c in enumerate(labels.classes)]
    assert match_to_guide(unindexed, folders[::-1]).indices == list(range(199, -1, -1))


def test_cub200_manifest_is_classes_txt_in_its_order():
    """Against CUB's classes.txt as another project lists it (tests/data, with its source): the default
    check passes, index by index, with the guide labels a CUB classifier would carry ("001.Black_footed_...")."""
    lines = [line.split(" ", 1) for line in CUB_CLASSES_TXT.read_text().splitlines() if not line.startswith("#")]
    official = [name for _, name in lines]
    assert [int(i) for i, _ in lines] == list(range(1, 201))
    labels = read_label_set(MANIFESTS / "cub200.txt")
    assert match_to_guide(labels, official).indices == list(range(200))
    assert [normalise_name(n) for n in labels.names()] == [normalise_name(n) for n in official]


def test_imagenet1k_manifest():
    labels = read_label_set(MANIFESTS / "imagenet1k.txt")
    assert len(labels) == 1000 and [c.index for c in labels.classes] == list(range(1000))
    assert len({normalise_name(n) for n in labels.names()}) == 1000
    assert labels.classes[0].name == "tench" and labels.classes[999].name == "toilet tissue"
    assert labels.classes[134].name != labels.classes[517].name  # the two "crane"s are told apart
    assert not [n for n in labels.names() if re.search(r"\bn\d{8}\b", n)]  # prompts carry no WordNet ids
    assert_safe(labels)


def test_imagenet1k_manifest_passes_the_check_against_the_guides_label_lists():
    """torchvision's category list (its weights' metadata) and timm's ImageNet descriptions ("tench, Tinca
    tinca", the form of google/vit-large-patch16-224's id2label and of the original code's inet_classes.py):
    every class agrees with the guide's label at its index, so `augment learn` starts without a flag."""
    from timm.data import ImageNetInfo
    from torchvision.models import ResNet50_Weights

    labels = read_label_set(MANIFESTS / "imagenet1k.txt")
    torchvision_names = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    info = ImageNetInfo("imagenet-1k")
    timm_names = [info.index_to_description(i) for i in range(1000)]
    for guide_names in (torchvision_names, timm_names):
        assert match_to_guide(labels, guide_names).indices == list(range(1000))
    assert timm_names[134] == "crane" and labels.classes[134].name == "crane bird"


def test_the_check_refuses_a_guide_in_another_order(tmp_path):
    labels = read_label_set(MANIFESTS / "cub200.txt")
    official = [line.split(" ", 1)[1] for line in CUB_CLASSES_TXT.read_text().splitlines() if line[0].isdigit()]
    swapped = list(official)
    swapped[3], swapped[7] = swapped[7], swapped[3]
    with pytest.raises(UserError) as info:
        match_to_guide(labels, swapped)
    message = str(info.value)
    assert "\n" not in message and "2 class(es) do not match" in message
    assert "'Groove billed Ani' is the guide's 3 '008.Rhinoceros_Auklet'" in message and "by-name" in message
    assert match_to_guide(labels, swapped, "by-name").indices[3] == 7  # each class to its own guide index
    assert match_to_guide(labels, swapped, "by-index").indices[3] == 3  # the file trusted


def test_names_agree():
    assert names_agree("tench", "tench, Tinca tinca") and names_agree("Tinca tinca", "tench, Tinca tinca")
    assert names_agree("Forster's Tern", "146.Forsters_Tern") and names_agree("maillot tank suit", "maillot, tank suit")
    assert names_agree("crane bird", "crane", shared_first=True) and not names_agree("crane", "crane bird", True)
    assert not names_agree("tiger shark", "tiger, Panthera tigris")  # one "tiger" in the guide: no extra words
    assert not names_agree("American Crow", "American Goldfinch") and not names_agree("Fish Crow", "American Crow")


def test_two_names_for_one_guide_class_are_refused(tmp_path):
    labels = read_label_set(write(tmp_path, "tench\nTinca tinca\n"))
    with pytest.raises(UserError, match="both name the guide's class 0"):
        match_to_guide(labels, ["tench, Tinca tinca", "goldfish"])


def test_placeholder_guide_labels_trust_the_indices_with_a_note(tmp_path):
    labels = read_label_set(write(tmp_path, "1\tdog\n0\tcat\n"))
    matched = match_to_guide(labels, ["LABEL_0", "LABEL_1"])
    assert matched.indices == [1, 0] and "placeholders" in matched.note
    with pytest.raises(UserError, match="cannot be matched by name"):
        match_to_guide(labels, ["LABEL_0", "LABEL_1"], "by-name")


def test_fashion_mnist_manifest_matches_toy_world():
    from augment.toy import FINE_NAMES

    labels = read_label_set(MANIFESTS / "fashion-mnist.txt")
    assert labels.names() == FINE_NAMES
    assert [c.index for c in labels.classes] == list(range(10))
    assert labels.name == "fashion-mnist" and labels.classes[0].slug == "000-t-shirt"
    assert match_to_guide(labels, FINE_NAMES).indices == list(range(10))
    assert_safe(labels)


# --- accepted variations ------------------------------------------------------------------------------


def test_bom_crlf_comments_and_whitespace(tmp_path):
    path = write(
        tmp_path,
        b"\xef\xbb\xbf# header\r\n\r\n  Laysan Albatross  \r\nSooty Albatross  # seabird\r\n"
        b"   # indented comment\r\nT-shirt/top\rCaf\xc3\xa9 bird\n",
        name="My Birds.txt",
    )
    labels = read_label_set(path)
    assert labels.names() == ["Laysan Albatross", "Sooty Albatross", "T-shirt/top", "Café bird"]
    assert [c.line for c in labels.classes] == [3, 4, 6, 7]
    assert [c.slug for c in labels.classes] == [
        "000-laysan-albatross",
        "001-sooty-albatross",
        "002-t-shirt-top",
        "003-cafe-bird",
    ]
    assert all(c.index is None for c in labels.classes)
    assert labels.name == "my-birds" and labels.token(labels.classes[2]) == "<my-birds-002>"


def test_indexed_lines_keep_file_order(tmp_path):
    labels = read_label_set(write(tmp_path, "207\tgolden retriever\n1\tgoldfish\n 3 \tshark # big\n"))
    assert [(c.position, c.index, c.name) for c in labels.classes] == [
        (0, 207, "golden retriever"),
        (1, 1, "goldfish"),
        (2, 3, "shark"),
    ]


def test_non_ascii_only_name_gets_a_numeric_slug(tmp_path):
    labels = read_label_set(write(tmp_path, "鳥\nbird\n"))
    assert [c.slug for c in labels.classes] == ["000", "001-bird"]


def test_long_names_give_bounded_slugs(tmp_path):
    labels = read_label_set(write(tmp_path, "word " * 100 + "\n"))
    assert len(labels.classes[0].slug) <= 60 and SAFE_SLUG.fullmatch(labels.classes[0].slug)


# --- malformed files ----------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_label_set(tmp_path / "nope.txt")


def test_directory(tmp_path):
    with pytest.raises(UserError, match="directory"):
        read_label_set(tmp_path)


def test_not_utf8_names_line_and_offset(tmp_path):
    fails(tmp_path, b"bird\ncaf\xe9\n", ":2:", "not UTF-8", "byte offset 8", "0xe9")


def test_empty_and_comment_only(tmp_path):
    fails(tmp_path, "", "no classes")
    fails(tmp_path, "# only a comment\n\n   \n", "no classes")


def test_blank_name_after_index(tmp_path):
    fails(tmp_path, "0\tbird\n3\t\n", ":2:", "empty class name")
    fails(tmp_path, "0\tbird\n3\t   # comment\n", ":2:", "empty class name")
    fails(tmp_path, "0\tbird\n3\t# comment\n", ":2:", "empty class name")  # not the name "3"


def test_duplicate_names_after_normalisation(tmp_path):
    fails(tmp_path, "001.Black_footed_Albatross\nLaysan\nBlack-footed albatross\n", ":3:", "line 1", "duplicate")


def test_duplicate_index(tmp_path):
    fails(tmp_path, "4\tcat\n5\tdog\n4\tcow\n", ":3:", "index 4", "line 1")


@pytest.mark.parametrize("head", ["x", "1.5", "", "one"])
def test_malformed_index(tmp_path, head):
    fails(tmp_path, f"0\tbird\n{head}\tcat\n", ":2:", "not a class index")


def test_negative_index(tmp_path):
    fails(tmp_path, "-1\tcat\n", ":1:", "negative")


def test_two_tabs(tmp_path):
    fails(tmp_path, "1\tcat\textra\n", ":1:", "more than one TAB")


def test_mixed_indexed_and_unindexed(tmp_path):
    fails(tmp_path, "0\tcat\ndog\n", ":2:", "line 1", "every class an index or none")
    fails(tmp_path, "dog\n0\tcat\n", ":1:", "line 2")


@pytest.mark.parametrize(
    "name, code",
    [("bad\x07bell", "U+0007"), ("zero\u200bwidth", "U+200B"), ("nul\x00byte", "U+0000"), ("esc\x1b[31m", "U+001B")],
)
def test_control_characters(tmp_path, name, code):
    message = fails(tmp_path, f"ok\n{name}\n", ":2:", "control", code)
    assert "\x00" not in message and "\x1b" not in message


@pytest.mark.parametrize("name", ["../etc", "a/../b", "..", "/abs/name", "\\windows", "a\\..\\b"])
def test_path_like_names(tmp_path, name):
    fails(tmp_path, f"ok\n{name}\n", ":2:", "path")


def test_punctuation_only_name(tmp_path):
    fails(tmp_path, "ok\n___\n", ":2:", "no letters or digits")


# --- names, slugs, matching -----------------------------------------------------------------------------


def test_normalise_name():
    assert normalise_name("001.Black_footed_Albatross") == "black footed albatross"
    assert normalise_name("1 001.Black_footed_Albatross") == "black footed albatross"  # a classes.txt line
    assert normalise_name("Black-footed  albatross") == "black footed albatross"
    assert normalise_name("Forster's Tern") == normalise_name("Forsters_Tern")
    assert normalise_name("7.62mm round") == "7.62mm round"  # not a "NNN." numbering


def test_slugify():
    assert slugify("T-shirt/top") == "t-shirt-top"
    assert slugify("../../etc/passwd") == "etc-passwd"
    assert slugify("jack-o'-lantern") == "jack-o-lantern"
    assert slugify("...") == ""


def test_match_by_name_with_numbering_and_underscores(tmp_path):
    labels = read_label_set(write(tmp_path, "Laysan albatross\nblack-footed Albatross\n"))
    guide = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    assert match_to_guide(labels, guide).indices == [1, 0]


def test_unmatched_names_suggest_nearest(tmp_path):
    labels = read_label_set(write(tmp_path, "Laysan Albatross\nBlak footed Albatros\nPenguin\n"))
    guide = ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    with pytest.raises(UserError) as info:
        match_to_guide(labels, guide)
    message = str(info.value)
    assert "\n" not in message and "2 class name(s)" in message
    assert "line 2 'Blak footed Albatros' (nearest: '001.Black_footed_Albatross'" in message  # best first
    assert "line 3 'Penguin' (nearest: none close)" in message
    assert "line 1" not in message  # matched classes are not reported


def test_many_unmatched_names_are_summarised(tmp_path):
    labels = read_label_set(write(tmp_path, "".join(f"thing {i}\n" for i in range(9))))
    with pytest.raises(UserError, match=r"9 class name\(s\).* and 4 more"):
        match_to_guide(labels, ["cat", "dog"])


def test_explicit_index_out_of_range(tmp_path):
    labels = read_label_set(write(tmp_path, "0\tcat\n2\tdog\n7\tcow\n"))
    with pytest.raises(UserError) as info:
        match_to_guide(labels, ["cat", "dog"])
    message = str(info.value)
    assert "2 index(es) outside the guide's 0..1" in message
    assert "line 2 (index 2)" in message and "line 3 (index 7)" in message and "line 1" not in message


def test_explicit_index_is_checked_against_the_name(tmp_path):
    labels = read_label_set(write(tmp_path, "1\tcat\n"))
    with pytest.raises(UserError, match="'cat' is the guide's 1 'dog'"):
        match_to_guide(labels, ["cat", "dog"])
    assert match_to_guide(labels, ["cat", "dog"], "by-index").indices == [1]
    assert match_to_guide(labels, ["cat", "dog"], "by-name").indices == [0]


def test_ambiguous_guide_name(tmp_path):
    labels = read_label_set(write(tmp_path, "crane\n"))
    with pytest.raises(UserError, match=r"ambiguous.*\[0, 2\]"):
        match_to_guide(labels, ["crane", "heron", "Crane"])


def test_a_name_or_a_file_past_the_limits_is_one_line(tmp_path):
    from augment.labels import MAX_LABEL_FILE_BYTES, MAX_NAME_CHARS

    path = tmp_path / "long.txt"
    path.write_text("a" * (MAX_NAME_CHARS + 1) + "\n")
    with pytest.raises(UserError, match=f"at most {MAX_NAME_CHARS}"):
        read_label_set(path)
    path.write_text("a" * MAX_NAME_CHARS + "\n")
    assert len(read_label_set(path).classes[0].name) == MAX_NAME_CHARS
    path.write_bytes(b"cat\n" * (MAX_LABEL_FILE_BYTES // 4 + 1))
    with pytest.raises(UserError, match="at most 16 MiB"):
        read_label_set(path)
