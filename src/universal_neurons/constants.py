"""Names of every file a run directory holds, in one place."""

MANIFEST = "manifest.json"
CONFIG = "config.json"
NEURONS_DIR = "neurons"
CORRELATIONS_DIR = "correlations"
PLOTS_DIR = "plots"
REPORT_DIR = "report"
STATS_DIR = "stats"
CHECKPOINT_DIR = "checkpoints"

# Hook names follow TransformerLens.
HOOK_POST = "blocks.{layer}.mlp.hook_post"
HOOK_PRE = "blocks.{layer}.mlp.hook_pre"


def neuron_table(model: str, ext: str = "parquet") -> str:
    """Relative path of a model's per-neuron table (``neurons/<model>.parquet``)."""
    return f"{NEURONS_DIR}/{safe_name(model)}.{ext}"


def safe_name(model: str) -> str:
    """A model name usable as a file name (``EleutherAI/pythia-160m@step1`` -> ``EleutherAI--pythia-160m@step1``)."""
    return model.replace("/", "--").replace("\\", "--")


def neuron_name(layer: int, neuron: int) -> str:
    """The paper's neuron naming, e.g. ``L23.945``."""
    return f"L{layer}.{neuron}"


def parse_neuron_name(name: str) -> tuple[int, int]:
    """Inverse of :func:`neuron_name`; accepts ``L3.17`` or ``3.17``."""
    s = name.strip()
    if s[:1] in ("L", "l"):
        s = s[1:]
    try:
        layer, neuron = s.split(".")
        return int(layer), int(neuron)
    except ValueError:
        raise ValueError(f"bad neuron name {name!r}; expected L<layer>.<neuron>, e.g. L3.17") from None
