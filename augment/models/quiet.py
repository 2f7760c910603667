"""The model libraries' own progress bars and notices (diffusers, transformers, huggingface_hub) are not for
augment's users: loading bars, deprecation notes passed between the libraries, "model of type X used as Y".
Jobs turn them off before any model loads; augment's own bars (tqdm, `progress=True`) are the ones shown."""

from __future__ import annotations


def quiet_libraries() -> None:
    import diffusers.utils.logging
    import huggingface_hub.utils
    import transformers.utils.logging

    for logging in (diffusers.utils.logging, transformers.utils.logging):
        logging.set_verbosity_error()
        logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
