"""Per-generation bookkeeping shared by every host: reading the parameters (UI args, API payload,
X/Y/Z overrides), choosing the settings of each sampling pass, and reporting why ASAG did not
apply or cannot act. Nothing here changes a model."""
from __future__ import annotations

from ..dit_layers import block_ranges, describe_blocks, is_auto
from ..layers import single_token_only
from ..log import logger
from ..params import NOTE_KEY, PARAMS, AsagParams
from . import detect, infotext

XYZ_ATTR_PREFIX = "asag_"  # X/Y/Z axes set p.asag_<param name> on their (shallow) copy of p


def read_params(p, args, defaults: AsagParams | None = None) -> AsagParams:
    """The generation's settings: the script args (positional, or one dict of named fields whose
    missing fields take ``defaults``), with any X/Y/Z axis values on ``p`` taking precedence.
    Raises ``ValueError`` on bad input."""
    params = AsagParams.from_args(args, defaults)
    overrides = {spec.name: getattr(p, XYZ_ATTR_PREFIX + spec.name) for spec in PARAMS if hasattr(p, XYZ_ATTR_PREFIX + spec.name)}
    return params.replace(**overrides) if overrides else params


def start(p, args, defaults: AsagParams | None = None) -> AsagParams | None:
    """Called once per ``process_images``: the enabled settings, or None when ASAG is off or the
    input is bad (then the console and the infotext say which field and what is allowed, and the
    image is made exactly as with ASAG off: the WebUI lets no script fail a request)."""
    try:
        params = read_params(p, args, defaults)
    except ValueError as err:
        logger.error("not applied: %s", err)
        infotext.write(p.extra_generation_params, None, note=f"not applied: {err}")
        return None
    if not params.enabled:
        infotext.write(p.extra_generation_params, None)
        return None
    infotext.write(p.extra_generation_params, params)
    return params


def params_for_pass(params: AsagParams | None, is_hr_pass: bool) -> AsagParams | None:
    """The settings for one sampling pass (first pass or hires. fix), or None to skip it."""
    if params is None:
        return None
    if is_hr_pass:
        return params.for_hires_pass()
    return params if params.runs_first_pass() else None


def not_applied(p, reason: str) -> None:
    """ASAG cannot apply: say so in the console and the infotext; the caller leaves the image alone."""
    logger.warning("not applied: %s", reason)
    # Only the note: the settings' keys would make a paste turn ASAG on for a model it cannot apply to.
    infotext.write(p.extra_generation_params, None, note=f"not applied: {reason}")


def note_auto_blocks(p, params: AsagParams, family, kinds) -> None:
    """Where the transformer blocks are ``auto``: the blocks it chose for this model (``kinds``,
    its block counts), in the infotext, and in the console where they are not the family's default
    as stated (a model shallower than the one the default is stated for)."""
    if not is_auto(params.dit_layers):
        return
    chosen = family.auto_spec(kinds)
    p.extra_generation_params[infotext.AUTO_BLOCKS_KEY] = chosen
    if chosen != family.default_blocks:
        logger.info("auto chose %s on this %s model (%s; its default %s is stated for a model with %s)", chosen, family.name,
                    describe_blocks(kinds), family.default_blocks, block_ranges(family.reference_depths))


def acts_at(p, params: AsagParams, diffusion_model, selected, latent) -> bool:
    """Whether the selected layers can change anything for this latent. Where each has a single
    token (SD1.5's middle block below 128x128, say), any attention is the identity, so ASAG would
    change nothing: said once per generation, in the console and the infotext, and the extra pass
    is skipped. The settings stay in the infotext: they act at larger sizes."""
    height, width = latent.shape[-2:]
    if not single_token_only(diffusion_model, selected, height, width):
        return True
    if not p.extra_generation_params.get(NOTE_KEY, "").startswith("no effect"):
        reason = (f"every selected layer ({params.layers}) has a single token at a {height}x{width} latent "
                  f"({height * 8}x{width * 8} pixels), where any attention is the identity; choose layers with more "
                  f"tokens (such as output) or a larger image")
        logger.warning("no effect: %s", reason)
        p.extra_generation_params[NOTE_KEY] = f"no effect: {reason}"
    return False


REUSE_NOTE_ATTR = "_asag_reuse_notes"  # on p: the reasons already said for this generation


def note_full_extra_pass(p, reuse, reused_blocks: int) -> None:
    """Once per generation and reason, in the console: why an extra pass took nothing from the main
    pass (another extension's code inside the blocks, say), so that its cost is not a mystery."""
    if reused_blocks or reuse is None or not reuse.blocks or reuse.reason is None:
        return
    said = p.__dict__.setdefault(REUSE_NOTE_ATTR, set())
    if reuse.reason not in said:
        said.add(reuse.reason)
        logger.info("the extra pass is computed in full, without the main pass's blocks: %s", reuse.reason)


def log_diagnostics(diagnostics) -> None:
    """The generation's diagnostics line, naming the host and backend it ran on."""
    logger.info("diagnostics on %s: %s", detect.host_name(detect.detect_host()), diagnostics.summary())
