"""Run bookkeeping: where OUT lives (storage), how units reach workers (engine, workers), atomic writes, the manifest."""
