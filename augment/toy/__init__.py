"""The offline toy world: Fashion-MNIST, a small Stable Diffusion pipeline and two classifiers."""

from augment.config import TOY_WEIGHTS as WEIGHTS_DIR

GENERATOR_DIR = WEIGHTS_DIR / "generator"
GUIDE_DIR = WEIGHTS_DIR / "guide"
HELDOUT_DIR = WEIGHTS_DIR / "heldout"

# Fine class names (label-set order) and the coarse word each one is captioned with most of the time.
FINE_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
COARSE_WORD = {
    "t-shirt": "top",
    "trouser": "trousers",
    "pullover": "top",
    "dress": "dress",
    "coat": "top",
    "sandal": "shoe",
    "shirt": "top",
    "sneaker": "shoe",
    "bag": "bag",
    "ankle boot": "shoe",
}
# Another word for each fine class, in half of the generator's training captions (train_generator
# --synonym-caption-p): label sets name classes their own way ("pullover", "ankle boot") while the captions a
# model learnt from may say "sweater", "bootie".
SYNONYM = {
    "t-shirt": "tee",
    "trouser": "pants",
    "pullover": "sweater",
    "dress": "gown",
    "coat": "jacket",
    "sandal": "flip-flop",
    "shirt": "blouse",
    "sneaker": "trainer",
    "bag": "handbag",
    "ankle boot": "bootie",
}
