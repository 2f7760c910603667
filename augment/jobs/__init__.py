"""The four jobs of augment as library calls (the CLI is a thin layer over them): `learn_tokens`,
`generate_set`, `build` and `score_set`. Each takes a label set (path or LabelSet), an output directory and
a `RunConfig` (`augment.load_config(preset)`), checks everything cheap before loading a model (UserError),
and returns a result object."""
