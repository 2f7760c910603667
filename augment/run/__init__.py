"""Run bookkeeping: the workers sharing OUT (slots, locks, claims), atomic writes and the manifest."""
