"""Load a model by the field's names: alias, bundled member, hub id, ``id@revision``, folder.

Weights are read by ``transformers``' ``from_pretrained`` (safetensors, or
``torch.load(weights_only=True)`` for old ``.bin`` checkpoints -- never a full unpickle),
with ``trust_remote_code=False``. Nothing sets environment variables: to work offline,
set ``HF_HUB_OFFLINE=1`` yourself, pass a local folder, or pre-download into ``HF_HOME``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from universal_neurons.errors import UserError
from universal_neurons.models.adapters import ArchitectureAdapter, adapter_for
from universal_neurons.models.registry import BUILD_HINT, ResolvedSpec, resolve_spec

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "spiece.model")
"""Any one of these in a folder means it carries a tokenizer."""
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


@dataclass
class LoadedModel:
    """A model ready for analysis.

    ``hf_model`` is in eval mode with ``requires_grad`` False, its activation modules
    fused where the architecture has a faster equivalent (``adapter.fuse_activations``:
    GPT-2's ``gelu_new``); ``adapter`` gives sizes, hook points and processed weights in
    TransformerLens's terms.
    """

    name: str
    """Display name, e.g. ``tiny-gpt2-a``, ``stanford-gpt2-small-a``, ``org/id@step1000``."""
    spec: str
    """The string the user passed."""
    source: str
    """``bundled`` | ``alias`` | ``hub`` | ``local``."""
    location: str
    """Folder or hub id the weights came from."""
    revision: str | None
    hf_model: Any
    tokenizer: Any
    adapter: ArchitectureAdapter

    def __repr__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"LoadedModel({self.name!r}, {self.source}: {self.location}{rev}, {self.adapter!r})"


def _check_folder(path: Path, what: str, tokenizer: bool = True) -> None:
    """Refuse a folder that cannot hold an HF model, naming what is missing (its tokenizer
    files too, unless ``tokenizer`` is False)."""
    if not (path / "config.json").is_file():
        raise UserError(f"{what} {str(path)!r} has no config.json; pass a folder saved with "
                        "save_pretrained() (config.json, model.safetensors, tokenizer files)")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise UserError(f"{what} {str(path)!r} has no weights (model.safetensors); save the "
                        "model with save_pretrained(folder, safe_serialization=True)")
    if tokenizer and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(f"{what} {str(path)!r} has no tokenizer files (tokenizer.json or "
                        "vocab.json); save the tokenizer into it with "
                        "tokenizer.save_pretrained(folder), or name a tokenizer folder")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def _in_chain(err: BaseException, types: tuple[type[BaseException], ...]) -> bool:
    e: BaseException | None = err
    while e is not None:
        if isinstance(e, types):
            return True
        e = e.__cause__ or e.__context__
    return False


def _load_error(ref: ResolvedSpec, err: Exception) -> UserError:
    """Translate a loading failure into one actionable line naming the value."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    if ref.kind in ("bundled", "local"):
        return UserError(f"cannot load model {ref.spec!r} from folder {ref.location!r}: "
                         f"{_first_line(err)}; check that it was written by save_pretrained()")
    where = ref.location + (f"@{ref.revision}" if ref.revision else "")
    origin = f" (from {ref.spec!r})" if ref.spec != where else ""
    if _in_chain(err, (RevisionNotFoundError,)):
        return UserError(f"model {ref.location!r} has no revision {ref.revision!r} on the "
                         "Hugging Face hub; check the branch/tag name (e.g. step1000)")
    if _in_chain(err, (RepositoryNotFoundError,)):
        return UserError(f"model {where!r}{origin} was not found on the Hugging Face hub "
                         "(misspelled or private?); see `universal-neurons models`")
    if isinstance(err, OSError):
        return UserError(f"cannot download {where!r}{origin} from the Hugging Face hub "
                         f"(offline? {_first_line(err)}); pass a local folder or "
                         "pre-download it with HF_HOME set")
    return UserError(f"cannot load model {where!r}{origin}: {_first_line(err)}")


def _from_pretrained(ref: ResolvedSpec, location: str, dtype: torch.dtype,
                     tokenizer_dir: str | None = None) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"revision": ref.revision} if ref.revision else {}
    model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, trust_remote_code=False,
                                                 weights_only=True, **kwargs)
    if tokenizer_dir is not None:
        return model, AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False, **kwargs)
    return model, tokenizer


def load_model(spec: str, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, tokenizer_dir: str | None = None
               ) -> LoadedModel:
    """Load one model (see the module docstring for what ``spec`` may be).

    ``tokenizer_dir``: a local folder to read the tokenizer from, for a model folder saved
    without one (e.g. the zoo's training snapshots); the model's own is used when it has one.

    Raises ``UserError`` with the offending value and a fix for unknown names, missing
    files, unbuilt bundled models, hub failures and unsupported architectures.
    """
    t0 = time.perf_counter()
    ref = resolve_spec(spec)
    location = ref.location
    if ref.kind == "bundled":
        if not (Path(location) / "config.json").is_file():
            raise UserError(f"bundled model {ref.name!r} is not built (no {location}); "
                            f"{BUILD_HINT}")
        _check_folder(Path(location), f"bundled model {ref.name!r} folder")
    own_tokenizer = True
    if ref.kind == "local":
        own_tokenizer = any((Path(location) / f).is_file() for f in TOKENIZER_FILES)
        _check_folder(Path(location), "model folder", tokenizer=tokenizer_dir is None)
    if tokenizer_dir is not None and not Path(tokenizer_dir).is_dir():
        raise UserError(f"tokenizer folder {tokenizer_dir!r} does not exist; pass a folder "
                        "saved with tokenizer.save_pretrained()")
    from safetensors import SafetensorError

    try:
        model, tokenizer = _from_pretrained(
            ref, location, dtype, None if own_tokenizer else tokenizer_dir)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as err:
        raise _load_error(ref, err) from err  # transformers wraps hub errors in OSError
    model.eval().requires_grad_(False)
    model.to(device)
    adapter = adapter_for(model, ref.spec)
    adapter.fuse_activations()
    log.debug("loaded %s (%s) in %.2fs: %r", ref.name, location, time.perf_counter() - t0,
              adapter)
    return LoadedModel(name=ref.name, spec=ref.spec, source=ref.kind, location=location,
                       revision=ref.revision, hf_model=model, tokenizer=tokenizer,
                       adapter=adapter)


def load_tokenizer(spec: str) -> Any:
    """Only the tokenizer of a model spec (same resolution and errors as :func:`load_model`)."""
    from transformers import AutoTokenizer

    ref = resolve_spec(spec)
    if ref.kind == "bundled" and not (Path(ref.location) / "config.json").is_file():
        raise UserError(f"bundled model {ref.name!r} is not built (no {ref.location}); "
                        f"{BUILD_HINT}")
    if ref.kind in ("bundled", "local") and not any(
            (Path(ref.location) / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(f"model folder {ref.location!r} has no tokenizer files (tokenizer.json "
                        "or vocab.json); save one with tokenizer.save_pretrained(folder)")
    kwargs: dict[str, Any] = {"revision": ref.revision} if ref.revision else {}
    try:
        return AutoTokenizer.from_pretrained(ref.location, trust_remote_code=False, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise _load_error(ref, err) from err


def load_models(specs: Sequence[str], device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32, same_tokenizer: bool = True
                ) -> list[LoadedModel]:
    """Load several models (suites expanded); by default check they share one tokenizer."""
    from universal_neurons.models.registry import expand_model_specs

    models = [load_model(s, device=device, dtype=dtype) for s in expand_model_specs(list(specs))]
    if same_tokenizer:
        check_same_tokenizer(models)
    return models


def tokenizers_match(models: Sequence[LoadedModel]) -> bool:
    """Whether all ``models`` share one tokenizer (same vocabulary and special tokens)."""
    from universal_neurons.data.tokens import tokenizer_fingerprint

    return len({tokenizer_fingerprint(m.tokenizer) for m in models}) <= 1


def check_same_tokenizer(models: Sequence[LoadedModel]) -> str:
    """Return the shared tokenizer fingerprint, or raise ``UserError`` naming the first
    model whose tokenizer differs from the first model's."""
    from universal_neurons.data.tokens import tokenizer_fingerprint

    if not models:
        raise UserError("no models given; pass at least one model")
    first = models[0]
    fp = tokenizer_fingerprint(first.tokenizer)
    for m in models[1:]:
        other = tokenizer_fingerprint(m.tokenizer)
        if other != fp:
            raise UserError(
                f"models {first.name!r} and {m.name!r} use different tokenizers (vocab sizes "
                f"{len(first.tokenizer)} vs {len(m.tokenizer)}, fingerprints {fp[:12]} vs "
                f"{other[:12]}); models compared for universality must share one tokenizer: "
                "pick models of one family (e.g. one suite)")
    return fp
