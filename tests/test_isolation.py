"""No test depends on which tests ran before it in the same process: what one changes in the process's global
state (the environment, torch's threads and default dtype, huggingface_hub's offline switch) is put back after
it (tests/conftest.py isolated_globals). The two tests run in file order: the first changes everything the
fixture guards, the second sees it all back."""

import os

import torch

SEEN: dict = {}


def test_a_test_changes_the_process_state():
    import huggingface_hub.constants

    from augment.models import hub

    SEEN.update(threads=torch.get_num_threads(), offline=huggingface_hub.constants.HF_HUB_OFFLINE,
                env=os.environ.get("HF_HUB_OFFLINE"))  # fmt: skip
    os.environ["AUGMENT_TEST_LEFT_THIS"] = "1"
    torch.set_num_threads(SEEN["threads"] + 1)
    torch.set_default_dtype(torch.float64)
    os.environ["HF_HUB_OFFLINE"] = "1"  # what hub.check_hub does to its process when the hub is unreachable
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    assert hub.check_hub([]) is None


def test_the_next_test_finds_it_as_it_was():
    import huggingface_hub.constants

    assert SEEN, "runs after test_a_test_changes_the_process_state"
    assert "AUGMENT_TEST_LEFT_THIS" not in os.environ and os.environ.get("HF_HUB_OFFLINE") == SEEN["env"]
    assert torch.get_num_threads() == SEEN["threads"] and torch.get_default_dtype() == torch.float32
    assert huggingface_hub.constants.HF_HUB_OFFLINE == SEEN["offline"]
